"""A density over training latents, so that the model can *sample* realistic new spectra.

A Gaussian mixture (scikit-learn) is fitted to the GON latents of training spectra; its
parameters travel in the checkpoint as tensors (`prior.*`), so sampling needs no pickle.

A latent says what the decoder makes of a star only at the wavelengths its training spectra
covered: an optical star's latent leaves the H band unconstrained. So a release keeps, beside
the density over all real training stars, one per instrument over the training spectra (real or
synthetic) that cover that instrument's wavelengths (`prior.view.<instrument>.*`): a random star
seen by APOGEE is drawn from stars the model has seen in the H band.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.mixture import GaussianMixture


@dataclass
class LatentPrior:
    weights: np.ndarray  # (M,)
    means: np.ndarray  # (M, D)
    covariances: np.ndarray  # (M, D, D)

    @classmethod
    def fit(cls, latents: np.ndarray, n_components: int = 8, seed: int = 0) -> LatentPrior:
        n_components = max(1, min(n_components, len(latents) // 10))
        # A covariance floor relative to the latents' own scale keeps near-duplicates stable.
        floor = 1e-4 * float(np.mean(np.var(latents, axis=0))) + 1e-12
        gmm = GaussianMixture(
            n_components, covariance_type="full", reg_covar=floor, random_state=seed
        )
        gmm.fit(latents)
        return cls(gmm.weights_, gmm.means_, gmm.covariances_)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        component = rng.choice(len(self.weights), size=n, p=self.weights / self.weights.sum())
        out = np.empty((n, self.means.shape[1]))
        for k in np.unique(component):
            rows = component == k
            covariance = 0.5 * (self.covariances[k] + self.covariances[k].T)
            out[rows] = rng.multivariate_normal(
                self.means[k], covariance, rows.sum(), check_valid="ignore", method="eigh"
            )
        return out

    def to_tensors(self, prefix: str = "prior") -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.weights": torch.as_tensor(self.weights),
            f"{prefix}.means": torch.as_tensor(self.means),
            f"{prefix}.covariances": torch.as_tensor(self.covariances),
        }

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], prefix: str = "prior"
    ) -> LatentPrior | None:
        if f"{prefix}.means" not in tensors:
            return None
        return cls(*(tensors[f"{prefix}.{name}"].double().cpu().numpy()
                     for name in ("weights", "means", "covariances")))  # fmt: skip
