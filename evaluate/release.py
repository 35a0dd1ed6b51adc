"""Package a finished run as a model folder: weights, latent prior, template bank, model card."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stargon.evaluate.holdout import evaluate_held_out, fit_held_out
from stargon.model.batch import make_batch
from stargon.model.checkpoint import load_checkpoint, save_checkpoint
from stargon.model.fitter import Fitter
from stargon.model.prior import LatentPrior
from stargon.model.whitening import Whitening
from stargon.train.dataset import load_training_set
from stargon.train.loop import TrainConfig


def release(run: str | Path, out: str | Path | None = None, evaluate: bool = True) -> Path:
    run = Path(run)
    latest = json.loads((run / "latest.json").read_text())
    model, document, extra = load_checkpoint(run / latest["checkpoint"])
    config = TrainConfig.from_dict(document["card"]["train_config"])
    if config.shards:
        raise ValueError(
            f"{run}: trained from shards; packaging reads a data folder held in memory and does"
            " not stream shards yet"
        )
    dataset = load_training_set(
        config.data, config.surveys, config.held_out_fraction, synthetic=config.synthetic
    )
    velocities = extra["source.velocities"].numpy()
    every = encode_all(model, dataset, velocities, np.arange(len(dataset.spectra)))
    real = np.array([not s.synthetic for s in dataset.spectra])
    train = ~dataset.held_out
    latents = every[train & real]  # the prior and slider ranges describe real stars only
    prior = LatentPrior.fit(latents)
    whitening = Whitening.fit(latents)
    whitened = whitening.whiten(latents)
    medoids = survey_medoids(every[train], [dataset.surveys[i] for i in np.flatnonzero(train)])
    prototypes = torch.as_tensor(np.vstack([prior.means, medoids]), dtype=torch.float32)
    fitter = Fitter(model, prototypes)
    fits = fit_held_out(fitter, dataset) if evaluate else {}
    metrics = evaluate_held_out(fitter, dataset, fits=fits) if evaluate else {}
    card = {
        "description": "StarGON: a GON over a rest-frame continuous-wavelength decoder",
        "trained_steps": latest["step"],
        "train_config": document["card"]["train_config"],
        "data": dataset.summary(),
        "wavelength_coverage": _coverage(dataset),
        "held_out_star_ids": sorted(
            {s.star_id for s, h in zip(dataset.spectra, dataset.held_out, strict=True) if h}
        ),
        "latent_percentiles": {
            str(q): np.percentile(latents, q, axis=0).tolist() for q in (1, 5, 50, 95, 99)
        },
        "whitened_percentiles": {
            str(q): np.percentile(whitened, q, axis=0).tolist() for q in (1, 5, 50, 95, 99)
        },
        "held_out_metrics": metrics,
        "reference_fits": reference_fits(dataset, fits, Path(config.data)),
        "stars": star_table(dataset, velocities, Path(config.data)),
        "training_device": _device_name(config.device),
        "training_time_s": _training_time(run),
    }
    tensors = (
        prior.to_tensors()
        | whitening.to_tensors()
        | {
            "prototypes": prototypes,
            "star_latents": torch.as_tensor(every[real], dtype=torch.float32),
        }
    )
    return save_checkpoint(Path(out or run / "model"), model, card=card, extra_tensors=tensors)


def encode_all(model, dataset, velocities, indices, batch_size: int = 64) -> np.ndarray:
    """One-step GON latents of the given spectra (every valid pixel, up to 8,000 sampled)."""
    out = []
    for start in tqdm(range(0, len(indices), batch_size), desc="encoding", leave=False):
        chunk = indices[start : start + batch_size]
        spectra = [dataset.spectra[i] for i in chunk]
        rngs = [np.random.default_rng(int(i)) for i in chunk]
        batch = make_batch(spectra, v_kms=velocities[chunk], n_pixels=8000, rngs=rngs)
        out.append(model.encode(batch).numpy())
    return np.concatenate(out)


def star_table(dataset, velocities, data: Path) -> list[dict]:
    """The real spectra the model was made from (rows match the `star_latents` tensor): where
    to find each, its velocity and catalogue labels — the explorer's map of stars."""
    rows = []
    for i, spectrum in enumerate(dataset.spectra):
        if spectrum.synthetic:
            continue
        labels = {k: spectrum.labels[k] for k in ("teff", "logg", "fe_h") if k in spectrum.labels}
        rows.append({
            "survey": dataset.surveys[i],
            "source": _relative(spectrum.source, data),
            "star_id": spectrum.star_id,
            "held_out": bool(dataset.held_out[i]),
            "v_kms": float(velocities[i]),
        } | labels)  # fmt: skip
    return rows


def _relative(source: str, data: Path) -> str:
    try:
        return str(Path(source).resolve().relative_to(data.resolve()))
    except ValueError:
        return source


def reference_fits(dataset, fits, data: Path, per_survey: int = 2) -> list[dict]:
    """A few held-out real spectra and their fitted χ²/dof, for checking a reloaded model."""
    rows = []
    for survey, results in fits.items():
        for i, result in results[:per_survey]:
            spectrum = dataset.spectra[i]
            if spectrum.synthetic:
                continue
            rows.append({
                "survey": survey,
                "source": _relative(spectrum.source, data),
                "star_id": spectrum.star_id,
                "chi2_dof": result.chi2_dof,
                "rv_kms": result.v_kms,
            })  # fmt: skip
    return rows


def survey_medoids(latents: np.ndarray, surveys: list[str]) -> np.ndarray:
    """For each survey, the latent of its spectrum closest to the survey's mean latent: the
    template bank must hold a star from every wavelength range, not only the common ones."""
    names = np.array(surveys)
    rows = []
    for survey in sorted(set(surveys)):
        members = latents[names == survey]
        rows.append(members[np.argmin(((members - members.mean(0)) ** 2).sum(1))])
    return np.array(rows)


def _coverage(dataset) -> dict[str, list[float]]:
    coverage: dict[str, list[float]] = {}
    for survey, spectrum in zip(dataset.surveys, dataset.spectra, strict=True):
        lo, hi = coverage.get(survey, [np.inf, -np.inf])
        coverage[survey] = [min(lo, float(spectrum.wave[0])), max(hi, float(spectrum.wave[-1]))]
    return coverage


def _device_name(request: str) -> str:
    if torch.cuda.is_available() and request != "cpu":
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _training_time(run: Path) -> float | None:
    path = run / "metrics.jsonl"
    if not path.exists():
        return None
    times = [json.loads(line)["time"] for line in path.read_text().splitlines()]
    return float(times[-1] - times[0]) if len(times) > 1 else None
