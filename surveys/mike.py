"""Magellan/MIKE merged, normalised orders (1-D FITS, air, rest frame)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from stargon.core.spectrum import Spectrum, noise_ivar
from stargon.surveys.common import (
    clean_star_name,
    image_data,
    linear_axis,
)
from stargon.surveys.instruments import MIKE
from stargon.surveys.registry import Probe, open_fits, register


def _claims_mike(probe: Probe) -> bool:
    in_mike_folder = any(part.lower() == "mike" for part in probe.path.parent.parts)
    instrument = "MIKE" in str(probe.header.get("INSTRUME", "")).upper()
    one_d = probe.header.get("NAXIS") == 1 and "CRVAL1" in probe.header
    return probe.kind == "fits" and one_d and (instrument or in_mike_folder)


@register("mike", _claims_mike)
def read_mike(path: Path) -> Iterator[Spectrum]:
    """Merged, normalised MIKE orders. Air wavelengths in the rest frame: Hα sits at 6562.8 Å
    and Na D2 at 5889.95 Å in every file here. No errors: ivar from DER_SNR."""
    with open_fits(path) as hdul:
        flux = image_data(hdul, 0, path, ndim=1)
        header = hdul[0].header.copy()
    wave = MIKE.to_vacuum(linear_axis(header, flux.size, path))
    name = header.get("OBJECT") or path.stem
    yield Spectrum(
        wave=wave,
        flux=flux,
        ivar=noise_ivar(flux),
        instrument=MIKE.name,
        resolving_power=MIKE.resolving_power,
        frame="rest",
        normalised=True,
        source=str(path),
        star_id=clean_star_name(str(name)),
        has_errors=False,
    )
