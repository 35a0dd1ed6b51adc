"""Survey spectra as one record: readers for every format, streaming, archive download."""

from stargon.surveys import apogee, galah, lamost, libraries, others  # noqa: F401  (registers)
from stargon.surveys.registry import (
    READERS,
    FileOutcome,
    iter_spectra,
    read_file,
    scan,
)
from stargon.surveys.spectrum import Spectrum, SpectrumReadError

__all__ = [
    "READERS",
    "FileOutcome",
    "Spectrum",
    "SpectrumReadError",
    "iter_spectra",
    "read_file",
    "scan",
]
