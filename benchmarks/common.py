"""Shared pieces of the benchmarks: data subsets, timing, peak memory in a child process."""

from __future__ import annotations

import multiprocessing as mp
import resource
import subprocess
import sys
import time
import types
from collections.abc import Callable

import numpy as np

from stargon.core.paths import REPOSITORY, data_dir
from stargon.core.records import markdown_table

DATA = data_dir()


def call_times(fn: Callable[[], object], repeat: int) -> list[float]:
    """Seconds of each of `repeat` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def best_time(fn: Callable[[], object], repeat: int = 5) -> float:
    """Seconds of the fastest of `repeat` calls after one warm-up call."""
    return min(call_times(fn, repeat))


def median_time(fn: Callable[[], object], repeat: int = 5) -> float:
    """Median seconds of `repeat` calls after one warm-up call."""
    return float(np.median(call_times(fn, repeat)))


def _child(fn, args, queue):
    result = fn(*args)
    queue.put((result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def in_child(fn: Callable, *args):
    """Run fn(*args) in a fresh process: (its result, its peak resident memory in MiB)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_child, args=(fn, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


table = markdown_table


def ratio_to_first(rows: list[dict], value: str, column: str) -> None:
    """Give each row `column` = its `value` over the first row's (the baseline of the group)."""
    for row in rows:
        row[column] = row[value] / rows[0][value]


def split_by_star(n: int, held_out_fraction: float = 0.15, seed: int = 0):
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    cut = int(n * held_out_fraction)
    return np.sort(order[cut:]), np.sort(order[:cut])


def load_fitter(checkpoint: str | None, **settings):
    """The `Fitter` of a model folder (None: the embedded model), with FitConfig `settings`."""
    from stargon.model.fit_config import FitConfig
    from stargon.model.fitter import Fitter
    from stargon.model.release import Release

    return Fitter.from_release(Release.load(checkpoint), config=FitConfig(**settings))


def code_at(
    rev: str, names: tuple[str, ...] = ("pyramid", "continuum", "decoder", "gon")
) -> dict[str, types.ModuleType]:
    """Modules of `stargon.model` as they were at commit `rev` (the rest of the package as it
    is; those the commit did not have are left out), for timing old code against new in one
    process. Each is made while the ones before it stand in for the current modules, so the
    old gon imports the old decoder, and that the old pyramid."""
    names = tuple(name for name in names if _exists(rev, f"model/{name}.py"))
    modules = [f"stargon.model.{name}" for name in names]
    saved = {module: sys.modules[module] for module in modules}
    made = {}
    try:
        for name, module in zip(names, modules, strict=True):
            path = f"model/{name}.py"
            source = subprocess.run(
                ["git", "show", f"{rev}:{path}"],
                cwd=REPOSITORY, capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            made[name] = sys.modules[module] = types.ModuleType(module)
            exec(compile(source, f"{rev}:{path}", "exec"), made[name].__dict__)
    finally:
        sys.modules.update(saved)
    return made


def _exists(rev: str, path: str) -> bool:
    return (
        subprocess.run(["git", "cat-file", "-e", f"{rev}:{path}"], cwd=REPOSITORY).returncode == 0
    )
