"""`Fitter`: everything fitting needs from one model, made once — the basis pyramid, the template
bank, the settings — and the three things it does: find velocities, fit spectra (MAP v, z and
continuum), and ∂f/∂z. The explorer, `stargon fit`, the evaluation, packaging and both training
sources fit through one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from stargon.core.spectrum import Spectrum
from stargon.model.batch import PixelBatch, make_batch
from stargon.model.fit_config import FitConfig
from stargon.model.gon import StarGON
from stargon.model.refine import FitResult, refine, results
from stargon.model.release import Release
from stargon.model.velocity import find_velocities, template_bank


class Fitter:
    """Fits with one model. The template bank is the model's decoded `prototypes` (a release's
    prior means and survey medoids), or the z = 0 spectrum alone without them — a fit of an
    unusual star then starts from a worse velocity, so pass them when the model has them
    (`from_release` does)."""

    def __init__(
        self,
        model: StarGON,
        prototypes: torch.Tensor | None,
        device: str | torch.device = "cpu",
        config: FitConfig | None = None,
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.config = config or FitConfig()
        with torch.no_grad():
            self.pyramid = model.decoder.pyramid()
        self.templates = template_bank(model, prototypes)

    @classmethod
    def from_release(
        cls, release: Release, device: str | torch.device = "cpu", config: FitConfig | None = None
    ) -> Fitter:
        """The fitter of a released model, with its template bank."""
        return cls(release.model, release.prototypes, device, config)

    def velocities(self, spectra: Sequence[Spectrum] | PixelBatch) -> np.ndarray:
        """v (km/s) of each spectrum (in batches, as `fit`), or of each row of a batch, from
        the velocity search."""
        if isinstance(spectra, PixelBatch):
            with torch.no_grad():
                batch = spectra.to(self.device)
                return find_velocities(self.model, batch, self.pyramid, self.templates, self.config)
        found = np.zeros(len(spectra))
        for rows in self._batches(spectra):
            found[rows] = self.velocities(make_batch([spectra[i] for i in rows]))
        return found

    def fit(
        self,
        spectra: Sequence[Spectrum],
        fit_velocity: bool | None = None,
        velocities: Sequence[float] | None = None,
    ) -> list[FitResult]:
        """MAP (v, z, continuum) of each spectrum, in order. Spectra are fitted in batches of
        one instrument (similar lengths pad little) of at most `pixel_budget` pixels; a
        spectrum's result does not depend on its batch-mates. Rest-frame spectra keep v = 0
        unless `fit_velocity`. `velocities` (km/s, one per spectrum) holds each at that v
        instead: the best (z, continuum) at, say, a catalogue's velocity."""
        found: list[FitResult | None] = [None] * len(spectra)
        for rows in self._batches(spectra):
            chosen = [spectra[i] for i in rows]
            held = None if velocities is None else [velocities[i] for i in rows]
            for i, result in zip(rows, self.fit_batch(chosen, fit_velocity, held), strict=True):
                found[i] = result
        return found

    def fit_batch(
        self,
        spectra: Sequence[Spectrum],
        fit_velocity: bool | None = None,
        velocities: Sequence[float] | None = None,
    ) -> list[FitResult]:
        """`fit` of spectra as one padded batch, however many pixels they hold."""
        moving = np.array(
            [s.frame == "observed" if fit_velocity is None else fit_velocity for s in spectra]
        )
        batch = make_batch(spectra, used_columns_only=True, design_dtype=torch.float64)
        batch = batch.to(self.device)
        v0 = np.zeros(len(spectra))
        if velocities is not None:
            v0[:], moving[:] = velocities, False
        elif moving.any():
            rows = np.flatnonzero(moving)
            v0[rows] = self.velocities(batch.select(rows))
        v = torch.as_tensor(v0, dtype=batch.flux.dtype, device=self.device)
        moving_mask = torch.as_tensor(moving, device=self.device)
        z, v, covariance, linearised = refine(
            self.model, batch, self.pyramid, v, moving_mask, self.config
        )
        return results(self.model, spectra, linearised, z, v, covariance)

    def jacobian(
        self, z: torch.Tensor, basis: torch.Tensor, directions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """∂f/∂z (B, P, D) of the normalised model at latents z (B, D) on a basis (K+1, [B,] P),
        or along `directions` (D, M) only: the one derivative of a spectrum in its latents that
        fits, the explorer and the evaluation use (`BasisDecoder.decode_with_jacobian`, closed
        form)."""
        with torch.no_grad():
            return self.model.decoder.decode_with_jacobian(z, basis, directions)[1]

    def _batches(self, spectra: Sequence[Spectrum]) -> list[list[int]]:
        """Indices of the spectra in batches: one instrument each, in order of arrival, cut
        at `pixel_budget` pixels."""
        by_instrument: dict[str, list[int]] = defaultdict(list)
        for i, spectrum in enumerate(spectra):
            by_instrument[spectrum.instrument].append(i)
        batches = []
        for members in by_instrument.values():
            current, pixels = [], 0
            for i in members:
                size = spectra[i].n_pixels
                if current and pixels + size > self.config.pixel_budget:
                    batches.append(current)
                    current, pixels = [], 0
                current.append(i)
                pixels += size
            batches.append(current)
        return batches
