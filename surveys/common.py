"""Small helpers shared by the readers: FITS wavelength axes, noise, catalogues beside files."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from astropy.io import fits

from stargon.core.spectrum import SpectrumReadError


def linear_axis(header: fits.Header, n: int, path: Path) -> np.ndarray:
    """λ_i = CRVAL1 + CD1_1 (i + 1 − CRPIX1), the FITS linear world coordinate.

    As the FITS standard says, CD1_1 takes precedence over CDELT1 when both are present.
    """
    try:
        start = float(header["CRVAL1"])
        step = float(header["CD1_1"] if "CD1_1" in header else header["CDELT1"])
    except (KeyError, TypeError) as exc:
        raise SpectrumReadError(path, "header lacks CRVAL1/CDELT1 for a wavelength axis") from exc
    return start + step * (np.arange(n) + 1 - float(header.get("CRPIX1", 1.0)))


def image_data(hdul: fits.HDUList, key: int | str, path: Path, ndim: int) -> np.ndarray:
    """The data of an image HDU, checked for presence and dimensionality."""
    try:
        hdu = hdul[key]
    except (KeyError, IndexError) as exc:
        raise SpectrumReadError(path, f"missing HDU {key!r}") from exc
    try:
        data = hdu.data
    except (OSError, ValueError, TypeError) as exc:
        raise SpectrumReadError(path, f"truncated or corrupt FITS data in HDU {key!r}") from exc
    if data is None or data.ndim != ndim:
        shape = None if data is None else data.shape
        raise SpectrumReadError(path, f"HDU {key!r} should be a {ndim}-D image, found {shape}")
    return np.asarray(data, dtype=np.float64)


def table_columns(
    hdul: fits.HDUList, key: int | str, path: Path, names: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Named columns of a table HDU, with a clear error when the HDU or a column is missing."""
    try:
        data = hdul[key].data
    except (KeyError, IndexError) as exc:
        raise SpectrumReadError(path, f"missing table HDU {key!r}") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise SpectrumReadError(path, f"truncated or corrupt table in HDU {key!r}") from exc
    if data is None or not hasattr(data, "columns"):
        raise SpectrumReadError(path, f"HDU {key!r} is not a table")
    present = {c.lower(): c for c in data.columns.names}
    missing = [n for n in names if n.lower() not in present]
    if missing:
        raise SpectrumReadError(path, f"table HDU {key!r} lacks columns {missing}")
    return {n: np.asarray(data[present[n.lower()]], dtype=np.float64) for n in names}


def files_beside(path: Path, pattern: str, levels: int = 3) -> Iterator[Path]:
    """Files matching `pattern` in the folders above `path` and their direct subfolders."""
    folder = path.resolve().parent
    for _ in range(levels + 1):
        yield from _matches(folder, pattern)
        if folder.parent == folder:
            return
        folder = folder.parent


@functools.lru_cache(maxsize=256)
def _matches(folder: Path, pattern: str) -> tuple[Path, ...]:
    found = sorted(folder.glob(pattern)) + sorted(folder.glob(f"*/{pattern}"))
    return tuple(p for p in found if p.is_file())


def clean_star_name(name: str) -> str:
    """One spelling for star names across libraries: upper case, single spaces, no `_`."""
    return " ".join(name.replace("_", " ").split()).upper()
