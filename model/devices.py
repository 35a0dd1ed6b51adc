"""Which torch device a run uses: one rule for training, fitting and the explorer."""

from __future__ import annotations

import torch


def pick_device(request: str = "auto") -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; anything else as torch names it."""
    if request == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(request)
