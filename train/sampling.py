"""`stargon sample`: new spectra from the latent prior, on an instrument's pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from astropy.io import fits
from astropy.table import Table

from stargon import __version__
from stargon.model.checkpoint import load_checkpoint, resolve_checkpoint
from stargon.model.gon import StarGON
from stargon.model.instruments import Instrument, instrument
from stargon.model.prior import LatentPrior


def sample_spectra(
    model: StarGON, prior: LatentPrior, inst: Instrument, n: int, v_kms: float = 0.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(latents (n, D), normalised flux (n, N)) drawn from the prior, seen by `inst`."""
    z = torch.as_tensor(prior.sample(n, seed), dtype=torch.float32)
    wave = torch.as_tensor(inst.wave, dtype=torch.float32)
    with torch.no_grad():
        basis = model.decoder.pixel_basis(wave, v_kms, torch.as_tensor(inst.resolving_power))
        flux = model.decoder.decode(z, basis)
    return z.numpy(), flux.numpy()


def sample_to_file(
    n: int, instrument_name: str, checkpoint: Path | None, out: Path, v_kms: float, seed: int
) -> Path:
    folder = resolve_checkpoint(checkpoint)
    model, _, extra = load_checkpoint(folder)
    prior = LatentPrior.from_tensors(extra)
    if prior is None:
        raise ValueError(f"{folder}: this checkpoint has no latent prior (release the run first)")
    inst = instrument(instrument_name)
    z, flux = sample_spectra(model, prior, inst, n, v_kms, seed)
    if out.suffix.lower() == ".csv":
        columns = {"wavelength_vacuum_angstrom": inst.wave}
        columns |= {f"flux_{i}": row for i, row in enumerate(flux)}
        Table(columns).write(out, format="ascii.csv", overwrite=True)
        return out
    header = fits.Header()
    header["INSTRUME"] = (inst.name, "pixels and resolution of this instrument")
    header["RV"] = (v_kms, "radial velocity of the samples, km/s")
    header["SYNTHETIC"] = (True, "drawn from the StarGON latent prior")
    header["MODEL"] = (str(folder), "StarGON checkpoint")
    header["STARGON"] = __version__
    wave = Table({"wavelength": inst.wave}, meta={"EXTNAME": "WAVE"})
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
