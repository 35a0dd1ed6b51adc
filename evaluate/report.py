"""`stargon evaluate`: compute every section in turn, draw its figures, then write
metrics.json (each section's numbers) and report.md (its text, in the order a reader wants)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from stargon.core.records import to_json
from stargon.evaluate import sections
from stargon.evaluate.context import Evaluation, prepare

# In the order they are computed: a section may read those before it.
SECTIONS: tuple[type[sections.Section], ...] = (
    sections.Reconstruction,
    sections.EmulatorFidelity,
    sections.LabelProbes,
    sections.RadialVelocity,
    sections.CrossInstrument,
    sections.Realism,
    sections.Sensitivity,
    sections.Invariance,
    sections.Directions,
    sections.Outliers,
)
# In the order they are written: whether the latents describe the star comes first.
WRITTEN = ("invariance", "reconstruction", "emulator_fidelity", "probes", "radial_velocity",
           "cross_instrument", "realism", "sensitivity", "label_directions",
           "outliers")  # fmt: skip


def evaluate(
    checkpoint: str | Path | None,
    data: str | Path,
    out: str | Path,
    max_per_survey: int = 60,
    injection_trials: int = 40,
    surveys: list[str] | None = None,
) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ev = prepare(checkpoint, data, surveys)
    timings = {"prepare": time.perf_counter() - start}
    done: dict[str, sections.Section] = {}
    for kind in SECTIONS:
        started = time.perf_counter()
        section = kind(ev, max_per_survey=max_per_survey, injection_trials=injection_trials)
        section.compute(done)
        done[section.name] = section
        timings[section.name] = time.perf_counter() - started
    for section in done.values():
        section.draw(out)
    seconds = time.perf_counter() - start
    metrics = {
        "checkpoint": str(ev.checkpoint),
        "seconds": seconds,
        "device": f"CPU, {torch.get_num_threads()} threads",
        "section_seconds": timings,  # where an evaluation's time goes (figures not included)
    }
    for section in done.values():
        metrics |= section.metrics()
    (out / "metrics.json").write_text(to_json(metrics))
    (out / "report.md").write_text(_markdown(ev, [done[name] for name in WRITTEN], seconds))
    return out


def _markdown(ev: Evaluation, written: list[sections.Section], seconds: float) -> str:
    card = ev.card
    parts = [
        "# StarGON evaluation report",
        f"Checkpoint `{ev.checkpoint.name}` ({card.get('trained_steps', '?')} steps, trained on "
        f"{card.get('training_device', '?')}); evaluated in {seconds / 60:.1f} min on CPU "
        f"({torch.get_num_threads()} threads). Every number is measured in this run, against a "
        "baseline computed in the same run. Held-out stars are the split recorded in the model "
        "card. `payne_synthetic` is The Payne's emulator (synthetic, never counted as real).",
    ]
    for section in written:
        parts += section.markdown()
    return "\n\n".join(parts) + "\n"
