"""`stargon train`: one straight loop over mixed-survey batches of randomly sampled pixels.

Every random choice derives from (seed, step, spectrum id), so a run resumed from a
checkpoint, or split over `torchrun` processes, sees exactly the batches of an uninterrupted
single-process run. Observed-frame spectra join after a warm-up on rest-frame ones, once the
model can estimate their radial velocities (refreshed every `rv_every` steps). The spectra come
from a data folder held in memory or from packed shards streamed (`train.sources`).
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
from stargon.model.gon import StarGON
from stargon.train import distributed
from stargon.train.coverage import smoothness_cells
from stargon.train.dataset import TrainingSet
from stargon.train.sources import MemorySource, StreamSource
from stargon.train.warm_start import warm_start


@dataclass
class TrainConfig:
    """Every training setting, written once: `stargon train` makes one option per field
    (its help is the field's annotation), and the run's config.json stores them all."""

    data: Annotated[str, "Data folder (default: $STARGON_DATA or ../shared/data)."]
    out: Annotated[str, "Run folder: checkpoints, metrics.jsonl, split.json."]
    surveys: Annotated[list[str] | None, "Comma-separated data subfolders to use."] = None
    shards: Annotated[str | None, "Packed shards to stream instead of --data (stargon pack)."] = (
        None
    )
    stream_lanes: Annotated[int, "Streams a global batch is drawn from (a multiple of the "
                            "processes; the batch a multiple of it)."] = 2  # fmt: skip
    loader_workers: Annotated[int, "A process reading shards ahead (1), or none (0)."] = 1
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
    init_from: Annotated[str | None, "Start from this checkpoint's or released model's weights "
                         "(fine-tuning; more --n-basis grows it)."] = None  # fmt: skip
    residual_spectra: Annotated[int, "Training spectra whose residuals start a grown model's "
                                "new functions (0: small random ones)."] = 512  # fmt: skip
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
    if config.shards:
        source = StreamSource(config, context)
    else:
        source = MemorySource(config, context, dataset)
    torch.manual_seed(config.seed)
    model = StarGON(config.model).to(context.device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    start, coverage = 0, None
    if resume and (run / "latest.json").exists():
        start, coverage = _restore(run, model, optimiser, source, context.device)
    else:
        if config.init_from:
            warm_start(model, config.init_from, _residual_batches(source, model, config))
        if context.is_main:
            write_json(run / "config.json", asdict(config))
            write_json(run / "split.json", source.split_record())
    wrapped = DistributedDataParallel(model) if context.world_size > 1 else model
    if config.roughness > 0 and coverage is None:  # what the training data resolve
        coverage = source.coverage()
    bar = tqdm(
        range(start, config.steps), initial=start, total=config.steps, disable=not context.is_main
    )
    clock = time.perf_counter()
    held_out = None
    source.start(start)
    for step in bar:
        spectra, velocities, ids = source.step(step, model)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(config, step)
        batch = make_batch(
            spectra,
            v_kms=velocities,
            n_pixels=config.n_pixels,
            rngs=[np.random.default_rng([config.seed, step, int(i)]) for i in ids],
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
            held_out = held_out_chi2(model, *source.held_out(model, rest_only), config)
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
                **({"velocity_shift_kms": shift} if (shift := source.pop_velocity_shift()) else {}),
                "spectra_per_s": config.log_every * config.batch_size / max(elapsed, 1e-9),
                "time": time.time(),
            }
            _append_jsonl(run / "metrics.jsonl", record)
            shown = {"loss": f"{record['loss']:.3g}"}
            bar.set_postfix(shown | ({"held_out": f"{held_out:.3g}"} if held_out else {}))
        if done % config.checkpoint_every == 0 or done == config.steps:
            state = source.state()  # every rank: a streamed source gathers its cursors
            if context.is_main:
                _checkpoint(run, model, optimiser, done, state, coverage, config, source.summary())
    return run


def _residual_batches(source, model: StarGON, config: TrainConfig):
    """The batches whose residuals start a grown model's new functions (drawn only if it is
    grown): all pixels of `residual_spectra` training spectra, 16 at a time, with the
    training's error floor. None when they are to start at random."""
    if config.residual_spectra == 0:
        return None

    def batches():
        spectra, velocities = source.residual_sample(model, config.residual_spectra)
        for start in range(0, len(spectra), 16):
            part = slice(start, start + 16)
            batch = make_batch(spectra[part], velocities[part], error_floor=config.error_floor)
            yield batch.to(model.decoder.table.device)

    return batches()


def held_out_chi2(model, spectra, velocities, ids, config) -> float | None:
    """Mean χ²/n after the GON step on held-out spectra — the training loss on stars the model
    never trained on (rest-frame ones only during the warm-up, as in training)."""
    if not spectra:
        return None
    batch = make_batch(
        spectra,
        v_kms=velocities,
        n_pixels=config.n_pixels,
        rngs=[np.random.default_rng([config.seed, int(i)]) for i in ids],
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


def _checkpoint(run, model, optimiser, step, source_state, coverage, config, summary) -> None:
    """Weights, optimiser, where the data source stands, and the resolution coverage (a pass
    over all the data: a resume reads it back instead)."""
    state = optimiser.state_dict()
    source_tensors, source_record = source_state
    tensors = {f"source.{name}": value for name, value in source_tensors.items()}
    if coverage is not None:
        tensors["coverage.centres"], tensors["coverage.covered"] = map(torch.as_tensor, coverage)
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optimiser.{index}.{key}"] = torch.as_tensor(value)
    card = {
        "trainer": {"step": step, "param_groups": state["param_groups"], "source": source_record},
        "train_config": asdict(config),
        "data": summary,
    }
    name = f"checkpoints/step-{step:07d}"
    save_checkpoint(run / name, model, card=card, extra_tensors=tensors)
    write_json(run / "latest.json", {"step": step, "checkpoint": name})


def _restore(run, model, optimiser, source, device) -> tuple[int, tuple | None]:
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
    prefix = "source."
    source_tensors = {k[len(prefix) :]: v for k, v in extra.items() if k.startswith(prefix)}
    source.restore(source_tensors, trainer.get("source", {}))
    coverage = None
    if "coverage.covered" in extra:
        coverage = tuple(extra[f"coverage.{k}"].cpu().numpy() for k in ("centres", "covered"))
    return trainer["step"], coverage


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint we resume from (they will be logged again)."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(to_json(record, indent=None) + "\n")
