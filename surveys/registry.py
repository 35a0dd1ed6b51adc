"""Which reader understands a file, and streaming a folder of survey files.

A reader *claims* a file from a cheap probe (FITS headers and HDU names, CSV columns, npz keys)
and then *reads* it into one or more `Spectrum` records. Files that hold no spectrum (catalogues,
wavelength grids, networks) are recognised as such and skipped, not reported as failures.
"""

from __future__ import annotations

import csv
import functools
import gzip
import os
import re
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from stargon.core.spectrum import Spectrum, SpectrumReadError
from stargon.surveys.user import TEXT_SUFFIXES, UserSettings, read_user_file

_LENT = threading.local()  # files `probed` holds open, by path, for this thread
SPECTRUM_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz", ".fts", ".npz", ".csv", ".ecsv")


@dataclass
class Probe:
    """What a reader may look at to decide whether a file is its own."""

    path: Path
    kind: str  # "fits", "csv" or "npz"
    header: fits.Header = field(default_factory=fits.Header)
    hdu_names: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    has_spectrum_data: bool = True


@dataclass(frozen=True)
class Reader:
    """A named reader: `claims(probe)` decides, `read(path)` yields spectra."""

    name: str
    claims: Callable[[Probe], bool]
    read: Callable[[Path], Iterator[Spectrum]]


READERS: list[Reader] = []


def register(name: str, claims: Callable[[Probe], bool]):
    """Decorator that adds a read function to the registry under `name`."""

    def wrap(read: Callable[[Path], Iterator[Spectrum]]):
        READERS.append(Reader(name, claims, read))
        return read

    return wrap


def reader_named(name: str) -> Reader:
    for reader in READERS:
        if reader.name == name:
            return reader
    known = ", ".join(r.name for r in READERS)
    raise ValueError(f"unknown survey reader {name!r}; known readers: {known}")


def is_spectrum_candidate(path: Path) -> bool:
    return path.name.lower().endswith(SPECTRUM_SUFFIXES)


def probe_file(path: Path) -> Probe:
    """Open just enough of a file to pick its reader; bad files raise SpectrumReadError."""
    with probed(path) as probe:
        return probe


@contextmanager
def probed(path: Path) -> Iterator[Probe]:
    """`probe_file`, with a FITS file kept open until the block ends and lent by `open_fits`
    to whoever opens it inside: a gzipped survey file is decompressed once, not twice."""
    probe, hdul = _probe(Path(path))
    if hdul is None:
        yield probe
        return
    lent = _LENT.__dict__.setdefault("files", {})
    lent[probe.path] = hdul
    try:
        yield probe
    finally:
        del lent[probe.path]
        hdul.close()


def _probe(path: Path) -> tuple[Probe, fits.HDUList | None]:
    if not path.exists():
        raise SpectrumReadError(path, "file does not exist")
    if not path.is_file():
        raise SpectrumReadError(path, "not a regular file")
    name = path.name.lower()
    if name.endswith(TEXT_SUFFIXES):
        return Probe(path, "text"), None
    if name.endswith(".npz"):
        return _probe_npz(path), None
    if name.endswith(".csv"):
        return _probe_csv(path), None
    return _probe_fits(path)


def _probe_fits(path: Path) -> tuple[Probe, fits.HDUList]:
    """The probe of a FITS file and the file, left open."""
    hdul = open_fits(path)
    try:
        header = hdul[0].header.copy()
        names = [hdu.name for hdu in hdul]
        has_data = any(
            (hdu.is_image and hdu.header.get("NAXIS", 0) >= 1 and hdu.header["BITPIX"] < 0)
            or (isinstance(hdu, fits.BinTableHDU) and _looks_spectral(hdu.columns.names))
            for hdu in hdul
        )
    except Exception as exc:  # astropy raises many types for damaged files
        hdul.close()
        raise SpectrumReadError(path, f"not a readable FITS file ({exc})") from exc
    probe = Probe(path, "fits", header=header, hdu_names=names, has_spectrum_data=has_data)
    return probe, hdul


def _looks_spectral(columns: Iterable[str]) -> bool:
    lowered = {re.sub(r"\s*[\[(].*$", "", c).strip().lower() for c in columns}  # no "[unit]"
    return bool(lowered & {"flux", "sob", "spectrum"}) and bool(
        lowered & {"wave", "wavelength", "loglam", "lambda"}
    )


def _probe_csv(path: Path) -> Probe:
    try:
        with open(path, newline="") as handle:
            columns = next(csv.reader(handle))
    except (StopIteration, UnicodeDecodeError, csv.Error) as exc:
        raise SpectrumReadError(path, f"not a readable CSV file ({exc or 'empty'})") from exc
    columns = [c.strip() for c in columns]
    return Probe(path, "csv", columns=columns, has_spectrum_data=_looks_spectral(columns))


