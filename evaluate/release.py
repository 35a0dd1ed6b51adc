"""Package a finished run as a `Release`: weights, latent prior, whitening, template bank, the
training stars (their latents and velocities), the resolution coverage and a model card.

A run trained from a data folder or from shards is packaged the same way: its spectra are
streamed once, `CHUNK` at a time — each star's velocity found by the final model (with a bank
of a few rest-frame training stars, as the training sources start theirs), its one-step latent
kept — so memory holds latents and star records, not spectra; the held-out metrics use the
held-out stars (at most `HELD_OUT_PER_SURVEY` a survey) and, for the PCA baseline, at most
`PCA_TRAIN_PER_SURVEY` training spectra a survey.
"""

from __future__ import annotations

import itertools
import json
import platform
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stargon.core.spectrum import Spectrum
from stargon.evaluate.holdout import evaluate_held_out, fit_held_out
from stargon.model.batch import make_batch
from stargon.model.checkpoint import load_checkpoint
from stargon.model.fitter import Fitter
from stargon.model.gon import StarGON
from stargon.model.outliers import OutlierReference
from stargon.model.prior import LatentPrior
from stargon.model.release import Release
from stargon.model.whitening import Whitening
from stargon.surveys.instruments import Instrument, drawable
from stargon.train.dataset import TrainingSet, load_training_set
from stargon.train.loop import TrainConfig
from stargon.train.stream import packed_spectra, prototype_spectra

CHUNK = 64
HELD_OUT_PER_SURVEY = 60
PCA_TRAIN_PER_SURVEY = 1000
VIEW_COVERAGE = 0.5  # share of an instrument's pixels a survey must span to shape its view
MIN_VIEW_STARS = 20


def release(
    run: str | Path, out: str | Path | None = None, evaluate: bool = True, step: int | None = None
) -> Path:
    """Package the run's latest checkpoint, or the one of `step` (a point of a learning curve:
    the model as it was then, before the end's learning-rate decay)."""
    run = Path(run)
    latest = json.loads((run / "latest.json").read_text())
    if step is not None:
        latest = {"step": step, "checkpoint": f"checkpoints/step-{step:07d}"}
        if not (run / latest["checkpoint"]).is_dir():
            raise FileNotFoundError(f"{run}: no checkpoint of step {step} ({latest['checkpoint']})")
    model, document, extra = load_checkpoint(run / latest["checkpoint"])
    config = TrainConfig.from_dict(document["card"]["train_config"])
    stars = RunStars(config)
    bank = make_batch(stars.bank(), n_pixels=2000)
    seen = stars.encode(model, Fitter(model, model.encode(bank)))
    real, train = ~seen.synthetic, ~seen.held_out
    latents = seen.latents[train & real]  # the prior and slider ranges describe real stars only
    prior = LatentPrior.fit(latents)
    whitening = Whitening.fit(latents)
    whitened = whitening.whiten(latents)
    surveys = np.array(seen.surveys)[train]
    medoids = survey_medoids(seen.latents[train], list(surveys))
    prototypes = torch.as_tensor(np.vstack([prior.means, medoids]), dtype=torch.float32)
    fitter = Fitter(model, prototypes)
    instruments, star_z, star_chi2 = fit_real_stars(fitter, stars)
    outliers = OutlierReference.fit(prior, instruments, star_z, star_chi2)
    scores = outliers.score(instruments, star_z, star_chi2)
    star_rows = seen.star_rows(stars.root)
    for k, row in enumerate(star_rows):
        row |= {"chi2_dof": float(star_chi2[k])} | scores.row(k)
    sample = seen.sample()
    fits = fit_held_out(fitter, sample, HELD_OUT_PER_SURVEY) if evaluate else {}
    metrics = evaluate_held_out(fitter, sample, fits=fits) if evaluate else {}
    card = {
        "description": "StarGON: a GON over a rest-frame continuous-wavelength decoder",
        "trained_steps": latest["step"],
        "train_config": document["card"]["train_config"],
        "data": seen.summary,
        "wavelength_coverage": seen.wavelength_coverage,
        "held_out_star_ids": sorted(seen.held_out_ids),
        "latent_percentiles": {
            str(q): np.percentile(latents, q, axis=0).tolist() for q in (1, 5, 50, 95, 99)
        },
        "whitened_percentiles": {
            str(q): np.percentile(whitened, q, axis=0).tolist() for q in (1, 5, 50, 95, 99)
        },
        "held_out_metrics": metrics,
        "reference_fits": reference_fits(sample, fits, stars.root),
        "outlier_reference": outliers.to_card(),
        "training_device": _device_name(config.device),
        "training_time_s": _training_time(run),
    }
    coverage = None
    if "coverage.covered" in extra:  # the resolution the training data reached
        coverage = tuple(extra[f"coverage.{k}"].double().numpy() for k in ("centres", "covered"))
    made = Release(
        model=model, prior=prior, whitening=whitening, prototypes=prototypes,
        star_latents=seen.latents[real], stars=star_rows, coverage=coverage,
        card=card, view_priors=view_priors(seen.latents[train], surveys, seen.wavelength_coverage),
    )  # fmt: skip
    return made.save(Path(out or run / "model"))


