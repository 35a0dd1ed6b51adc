"""Training batches streamed from packed shards (`stargon pack`), for surveys too big to hold.

A global batch of B spectra is drawn as the in-memory trainer draws it: every slot a survey,
at a rate ∝ n_survey^balance (rest-frame surveys only during the warm-up), from
`numpy.random.default_rng([seed, step])`. Slot j is served by lane j mod L; a lane reads each
survey's row groups ("units") l, l + L, … of an order shuffled per epoch (a survey with fewer
units than lanes: unit l mod n), its rows in a shuffled order, skipping held-out stars. A DDP
rank runs lanes rank, rank + W, …, so the global batch is the same for any W dividing L, and a
rank reads only its own units. Memory: one row group per (lane, survey), whatever the survey's
size. Where each lane stands is a few integers per survey (`state`), saved in checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from torch.utils.data import IterableDataset

from stargon.core.spectrum import Spectrum
from stargon.train.shards import ShardStream, from_row, load_manifest, read_rows


@dataclass(frozen=True)
class Unit:
    """One row group of one shard; `first_id` numbers its first row among all the shards'."""

    file: str
    group: int
    first_id: int


class SurveyLane:
    """The spectra one lane draws from one survey, epoch after epoch."""

    def __init__(self, folder: Path, units: list[Unit], lane: int, lanes: int, seed: list[int]):
        self.folder, self.units, self.lane, self.lanes, self.seed = folder, units, lane, lanes, seed
        self.epoch = self.position = self.row = 0
        self._found_in_epoch = self._whole_epoch = False
        self._loaded: tuple[tuple[int, int], list[dict], np.ndarray] | None = None

    def state(self) -> list[int]:
        return [self.epoch, self.position, self.row]

    def restore(self, state: list[int]) -> None:
        self.epoch, self.position, self.row = state
        self._loaded, self._whole_epoch = None, False

    def _order(self) -> np.ndarray:
        order = np.random.default_rng([*self.seed, self.epoch]).permutation(len(self.units))
        if len(order) < self.lanes:
            return order[[self.lane % len(order)]]
        return order[self.lane :: self.lanes]

    def _rows(self, unit_index: int) -> tuple[list[dict], np.ndarray]:
        key = (self.epoch, unit_index)
        if self._loaded is None or self._loaded[0] != key:
            unit = self.units[unit_index]
            rows = read_rows(pq.ParquetFile(self.folder / unit.file), unit.group)
            shuffle = np.random.default_rng([*self.seed, self.epoch, unit_index, 1])
            self._loaded = (key, rows, shuffle.permutation(len(rows)))
        return self._loaded[1], self._loaded[2]

    def next(self) -> tuple[int, Spectrum]:
        """(row id, spectrum) of the next training (not held-out) row."""
        while True:
            order = self._order()
            if self.position >= len(order):
                if self._whole_epoch and not self._found_in_epoch:
                    raise ValueError(f"{self.folder}: lane {self.lane} found no training rows")
                self.epoch, self.position, self.row = self.epoch + 1, 0, 0
                self._found_in_epoch, self._whole_epoch = False, True
                continue
            rows, shuffle = self._rows(int(order[self.position]))
            if self.row >= len(rows):
                self.position, self.row = self.position + 1, 0
                continue
            index = int(shuffle[self.row])
            self.row += 1
            if not rows[index]["held_out"]:
                self._found_in_epoch = True
                unit = self.units[int(order[self.position])]
                return unit.first_id + index, from_row(rows[index])


