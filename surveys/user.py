"""A spectroscopist's own spectrum, read when no survey reader claims the file: anything
specutils identifies (tabular FITS, 1-D FITS with a linear WCS, SDSS, …) through
`core.interop.from_specutils`, and plain CSV/ECSV/text tables whose wavelength, flux and
optional error or ivar columns are matched by name, case-blind ("Wavelength [nm]" carries its
unit). What the file does not say comes from `UserSettings` (resolving power, air/vacuum, frame,
wavelength unit), with the defaults stated there; what still cannot be read gets one line that
names the columns found and what is missing."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from stargon.core.interop import UserSettings, from_specutils, spectrum_from_arrays
from stargon.core.spectrum import Spectrum, SpectrumReadError, ivar_from_sigma, usable_ivar

WAVELENGTH_NAMES = ("wavelength", "wave", "lambda", "lam", "wl", "wavelength_vacuum_angstrom")
FLUX_NAMES = ("flux", "f", "intensity", "fnu", "flam", "counts", "spectrum")
ERROR_NAMES = ("error", "err", "sigma", "uncertainty", "flux_err", "flux_error", "e_flux", "ivar")
# Text tables other than CSV: read only when named one by one (a folder walk would take every
# README.txt for a spectrum).
TEXT_SUFFIXES = (".ecsv", ".txt", ".dat", ".tsv")


def read_user_file(path: str | Path, settings: UserSettings | None = None) -> list[Spectrum]:
    """One `Spectrum` from a file of no known survey; a clear SpectrumReadError otherwise."""
    path = Path(path)
    settings = settings or UserSettings()
    if path.name.lower().endswith((".csv", *TEXT_SUFFIXES)):
        return [_from_table(_read_text_table(path), path, settings, header=None)]
    header = _primary_header(path)
    table_hdu = _first_table_hdu(path)
    if header.get("NAXIS", 0) >= 1 and "CRVAL1" not in header and table_hdu is None:
        raise SpectrumReadError(
            path, "no wavelength axis: a 1-D image needs a WCS (CRVAL1, CDELT1 or CD1_1, CUNIT1)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from specutils import Spectrum as SpecutilsSpectrum  # slow import: only here

            spectrum = SpecutilsSpectrum.read(path)
    except Exception as exc:  # specutils raises many kinds for files it cannot identify
        if table_hdu is None:
            raise SpectrumReadError(path, f"specutils cannot read it ({exc})") from exc
        table = Table.read(path, hdu=table_hdu, unit_parse_strict="silent")  # with TUNITn
        try:
            return [_from_table(table, path, settings, header)]
        except SpectrumReadError as error:
            extensions = _extensions(path)
            if len(extensions) <= 2:  # one table: its columns are the answer
                raise
            raise SpectrumReadError(
                path,
                f"no reader knows its extensions ({'; '.join(extensions)}), and its first "
                "table has no wavelength and flux columns",
            ) from error
    return [from_specutils(spectrum, str(path), settings, header)]


def _extensions(path: Path) -> list[str]:
    """Each HDU as `index NAME (table of n columns | image of shape | empty)`, headers only."""
    described = []
    with fits.open(path) as hdul:
        for index, hdu in enumerate(hdul):
            if isinstance(hdu, fits.BinTableHDU | fits.TableHDU):
                kind = f"table of {hdu.header.get('TFIELDS', 0)} columns"
            elif hdu.header.get("NAXIS", 0):
                shape = " × ".join(str(hdu.header[f"NAXIS{k}"])
                                   for k in range(hdu.header["NAXIS"], 0, -1))  # fmt: skip
                kind = f"image {shape}"
            else:
                kind = "empty"
            described.append(f"{index} {hdu.name or '(unnamed)'}: {kind}")
    return described


def _from_table(table: Table, path: Path, settings: UserSettings, header) -> Spectrum:
    names = {_bare_name(name): name for name in table.colnames}
    wave_name = next((names[n] for n in WAVELENGTH_NAMES if n in names), None)
    flux_name = next((names[n] for n in FLUX_NAMES if n in names), None)
    if wave_name is None or flux_name is None:
        missing = [what for what, name in (("wavelength", wave_name), ("flux", flux_name))
                   if name is None]  # fmt: skip
        raise SpectrumReadError(
            path,
            f"found columns {', '.join(table.colnames)}; no {' or '.join(missing)} column "
            f"(wavelength: one of {', '.join(WAVELENGTH_NAMES[:5])}; flux: one of "
            f"{', '.join(FLUX_NAMES[:4])}; optional error or ivar)",
        )
    wave_unit = (
        table[wave_name].unit or _unit_in_name(wave_name) or u.Unit(settings.wavelength_unit)
    )
    try:
        wave = (np.asarray(table[wave_name], dtype=float) * wave_unit).to_value(
            u.AA, equivalencies=u.spectral()
        )
    except u.UnitConversionError as exc:
        raise SpectrumReadError(path, f"wavelength unit {wave_unit} is not a length") from exc
    flux = np.asarray(table[flux_name], dtype=float)
    error_name = next((names[n] for n in ERROR_NAMES if n in names), None)
    ivar = None
    if error_name is not None:
        values = np.asarray(table[error_name], dtype=float)
        is_ivar = _bare_name(error_name) == "ivar"
        ivar = usable_ivar(values) if is_ivar else ivar_from_sigma(values)
    unit = table[flux_name].unit or _unit_in_name(flux_name)
    return spectrum_from_arrays(
        path, wave, flux, ivar, settings, air=settings.medium == "air", flux_unit=str(unit or ""),
        header=header,
    )  # fmt: skip


def _read_text_table(path: Path) -> Table:
    try:
        if path.name.lower().endswith(".ecsv"):
            return Table.read(path, format="ascii.ecsv")
        return Table.read(path, format="ascii", guess=True)
    except Exception as exc:  # astropy's guesser raises many kinds
        raise SpectrumReadError(path, f"not a readable text table ({exc})") from exc


def _primary_header(path: Path):
    try:
        return fits.getheader(path)
    except Exception as exc:
        raise SpectrumReadError(
            path, f"neither a text table nor a readable FITS file ({exc})"
        ) from exc


def _first_table_hdu(path: Path) -> int | None:
    """The index of the first table HDU, if any (headers only: no data read)."""
    with fits.open(path) as hdul:
        return next(
            (i for i, hdu in enumerate(hdul) if isinstance(hdu, fits.BinTableHDU | fits.TableHDU)),
            None,
        )


def _bare_name(name: str) -> str:
    """A column name without its unit, lower case: "Wavelength [nm]" → "wavelength"."""
    return re.sub(r"\s*[\[(].*[\])]\s*$", "", name).strip().lower()


def _unit_in_name(name: str) -> u.UnitBase | None:
    match = re.search(r"[\[(]\s*([^\])]+?)\s*[\])]\s*$", name)
    if not match:
        return None
    try:
        return u.Unit(match.group(1))
    except ValueError:
        return None