class RunStars:
    """A run's spectra as it was trained on them: a data folder read into memory, or shards
    streamed; each as (survey, held out, spectrum)."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.dataset: TrainingSet | None = None
        if not config.shards:
            self.dataset = load_training_set(
                config.data, config.surveys, config.held_out_fraction, synthetic=config.synthetic
            )
        self.root = Path(config.data) if config.data else None  # sources are kept relative to it

    def bank(self) -> list[Spectrum]:
        """The rest-frame training stars whose latents make the first velocity bank."""
        if self.dataset is not None:
            return self.dataset.bank_spectra()
        return prototype_spectra(self.config.shards)

    def every(self) -> Iterator[tuple[str, bool, Spectrum]]:
        if self.dataset is None:
            yield from packed_spectra(self.config.shards)
            return
        data = self.dataset
        yield from zip(data.surveys, map(bool, data.held_out), data.spectra, strict=True)

    def encode(self, model: StarGON, fitter: Fitter) -> Seen:
        """Every spectrum's velocity (observed frame: the fitter's search; rest frame: 0) and
        one-step latent (every valid pixel, up to 8,000 sampled), `CHUNK` at a time."""
        seen = Seen()
        stream = iter(self.every())
        with tqdm(desc="encoding", unit="spectra", leave=False) as bar:
            while chunk := list(itertools.islice(stream, CHUNK)):
                spectra = [spectrum for _, _, spectrum in chunk]
                velocities = np.zeros(len(spectra))
                moving = [k for k, s in enumerate(spectra) if s.frame == "observed"]
                velocities[moving] = fitter.velocities([spectra[k] for k in moving])
                seeds = range(len(seen.surveys), len(seen.surveys) + len(spectra))
                seen.add(chunk, velocities, one_step_latents(model, spectra, velocities, seeds))
                bar.update(len(chunk))
        return seen


class Seen:
    """What packaging keeps of every spectrum it streamed: its latent, velocity and record;
    and, for the held-out metrics, the held-out spectra and some training ones."""

    def __init__(self):
        self.surveys: list[str] = []
        self.records: list[dict] = []
        self.chunks: list[np.ndarray] = []
        self.kept: list[tuple[str, bool, Spectrum]] = []
        self.counts: dict[tuple[str, bool], int] = defaultdict(int)
        self.wavelength_coverage: dict[str, list[float]] = {}

    def add(self, chunk, velocities: np.ndarray, latents: np.ndarray) -> None:
        for (survey, held_out, spectrum), v in zip(chunk, velocities, strict=True):
            self.surveys.append(survey)
            self.records.append({"spectrum": _record(spectrum), "held_out": held_out,
                                 "v_kms": float(v), "synthetic": spectrum.synthetic})  # fmt: skip
            limit = HELD_OUT_PER_SURVEY if held_out else PCA_TRAIN_PER_SURVEY
            if self.counts[survey, held_out] < limit:
                self.kept.append((survey, held_out, spectrum))
            self.counts[survey, held_out] += 1
            lo, hi = self.wavelength_coverage.get(survey, [np.inf, -np.inf])
            self.wavelength_coverage[survey] = [min(lo, float(spectrum.wave[0])),
                                                max(hi, float(spectrum.wave[-1]))]  # fmt: skip
        self.chunks.append(latents)

    @property
    def latents(self) -> np.ndarray:
        return np.concatenate(self.chunks)

    @property
    def held_out(self) -> np.ndarray:
        return np.array([r["held_out"] for r in self.records], dtype=bool)

    @property
    def synthetic(self) -> np.ndarray:
        return np.array([r["synthetic"] for r in self.records], dtype=bool)

    @property
    def held_out_ids(self) -> set[str]:
        return {r["spectrum"]["star_id"] for r in self.records if r["held_out"]}

    @property
    def summary(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (survey, held_out), n in sorted(self.counts.items()):
            out.setdefault(survey, {"train": 0, "held_out": 0})[
                "held_out" if held_out else "train"
            ] = n
        return out

    def sample(self) -> TrainingSet:
        """The kept spectra as a training set: the held-out metrics' input."""
        surveys, held, spectra = zip(*self.kept, strict=True) if self.kept else ((), (), ())
        return TrainingSet(list(spectra), list(surveys), np.array(held, dtype=bool))

    def star_rows(self, root: Path | None) -> list[dict]:
        """The real spectra the model was made from (rows match `star_latents`): where to find
        each, its velocity and catalogue labels — the explorer's map of stars."""
        rows = []
        for survey, record in zip(self.surveys, self.records, strict=True):
            if record["synthetic"]:
                continue
            spectrum = record["spectrum"]
            rows.append({
                "survey": survey, "source": _relative(spectrum["source"], root),
                "star_id": spectrum["star_id"], "held_out": record["held_out"],
                "v_kms": record["v_kms"],
            } | spectrum["labels"])  # fmt: skip
        return rows


