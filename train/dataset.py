"""The training set: spectra streamed from a data folder, a survey name each, a split by star."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stargon.core.spectrum import Spectrum
from stargon.surveys.registry import scan
from stargon.train.emulator import PayneEmulator

SYNTHETIC_SURVEY = "payne_synthetic"
EMULATOR = Path("apogee_payne/neural_nets/NN_normalized_spectra.npz")


@dataclass
class TrainingSet:
    spectra: list[Spectrum]
    surveys: list[str]  # the data folder each spectrum came from (e.g. "lamost_dr1")
    held_out: np.ndarray  # bool per spectrum: its star is in the held-out split
    failures: list[dict[str, str]] = field(default_factory=list)

    def indices(self, held_out: bool = False, frame: str | None = None) -> np.ndarray:
        keep = self.held_out == held_out
        if frame is not None:
            keep &= np.array([s.frame == frame for s in self.spectra])
        return np.flatnonzero(keep)

    def bank_spectra(self, per_survey: int = 2) -> list[Spectrum]:
        """A fixed few rest-frame training spectra of every survey (chosen with seed 0): the
        stars whose latents make a velocity template bank before the model has its own."""
        pool = self.indices(held_out=False, frame="rest")
        names = np.array(self.surveys)[pool]
        rng = np.random.default_rng(0)
        chosen = [rng.choice(members, min(per_survey, members.size), replace=False)
                  for members in (pool[names == name] for name in sorted(set(names)))]  # fmt: skip
        return [self.spectra[i] for i in np.concatenate(chosen)] if chosen else []

    def summary(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for survey, held in zip(self.surveys, self.held_out, strict=True):
            entry = out.setdefault(survey, {"train": 0, "held_out": 0})
            entry["held_out" if held else "train"] += 1
        return out


def is_held_out(star_id: str, fraction: float) -> bool:
    """A stable split by star: the same star is on the same side in every run and survey."""
    digest = hashlib.sha256(star_id.strip().upper().encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def load_training_set(
    data: str | Path,
    surveys: list[str] | None = None,
    held_out_fraction: float = 0.1,
    progress: bool = True,
    synthetic: int = 0,
) -> TrainingSet:
    """Read every spectrum under `data` (optionally only some top-level folders), plus
    `synthetic` noiseless Payne-emulator spectra as their own survey, never mixed with the real
    ones: they teach the H band, which the real data cover with a handful of stars."""
    data = Path(data)
    folders = sorted(p for p in data.iterdir() if p.is_dir()) if data.is_dir() else [data]
    if surveys:
        missing = set(surveys) - {f.name for f in folders}
        if missing:
            raise FileNotFoundError(f"{data}: no survey folders named {sorted(missing)}")
        folders = [f for f in folders if f.name in surveys]
    spectra, names, failures = [], [], []
    for folder in tqdm(folders, desc="reading spectra", disable=not progress):
        for outcome in scan(folder):
            if outcome.error:
                failures.append({"file": str(outcome.path), "reason": outcome.error})
            for spectrum in outcome.spectra:
                spectra.append(spectrum)
                names.append(folder.name)
    if synthetic:
        made = synthetic_spectra(data / EMULATOR, synthetic)
        spectra += made
        names += [SYNTHETIC_SURVEY] * len(made)
    held = np.array([is_held_out(s.star_id, held_out_fraction) for s in spectra], dtype=bool)
    return TrainingSet(spectra, names, held, failures)


def synthetic_spectra(emulator_path: Path, n: int, seed: int = 0) -> list[Spectrum]:
    """n emulator spectra with labels drawn uniformly inside its range (reproducible by seed)."""
    emulator = PayneEmulator(emulator_path)
    labels = emulator.sample_labels(n, torch.Generator().manual_seed(seed))
    return emulator.spectra(labels, seed=seed)
