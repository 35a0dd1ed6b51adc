"""Peak memory of a piece of work: Python allocations (numpy included) and Arrow's."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterable

import pyarrow as pa


def peak_bytes(steps: Iterable) -> int:
    """Peak of Python and Arrow allocations while `steps` is iterated to its end, above what
    was allocated before (Arrow's pool also holds what earlier work left behind, which can
    be freed or not by the time of the next measurement)."""
    gc.collect()
    arrow_before = pa.total_allocated_bytes()
    tracemalloc.start()
    arrow_peak = 0
    for _ in steps:
        arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - arrow_before)
    python_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return python_peak + arrow_peak