class TrainingStream:
    """This rank's share of every step's global batch (see the module's docstring)."""

    def __init__(
        self,
        folder: str | Path,
        batch_size: int,
        lanes: int,
        seed: int = 0,
        balance: float = 0.5,
        warmup_steps: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size % lanes or lanes % world_size:
            raise ValueError(
                f"the batch size ({batch_size}) must be a multiple of the stream lanes ({lanes}),"
                f" and the lanes a multiple of the processes ({world_size})"
            )
        self.folder, self.batch_size, self.lanes = Path(folder), batch_size, lanes
        self.seed, self.warmup_steps = seed, warmup_steps
        manifest = load_manifest(self.folder)
        self.counts = counts = manifest["per_survey"]
        self.surveys = sorted(name for name, c in counts.items() if c["train"] > 0)
        if not self.surveys:
            raise ValueError(f"{self.folder}: the shards hold no training spectra")
        share = np.array([counts[name]["train"] for name in self.surveys], float) ** balance
        self.share = share / share.sum()
        self.rest = np.array([_all_rest(counts[name]) for name in self.surveys])
        units = _units(manifest)
        self.n_shards = len(manifest["shards"])
        self.my_lanes = list(range(rank, lanes, world_size))
        self.readers = {
            (lane, name): SurveyLane(self.folder, units[name], lane, lanes, [seed, index])
            for lane in self.my_lanes
            for index, name in enumerate(self.surveys)
        }

    def slots(self, step: int) -> np.ndarray:
        """The survey of every slot of the global batch (the same on every rank)."""
        share = self.share
        if step < self.warmup_steps:
            if not self.rest.any():
                raise ValueError(f"{self.folder}: a warm-up needs rest-frame surveys; none here")
            share = np.where(self.rest, share, 0) / share[self.rest].sum()
        rng = np.random.default_rng([self.seed, step])
        return rng.choice(len(self.surveys), self.batch_size, p=share)

    def batch(self, step: int) -> list[tuple[int, int, Spectrum]]:
        """(lane, row id, spectrum) for this rank's slots of the step, in slot order."""
        out = []
        for slot, survey in enumerate(self.slots(step)):
            lane = slot % self.lanes
            if lane in self.my_lanes:
                out.append((lane, *self.readers[lane, self.surveys[survey]].next()))
        return out

    def state(self) -> dict[str, list[int]]:
        return {f"{lane}/{name}": reader.state() for (lane, name), reader in self.readers.items()}

    def restore(self, state: dict[str, list[int]]) -> None:
        for (lane, name), reader in self.readers.items():
            if f"{lane}/{name}" in state:
                reader.restore(state[f"{lane}/{name}"])


class StepBatches(IterableDataset):
    """(step, this rank's records, the stream's state after them) for steps start … stop − 1:
    wrapped in a DataLoader with a worker, the shards are read while the model trains."""

    def __init__(self, stream: TrainingStream, start: int, stop: int):
        self.stream, self.start, self.stop = stream, start, stop

    def __iter__(self) -> Iterator[tuple[int, list, dict]]:
        for step in range(self.start, self.stop):
            yield step, self.stream.batch(step), self.stream.state()


def held_out_sample(folder: str | Path, n: int) -> list[Spectrum]:
    """The first n held-out spectra in shard order: the same fixed sample at every evaluation."""
    out = []
    for spectrum in ShardStream(folder, "held_out"):
        if len(out) == n:
            break
        out.append(spectrum)
    return out


def prototype_spectra(folder: str | Path, per_survey: int = 2) -> list[Spectrum]:
    """The first `per_survey` rest-frame training spectra of every survey, in shard order: the
    velocity template bank's stars, the same on every rank (reading stops once found)."""
    chosen = []
    for survey, counts in sorted(load_manifest(Path(folder))["per_survey"].items()):
        found = []
        for spectrum in training_spectra(folder, survey) if counts["rest"] else ():
            if spectrum.frame == "rest":
                found.append(spectrum)
            if len(found) == per_survey:
                break
        chosen += found
    return chosen


def packed_spectra(folder: str | Path) -> Iterator[tuple[str, bool, Spectrum]]:
    """(survey, held out, spectrum) of every packed spectrum once, in shard order, one row
    group in memory at a time: what packaging a run streams."""
    folder = Path(folder)
    for shard in load_manifest(folder)["shards"]:
        parquet = pq.ParquetFile(folder / shard["file"])
        for group in range(shard["row_groups"]):
            for row in read_rows(parquet, group):
                yield row["survey"], bool(row["held_out"]), from_row(row)


def training_spectra(
    folder: str | Path, survey: str | None = None, shards: Iterable[int] | None = None
) -> Iterator[Spectrum]:
    """Every training spectrum (of one survey; of some shards, by index) once, in shard order:
    e.g. for the resolution coverage, one row group in memory at a time."""
    folder = Path(folder)
    entries = load_manifest(folder)["shards"]
    for shard in (entries[i] for i in shards) if shards is not None else entries:
        if survey is not None and shard["survey"] != survey:
            continue
        parquet = pq.ParquetFile(folder / shard["file"])
        for group in range(shard["row_groups"]):  # the manifest's: it may list part of a file
            for row in read_rows(parquet, group):
                if not row["held_out"]:
                    yield from_row(row)


def _all_rest(counts: dict[str, int]) -> bool:
    return counts["rest"] == counts["train"] + counts["held_out"]


def _units(manifest: dict) -> dict[str, list[Unit]]:
    per_group = manifest["rows_per_group"]
    units: dict[str, list[Unit]] = {}
    first = 0
    for shard in manifest["shards"]:
        for group in range(shard["row_groups"]):
            units.setdefault(shard["survey"], []).append(
                Unit(shard["file"], group, first + group * per_group)
            )
        first += shard["spectra"]
    return units
