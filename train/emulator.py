"""The Payne's APOGEE emulator: synthetic, labelled, normalised APOGEE-like spectra for tests.

A per-pixel network trained on real APOGEE spectra maps 5 labels to flux on The Payne's
7,214-pixel rest-frame grid: s = (labels − x_min)/(x_max − x_min) − 0.5,
flux_i = w1_i · sigmoid(W0_i s + b0_i) + b1_i. Everything it makes is flagged `synthetic`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stargon.core.spectrum import Spectrum, SpectrumReadError
from stargon.surveys.apogee import _payne_wavelength
from stargon.surveys.instruments import APOGEE

LABEL_NAMES = ("teff", "logg", "fe_h", "alpha_fe", "vmacro")
INSTRUMENT = "APOGEE (Payne emulator, synthetic)"


class PayneEmulator:
    """Load once, then make batches of spectra from label arrays (torch, any device)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        self.path = Path(path)
        try:
            with np.load(self.path) as archive:
                arrays = {k: archive[k] for k in archive.files}
            self.x_min = torch.as_tensor(arrays["x_min"], dtype=torch.float64, device=device)
            self.x_max = torch.as_tensor(arrays["x_max"], dtype=torch.float64, device=device)
            weights = ("w_array_0", "b_array_0", "w_array_1", "b_array_1")
            self._w0, self._b0, self._w1, self._b1 = (
                torch.as_tensor(arrays[k], dtype=torch.float64, device=device) for k in weights
            )
        except (OSError, KeyError, ValueError) as exc:
            raise SpectrumReadError(self.path, f"not The Payne's emulator npz ({exc})") from exc
        self.wave = _payne_wavelength(self.path)

    def flux(self, labels: torch.Tensor) -> torch.Tensor:
        """Normalised flux (B, 7214) for labels (B, 5) in LABEL_NAMES order."""
        scaled = (labels.to(self.x_min) - self.x_min) / (self.x_max - self.x_min) - 0.5
        hidden = torch.sigmoid(torch.einsum("pij,bj->bpi", self._w0, scaled) + self._b0)
        return (hidden * self._w1).sum(-1) + self._b1

    def sample_labels(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Labels drawn uniformly inside the emulator's training range."""
        u = torch.rand(n, len(LABEL_NAMES), generator=generator, dtype=torch.float64)
        return self.x_min.cpu() + u * (self.x_max - self.x_min).cpu()

    def spectra(
        self, labels: torch.Tensor, snr: float | None = None, seed: int = 0
    ) -> list[Spectrum]:
        """Spectrum records for `labels`, with Gaussian noise of σ = 1/snr when asked."""
        flux = self.flux(labels).cpu().numpy()
        rng = np.random.default_rng(seed)
        if snr is not None:
            flux = flux + rng.normal(0.0, 1.0 / snr, flux.shape)
        ivar = np.full(flux.shape[1], snr**2 if snr is not None else 1e8)
        segments = APOGEE.segments(self.wave)
        return [
            Spectrum(
                wave=self.wave,
                flux=row,
                ivar=ivar,
                instrument=INSTRUMENT,
                resolving_power=APOGEE.resolving_power,
                frame="rest",
                normalised=True,
                source=f"{self.path}[synthetic {i}]",
                star_id=f"payne-synthetic-{seed}-{i}",
                segments=segments,
                labels=dict(zip(LABEL_NAMES, map(float, label_row), strict=True)),
                synthetic=True,
            )
            for i, (row, label_row) in enumerate(zip(flux, labels.double().tolist(), strict=True))
        ]
