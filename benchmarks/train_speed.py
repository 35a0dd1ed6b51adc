"""How fast is a training step? The default recipe's step — 64 spectra × 1,000 pixels drawn as
`stargon train` draws them from every survey of the data folder plus 1,000 Payne-emulator
spectra, observed-frame ones at their velocities, the Gauss–Newton GON step, the roughness
penalty on 2,000 cells, Adam — timed for this checkout's model code against an earlier
commit's (`--baseline-rev`: its model/decoder.py and model/gon.py, run on the same batches and
the same weights). The two take turns step by step, so that drifts of the machine's speed fall
on both. Per run: the median step; the table gives the median of `--runs` runs, broken into
phases (the forward pyramid, reads, latent MLP and its Jacobian, Gauss–Newton and continuum
solves; then the backward pass and the optimiser), and each implementation's peak memory over
its steps, in a process of its own. Last, the embedded model decoded through both at R =
1,800 … 28,000: the speed-up must not change the model.

    python -m benchmarks.train_speed --baseline-rev 081de38     # ≈ 4 min on 2 cores
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import DATA, code_at, in_child, table
from stargon.model import decoder, gon
from stargon.model.batch import make_batch
from stargon.model.devices import keep_freed_memory
from stargon.model.fitter import Fitter
from stargon.model.release import Release
from stargon.train.coverage import resolution_coverage, smoothness_cells
from stargon.train.dataset import load_training_set
from stargon.train.loop import TrainConfig

PHASES = ("pyramid", "reads", "MLP/Jacobian", "solve", "backward", "optimiser", "other")


def phase_targets(decoder_module, gon_module) -> list[tuple[object, str, str]]:
    """(owner, attribute, phase) of the functions each phase's time is spent in."""
    latent, basis = decoder_module.LatentMLP, decoder_module.BasisDecoder
    targets = [
        (latent, "forward", "MLP/Jacobian"),
        (basis, "decode", "MLP/Jacobian"),
        (gon_module, "solve_continuum", "solve"),
        (gon_module, "normal_equations", "solve"),
        (gon_module.StarGON, "gauss_newton", "solve"),
    ]
    if hasattr(basis, "_read"):  # before the pyramid was computed where it is read
        targets += [(basis, "pyramid", "pyramid"), (basis, "_read", "reads"),
                    (basis, "latent_jacobian", "MLP/Jacobian")]  # fmt: skip
    else:
        lsf = decoder_module.LsfPyramid  # the pyramid module the decoder imported
        targets += [(lsf, "gather", "pyramid"), (lsf, "whole", "pyramid"),
                    (lsf, "window", "pyramid"), (basis, "read", "reads"),
                    (latent, "with_jacobian", "MLP/Jacobian"),
                    (basis, "decode_with_jacobian", "MLP/Jacobian")]  # fmt: skip
    return targets


class Phases:
    """Wall time per phase, each function's own (time in nested timed calls excluded)."""

    def __init__(self, targets):
        self.targets, self.totals, self._stack = targets, dict.fromkeys(PHASES, 0.0), []

    def __enter__(self):
        self._saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in self.targets]
        for owner, name, phase in self.targets:
            setattr(owner, name, self._timed(owner.__dict__[name], phase))
        return self

    def __exit__(self, *exc):
        for owner, name, original in self._saved:
            setattr(owner, name, original)

    def add(self, phase: str, seconds: float) -> None:
        self.totals[phase] += seconds

    def _timed(self, function, phase):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            self._stack.append(0.0)
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                self.totals[phase] += spent - self._stack.pop()
                if self._stack:
                    self._stack[-1] += spent

        return timed


class Trainer:
    """One implementation's model (from the embedded default weights) and Adam, as the loop
    has them, stepping on given batches."""

    def __init__(self, gon_module, decoder_module, config: TrainConfig):
        model = Release.load(None).model
        self.model = gon_module.StarGON(model.config)
        self.model.load_state_dict(model.state_dict())
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.targets = phase_targets(decoder_module, gon_module)
        self.config = config

    def step(self, batch, smoothness) -> dict[str, float]:
        with Phases(self.targets) as phases:
            start = time.perf_counter()
            loss, _, _, _ = self.model(batch, n_steps=self.config.gon_steps, smoothness=smoothness)
            mark = time.perf_counter()
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            phases.add("backward", time.perf_counter() - mark)
            mark = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
            self.optimiser.step()
            phases.add("optimiser", time.perf_counter() - mark)
            total = time.perf_counter() - start
        times = phases.totals
        times["other"] = total - sum(times.values())
        return times | {"total": total}


def default_config() -> TrainConfig:
    """The flags of train/recipes/default.sh."""
    return TrainConfig(
        data=str(DATA), out="", batch_size=64, n_pixels=1000, warmup_steps=300, synthetic=1000,
        survey_balance=0.5, roughness=100.0, coverage_count=20,
    )  # fmt: skip


