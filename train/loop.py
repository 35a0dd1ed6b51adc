"""`stargon train`: one straight loop over mixed-survey batches of randomly sampled pixels.

Every random choice derives from (seed, step, spectrum index), so a run resumed from a
checkpoint, or split over `torchrun` processes, sees exactly the batches of an uninterrupted
single-process run. Observed-frame spectra join after a warm-up on rest-frame ones, once the
model can estimate their radial velocities (refreshed every `rv_every` steps).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from stargon.core.records import to_json, write_json
from stargon.model.batch import make_batch
from stargon.model.checkpoint import load_checkpoint, save_checkpoint
from stargon.model.decoder import ModelConfig
from stargon.model.fit import find_velocity, template_pyramid
from stargon.model.gon import StarGON
from stargon.train import distributed
from stargon.train.coverage import resolution_coverage, smoothness_cells
from stargon.train.dataset import TrainingSet, load_training_set


@dataclass
class TrainConfig:
    """Every training setting, written once: `stargon train` makes one option per field
    (its help is the field's annotation), and the run's config.json stores them all."""

    data: Annotated[str, "Data folder (default: $STARGON_DATA or ../shared/data)."]
    out: Annotated[str, "Run folder: checkpoints, metrics.jsonl, split.json."]
    surveys: Annotated[list[str] | None, "Comma-separated data subfolders to use."] = None
    steps: Annotated[int, "Optimiser steps."] = 2000
    batch_size: Annotated[int, "Global batch size, over all processes."] = 64
    n_pixels: Annotated[int, "Pixels sampled per spectrum and step."] = 1000
    lr: Annotated[float, "Adam learning rate."] = 3e-3
    seed: Annotated[int, "Seed of every random choice (batches, pixels, split)."] = 0
    gon_steps: Annotated[int, "GON inner steps from the origin."] = 1
    error_floor: Annotated[float, "Fractional error added in quadrature (training only)."] = 0.01
    warmup_steps: Annotated[int, "Steps on rest-frame spectra only."] = 200
    rv_every: Annotated[int, "Steps between radial-velocity re-estimates."] = 500
    checkpoint_every: Annotated[int, "Steps between checkpoints."] = 100
    log_every: Annotated[int, "Steps between metrics.jsonl records."] = 10
    held_out_every: Annotated[int, "Steps between held-out χ² evaluations (0: never)."] = 100
    held_out_spectra: Annotated[int, "Held-out spectra in that evaluation."] = 64
    held_out_fraction: Annotated[float, "Share of stars held out of training."] = 0.1
    synthetic: Annotated[int, "Payne-emulator spectra added as survey payne_synthetic."] = 0
    survey_balance: Annotated[float, "A survey's share of batches ∝ n_spectra^balance."] = 0.5
    lr_decay_from: Annotated[float, "Fraction of steps after which lr falls (cosine) to 5 %."] = 0.6
    roughness: Annotated[float, "Weight of the penalty on detail finer than the data teach."] = (
        100.0
    )
    coverage_count: Annotated[int, "Spectra that must reach a resolution to trust it."] = 20
    roughness_cells: Annotated[int, "Rest wavelengths the penalty is evaluated at per step."] = 2000
    device: Annotated[str, "auto, cpu, cuda, cuda:1 …"] = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        values = dict(values)
        values["model"] = ModelConfig.from_dict(values.get("model", {}))
        return cls(**values)


def train(config: TrainConfig, resume: bool = False, dataset: TrainingSet | None = None) -> Path:
    context = distributed.setup(config.device)
    run = _train(config, resume, dataset, context)
    distributed.finish()
    return run


def _train(config, resume, dataset, context) -> Path:
    run = Path(config.out)
    if context.is_main:
        run.mkdir(parents=True, exist_ok=True)
    dataset = dataset or load_training_set(
        config.data,
        config.surveys,
        config.held_out_fraction,
        progress=context.is_main,
        synthetic=config.synthetic,
    )
    torch.manual_seed(config.seed)
    model = StarGON(config.model).to(context.device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    velocities = np.zeros(len(dataset.spectra))
    start = 0
    if resume and (run / "latest.json").exists():
        start, velocities = _restore(run, model, optimiser, context.device)
    elif context.is_main:
        write_json(run / "config.json", asdict(config))
        write_json(run / "split.json", _split_record(dataset))
    wrapped = DistributedDataParallel(model) if context.world_size > 1 else model
    train_rest = dataset.indices(held_out=False, frame="rest")
    train_all = dataset.indices(held_out=False)
    coverage = None
    if config.roughness > 0:  # the penalty's reference: what the training data resolve
        coverage = resolution_coverage(
            [dataset.spectra[i] for i in train_all], config.model, config.coverage_count
        )
    bar = tqdm(
        range(start, config.steps), initial=start, total=config.steps, disable=not context.is_main
    )
    clock = time.perf_counter()
    watched = _held_out_sample(config, dataset)
    held_out = None
    for step in bar:
        if step >= config.warmup_steps and (step - config.warmup_steps) % config.rv_every == 0:
            velocities = _refresh_velocities(model, dataset, velocities, context)
        pool = train_rest if step < config.warmup_steps else train_all
        chosen = _global_batch(config, step, pool, dataset.surveys)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(config, step)
        mine = np.array_split(chosen, context.world_size)[context.rank]
        batch = make_batch(
            [dataset.spectra[i] for i in mine],
            v_kms=velocities[mine],
            n_pixels=config.n_pixels,
            rngs=[np.random.default_rng([config.seed, step, int(i)]) for i in mine],
            error_floor=config.error_floor,
        ).to(context.device)
        smoothness = None
        if config.roughness > 0:
            rng = np.random.default_rng([config.seed, step, 2**32 - 1])
            cells = smoothness_cells(*coverage, config.model, config.roughness_cells, rng)
            smoothness = (*(c.to(context.device) for c in cells), config.roughness)
        loss, chi2, _, roughness = wrapped(batch, n_steps=config.gon_steps, smoothness=smoothness)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimiser.step()
        done = step + 1
        check_now = config.held_out_every > 0 and (
            done % config.held_out_every == 0 or done == config.steps
        )
        log_now = done % config.log_every == 0 or done == config.steps or check_now
        if log_now:
            loss = distributed.global_mean(loss, context)
        if context.is_main and check_now:
            rest_only = done <= config.warmup_steps
            held_out = held_out_chi2(model, dataset, watched, velocities, config, rest_only)
        if context.is_main and log_now:
            elapsed = time.perf_counter() - clock
            clock = time.perf_counter()
            record = {
                "step": done,
                "loss": loss.item(),
                "mean_chi2": chi2.mean().item(),
                "median_chi2": chi2.median().item(),
                "roughness": roughness.item(),
                **({"held_out_chi2": held_out} if check_now else {}),
                "spectra_per_s": config.log_every * config.batch_size / max(elapsed, 1e-9),
                "time": time.time(),
            }
            _append_jsonl(run / "metrics.jsonl", record)
            shown = {"loss": f"{record['loss']:.3g}"}
            bar.set_postfix(shown | ({"held_out": f"{held_out:.3g}"} if held_out else {}))
        if context.is_main and (done % config.checkpoint_every == 0 or done == config.steps):
            _checkpoint(run, model, optimiser, done, velocities, config, dataset)
    return run


def _global_batch(
    config: TrainConfig, step: int, pool: np.ndarray, surveys: list[str]
) -> np.ndarray:
    """The step's spectra. Each survey gets a share ∝ n^balance of the batches, so MILES's
    thousand stars do not drown the four APOGEE ones (balance 1: every spectrum alike)."""
    names = np.array(surveys)[pool]
    _, inverse, counts = np.unique(names, return_inverse=True, return_counts=True)
    weights = counts[inverse] ** (config.survey_balance - 1.0)
    rng = np.random.default_rng([config.seed, step])
    chosen = rng.choice(
        pool, config.batch_size, replace=pool.size < config.batch_size, p=weights / weights.sum()
    )
    return np.sort(chosen)


def _held_out_sample(config: TrainConfig, dataset: TrainingSet) -> np.ndarray:
    """A fixed set of held-out spectra, the same at every evaluation so the curve compares."""
    pool = dataset.indices(held_out=True)
    rng = np.random.default_rng([config.seed, 7])
    chosen = rng.choice(pool, min(config.held_out_spectra, pool.size), replace=False)
    return np.sort(chosen)


def held_out_chi2(model, dataset, chosen, velocities, config, rest_only: bool) -> float | None:
    """Mean χ²/n after the GON step on held-out spectra — the training loss on stars the model
    never trained on (rest-frame ones only during the warm-up, as in training)."""
    if rest_only:
        chosen = np.array([i for i in chosen if dataset.spectra[i].frame == "rest"], dtype=int)
    if chosen.size == 0:
        return None
    batch = make_batch(
        [dataset.spectra[i] for i in chosen],
        v_kms=velocities[chosen],
        n_pixels=config.n_pixels,
        rngs=[np.random.default_rng([config.seed, int(i)]) for i in chosen],
        error_floor=config.error_floor,
    ).to(model.decoder.table.device)
    with torch.no_grad():
        basis = model.basis(batch)
    z = model.encode(batch, basis, n_steps=config.gon_steps)
    with torch.no_grad():
        return model.chi2(z, basis, batch).mean().item()


def learning_rate(config: TrainConfig, step: int) -> float:
    """Constant, then a cosine fall to 5 % over the last (1 − lr_decay_from) of the steps."""
    start = config.lr_decay_from * config.steps
    if step < start:
        return config.lr
    progress = (step - start) / max(config.steps - start, 1)
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _refresh_velocities(model, dataset, velocities, context):
    """Radial velocities of observed-frame spectra from the current model: each rank fits its
    share (one spectrum at a time, so a velocity never depends on how the work was split),
    and one all-reduce (sum over disjoint shares) gives every rank all of them."""
    observed = np.array([i for i, s in enumerate(dataset.spectra) if s.frame == "observed"])
    mine = np.array_split(observed, context.world_size)[context.rank]
    with torch.no_grad():
        pyramid = model.decoder.pyramid()
    templates = template_pyramid(model, _prototypes(model, dataset, context))
    estimates = torch.zeros(len(velocities), dtype=torch.float64)
    for i in tqdm(mine, desc="radial velocities", leave=False, disable=not context.is_main):
        batch = make_batch([dataset.spectra[i]]).to(context.device)
        estimates[i] = find_velocity(model, batch, pyramid, templates)
    estimates = distributed.sum_over_ranks(estimates.to(context.device), context).cpu()
    refreshed = np.asarray(velocities, dtype=float).copy()
    refreshed[observed] = estimates.numpy()[observed]
    return refreshed


def _prototypes(model, dataset, context, per_survey: int = 2) -> torch.Tensor:
    """Latents of a fixed few rest-frame training spectra of every survey: the template bank."""
    pool = dataset.indices(held_out=False, frame="rest")
    names = np.array(dataset.surveys)[pool]
    rng = np.random.default_rng(0)
    chosen = np.concatenate(
        [rng.choice(members, min(per_survey, members.size), replace=False)
         for members in (pool[names == name] for name in sorted(set(names)))]
    )  # fmt: skip
    batch = make_batch([dataset.spectra[i] for i in chosen], n_pixels=2000).to(context.device)
    return model.encode(batch)


def _checkpoint(run, model, optimiser, step, velocities, config, dataset) -> None:
    state = optimiser.state_dict()
    tensors = {"velocities": torch.as_tensor(velocities)}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optimiser.{index}.{key}"] = torch.as_tensor(value)
    card = {
        "trainer": {"step": step, "param_groups": state["param_groups"]},
        "train_config": asdict(config),
        "data": dataset.summary(),
    }
    name = f"checkpoints/step-{step:07d}"
    save_checkpoint(run / name, model, card=card, extra_tensors=tensors)
    write_json(run / "latest.json", {"step": step, "checkpoint": name})


def _restore(run, model, optimiser, device):
    latest = json.loads((run / "latest.json").read_text())
    saved, document, extra = load_checkpoint(run / latest["checkpoint"], device)
    _truncate_metrics(run / "metrics.jsonl", latest["step"])
    model.load_state_dict(saved.state_dict())
    trainer = document["card"]["trainer"]
    state: dict[int, dict] = {}
    for key, value in extra.items():
        if key.startswith("optimiser."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimiser.load_state_dict({"state": state, "param_groups": trainer["param_groups"]})
    return trainer["step"], extra["velocities"].cpu().numpy()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint we resume from (they will be logged again)."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


def _split_record(dataset: TrainingSet) -> dict:
    held = sorted({s.star_id for s, h in zip(dataset.spectra, dataset.held_out, strict=True) if h})
    return {
        "held_out_star_ids": held,
        "per_survey": dataset.summary(),
        "failures": dataset.failures,
    }


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(to_json(record, indent=None) + "\n")
