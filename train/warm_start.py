"""Start a run from a trained model's weights (`stargon train --init-from`): to fine-tune it, or
to grow it. A model with more basis functions keeps the old model's functions and weights; its
new functions start with zero weight in every spectrum, so the run starts from exactly the old
model's spectra and the new functions are learned from there."""

from __future__ import annotations

from pathlib import Path

import torch

from stargon.model.checkpoint import load_checkpoint
from stargon.model.gon import StarGON

GROWABLE = ("n_basis",)


def warm_start(model: StarGON, source: str | Path) -> None:
    """Copy the weights of the checkpoint or released model at `source` into `model`, in place."""
    trained, _, _ = load_checkpoint(source, model.decoder.table.device)
    new, old = model.config.to_dict(), trained.config.to_dict()
    differ = sorted(k for k in new if k not in GROWABLE and new[k] != old[k])
    if differ:
        settings = ", ".join(f"{k} = {old[k]!r}, not {new[k]!r}" for k in differ)
        raise ValueError(f"{source}: a model with other settings ({settings})")
    if new["n_basis"] < old["n_basis"]:
        raise ValueError(
            f"{source}: {old['n_basis']} basis functions, more than this run's {new['n_basis']}"
        )
    weights = model.state_dict()
    last = f"decoder.h.net.{len(model.decoder.h.net) - 1}."  # the layer giving each weight
    with torch.no_grad():
        for name, value in trained.state_dict().items():
            slot = weights[name]
            slot[: len(value)].copy_(value)
            if name.startswith(last):
                slot[len(value) :].zero_()