def _record(spectrum: Spectrum) -> dict:
    labels = {k: spectrum.labels[k] for k in ("teff", "logg", "fe_h") if k in spectrum.labels}
    return {"source": spectrum.source, "star_id": spectrum.star_id, "labels": labels}


def fit_real_stars(fitter: Fitter, stars: RunStars) -> tuple[list[str], np.ndarray, np.ndarray]:
    """MAP fits of every real spectrum, `CHUNK` at a time (rows of `Seen.star_rows`): each one's
    instrument, latent and χ²/dof — what the outlier score of a star is measured against."""
    instruments, latents, chi2 = [], [], []
    real = (spectrum for _, _, spectrum in stars.every() if not spectrum.synthetic)
    with tqdm(desc="fitting stars", unit="spectra", leave=False) as bar:
        while chunk := list(itertools.islice(real, CHUNK)):
            for spectrum, result in zip(chunk, fitter.fit(chunk), strict=True):
                instruments.append(spectrum.instrument)
                latents.append(result.z)
                chi2.append(result.chi2_dof)
            bar.update(len(chunk))
    return instruments, np.array(latents), np.array(chi2)


def one_step_latents(model: StarGON, spectra, velocities, seeds) -> np.ndarray:
    """One-step GON latents of spectra at their velocities (every valid pixel, up to 8,000
    drawn with each spectrum's seed)."""
    rngs = [np.random.default_rng(int(seed)) for seed in seeds]
    return model.encode(make_batch(spectra, v_kms=velocities, n_pixels=8000, rngs=rngs)).numpy()


def encode_all(model, dataset, velocities, indices, batch_size: int = CHUNK) -> np.ndarray:
    """`one_step_latents` of the given spectra of a training set (seeded by their index)."""
    out = []
    for start in tqdm(range(0, len(indices), batch_size), desc="encoding", leave=False):
        chunk = indices[start : start + batch_size]
        spectra = [dataset.spectra[i] for i in chunk]
        out.append(one_step_latents(model, spectra, velocities[chunk], chunk))
    return np.concatenate(out)


def _relative(source: str, data: Path | None) -> str:
    if data is None:
        return source
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


def view_priors(
    latents: np.ndarray, surveys: np.ndarray, coverage: dict[str, list[float]]
) -> dict[str, LatentPrior]:
    """Per drawable instrument: the density over the training latents (real or synthetic) of
    the surveys whose spectra span at least `VIEW_COVERAGE` of its pixels, where there are
    `MIN_VIEW_STARS` of them (model/prior.py says why)."""
    priors = {}
    for key, item in drawable().items():
        rows = np.isin(surveys, view_surveys(item, coverage))
        if rows.sum() >= MIN_VIEW_STARS:
            priors[key] = LatentPrior.fit(latents[rows])
    return priors


def view_surveys(instrument: Instrument, coverage: dict[str, list[float]]) -> list[str]:
    """The surveys whose spectra (their (min, max) rest wavelengths) span at least
    `VIEW_COVERAGE` of the instrument's pixels: those whose stars shape its view's density."""
    pixels = instrument.pixels()
    return [survey for survey, (lo, hi) in coverage.items()
            if ((pixels >= lo) & (pixels <= hi)).mean() >= VIEW_COVERAGE]  # fmt: skip


def survey_medoids(latents: np.ndarray, surveys: list[str]) -> np.ndarray:
    """For each survey, the latent of its spectrum closest to the survey's mean latent: the
    template bank must hold a star from every wavelength range, not only the common ones."""
    names = np.array(surveys)
    rows = []
    for survey in sorted(set(surveys)):
        members = latents[names == survey]
        rows.append(members[np.argmin(((members - members.mean(0)) ** 2).sum(1))])
    return np.array(rows)


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
