"""`stargon sample`: new spectra from the latent prior, on an instrument's pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from astropy.io import fits
from astropy.table import Table

from stargon import __version__
from stargon.model.gon import StarGON
from stargon.model.prior import LatentPrior
from stargon.model.release import Release
from stargon.surveys.instruments import Instrument, instrument


def sample_spectra(
    model: StarGON, prior: LatentPrior, inst: Instrument, n: int, v_kms: float = 0.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(latents (n, D), normalised flux (n, N)) drawn from the prior, seen by `inst`."""
    z = torch.as_tensor(prior.sample(n, seed), dtype=torch.float32)
    wave = inst.pixels()
    resolving_power = torch.as_tensor(inst.resolving_power_at(wave))
    with torch.no_grad():
        basis = model.observation_basis(torch.as_tensor(wave), v_kms, resolving_power)
        flux = model.observe(z, basis)
    return z.numpy(), flux.numpy()


def sample_to_file(
    n: int, instrument_name: str, checkpoint: Path | None, out: Path, v_kms: float, seed: int
) -> Path:
    release = Release.load(checkpoint)
    inst = instrument(instrument_name)
    folder, model, prior = release.folder, release.model, release.prior_for(inst.key)
    if prior is None:
        raise ValueError(f"{folder}: this checkpoint has no latent prior (release the run first)")
    z, flux = sample_spectra(model, prior, inst, n, v_kms, seed)
    if out.suffix.lower() == ".csv":
        columns = {"wavelength_vacuum_angstrom": inst.pixels()}
        columns |= {f"flux_{i}": row for i, row in enumerate(flux)}
        Table(columns).write(out, format="ascii.csv", overwrite=True)
        return out
    header = fits.Header()  # standard keywords and 8-character ones: no HIERARCH cards
    header["ORIGIN"] = (f"StarGON {__version__}", "software that made this file")
    header["OBJECT"] = ("synthetic", "StarGON latent-prior draw, not observed")
    header["INSTRUME"] = (inst.name, "pixels and resolution of this one")
    header["VRAD"] = (v_kms, "[km/s] radial velocity of the samples")
    header["MODEL"] = (folder.name, "StarGON checkpoint folder")
    wave = Table({"wavelength": inst.pixels()}, meta={"EXTNAME": "WAVE"})
    wave["wavelength"].unit = "Angstrom"
    hdus = [
        fits.PrimaryHDU(header=header),
        fits.ImageHDU(flux.astype(np.float32), name="FLUX"),
        fits.table_to_hdu(wave),
        fits.ImageHDU(z.astype(np.float32), name="LATENTS"),
    ]
    hdus[1].header["BUNIT"] = ("", "continuum-normalised flux")
    fits.HDUList(hdus).writeto(out, overwrite=True)
    return out
