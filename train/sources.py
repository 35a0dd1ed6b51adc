"""Where a training run's spectra come from: a data folder read into memory, or packed shards
streamed (`--shards`). Both hand the loop each step's spectra with their radial velocities and
ids (the ids seed the pixel draws), a fixed held-out sample, the spectra for the resolution
coverage, and what a checkpoint must hold to resume exactly."""

from __future__ import annotations

import copy
import ctypes
import functools
import os
import signal
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from stargon.core.spectrum import Spectrum
from stargon.model.batch import make_batch
from stargon.model.fitter import Fitter
from stargon.model.gon import StarGON
from stargon.train import distributed
from stargon.train.coverage import CoverageCounter, resolution_coverage
from stargon.train.dataset import load_training_set
from stargon.train.stream import (
    StepBatches,
    TrainingStream,
    held_out_sample,
    prototype_spectra,
    training_spectra,
)

Step = tuple[list[Spectrum], np.ndarray, np.ndarray]  # spectra, v (km/s), ids


def _refresh_due(config, step: int) -> bool:
    return step >= config.warmup_steps and (step - config.warmup_steps) % config.rv_every == 0


class MemorySource:
    """Every spectrum of a data folder in memory (every rank): batches drawn by index, the
    velocities of all observed-frame spectra refreshed every `rv_every` steps, spread over
    the ranks."""

    def __init__(self, config, context, dataset=None):
        self.config, self.context = config, context
        self.dataset = dataset or load_training_set(
            config.data, config.surveys, config.held_out_fraction,
            progress=context.is_main, synthetic=config.synthetic,
        )  # fmt: skip
        self.velocities = np.zeros(len(self.dataset.spectra))
        self._velocity_shift: dict[str, float] = {}
        self.train_rest = self.dataset.indices(held_out=False, frame="rest")
        self.train_all = self.dataset.indices(held_out=False)
        pool = self.dataset.indices(held_out=True)
        rng = np.random.default_rng([config.seed, 7])
        chosen = rng.choice(pool, min(config.held_out_spectra, pool.size), replace=False)
        self.watched = np.sort(chosen)

    def summary(self) -> dict:
        return self.dataset.summary()

    def split_record(self) -> dict:
        data = self.dataset
        held = sorted({s.star_id for s, h in zip(data.spectra, data.held_out, strict=True) if h})
        return {"held_out_star_ids": held, "per_survey": data.summary(),
                "failures": data.failures}  # fmt: skip

    def coverage(self) -> tuple[np.ndarray, np.ndarray]:
        """The resolution coverage of the training spectra (every rank holds them all)."""
        spectra = [self.dataset.spectra[i] for i in self.train_all]
        return resolution_coverage(spectra, self.config.model, self.config.coverage_count)

    def start(self, step: int) -> None:
        """Nothing to open: batches are drawn by index."""

    def step(self, step: int, model: StarGON) -> Step:
        config = self.config
        if _refresh_due(config, step):
            self._refresh_velocities(model)
        pool = self.train_rest if step < config.warmup_steps else self.train_all
        chosen = self._global_batch(step, pool)
        mine = np.array_split(chosen, self.context.world_size)[self.context.rank]
        return [self.dataset.spectra[i] for i in mine], self.velocities[mine], mine

    def residual_sample(self, model: StarGON, size: int) -> tuple[list[Spectrum], np.ndarray]:
        """`size` training spectra drawn as a batch is (by survey balance), with the model's
        velocities: whose residuals start a grown model's new functions."""
        chosen = self._draw(np.random.default_rng([self.config.seed, 11]), self.train_all, size)
        spectra = [self.dataset.spectra[i] for i in chosen]
        observed = [k for k, s in enumerate(spectra) if s.frame == "observed"]
        velocities = np.zeros(len(spectra))
        if observed:  # rest-frame spectra stay at 0
            found = self._fitter(model).velocities([spectra[k] for k in observed])
            velocities[observed] = found
        return spectra, velocities

    def held_out(self, model: StarGON, rest_only: bool) -> Step:
        chosen = self.watched
        if rest_only:
            spectra = self.dataset.spectra
            chosen = np.array([i for i in chosen if spectra[i].frame == "rest"], dtype=int)
        return [self.dataset.spectra[i] for i in chosen], self.velocities[chosen], chosen

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        return {"velocities": torch.as_tensor(self.velocities)}, {}

    def restore(self, tensors: dict[str, torch.Tensor], record: dict) -> None:
        self.velocities = tensors["velocities"].cpu().numpy()

    def _global_batch(self, step: int, pool: np.ndarray) -> np.ndarray:
        """The step's spectra. Each survey gets a share ∝ n^balance of the batches, so MILES's
        thousand stars do not drown the four APOGEE ones (balance 1: every spectrum alike)."""
        rng = np.random.default_rng([self.config.seed, step])
        return self._draw(rng, pool, self.config.batch_size)

    def _draw(self, rng: np.random.Generator, pool: np.ndarray, size: int) -> np.ndarray:
        names = np.array(self.dataset.surveys)[pool]
        _, inverse, counts = np.unique(names, return_inverse=True, return_counts=True)
        weights = counts[inverse] ** (self.config.survey_balance - 1.0)
        chosen = rng.choice(pool, size, replace=pool.size < size, p=weights / weights.sum())
        return np.sort(chosen)

    def _refresh_velocities(self, model: StarGON) -> None:
        """Radial velocities of observed-frame spectra from the current model: each rank fits
        its share (one spectrum at a time, so a velocity never depends on how the work was
        split), and one all-reduce (sum over disjoint shares) gives every rank all of them."""
        context, spectra = self.context, self.dataset.spectra
        observed = np.array([i for i, s in enumerate(spectra) if s.frame == "observed"], int)
        mine = np.array_split(observed, context.world_size)[context.rank]
        fitter = self._fitter(model)
        estimates = torch.zeros(len(self.velocities), dtype=torch.float64)
        for i in tqdm(mine, desc="radial velocities", leave=False, disable=not context.is_main):
            estimates[i] = float(fitter.velocities(make_batch([spectra[i]]))[0])
        estimates = distributed.sum_over_ranks(estimates.to(context.device), context).cpu()
        previous, self.velocities = self.velocities, self.velocities.copy()
        self.velocities[observed] = estimates.numpy()[observed]
        if np.any(previous[observed]):  # not the first estimate
            surveys = np.array(self.dataset.surveys)[observed]
            change = self.velocities[observed] - previous[observed]
            self._velocity_shift = {
                name: float(np.median(change[surveys == name])) for name in np.unique(surveys)
            }

    def pop_velocity_shift(self) -> dict[str, float]:
        """Per survey, the median change (km/s) of its velocities at the last re-estimate, once:
        a frame that keeps moving one way drifts (each model learns the spectra at the
        velocities the one before it found), which the metrics should show."""
        shift, self._velocity_shift = self._velocity_shift, {}
        return shift

    def _fitter(self, model: StarGON) -> Fitter:
        """The model's velocity search, with the training set's bank as its templates."""
        return Fitter(model, self._prototypes(model), self.context.device)

    def _prototypes(self, model: StarGON) -> torch.Tensor:
        """Latents of the training set's bank spectra (`TrainingSet.bank_spectra`)."""
        spectra = self.dataset.bank_spectra()
        return model.encode(make_batch(spectra, n_pixels=2000).to(self.context.device))


