"""Latent coordinates people can read: decorrelated, unit variance, ordered by variance.

A GON's raw latents are correlated and unevenly scaled (their scale is whatever the decoder
made of the prior). The whitening is fitted to the training latents (scikit-learn PCA) and
travels in the checkpoint as tensors (`whitening.*`), so sliders, the latent map, the prior and
the report share one readable frame while the raw z stays available.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.decomposition import PCA


@dataclass
class Whitening:
    mean: np.ndarray  # (D,) mean raw latent
    components: np.ndarray  # (D, D) rows: principal directions, largest variance first
    scale: np.ndarray  # (D,) standard deviation along each direction

    @classmethod
    def fit(cls, latents: np.ndarray) -> Whitening:
        pca = PCA().fit(latents)
        scale = np.sqrt(np.maximum(pca.explained_variance_, 1e-30))
        return cls(pca.mean_, pca.components_, scale)

    @classmethod
    def identity(cls, dim: int) -> Whitening:
        return cls(np.zeros(dim), np.eye(dim), np.ones(dim))

    @property
    def matrix(self) -> np.ndarray:
        """∂z/∂w (D, D): raw latents = mean + matrix @ w."""
        return self.components.T * self.scale

    def whiten(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z) - self.mean) @ self.components.T / self.scale

    def unwhiten(self, w: np.ndarray) -> np.ndarray:
        return self.mean + (np.asarray(w) * self.scale) @ self.components

    def whiten_covariance(self, covariance: np.ndarray) -> np.ndarray:
        """A raw-latent covariance expressed in whitened coordinates."""
        inverse = np.linalg.inv(self.matrix)
        return inverse @ covariance @ inverse.T

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "whitening.mean": torch.as_tensor(self.mean),
            "whitening.components": torch.as_tensor(self.components),
            "whitening.scale": torch.as_tensor(self.scale),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], dim: int) -> Whitening:
        """The checkpoint's whitening, or the identity for a checkpoint without one."""
        if "whitening.mean" not in tensors:
            return cls.identity(dim)
        return cls(*(tensors[f"whitening.{k}"].double().cpu().numpy()
                     for k in ("mean", "components", "scale")))  # fmt: skip
