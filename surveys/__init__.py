"""Survey spectra as one record: readers for every format, streaming, archive download."""

from stargon.core.spectrum import Spectrum, SpectrumReadError
from stargon.surveys import apogee, boss, desi, gaia, galah, lamost, libraries, mike  # noqa: F401
from stargon.surveys.registry import (
    READERS,
    FileOutcome,
    iter_spectra,
    read_file,
    scan,
)

__all__ = [
    "READERS",
    "FileOutcome",
    "Spectrum",
    "SpectrumReadError",
    "iter_spectra",
    "read_file",
    "scan",
]
