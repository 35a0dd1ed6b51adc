"""Packed training data: `stargon pack` writes Parquet shards that stream back every spectrum
exactly once per epoch across DDP ranks and DataLoader workers, as the record it was read as,
with memory that does not grow with the number of shards."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
from torch.utils.data import DataLoader

from stargon.core.spectrum import Spectrum
from stargon.surveys.registry import iter_spectra
from stargon.train.shards import MANIFEST, ShardStream, ShardWriter
from tests.memory import peak_bytes

PICKS = {"miles": "MILES_*.fits", "stelib": "STELIB_*.fits", "lamost_dr8": "*/spec-*.fits.gz"}


def small_data(data, folder):
    for survey, pattern in PICKS.items():
        (folder / survey).mkdir(parents=True)
        for path in sorted(data.glob(f"{survey}/{pattern}"))[:5]:
            (folder / survey / path.name).symlink_to(path)
    return folder


def streamed(folder, rank: int, world_size: int, split: str = "all", epoch: int = 0) -> list:
    stream = ShardStream(folder, split, rank, world_size, seed=7)
    stream.set_epoch(epoch)
    loader = DataLoader(stream, batch_size=None, num_workers=2)
    return list(loader)


def test_pack_then_stream_gives_every_spectrum_once_per_epoch_across_two_ranks(data, tmp_path):
    raw = small_data(data, tmp_path / "data")
    shards = tmp_path / "shards"
    subprocess.run([sys.executable, "-m", "stargon", "pack", str(raw), "--out", str(shards),
                    "--shard-size", "3", "--held-out-fraction", "0.3"], check=True)  # fmt: skip
    manifest = json.loads((shards / MANIFEST).read_text())
    originals = {(s.source, s.star_id): s for s in iter_spectra(raw)}
    assert manifest["spectra"] == len(originals) == 15 and len(manifest["shards"]) == 6
    for shard in manifest["shards"]:  # one survey per shard (3 + 2 of each), as it says
        surveys = pq.read_table(shards / shard["file"], columns=["survey"])["survey"].to_pylist()
        assert set(surveys) == {shard["survey"]} and len(surveys) == shard["spectra"]
    for epoch in (0, 1):
        ranks = [streamed(shards, rank, 2, epoch=epoch) for rank in (0, 1)]
        assert all(ranks)
        keys = Counter((s.source, s.star_id) for part in ranks for s in part)
        assert set(keys) == set(originals) and set(keys.values()) == {1}
    for spectrum in ranks[0] + ranks[1]:
        original = originals[(spectrum.source, spectrum.star_id)]
        np.testing.assert_array_equal(spectrum.wave, original.wave)
        np.testing.assert_allclose(spectrum.flux, original.flux, rtol=1e-6)
        np.testing.assert_allclose(spectrum.ivar, original.ivar, rtol=1e-6)
        assert (spectrum.segments, spectrum.labels) == (original.segments, original.labels)
        assert np.allclose(spectrum.resolving_power, original.resolving_power, rtol=1e-6)
    train = {s.star_id for s in streamed(shards, 0, 1, "train")}
    held = {s.star_id for s in streamed(shards, 0, 1, "held_out")}
    assert train and held and not train & held
    counts = manifest["per_survey"]
    assert sum(c["held_out"] for c in counts.values()) == len(streamed(shards, 0, 1, "held_out"))


def synthetic(i: int) -> Spectrum:
    wave = np.linspace(5000, 5100, 3000)
    return Spectrum(wave, 1 + 0.01 * np.sin(wave + i), np.full(3000, 1e4), "test", 5000.0,
                    "rest", True, f"synthetic-{i}", f"S{i}", synthetic=True)  # fmt: skip


def test_streaming_memory_does_not_grow_with_the_number_of_shards(tmp_path):
    peaks = {}
    for n_shards in (10, 100):
        writer = ShardWriter(tmp_path / str(n_shards), shard_size=4)
        for i in range(4 * n_shards):
            writer.add(synthetic(i), "test")
        assert len(writer.close()["shards"]) == n_shards
        peaks[n_shards] = peak_bytes(ShardStream(tmp_path / str(n_shards), "all"))
    assert peaks[100] <= 1.2 * peaks[10], peaks
