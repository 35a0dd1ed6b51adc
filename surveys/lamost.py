"""LAMOST low-resolution (LRS) spectra: the DR1-style and DR8-style 5 × N primary images.

DR1 rows: flux, ivar, sub-continuum, andmask, ormask with a log10-linear axis from the header.
DR8 rows: flux, ivar, wavelength (Å), andmask, ormask. Both are vacuum, observed frame.
Labels come from a catalogue CSV found beside the files (matched on file name).
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from stargon.core.physics import C_KMS, air_to_vacuum
from stargon.core.spectrum import Spectrum, SpectrumReadError
from stargon.surveys.common import (
    files_beside,
    image_data,
    linear_axis,
)
from stargon.surveys.instruments import LAMOST
from stargon.surveys.registry import Probe, open_fits, register


def _claims(probe: Probe) -> bool:
    return probe.kind == "fits" and str(probe.header.get("TELESCOP", "")).upper() == "LAMOST"


@register("lamost", _claims)
def read_lamost(path: Path) -> Iterator[Spectrum]:
    with open_fits(path) as hdul:
        rows = image_data(hdul, 0, path, ndim=2)
        header = hdul[0].header
    if rows.shape[0] < 5:
        raise SpectrumReadError(path, f"LAMOST image should have 5 rows, found {rows.shape[0]}")
    flux, ivar, third, andmask = rows[0], rows[1], rows[2], rows[3]
    # DR8 stores the wavelengths as row 3 (its header axis may be a -9999 placeholder); DR1
    # stores a sub-continuum there and the log10-linear axis in the header.
    wave = third if _is_wavelength_row(third) else 10.0 ** linear_axis(header, third.size, path)
    if not header.get("VACUUM", True):  # LAMOST says which it is in each header
        wave = air_to_vacuum(wave)
    ivar = np.where(andmask != 0, 0.0, ivar)

    labels, star_id = _catalogue_entry(path)
    labels.setdefault("rv", _header_rv(header))
    yield Spectrum(
        wave=wave,
        flux=flux,
        ivar=ivar,
        instrument=LAMOST.name,
        resolving_power=LAMOST.resolving_power,
        frame="observed",
        normalised=False,
        source=str(path),
        star_id=star_id or str(header.get("DESIG") or header.get("OBSID") or path.stem),
        segments=LAMOST.segments(wave),
        labels={k: v for k, v in labels.items() if np.isfinite(v)},
    )


def _is_wavelength_row(row: np.ndarray) -> bool:
    """Optical Å from ~3,700 to ~9,000, increasing almost everywhere (a corrupted pixel pair
    still counts, so that validation can name the problem instead of misreading the layout)."""
    finite = bool(np.all(np.isfinite(row)))
    spans = finite and 3000 < row[0] < 4500 and 8000 < row[-1] < 10500
    return bool(spans and np.mean(np.diff(row) > 0) > 0.99)


def _header_rv(header) -> float:
    """The pipeline redshift Z as a velocity (c z), when the header has it."""
    z = header.get("Z")
    return float(z) * C_KMS if isinstance(z, int | float) and z > -9000 else float("nan")


def _catalogue_entry(path: Path) -> tuple[dict[str, float], str | None]:
    """Labels and star id from the first catalogue beside the file that lists it."""
    for catalogue in files_beside(path, "*.csv"):
        entry = _load_catalogue(catalogue).get(path.name.removesuffix(".gz"))
        if entry is not None:
            return dict(entry[0]), entry[1]
    return {}, None


# Catalogue columns → label names (the DR1 sample's my_data3.csv).
_LABEL_COLUMNS = {"teff": "teff", "logg": "logg", "feh": "fe_h", "rv": "rv", "rv_err": "rv_err"}


@functools.lru_cache(maxsize=32)
def _load_catalogue(catalogue: Path) -> dict[str, tuple[dict[str, float], str | None]]:
    """file name → (labels, star id). Understands the DR1 label table and DR8 repeat groups."""
    with open(catalogue, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    if "filename" in rows[0]:
        return {
            row["filename"]: (
                {name: _number(row.get(col)) for col, name in _LABEL_COLUMNS.items()},
                _designation(row.get("designation")),
            )
            for row in rows
        }
    if "combined_file" in rows[0] and "GroupID" in rows[0]:
        # Repeat observations of one star share a GroupID; name the star after the group.
        entries = {}
        for row in rows:
            name = Path(row["combined_file"]).name.removesuffix(".gz")
            group = int(float(row["GroupID"]))
            entries[name] = ({"group_id": float(group)}, f"{catalogue.stem}:group{group}")
        return entries
    return {}


def _designation(text: str | None) -> str | None:
    """Catalogue designations lack the survey prefix that FITS headers carry (DESIG)."""
    if not text:
        return None
    return text if text.startswith("LAMOST") else f"LAMOST {text}"


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else float("nan")
    except ValueError:
        return float("nan")