def prepare_steps(config: TrainConfig, n_steps: int) -> list:
    """The recipe's batches after the warm-up: spectra drawn as the loop draws them, observed
    ones at velocities the embedded model finds, pixels and roughness cells per step."""
    data = load_training_set(config.data, synthetic=config.synthetic, progress=False)
    pool = data.indices(held_out=False)
    names = np.array(data.surveys)[pool]
    _, inverse, counts = np.unique(names, return_inverse=True, return_counts=True)
    weights = counts[inverse] ** (config.survey_balance - 1.0)
    coverage = resolution_coverage(
        [data.spectra[i] for i in pool], config.model, config.coverage_count
    )
    fitter = Fitter.from_release(Release.load(None))
    steps = []
    for step in range(config.warmup_steps, config.warmup_steps + n_steps):
        rng = np.random.default_rng([config.seed, step])
        chosen = np.sort(rng.choice(pool, config.batch_size, p=weights / weights.sum()))
        spectra = [data.spectra[i] for i in chosen]
        velocities = np.zeros(len(spectra))
        moving = [i for i, s in enumerate(spectra) if s.frame == "observed"]
        velocities[moving] = fitter.velocities(make_batch([spectra[i] for i in moving]))
        batch = make_batch(
            spectra, v_kms=velocities, n_pixels=config.n_pixels,
            rngs=[np.random.default_rng([config.seed, step, int(i)]) for i in chosen],
            error_floor=config.error_floor,
        )  # fmt: skip
        rng = np.random.default_rng([config.seed, step, 2**32 - 1])
        cells = smoothness_cells(*coverage, config.model, config.roughness_cells, rng)
        steps.append((batch, (*cells, config.roughness)))
    return steps


def implementations(rev: str, config: TrainConfig) -> dict[str, Trainer]:
    old = code_at(rev)
    return {rev: Trainer(old["gon"], old["decoder"], config), "this": Trainer(gon, decoder, config)}


def timed_runs(trainers: dict[str, Trainer], steps: list, runs: int) -> dict[str, list[dict]]:
    """Per implementation, per run, the median of each phase over the run's steps (the
    implementations take turns; one warm-up step each first)."""
    for trainer in trainers.values():
        trainer.step(*steps[0])
    medians: dict[str, list[dict]] = {name: [] for name in trainers}
    for _ in range(runs):
        times: dict[str, list[dict]] = {name: [] for name in trainers}
        for batch, smoothness in steps:
            for name, trainer in trainers.items():
                times[name].append(trainer.step(batch, smoothness))
        for name, records in times.items():
            medians[name].append({k: float(np.median([r[k] for r in records])) for k in records[0]})
    return medians


def peak_memory(rev: str, config: TrainConfig, steps: list, name: str) -> tuple[float, float]:
    """(resident MiB before, peak resident MiB over) one implementation's steps, in a process
    of its own (VmHWM: this process's own peak, not its parent's at the fork)."""
    keep_freed_memory()
    trainers = implementations(rev, config)
    before = _status_mib("VmRSS")
    for batch, smoothness in steps:
        trainers[name].step(batch, smoothness)
    return before, _status_mib("VmHWM")


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def decoded_agreement(rev: str) -> list[dict]:
    """The embedded model's spectra decoded through this pyramid and through the commit's, at
    the issue's resolving powers: the largest difference relative to the flux (floored at 1 %
    of the continuum, for saturated line cores)."""
    old = code_at(rev)
    model = Release.load(None).model
    old_model = old["gon"].StarGON(model.config)
    old_model.load_state_dict(model.state_dict())
    z = torch.randn(16, model.config.latent_dim, generator=torch.Generator().manual_seed(0))
    wave = torch.as_tensor(np.geomspace(3700.0, 16900.0, 60000))
    rows = []
    with torch.no_grad():
        for resolving_power in (1800.0, 7500.0, 22500.0, 28000.0):
            ours = model.observe(z, model.observation_basis(wave, 25.0, resolving_power))
            theirs = old_model.observe(z, old_model.observation_basis(wave, 25.0, resolving_power))
            difference = (ours - theirs).abs() / theirs.abs().clamp_min(0.01)
            rows.append({"R": resolving_power, "max relative difference": float(difference.max())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-rev", default="081de38", help="the commit to compare with")
    parser.add_argument("--steps", type=int, default=8, help="batches per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--batch-size", type=int, default=64, help="spectra per step (the recipe of the issue: 64)"
    )
    parser.add_argument(
        "--n-pixels", type=int, default=1000, help="pixels per spectrum (the issue's recipe: 1,000)"
    )
    args = parser.parse_args()
    keep_freed_memory()
    config = default_config()
    config.batch_size, config.n_pixels = args.batch_size, args.n_pixels
    steps = prepare_steps(config, args.steps)
    trainers = implementations(args.baseline_rev, config)
    medians = timed_runs(trainers, steps, args.runs)
    rows = []
    for name, runs in medians.items():
        total = float(np.median([run["total"] for run in runs]))
        before, peak = in_child(peak_memory, args.baseline_rev, config, steps[:3], name)[0]
        rows.append({
            "model code": name, "ms per step": 1000 * total,
            "spectra/s": config.batch_size / total, "vs baseline": None,
            **{f"{p} ms": 1000 * float(np.median([run[p] for run in runs])) for p in PHASES},
            "peak MiB": peak, "peak − before MiB": peak - before,
        })  # fmt: skip
    for row in rows:
        row["vs baseline"] = row["spectra/s"] / rows[0]["spectra/s"]
    print(f"device: CPU, {torch.get_num_threads()} threads; {args.runs} runs × {args.steps} "
          f"steps of {config.batch_size} × {config.n_pixels}, medians (python -m "
          f"benchmarks.train_speed --baseline-rev {args.baseline_rev} --batch-size "
          f"{config.batch_size} --n-pixels {config.n_pixels})\n")  # fmt: skip
    print(table(rows, list(rows[0])))
    agreement = decoded_agreement(args.baseline_rev)
    print("\nThe embedded model decoded by both (16 latents, 3,700–16,900 Å, v = 25 km/s):\n")
    print(table(agreement, list(agreement[0])))


if __name__ == "__main__":
    main()
