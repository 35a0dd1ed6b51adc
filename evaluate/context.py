"""Everything the report's sections share: the model, the data with the recorded split, and
every spectrum's radial velocity and one-step GON latent."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stargon.core.spectrum import Spectrum
from stargon.evaluate.release import encode_all
from stargon.model.batch import make_batch
from stargon.model.fitter import Fitter
from stargon.model.gon import StarGON
from stargon.model.prior import LatentPrior
from stargon.model.refine import FitResult
from stargon.model.release import Release
from stargon.model.whitening import Whitening
from stargon.train.dataset import SYNTHETIC_SURVEY, TrainingSet, load_training_set


@dataclass
class Evaluation:
    release: Release
    fitter: Fitter  # the release's, with its template bank
    dataset: TrainingSet
    velocities: np.ndarray  # km/s per spectrum; 0 for rest-frame ones
    latents: np.ndarray  # (N, D) one-step GON latents (raw)
    _fits: dict[int, FitResult] = field(default_factory=dict, repr=False)

    @property
    def checkpoint(self) -> Path:
        return self.release.folder

    @property
    def model(self) -> StarGON:
        return self.release.model

    @property
    def card(self) -> dict:
        return self.release.card

    @property
    def prior(self) -> LatentPrior | None:
        return self.release.prior

    @property
    def whitening(self) -> Whitening:
        """The release's readable frame (the identity for an old one)."""
        return self.release.whitening

    @property
    def whitened(self) -> np.ndarray:
        """The one-step latents in whitened coordinates (unit variance over training stars)."""
        return self.whitening.whiten(self.latents)

    def members(self, survey: str, held_out: bool | None = None) -> np.ndarray:
        names = np.array(self.dataset.surveys)
        keep = names == survey
        if held_out is not None:
            keep &= self.dataset.held_out == held_out
        return np.flatnonzero(keep)

    @property
    def survey_names(self) -> list[str]:
        return sorted(set(self.dataset.surveys))

    def fit(self, indices) -> list[FitResult]:
        """Full fits (v, latents, continuum) of dataset spectra, each fitted once per
        evaluation however many sections ask for it (the held-out fits, realism, repeat visits
        share stars); the ones not yet fitted go to `Fitter.fit` together, in batches."""
        todo = [int(i) for i in dict.fromkeys(indices) if int(i) not in self._fits]
        if todo:
            results = self.fitter.fit([self.dataset.spectra[i] for i in todo])
            self._fits.update(zip(todo, results, strict=True))
        return [self._fits[int(i)] for i in indices]

    def decode(self, spectrum: Spectrum, v_kms: float, z: torch.Tensor) -> np.ndarray:
        """Latents z (M, D) decoded as normalised flux at the spectrum's valid pixels, R and
        velocity: (M, n_valid)."""
        return self.decode_many([spectrum], [v_kms], z[None])[0]

    def decode_many(
        self, spectra: list[Spectrum], v_kms: list[float], z: torch.Tensor, chunk: int = 32
    ) -> list[np.ndarray]:
        """Latents z (N, M, D), M for each of N spectra, decoded as normalised flux at each
        spectrum's valid pixels, R and velocity: N arrays (M, n_valid). One basis read per
        chunk of spectra, not per spectrum."""
        out = []
        for start in range(0, len(spectra), chunk):
            group = spectra[start : start + chunk]
            batch = make_batch(group, v_kms[start : start + chunk], mask_atmosphere=False)
            with torch.no_grad():
                basis = self.model.basis(batch, self.fitter.pyramid)
                decoded = torch.stack(
                    [self.model.observe(z[start : start + chunk, m], basis)
                     for m in range(z.shape[1])], dim=1,
                ).double().numpy()  # fmt: skip
            out += [rows[:, : s.valid.sum()] for rows, s in zip(decoded, group, strict=True)]
        return out


def prepare(checkpoint: str | Path | None, data: str | Path, surveys: list[str] | None = None):
    """Load the checkpoint and the data it was trained on, restoring its held-out split.
    `surveys` narrows the data to those folders (e.g. for a quick report)."""
    release = Release.load(checkpoint)
    card = release.card
    train_config = card.get("train_config", {})
    synthetic = train_config.get("synthetic", 0)
    if surveys is not None:  # only the folders named; the synthetic survey only if named too
        synthetic = synthetic if SYNTHETIC_SURVEY in surveys else 0
        surveys = [s for s in surveys if s != SYNTHETIC_SURVEY] or None
    dataset = load_training_set(
        data,
        surveys or train_config.get("surveys"),
        train_config.get("held_out_fraction", 0.1),
        synthetic=synthetic,
    )
    if "held_out_star_ids" in card:
        held = release.held_out_star_ids
        dataset.held_out = np.array([s.star_id in held for s in dataset.spectra], dtype=bool)
    fitter = Fitter.from_release(release)
    velocities = np.zeros(len(dataset.spectra))
    observed = [i for i, s in enumerate(dataset.spectra) if s.frame == "observed"]
    velocities[observed] = fitter.velocities([dataset.spectra[i] for i in observed])
    latents = encode_all(release.model, dataset, velocities, np.arange(len(dataset.spectra)))
    return Evaluation(release, fitter, dataset, velocities, latents)
