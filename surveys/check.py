"""`stargon data check`: what a data folder holds, per source, and which files failed and why."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from stargon.surveys.registry import FileOutcome, scan


@dataclass
class SourceSummary:
    """One row of the check table: a top-level folder (or the folder itself) of the data dir."""

    source: str
    files: int = 0
    spectra: int = 0
    failed: int = 0
    skipped: int = 0
    readers: list[str] = field(default_factory=list)
    instruments: list[str] = field(default_factory=list)
    wave_min: float = float("inf")
    wave_max: float = float("-inf")
    median_snr: float = float("nan")
    normalised: str = ""
    has_errors: str = ""
    labels: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)


def check_folder(
    root: str | Path, progress: Callable[[FileOutcome], None] | None = None
) -> list[SourceSummary]:
    """Read every file under `root` once and summarise per source; never stops on a bad file."""
    root = Path(root)
    summaries: dict[str, SourceSummary] = {}
    snrs: dict[str, list[float]] = {}
    flags: dict[str, tuple[set, set]] = {}
    for outcome in scan(root):
        name = _source_name(root, outcome.path)
        summary = summaries.setdefault(name, SourceSummary(name))
        if progress is not None:
            progress(outcome)
        if outcome.skipped:
            summary.skipped += 1
            continue
        summary.files += 1
        if outcome.error is not None:
            summary.failed += 1
            summary.failures.append({"file": str(outcome.path), "reason": outcome.error})
            continue
        _add_spectra(
            summary, outcome, snrs.setdefault(name, []), flags.setdefault(name, (set(), set()))
        )
    for name, summary in summaries.items():
        values = snrs.get(name, [])
        summary.median_snr = float(np.median(values)) if values else float("nan")
        normalised, errors = flags.get(name, (set(), set()))
        summary.normalised = _yes_no(normalised)
        summary.has_errors = _yes_no(errors)
    return sorted(summaries.values(), key=lambda s: s.source)


def _add_spectra(summary: SourceSummary, outcome: FileOutcome, snrs: list, flags) -> None:
    for spectrum in outcome.spectra:
        summary.spectra += 1
        summary.wave_min = min(summary.wave_min, float(spectrum.wave[0]))
        summary.wave_max = max(summary.wave_max, float(spectrum.wave[-1]))
        snrs.append(spectrum.median_snr())
        flags[0].add(spectrum.normalised)
        flags[1].add(spectrum.has_errors)
        for collection, value in (
            (summary.readers, outcome.reader),
            (summary.instruments, spectrum.instrument),
            *((summary.labels, label) for label in spectrum.labels),
        ):
            if value not in collection:
                collection.append(value)


def _source_name(root: Path, path: Path) -> str:
    if root.is_file():
        return root.parent.name
    relative = path.relative_to(root)
    return relative.parts[0] if len(relative.parts) > 1 else root.name


def _yes_no(values: set) -> str:
    if not values:
        return "—"
    if len(values) > 1:
        return "mixed"
    return "yes" if values.pop() else "no"


def summaries_as_dict(summaries: list[SourceSummary]) -> dict:
    """JSON-ready: the same numbers as the table, infinities turned into nulls."""

    def clean(value):
        if isinstance(value, float) and not np.isfinite(value):
            return None
        return value

    return {
        "sources": [{k: clean(v) for k, v in asdict(s).items()} for s in summaries],
        "totals": {
            "files": sum(s.files for s in summaries),
            "spectra": sum(s.spectra for s in summaries),
            "failed": sum(s.failed for s in summaries),
        },
    }
