"""Training data as Parquet shards, streamed: `pack` turns survey folders into shards of
Spectrum records, `ShardStream` reads them back one row group at a time.

Why Parquet: spectra are variable-length arrays with a few scalars each, which Parquet stores
as list columns, compressed, in row groups that can be read one at a time (memory bounded by a
row group, not by the survey); pyarrow is a well-kept library, and any tool (pandas, polars,
DuckDB) can open a shard. Wavelengths stay float64 (Doppler shifts are tiny), flux, ivar and R
are stored as float32, the precision training uses. Each row carries its survey and its side of
the held-out split (by star, `dataset.is_held_out`); `manifest.json` counts both per survey.
A shard holds one survey, so that training can draw each survey at its own rate
(`train.stream`) however the folders were ordered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torch.utils.data import IterableDataset, get_worker_info
from tqdm import tqdm

from stargon.core.records import write_json
from stargon.core.spectrum import Spectrum
from stargon.surveys.registry import scan
from stargon.train.dataset import is_held_out

MANIFEST = "manifest.json"
ROWS_PER_GROUP = 64

SCHEMA = pa.schema([
    ("survey", pa.string()), ("held_out", pa.bool_()), ("source", pa.string()),
    ("star_id", pa.string()), ("instrument", pa.string()), ("frame", pa.string()),
    ("normalised", pa.bool_()), ("has_errors", pa.bool_()), ("synthetic", pa.bool_()),
    ("flux_unit", pa.string()), ("labels", pa.string()),
    ("segments", pa.list_(pa.int32())), ("wave", pa.list_(pa.float64())),
    ("flux", pa.list_(pa.float32())), ("ivar", pa.list_(pa.float32())),
    ("resolving_power", pa.list_(pa.float32())),
])  # fmt: skip


def to_row(spectrum: Spectrum, survey: str, held_out: bool) -> dict:
    return {
        "survey": survey, "held_out": held_out, "source": spectrum.source,
        "star_id": spectrum.star_id, "instrument": spectrum.instrument, "frame": spectrum.frame,
        "normalised": spectrum.normalised, "has_errors": spectrum.has_errors,
        "synthetic": spectrum.synthetic, "flux_unit": spectrum.flux_unit,
        "labels": json.dumps(spectrum.labels),
        "segments": [i for pair in spectrum.segments for i in pair],
        "wave": spectrum.wave, "flux": spectrum.flux.astype(np.float32),
        "ivar": spectrum.ivar.astype(np.float32),
        "resolving_power": np.atleast_1d(spectrum.resolving_power).astype(np.float32),
    }  # fmt: skip


def from_row(row: dict) -> Spectrum:
    resolving_power = np.asarray(row["resolving_power"], dtype=np.float64)
    segments = row["segments"]
    return Spectrum(
        wave=np.asarray(row["wave"]),
        flux=np.asarray(row["flux"], dtype=np.float64),
        ivar=np.asarray(row["ivar"], dtype=np.float64),
        instrument=row["instrument"],
        resolving_power=float(resolving_power[0]) if resolving_power.size == 1 else resolving_power,
        frame=row["frame"],
        normalised=row["normalised"],
        source=row["source"],
        star_id=row["star_id"],
        segments=list(zip(segments[::2], segments[1::2], strict=True)),
        labels=json.loads(row["labels"]),
        has_errors=row["has_errors"],
        flux_unit=row["flux_unit"],
        synthetic=row["synthetic"],
    )


class ShardWriter:
    """Appends spectra to `out/shard-NNNNN.parquet`, up to `shard_size` of one survey per shard
    (a buffer per survey); `close` writes `manifest.json` (per shard its survey, spectra,
    held-out and rest-frame ones, row groups; the same counts per survey; failures)."""

    def __init__(self, out: Path, shard_size: int = 2000, held_out_fraction: float = 0.1):
        self.out, self.shard_size, self.held_out_fraction = Path(out), shard_size, held_out_fraction
        self.out.mkdir(parents=True, exist_ok=True)
        self.rows: dict[str, list[dict]] = {}
        self.shards: list[dict] = []
        self.counts: dict[str, dict[str, int]] = {}
        self.failures: list[dict[str, str]] = []

    def add(self, spectrum: Spectrum, survey: str) -> None:
        held = is_held_out(spectrum.star_id, self.held_out_fraction)
        entry = self.counts.setdefault(survey, {"train": 0, "held_out": 0, "rest": 0})
        entry["held_out" if held else "train"] += 1
        entry["rest"] += spectrum.frame == "rest"
        rows = self.rows.setdefault(survey, [])
        rows.append(to_row(spectrum, survey, held))
        if len(rows) >= self.shard_size:
            self._flush(survey)

    def _flush(self, survey: str) -> None:
        rows = self.rows.pop(survey, [])
        if rows:
            path = self.out / f"shard-{len(self.shards):05d}.parquet"
            table = pa.Table.from_pylist(rows, schema=SCHEMA)
            pq.write_table(table, path, row_group_size=ROWS_PER_GROUP)
            self.shards.append({
                "file": path.name, "survey": survey, "spectra": len(rows),
                "held_out": sum(row["held_out"] for row in rows),
                "rest": sum(row["frame"] == "rest" for row in rows),
                "row_groups": -(-len(rows) // ROWS_PER_GROUP),
            })  # fmt: skip

    def close(self) -> dict:
        for survey in sorted(self.rows):
            self._flush(survey)
        manifest = {
            "format": "stargon-shards/2", "held_out_fraction": self.held_out_fraction,
            "rows_per_group": ROWS_PER_GROUP,
            "spectra": sum(s["spectra"] for s in self.shards), "per_survey": self.counts,
            "shards": self.shards, "failures": self.failures,
        }  # fmt: skip
        write_json(self.out / MANIFEST, manifest)
        return manifest


def pack(
    data: Path,
    out: Path,
    shard_size: int = 2000,
    surveys: list[str] | None = None,
    held_out_fraction: float = 0.1,
    progress: bool = True,
) -> dict:
    """Every spectrum under `data`'s survey folders into shards (`ShardWriter`); returns the
    manifest. Files that fail are listed in it and the rest goes on."""
    folders = sorted(p for p in Path(data).iterdir() if p.is_dir() and not p.name.startswith("."))
    if surveys:
        folders = [f for f in folders if f.name in surveys]
    writer = ShardWriter(out, shard_size, held_out_fraction)
    for folder in tqdm(folders, desc="packing", unit="survey", disable=not progress):
        for outcome in scan(folder):
            if outcome.error:
                writer.failures.append({"file": str(outcome.path), "reason": outcome.error})
            for spectrum in outcome.spectra:
                writer.add(spectrum, folder.name)
    return writer.close()


class ShardStream(IterableDataset):
    """Spectra of a packed folder, streamed: this DDP rank reads shards rank, rank + W, … (in an
    order shuffled per epoch, the same on every rank), and each DataLoader worker a share of
    those; a shard is read one row group at a time. `split`: "train", "held_out" or "all"."""

    def __init__(
        self, folder: Path, split: str = "train", rank: int = 0, world_size: int = 1, seed: int = 0
    ):
        if split not in ("train", "held_out", "all"):
            raise ValueError(f"split must be train, held_out or all, got {split!r}")
        self.folder, self.split = Path(folder), split
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0
        manifest = load_manifest(self.folder)
        self.shards = [entry["file"] for entry in manifest["shards"]]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def my_shards(self) -> list[str]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.shards))
        mine = [self.shards[i] for i in order[self.rank :: self.world_size]]
        worker = get_worker_info()
        return mine if worker is None else mine[worker.id :: worker.num_workers]

    def __iter__(self) -> Iterator[Spectrum]:
        for name in self.my_shards():
            shard = pq.ParquetFile(self.folder / name)
            for group in range(shard.num_row_groups):
                for row in read_rows(shard, group):
                    if self.split == "all" or row["held_out"] == (self.split == "held_out"):
                        yield from_row(row)


def load_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {MANIFEST} (make shards with `stargon pack`)")
    return json.loads(path.read_text())


def read_rows(shard: pq.ParquetFile, group: int) -> list[dict]:
    """The rows of one row group as dicts (list cells as numpy arrays)."""
    table = shard.read_row_group(group)
    return [
        {name: _value(table.column(name)[i]) for name in table.column_names}
        for i in range(table.num_rows)
    ]


def _value(scalar: pa.Scalar):
    """A list cell as a numpy array (no Python floats), any other cell as a Python value."""
    if isinstance(scalar, pa.ListScalar):
        return scalar.values.to_numpy(zero_copy_only=False)
    return scalar.as_py()
