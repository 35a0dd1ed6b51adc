"""Which torch device a run uses (one rule for training, fitting and the explorer), and how a
CPU run keeps its freed memory."""

from __future__ import annotations

import ctypes

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def pick_device(request: str = "auto") -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; anything else as torch names it."""
    if request == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(request)


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks for reuse instead of handing every one above 128 KiB back
    to the system at once. A batch of fits makes hundreds of multi-MB temporaries, and each
    fresh one is paid again in page faults: a third of a fit's time on the CPU. Peak memory
    is unchanged; the process keeps it until it ends. Process-wide, so the CLI calls it, not
    the library; a no-op (False) without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 31)
    )