def _die_with(trainer: int, worker_id: int) -> None:
    """Make a reader process die with its trainer. Killed with -9, a trainer cannot stop its
    reader, and the reader's own check of its parent only leads it to exit — where it hangs
    for ever, writing read-ahead batches into a pipe that no process drains (it holds the read
    end itself). On Linux the kernel kills it when the trainer dies (PR_SET_PDEATHSIG)."""
    if sys.platform != "linux":
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != trainer:  # the trainer died before the line above
        os._exit(1)


class StreamSource:
    """Spectra streamed from shards (`train.stream`), read ahead by a DataLoader worker. A
    spectrum's velocity is found when it is first drawn in a period of `rv_every` steps, by
    the model as it was when the period began (a copy kept, and checkpointed): so it does not
    depend on when in the period it is drawn, on which rank, or on a resume. Found velocities
    are kept for the rest of the period, per lane; memory ∝ rv_every × batch, not survey size."""

    def __init__(self, config, context):
        if config.loader_workers > 1:  # each would read (and hand over) every step's batch
            raise ValueError("--loader-workers: 0 or 1 when streaming shards")
        self.config, self.context = config, context
        self.stream = TrainingStream(
            config.shards, config.batch_size, config.stream_lanes, config.seed,
            config.survey_balance, config.warmup_steps, context.rank, context.world_size,
        )  # fmt: skip
        self.cursor: dict[str, list[int]] = self.stream.state()
        self.watched: list[Spectrum] | None = None  # read when first asked (rank 0 only)
        self.found: dict[str, dict[int, float]] = {}  # per lane: row id → v, this period
        self.velocity_model: StarGON | None = None
        self._fitter: Fitter | None = None  # the velocity model's, with its template bank

    def summary(self) -> dict:
        return self.stream.counts

    def split_record(self) -> dict:
        return {"shards": str(self.config.shards), "per_survey": self.stream.counts}

    def coverage(self) -> tuple[np.ndarray, np.ndarray]:
        """The resolution coverage of every training spectrum: each rank counts the shards
        rank, rank + W, … and the counts are merged (one pass over the data, split W ways)."""
        config, context = self.config, self.context
        counter = CoverageCounter(config.model, config.coverage_count)
        shards = range(context.rank, self.stream.n_shards, context.world_size)
        for spectrum in tqdm(training_spectra(config.shards, shards=shards), desc="coverage",
                             disable=not context.is_main):  # fmt: skip
            counter.add(spectrum)
        parts = distributed.gather_objects(counter, context)
        for part in parts[1:]:
            parts[0].absorb(part)
        return parts[0].result()

    def start(self, step: int) -> None:
        workers = self.config.loader_workers
        batches = StepBatches(self.stream, step, self.config.steps)
        loader = DataLoader(batches, batch_size=None, num_workers=workers,
                            prefetch_factor=2 if workers else None,
                            worker_init_fn=functools.partial(_die_with, os.getpid()))  # fmt: skip
        self._batches = iter(loader)

    def step(self, step: int, model: StarGON) -> Step:
        got, records, self.cursor = next(self._batches)
        assert got == step, (got, step)
        if _refresh_due(self.config, step):
            self.velocity_model, self._fitter, self.found = copy.deepcopy(model), None, {}
        lanes = np.array([lane for lane, _, _ in records])
        ids = np.array([i for _, i, _ in records])
        spectra = [spectrum for _, _, spectrum in records]
        velocities = np.zeros(len(records))
        for lane in np.unique(lanes):  # a lane's spectra in one batched search
            mine = np.flatnonzero(lanes == lane)
            found = self._velocities(str(lane), ids[mine].tolist(), [spectra[k] for k in mine])
            velocities[mine] = found
        return spectra, velocities, ids

    def residual_sample(self, model: StarGON, size: int) -> tuple[list[Spectrum], np.ndarray]:
        raise ValueError(
            f"{self.config.shards}: a grown model's new functions start from residuals of a "
            "data folder (--data); with --shards, pass --residual-spectra 0"
        )

    def pop_velocity_shift(self) -> dict[str, float]:
        """Nothing: a stream keeps the velocities of one period only."""
        return {}

    def held_out(self, model: StarGON, rest_only: bool) -> Step:
        if self.watched is None:
            self.watched = held_out_sample(self.config.shards, self.config.held_out_spectra)
        chosen = [s for s in self.watched if s.frame == "rest" or not rest_only]
        ids = list(range(len(chosen)))
        return chosen, np.array(self._velocities("held_out", ids, chosen)), np.array(ids)

    def _velocities(self, key: str, ids: list[int], spectra: list[Spectrum]) -> list[float]:
        found = self.found.setdefault(key, {})
        todo = [k for k, s in enumerate(spectra) if s.frame == "observed" and ids[k] not in found]
        if todo and self.velocity_model is not None:
            model = self.velocity_model
            if self._fitter is None:
                bank = prototype_spectra(self.config.shards)
                z = model.encode(make_batch(bank, n_pixels=2000).to(self.context.device))
                self._fitter = Fitter(model, z, self.context.device)
            batch = make_batch([spectra[k] for k in todo])
            for k, v in zip(todo, self._fitter.velocities(batch), strict=True):
                found[ids[k]] = float(v)
        pairs = zip(ids, spectra, strict=True)
        return [found.get(i, 0.0) if s.frame == "observed" else 0.0 for i, s in pairs]

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Every rank's cursors and found velocities (gathered: call on every rank), and the
        period's velocity model."""
        parts = distributed.gather_objects((self.cursor, self.found), self.context)
        cursor = {key: value for part, _ in parts for key, value in part.items()}
        found = {key: value for _, part in parts for key, value in part.items()}
        tensors = {}
        if self.velocity_model is not None:
            for name, value in self.velocity_model.state_dict().items():
                tensors[f"velocity_model.{name}"] = value
        return tensors, {"cursor": cursor, "found": {k: list(v.items()) for k, v in found.items()}}

    def restore(self, tensors: dict[str, torch.Tensor], record: dict) -> None:
        self.stream.restore(record["cursor"])
        self.found = {k: {int(i): v for i, v in pairs} for k, pairs in record["found"].items()}
        weights = {k.split(".", 1)[1]: v for k, v in tensors.items()
                   if k.startswith("velocity_model.")}  # fmt: skip
        if weights:
            self.velocity_model = StarGON(self.config.model).to(self.context.device)
            self.velocity_model.load_state_dict(weights)