def _probe_npz(path: Path) -> Probe:
    try:
        with np.load(path) as archive:
            keys = list(archive.files)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise SpectrumReadError(path, f"not a readable npz archive ({exc})") from exc
    spectral = bool({"spectrum", "spectra", "flux"} & set(keys))
    return Probe(path, "npz", columns=keys, has_spectrum_data=spectral)


def open_fits(path: Path) -> AbstractContextManager[fits.HDUList]:
    """Open a FITS file, turning truncation and corruption into SpectrumReadError; a file
    held open by `probed` comes back as it is (and stays open after its `with` block)."""
    lent = getattr(_LENT, "files", {}).get(Path(path))
    if lent is not None:
        return nullcontext(lent)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)
            hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
    except (OSError, AstropyUserWarning, EOFError, gzip.BadGzipFile, ValueError) as exc:
        reason = "truncated or corrupt FITS file" if _is_truncation(exc) else "not a FITS file"
        raise SpectrumReadError(path, f"{reason} ({exc})") from exc
    return hdul


def _is_truncation(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(word in text for word in ("truncat", "end of file", "eof", "smaller than"))


def find_reader(probe: Probe) -> Reader | None:
    for reader in READERS:
        if reader.claims(probe):
            return reader
    return None


def read_file(
    path: str | Path, survey: str | None = None, user: UserSettings | None = None
) -> list[Spectrum]:
    """All spectra in one file; `survey` forces a reader. A file of no known survey is read as
    a user's spectrum with `user`'s settings (resolving power, medium, frame). Raises
    SpectrumReadError."""
    with probed(Path(path)) as probe:
        return _read_with(resolve_reader(probe, survey, user), probe.path)


def resolve_reader(
    probe: Probe, survey: str | None = None, user: UserSettings | None = None
) -> Reader:
    """The reader for a probed file: a survey's, else the generic one for files that hold a
    spectrum (`surveys.user`); a SpectrumReadError that says why there is none."""
    if survey is not None:
        reader = reader_named(survey)
        if not reader.claims(probe):
            raise SpectrumReadError(probe.path, f"not a {survey} file (its reader rejects it)")
        return reader
    reader = find_reader(probe)
    if reader is not None:
        return reader
    if probe.has_spectrum_data or probe.kind in ("csv", "text"):  # the user reader says why
        return Reader("user", lambda _: True, functools.partial(read_user_file, settings=user))
    raise SpectrumReadError(probe.path, "no reader recognises this file: it holds no spectrum")


def _read_with(reader: Reader, path: Path) -> list[Spectrum]:
    try:
        return list(reader.read(path))
    except SpectrumReadError:
        raise
    except Exception as exc:
        raise SpectrumReadError(path, f"{reader.name} reader failed: {exc}") from exc


@dataclass
class FileOutcome:
    """What happened to one file in a batch: spectra read, skipped as non-spectrum, or failed."""

    path: Path
    spectra: list[Spectrum] = field(default_factory=list)
    reader: str | None = None
    error: str | None = None
    skipped: bool = False


def iter_files(root: str | Path) -> Iterator[Path]:
    """Spectrum-like files under `root`, in a stable order, without listing everything first."""
    root = Path(root)
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        raise SpectrumReadError(root, "no such file or directory")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _excluded_folder(d))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if is_spectrum_candidate(path):
                yield path


def _excluded_folder(name: str) -> bool:
    """Folders a walk leaves out: hidden ones, and `omit/` where libraries park rejected files
    (the MaNGA DAP convention, e.g. MILES m0970)."""
    return name.startswith((".", "_")) or name.lower() == "omit"


def scan(
    root: str | Path,
    survey: str | None = None,
    user: UserSettings | None = None,
    skip_non_spectra: bool = True,
) -> Iterator[FileOutcome]:
    """Read every file under `root`, one outcome per file; a bad file never stops the batch.
    Files of no known survey are read with `user`'s settings. A file that holds no spectrum
    is skipped in a folder's walk; with `skip_non_spectra` False (a file the user named) its
    reading fails with the reason."""
    for path in iter_files(root):
        try:
            with probed(path) as probe:
                unknown = not probe.has_spectrum_data and find_reader(probe) is None
                if survey is None and skip_non_spectra and unknown:
                    outcome = FileOutcome(path, skipped=True)
                else:
                    reader = resolve_reader(probe, survey, user)
                    outcome = FileOutcome(path, _read_with(reader, path), reader=reader.name)
            yield outcome
        except SpectrumReadError as exc:
            yield FileOutcome(path, error=exc.problem)


def iter_spectra(
    root: str | Path,
    survey: str | None = None,
    on_error: Callable[[Path, str], None] | None = None,
) -> Iterator[Spectrum]:
    """Stream spectra from a file or folder; failures go to `on_error` (default: a warning)."""
    for outcome in scan(root, survey):
        if outcome.error is not None:
            if on_error is None:
                warnings.warn(f"skipped {outcome.path}: {outcome.error}", stacklevel=2)
            else:
                on_error(outcome.path, outcome.error)
        yield from outcome.spectra
