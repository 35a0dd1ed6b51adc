"""Checkpoints: safetensors weights + a JSON model card, written atomically, never unpickled.

A checkpoint is a folder holding `model.safetensors` and `model.json`. The JSON carries the
model config (the model rebuilds from it alone), the SHA-256 of the weights (a torn or
swapped file is detected), and whatever card the caller adds (data, split, metrics).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from stargon import __version__
from stargon.core.records import to_json
from stargon.model.decoder import ModelConfig
from stargon.model.gon import StarGON

WEIGHTS = "model.safetensors"
CARD = "model.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the path and the problem."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")


def save_checkpoint(
    folder: str | Path,
    model: StarGON,
    card: dict | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write model (+ extra tensors such as the latent prior) to `folder`, atomically."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for name, value in (extra_tensors or {}).items():
        tensors[f"extra.{name}"] = value.detach().cpu().contiguous().clone()  # no aliasing
    save_file(tensors, staging / WEIGHTS)
    document = {
        "stargon_version": __version__,
        "model_config": model.config.to_dict(),
        "weights_sha256": _sha256(staging / WEIGHTS),
        "card": card or {},
    }
    (staging / CARD).write_text(to_json(document))
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(folder, old)
        os.rename(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, folder)
    return folder


def load_checkpoint(
    folder: str | Path | None, device: str | torch.device = "cpu"
) -> tuple[StarGON, dict, dict[str, torch.Tensor]]:
    """(model, card document, extra tensors); `None` loads the embedded default model.
    Rebuilds the model from the JSON alone."""
    folder = resolve_checkpoint(None) if folder is None else Path(folder)
    card_path, weights_path = folder / CARD, folder / WEIGHTS
    for path in (card_path, weights_path):
        if not path.exists():
            raise CheckpointError(
                path, "missing (a checkpoint folder holds model.json and model.safetensors)"
            )
    try:
        document = json.loads(card_path.read_text())
        config = ModelConfig.from_dict(document["model_config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(card_path, f"not a valid model card ({exc})") from exc
    expected = document.get("weights_sha256")
    if expected and _sha256(weights_path) != expected:
        raise CheckpointError(
            weights_path, "weights do not match the card's SHA-256 (truncated or replaced)"
        )
    try:
        tensors = load_file(weights_path, device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(weights_path, f"unreadable safetensors file ({exc})") from exc
    model = StarGON(config).to(device)
    state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(weights_path, f"weights do not fit the config ({exc})") from exc
    extra = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
    return model, document, extra


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def default_checkpoint() -> Path:
    """The model embedded in the package (`assets/default`)."""
    return Path(__file__).resolve().parent.parent / "assets" / "default"


def resolve_checkpoint(folder: str | Path | None) -> Path:
    """`folder`, or the embedded default model; a clear error when neither exists."""
    path = Path(folder) if folder is not None else default_checkpoint()
    if not (path / CARD).exists():
        what = "the embedded default model" if folder is None else "a checkpoint"
        raise CheckpointError(path, f"{what} is not there (expected {CARD} and {WEIGHTS})")
    return path
