"""The training stream over shards (`train.stream`): a global batch that does not depend on
the number of processes, surveys drawn at their rate, a resume that goes on where it stood,
and memory that does not grow with the number of shards."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from stargon.core.spectrum import Spectrum
from stargon.train.dataset import is_held_out
from stargon.train.shards import ShardWriter
from stargon.train.stream import TrainingStream
from tests.memory import peak_bytes

SIZES = {"big": 90, "small": 10}  # spectra per survey


def synthetic(survey: str, i: int) -> Spectrum:
    wave = np.linspace(5000, 5100, 500)
    return Spectrum(wave, 1 + 0.01 * np.sin(wave + i), np.full(500, 1e4), "test", 5000.0,
                    "rest", True, f"{survey}-{i}", f"{survey}-star-{i}",
                    synthetic=True)  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    writer = ShardWriter(folder, shard_size=20, held_out_fraction=0.2)
    for survey, n in SIZES.items():
        for i in range(n):
            writer.add(synthetic(survey, i), survey)
    writer.close()
    return folder


def global_batch(shards, step: int, world_size: int, **options) -> list[tuple[int, str]]:
    """(lane, source) of every slot, gathered over `world_size` ranks in slot order."""
    parts = [TrainingStream(shards, 8, 4, seed=3, rank=r, world_size=world_size, **options)
             for r in range(world_size)]  # fmt: skip
    merged = []
    for stream in parts:
        for s in range(step):
            stream.batch(s)
        merged += [(lane, spectrum.source) for lane, _, spectrum in stream.batch(step)]
    return sorted(merged, key=lambda item: item[0])  # a lane's slots keep their order


def test_the_global_batch_is_the_same_for_one_two_and_four_processes(shards):
    for step in (0, 5, 17):
        one = global_batch(shards, step, 1)
        assert len(one) == 8
        assert global_batch(shards, step, 2) == one == global_batch(shards, step, 4)


def test_surveys_are_drawn_at_their_rate_and_held_out_stars_never(shards):
    stream = TrainingStream(shards, 8, 2, seed=1, balance=0.5)
    drawn = [spectrum for step in range(300) for _, _, spectrum in stream.batch(step)]
    counts = Counter(s.source.split("-")[0] for s in drawn)
    train = {name: c["train"] for name, c in stream.counts.items()}
    expected = np.sqrt(train["big"]) / (np.sqrt(train["big"]) + np.sqrt(train["small"]))
    assert counts["big"] / len(drawn) == pytest.approx(expected, abs=0.03)
    assert not any(is_held_out(s.star_id, 0.2) for s in drawn)
    per_source = Counter(s.source for s in drawn if s.source.startswith("big"))
    assert len(per_source) == train["big"]  # every training spectrum of the survey came round


def test_a_stream_restored_from_its_state_goes_on_as_the_uninterrupted_one(shards):
    straight = TrainingStream(shards, 8, 2, seed=5)
    resumed = TrainingStream(shards, 8, 2, seed=5)
    for step in range(23):
        straight.batch(step)
        resumed.batch(step)
    state = resumed.state()
    fresh = TrainingStream(shards, 8, 2, seed=5)
    fresh.restore(state)
    for step in range(23, 60):
        expected = [(lane, i) for lane, i, _ in straight.batch(step)]
        assert [(lane, i) for lane, i, _ in fresh.batch(step)] == expected


def test_a_batch_size_that_the_lanes_do_not_divide_is_refused(shards):
    with pytest.raises(ValueError, match="multiple of the stream lanes"):
        TrainingStream(shards, 6, 4)


def drawing(folder, steps: int):
    """The stream's batches, the stream made inside (its units list counts too)."""
    stream = TrainingStream(folder, 8, 2)
    for step in range(steps):
        yield stream.batch(step)


def test_stream_memory_does_not_grow_with_the_number_of_shards(tmp_path):
    peaks = {}
    for n_shards in (10, 100):
        writer = ShardWriter(tmp_path / str(n_shards), shard_size=8, held_out_fraction=0.0)
        for i in range(8 * n_shards):
            writer.add(synthetic("big", i), "big")
        writer.close()
        peaks[n_shards] = peak_bytes(drawing(tmp_path / str(n_shards), steps=n_shards))
    assert peaks[100] <= 1.2 * peaks[10], peaks


def test_coverage_counted_in_shares_and_merged_equals_one_pass(data):
    """What each DDP rank counts over its shards, merged, is the coverage of all of them."""
    from stargon.model.decoder import ModelConfig
    from stargon.surveys.registry import iter_spectra
    from stargon.train.coverage import CoverageCounter, resolution_coverage

    spectra = [s for folder in ("miles", "stelib", "lamost_dr1")
               for s, _ in zip(iter_spectra(data / folder), range(6), strict=False)]  # fmt: skip
    config = ModelConfig()
    centres, whole = resolution_coverage(spectra, config, count=4)
    shares = [CoverageCounter(config, count=4, chunk=2) for _ in range(3)]
    for i, spectrum in enumerate(spectra):
        shares[i % 3].add(spectrum)
    for share in shares[1:]:
        shares[0].absorb(share)
    merged_centres, merged = shares[0].result()
    assert (whole > 0).sum() > 100  # enough bins reached by 4 spectra to mean something
    np.testing.assert_array_equal(merged, whole)
    np.testing.assert_array_equal(merged_centres, centres)
