"""`stargon train`: one straight loop over mixed-survey batches of randomly sampled pixels.

Every random choice derives from (seed, step, spectrum index), so a run resumed from a
checkpoint, or split over `torchrun` processes, sees exactly the batches of an uninterrupted
single-process run. Observed-frame spectra join after a warm-up on rest-frame ones, once the
model can estimate their radial velocities (refreshed every `rv_every` steps).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

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
    data: str
    out: str
    surveys: list[str] | None = None
    steps: int = 2000
    batch_size: int = 64  # global, over all processes
    n_pixels: int = 1000
    lr: float = 3e-3
    seed: int = 0
    gon_steps: int = 1
    error_floor: float = 0.01
    warmup_steps: int = 200
    rv_every: int = 500
    checkpoint_every: int = 100
    log_every: int = 10
    held_out_fraction: float = 0.1
    synthetic: int = 0  # Payne-emulator spectra added as the survey "payne_synthetic"
    survey_balance: float = 0.5  # a survey's share of batches ∝ (its spectra)^balance
    lr_decay_from: float = 0.6  # fraction of the steps after which lr falls (cosine) to 5 %
    roughness: float = 100.0  # weight of the penalty on detail finer than the data support
    coverage_count: int = 20  # a resolution is trusted where this many spectra reach it
    roughness_cells: int = 2000  # rest wavelengths the penalty is evaluated at per step
    device: str = "auto"
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
        _write_json(run / "config.json", asdict(config))
        _write_json(run / "split.json", _split_record(dataset))
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
        log_now = done % config.log_every == 0 or done == config.steps
        if log_now:
            loss = distributed.global_mean(loss, context)
        if context.is_main and log_now:
            elapsed = time.perf_counter() - clock
            clock = time.perf_counter()
            record = {
                "step": done,
                "loss": loss.item(),
                "mean_chi2": chi2.mean().item(),
                "median_chi2": chi2.median().item(),
                "roughness": roughness.item(),
                "spectra_per_s": config.log_every * config.batch_size / max(elapsed, 1e-9),
                "time": time.time(),
            }
            _append_jsonl(run / "metrics.jsonl", record)
            bar.set_postfix(loss=f"{record['loss']:.3g}")
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


def learning_rate(config: TrainConfig, step: int) -> float:
    """Constant, then a cosine fall to 5 % over the last (1 − lr_decay_from) of the steps."""
    start = config.lr_decay_from * config.steps
    if step < start:
        return config.lr
    progress = (step - start) / max(config.steps - start, 1)
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _refresh_velocities(model, dataset, velocities, context):
    """Radial velocities of observed-frame spectra from the current model (rank 0, broadcast)."""
    observed = [i for i, s in enumerate(dataset.spectra) if s.frame == "observed"]
    estimates = torch.as_tensor(velocities, dtype=torch.float64)
    if context.is_main:
        with torch.no_grad():
            pyramid = model.decoder.pyramid()
        templates = template_pyramid(model, _prototypes(model, dataset, context))
        for i in tqdm(observed, desc="radial velocities", leave=False):
            batch = make_batch([dataset.spectra[i]]).to(context.device)
            estimates[i] = find_velocity(model, batch, pyramid, templates)
    return distributed.broadcast(estimates.to(context.device), context).cpu().numpy()


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
    _write_json(run / "latest.json", {"step": step, "checkpoint": name})


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


def _write_json(path: Path, value) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1, default=_json_default))
    os.replace(tmp, path)


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__}")
