"""`Release`: what a trained model ships, as one typed record, written and read here alone.

A release folder is a checkpoint (`model/checkpoint.py`: safetensors + a JSON card, written
atomically) whose tensors hold the weights, the latent density, the whitening, the template
bank and the training stars' latents, and whose card holds the rest: the training stars (where
each is, its velocity and labels, whether it was held out) and the resolution coverage the
training data reached. Folders released before this record load as they are (their card has
the same keys; a missing coverage is None).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stargon.model.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from stargon.model.directions import LabelDirections
from stargon.model.gon import StarGON
from stargon.model.outliers import OutlierReference
from stargon.model.prior import LatentPrior
from stargon.model.whitening import Whitening

VIEW_PRIOR = "prior.view."


@dataclass
class Release:
    model: StarGON
    prior: LatentPrior | None  # the latent density over real training stars
    whitening: Whitening  # the readable frame of the latents (identity for old folders)
    prototypes: torch.Tensor | None  # (M, D) the template bank's latents
    star_latents: np.ndarray  # (N, D) one-step latents of the real stars, rows of `stars`
    stars: list[dict]  # per real star: survey, source, star_id, held_out, v_kms, labels
    coverage: tuple[np.ndarray, np.ndarray] | None = None  # (λ centres, R reached there)
    card: dict = field(default_factory=dict)  # description, metrics, training record, …
    folder: Path | None = None
    view_priors: dict[str, LatentPrior] = field(default_factory=dict)  # per instrument key

    def prior_for(self, instrument_key: str) -> LatentPrior | None:
        """The density to draw a star seen by this instrument from: over the training spectra
        that cover its wavelengths, or over all real stars where there is none (model/prior)."""
        return self.view_priors.get(instrument_key, self.prior)

    @property
    def velocities(self) -> np.ndarray:
        """The training stars' radial velocities (km/s), rows of `stars`."""
        return np.array([star["v_kms"] for star in self.stars], dtype=float)

    def label_directions(self) -> LabelDirections:
        """Teff, log g, [Fe/H] directions in the whitened latent space, from the labelled real
        training stars (3,500–8,000 K) the release carries: where to move a latent to make a
        star hotter, of lower gravity or more metal-rich (model/directions)."""
        training = [not star["held_out"] for star in self.stars]
        stars = [star for star, keep in zip(self.stars, training, strict=True) if keep]
        whitened = self.whitening.whiten(self.star_latents[np.array(training, dtype=bool)])
        return LabelDirections.of_stars(whitened, stars)

    @property
    def outliers(self) -> OutlierReference | None:
        """What a fitted star's outlier score is measured against (None for releases made
        before the score existed)."""
        return OutlierReference.from_card(self.prior, self.card)

    @property
    def held_out_star_ids(self) -> set[str]:
        return set(self.card.get("held_out_star_ids", []))

    @classmethod
    def load(cls, folder: str | Path | None = None, device: str | torch.device = "cpu") -> Release:
        """A release folder (None: the embedded default model)."""
        folder = resolve_checkpoint(folder)
        model, document, extra = load_checkpoint(folder, device)
        card = document.get("card", {})
        dim = model.config.latent_dim
        latents = extra.get("star_latents", torch.zeros(0, dim)).double().cpu().numpy()
        coverage = None
        if "coverage.centres" in extra:
            coverage = tuple(extra[f"coverage.{k}"].double().cpu().numpy()
                             for k in ("centres", "covered"))  # fmt: skip
        return cls(
            model=model.eval(),
            prior=LatentPrior.from_tensors(extra),
            whitening=Whitening.from_tensors(extra, dim),
            prototypes=extra.get("prototypes"),
            star_latents=latents,
            stars=card.get("stars", []),
            coverage=coverage,
            card=card,
            folder=folder,
            view_priors={
                key.split(".")[2]: LatentPrior.from_tensors(extra, key.rsplit(".", 1)[0])
                for key in extra
                if key.startswith(VIEW_PRIOR) and key.endswith(".means")
            },
        )

    def save(self, folder: str | Path) -> Path:
        """Write the release to `folder`, atomically."""
        tensors = self.whitening.to_tensors() | {
            "star_latents": torch.as_tensor(self.star_latents, dtype=torch.float32)
        }
        if self.prior is not None:
            tensors |= self.prior.to_tensors()
        for key, prior in self.view_priors.items():
            tensors |= prior.to_tensors(f"{VIEW_PRIOR}{key}")
        if self.prototypes is not None:
            tensors["prototypes"] = self.prototypes
        if self.coverage is not None:
            tensors["coverage.centres"], tensors["coverage.covered"] = (
                torch.as_tensor(np.asarray(values)) for values in self.coverage
            )
        card = self.card | {"stars": self.stars}
        self.folder = save_checkpoint(folder, self.model, card=card, extra_tensors=tensors)
        return self.folder
