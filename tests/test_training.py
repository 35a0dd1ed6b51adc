"""Training as users run it: the CLI, a real `kill -9` and `--resume`, and torchrun with gloo."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stargon.evaluate.release import view_priors
from stargon.model.batch import make_batch
from stargon.model.checkpoint import load_checkpoint
from stargon.model.decoder import ModelConfig
from stargon.model.fitter import Fitter
from stargon.model.gon import StarGON
from stargon.model.release import Release
from stargon.surveys import read_file
from stargon.train.stream import packed_spectra
from stargon.train.warm_start import residual_functions

pytestmark = pytest.mark.slow  # end to end: training subprocesses, kill -9, torchrun

TINY = [
    "--latent-dim", "4", "--n-basis", "4", "--n-pixels", "200", "--batch-size", "4",
    "--checkpoint-every", "1", "--warmup-steps", "1000", "--no-package", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_data(data, tmp_path_factory) -> Path:
    """A dozen real rest-frame spectra from three libraries, copied into a temporary folder."""
    folder = tmp_path_factory.mktemp("tiny")
    picks = {
        "miles": sorted(data.glob("miles/MILES_*.fits"))[:8],
        "gaia_rvs": sorted(data.glob("gaia_rvs/[GHK]*.csv"))[:4],
        "stelib": sorted(data.glob("stelib/STELIB_*.fits"))[:4],
    }
    for survey, files in picks.items():
        (folder / survey).mkdir()
        for f in files:
            shutil.copy(f, folder / survey / f.name)
    shutil.copy(data / "miles/paramsMILES_v9.1.txt", folder / "miles")
    shutil.copy(data / "miles/MILES_params.db", folder / "miles")
    return folder


def train_command(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "stargon", "train", "--data", str(data), "--out", str(out),
            "--steps", str(steps), *TINY, *extra]  # fmt: skip


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    latest = json.loads((run / "latest.json").read_text())
    model, document, _ = load_checkpoint(run / latest["checkpoint"])
    assert document["card"]["trainer"]["step"] == latest["step"]
    return model.state_dict()


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def wait_for_step(run: Path, step: int) -> None:
    """Until the run's latest checkpoint is at `step` or later (5 min at most)."""
    deadline = time.time() + 300
    while time.time() < deadline:
        latest = run / "latest.json"
        if latest.exists() and json.loads(latest.read_text())["step"] >= step:
            return
        time.sleep(0.05)


def assert_kill_and_resume_match(command, out: Path, steps: int) -> None:
    """Run `command` straight, and again killed (-9) mid-run then resumed: same weights, loss
    and one metrics record per logged step."""
    straight, killed = out / "straight", out / "killed"
    subprocess.run(command(straight), check=True, capture_output=True)
    process = subprocess.Popen(
        command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_step(killed, 3)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    stopped_at = json.loads((killed / "latest.json").read_text())["step"]
    assert 3 <= stopped_at < steps, "the kill must land mid-run"

    subprocess.run([*command(killed), "--resume"], check=True, capture_output=True)
    a, b = final_weights(straight), final_weights(killed)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-7), name
    steps_logged = [m["step"] for m in metrics(killed)]
    assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == steps
    assert metrics(killed)[-1]["loss"] == pytest.approx(metrics(straight)[-1]["loss"], rel=1e-5)


def test_kill_minus_9_then_resume_matches_an_uninterrupted_run(tiny_data, tmp_path):
    assert_kill_and_resume_match(
        lambda out: train_command(tiny_data, out, 8, "--seed", "3"), tmp_path, 8
    )


def test_a_run_grown_from_a_trained_model_starts_from_its_spectra(tiny_data, tmp_path):
    subprocess.run(train_command(tiny_data, tmp_path / "small", 2), check=True, capture_output=True)
    trained = tmp_path / "small" / "checkpoints" / "step-0000002"
    grow = train_command(tiny_data, tmp_path / "grown", 1, "--init-from", str(trained), "--lr", "0")
    subprocess.run([*grow, "--n-basis", "6"], check=True, capture_output=True)
    small, _, _ = load_checkpoint(trained)
    grown, _, _ = load_checkpoint(tmp_path / "grown" / "checkpoints" / "step-0000001")
    assert grown.config.n_basis == 6
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    wave = torch.linspace(4000.0, 7000.0, 500, dtype=torch.float64)
    with torch.no_grad():
        spectra = [m.observe(z, m.observation_basis(wave, 30.0, 2000.0)) for m in (small, grown)]
    torch.testing.assert_close(spectra[1], spectra[0], rtol=0, atol=1e-6)
    rms = grown.decoder.table.detach().pow(2).mean(-1).sqrt()  # new functions: the old ones' size
    torch.testing.assert_close(rms[5:], rms[1:5].median().expand(2), rtol=1e-4, atol=0)
    refused = subprocess.run([*grow, "--latent-dim", "5"], capture_output=True, text=True)
    message = "".join(refused.stderr.split())  # the console wraps long lines
    assert refused.returncode != 0 and f"{trained}:amodelwithothersettings" in message
    assert "latent_dim=4,not5" in message


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", "2", "--module", "stargon"]  # fmt: skip


def on_one_and_two_processes(command, tmp_path: Path) -> tuple[Path, Path]:
    """Run folders of `command(out)` run plainly and under a 2-process torchrun (gloo)."""
    single, double = tmp_path / "single", tmp_path / "ddp"
    subprocess.run(command(single), check=True, capture_output=True)
    result = subprocess.run(TORCHRUN + command(double)[3:], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return single, double


def test_two_process_gloo_ddp_equals_one_process_on_the_same_global_batch(tiny_data, tmp_path):
    runs = on_one_and_two_processes(lambda out: train_command(tiny_data, out, 1), tmp_path)
    assert_same_training(*runs, steps=1)


def assert_same_training(single: Path, double: Path, steps: int) -> None:
    """The same losses and weights (which moved from the initial ones) from 1 and 2 processes."""
    assert [m["loss"] for m in metrics(double)] == pytest.approx(
        [m["loss"] for m in metrics(single)], rel=1e-5
    )
    a, b = final_weights(single), final_weights(double)
    torch.manual_seed(0)
    start = StarGON(ModelConfig(latent_dim=4, n_basis=4)).state_dict()
    lr = json.loads((single / "config.json").read_text())["lr"]
    for name in a:
        assert not torch.equal(a[name], start[name]), f"{name} did not train"
        # Adam's step is lr·m̂/(√v̂ + ε): an entry whose gradient is at round-off level (|g| ~ ε,
        # e.g. where reads nearly cancel) moves by a fraction of lr that depends on the order of
        # the sum, which differs between one process and an all-reduce of two. Every entry stays
        # within Adam's steps·lr; all but 1 % of each tensor agree to round-off.
        difference = (a[name] - b[name]).abs()
        assert difference.max() <= steps * lr, name
        tight = torch.isclose(a[name], b[name], rtol=1e-5, atol=1e-5)
        assert tight.double().mean() >= 0.99, f"{name}: {int((~tight).sum())} entries differ"


def test_held_out_chi2_is_logged_for_the_weights_of_that_step(tiny_data, tmp_path):
    """`--held-out-every 3`: records at steps 3 and 6 carry the held-out χ²/n, and the last one
    is the mean χ²/n after the GON step of the final weights on held-out stars only."""
    from stargon.train.distributed import Context
    from stargon.train.loop import TrainConfig, held_out_chi2
    from stargon.train.sources import MemorySource

    run = tmp_path / "run"
    extra = ("--held-out-every", "3", "--held-out-fraction", "0.3", "--seed", "1")
    subprocess.run(train_command(tiny_data, run, 6, *extra), check=True, capture_output=True)
    logged = {r["step"]: r["held_out_chi2"] for r in metrics(run) if "held_out_chi2" in r}
    assert sorted(logged) == [3, 6]
    assert all(0 < value < 1e6 for value in logged.values())

    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    source = MemorySource(config, Context(0, 1, torch.device("cpu")))
    model, _, tensors = load_checkpoint(run / "checkpoints" / "step-0000006")
    source.restore({"velocities": tensors["source.velocities"]}, {})
    spectra, velocities, ids = source.held_out(model, rest_only=True)
    held = set(json.loads((run / "split.json").read_text())["held_out_star_ids"])
    assert spectra and {s.star_id for s in spectra} <= held
    again = held_out_chi2(model, spectra, velocities, ids, config)
    assert again == pytest.approx(logged[6], rel=1e-5)


@pytest.fixture(scope="module")
def packed(data, tmp_path_factory) -> Path:
    """Shards of 8 MILES (rest frame) and 6 LAMOST DR8 spectra (observed: velocities to find)."""
    folder = tmp_path_factory.mktemp("packed")
    for survey, pattern, n in (("miles", "MILES_*.fits", 8), ("lamost_dr8", "*/spec-*.fits.gz", 6)):
        (folder / "data" / survey).mkdir(parents=True)
        for path in sorted(data.glob(f"{survey}/{pattern}"))[:n]:
            (folder / "data" / survey / path.name).symlink_to(path)
    for name in ("paramsMILES_v9.1.txt", "MILES_params.db"):
        (folder / "data/miles" / name).symlink_to(data / "miles" / name)
    subprocess.run([sys.executable, "-m", "stargon", "pack", str(folder / "data"), "--out",
                    str(folder / "shards"), "--shard-size", "4", "--held-out-fraction", "0.2"],
                   check=True, capture_output=True)  # fmt: skip
    return folder / "shards"


def shard_command(shards: Path, out: Path, steps: int) -> list[str]:
    """Streamed training whose velocities are found from step 2 on, in periods of 3 steps."""
    tiny = [a for a in TINY if a not in ("--warmup-steps", "1000")]
    return [sys.executable, "-m", "stargon", "train", "--shards", str(shards), "--out", str(out),
            "--steps", str(steps), *tiny, "--warmup-steps", "2", "--rv-every", "3",
            "--seed", "2", "--log-every", "1"]  # fmt: skip


def test_streamed_training_on_two_processes_equals_one_process(packed, tmp_path):
    single, double = on_one_and_two_processes(lambda out: shard_command(packed, out, 4), tmp_path)
    assert_same_training(single, double, steps=4)
    found = [
        load_checkpoint(run / "checkpoints/step-0000004")[1]["card"]["trainer"]["source"]["found"]
        for run in (single, double)
    ]
    velocities = [{(lane, i): v for lane, pairs in f.items() for i, v in pairs} for f in found]
    assert velocities[0] and velocities[0].keys() == velocities[1].keys()
    for key, v in velocities[0].items():  # found by the step-2 model of each run
        assert v == pytest.approx(velocities[1][key], abs=0.05), key


def test_a_streamed_run_killed_with_9_leaves_no_process_behind(packed, tmp_path):
    """The reader a streamed run forks (a DataLoader worker) dies with it, within 10 s."""
    out = tmp_path / "run"
    process = subprocess.Popen(
        shard_command(packed, out, 200), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_step(out, 3)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.time() + 10
    while processes_of(out) and time.time() < deadline:
        time.sleep(0.2)
    assert not processes_of(out), "left running after the trainer was killed"


def processes_of(run: Path) -> list[int]:
    """Live (not zombie) processes whose command line names the run folder."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # not a process, or gone meanwhile
        if str(run) in command and state != "Z":
            found.append(int(entry.name))
    return found


def test_streamed_training_killed_and_resumed_matches_an_uninterrupted_run(packed, tmp_path):
    assert_kill_and_resume_match(lambda out: shard_command(packed, out, 8), tmp_path, 8)


def test_a_run_trained_from_shards_is_released_without_its_data(packed, tmp_path):
    """Train from shards, then `stargon release` with no data folder anywhere (STARGON_DATA
    points nowhere): the release holds every real star streamed from the shards with its
    latent and velocity, and it fits a MILES star."""
    run = tmp_path / "run"
    subprocess.run(shard_command(packed, run, 20), check=True, capture_output=True)
    nowhere = {**os.environ, "STARGON_DATA": str(tmp_path / "no-data")}
    command = [sys.executable, "-m", "stargon", "release", str(run)]
    result = subprocess.run(command, capture_output=True, text=True, env=nowhere)
    assert result.returncode == 0, result.stderr[-3000:]
    released = Release.load(run / "model")
    manifest = json.loads((packed / "manifest.json").read_text())
    counted = sum(c["train"] + c["held_out"] for c in manifest["per_survey"].values())
    assert len(released.stars) == len(released.star_latents) == counted == 14
    assert {s["survey"] for s in released.stars} == {"miles", "lamost_dr8"}
    lamost = [s["v_kms"] for s in released.stars if s["survey"] == "lamost_dr8"]
    assert all(v != 0.0 for v in lamost)  # found by the released model, not left at 0
    assert released.prior is not None and released.coverage is not None
    assert released.card["held_out_metrics"]  # the held-out stars fitted
    miles = next(s for _, _, s in packed_spectra(packed) if s.instrument == "MILES")
    (fit,) = Fitter.from_release(released).fit([miles])
    assert fit.v_kms == 0.0 and np.isfinite(fit.chi2_dof) and fit.chi2_dof < 1e3


def test_a_run_from_a_data_folder_is_released_with_its_stars(tiny_data, tmp_path):
    run = tmp_path / "run"
    subprocess.run(train_command(tiny_data, run, 3), check=True, capture_output=True)
    command = [sys.executable, "-m", "stargon", "release", str(run), "--no-evaluate"]
    subprocess.run(command, check=True, capture_output=True)
    released = Release.load(run / "model")
    assert len(released.stars) == len(released.star_latents) == 16
    assert {s["survey"] for s in released.stars} == {"miles", "gaia_rvs", "stelib"}
    assert released.held_out_star_ids == {s["star_id"] for s in released.stars if s["held_out"]}
    assert released.prototypes.shape == (released.prior.means.shape[0] + 3, 4)
    # A learning curve's point: an earlier checkpoint, packaged as it was at that step.
    earlier = subprocess.run([*command, "--step", "2", "--out", str(tmp_path / "at-2")],
                             check=True, capture_output=True)  # fmt: skip
    at_2 = Release.load(tmp_path / "at-2")
    assert at_2.card["trained_steps"] == 2 and released.card["trained_steps"] == 3
    step_2, _, _ = load_checkpoint(run / "checkpoints" / "step-0000002")
    for name, weight in at_2.model.state_dict().items():
        assert torch.equal(weight, step_2.state_dict()[name]), name
    assert earlier.returncode == 0
    missing = subprocess.run([*command, "--step", "7"], capture_output=True, text=True)
    assert missing.returncode != 0 and "no checkpoint of step 7" in missing.stderr


def test_each_instruments_view_draws_from_stars_seen_at_its_wavelengths(tmp_path):
    """An optical survey's latents say nothing of the H band: the APOGEE view draws from the
    H-band survey's density, the optical views from the optical one's, and a view no survey
    spans enough (Gaia RVS here) from the density over all real stars; all round-trip through
    a release folder."""
    rng = np.random.default_rng(0)
    dim = Release.load().model.config.latent_dim
    optical = rng.normal(0.0, 0.3, (60, dim)) + 3.0
    infrared = rng.normal(0.0, 0.3, (60, dim)) - 3.0
    latents, surveys = np.vstack([optical, infrared]), np.array(["opt"] * 60 + ["ir"] * 60)
    priors = view_priors(latents, surveys, {"opt": [3500.0, 7000.0], "ir": [15100.0, 17000.0]})
    assert priors["apogee"].sample(200).mean() == pytest.approx(-3.0, abs=0.2)
    for view in ("miles", "galah", "lamost", "boss"):
        assert priors[view].sample(200).mean() == pytest.approx(3.0, abs=0.2), view
    assert "gaia_rvs" not in priors

    release = Release.load()
    release.view_priors = priors
    loaded = Release.load(release.save(tmp_path / "release"))
    np.testing.assert_allclose(loaded.prior_for("apogee").means, priors["apogee"].means)
    np.testing.assert_allclose(loaded.prior_for("gaia_rvs").means, release.prior.means)


def test_a_grown_model_s_new_functions_start_along_what_its_spectra_lack(data):
    """Twelve MILES spectra made of the model's z = 0 spectrum plus ± one of two functions of
    ln λ the model does not have, six spectra each: the two residual functions found from them
    span both (as the observations' LSF lets them be seen), whatever the signs."""
    model = Release.load(None).model
    miles = [read_file(path)[0] for path in sorted(data.glob("miles/MILES_*.fits"))[:12]]
    batch = make_batch(miles)
    decoder = model.decoder
    ln_table = decoder.ln_min + decoder.levels[0].step * torch.arange(decoder.config.n_table)
    periods = torch.tensor([[6e-3], [4.3e-3]], dtype=ln_table.dtype)  # ~30 and 21 Å at 5,000 Å
    lacking = torch.sin(2 * math.pi * ln_table / periods).to(decoder.table.dtype)
    ln_rest = decoder.rest_frame(batch.wave, batch.v_kms)
    with torch.no_grad():
        basis = model.basis(batch)
        plain = model.observe(torch.zeros(len(miles), model.config.latent_dim), basis)
        seen = decoder.read(decoder.pyramid(lacking), ln_rest, batch.resolving_power)[0]
    which = torch.arange(12) // 6  # spectra 0–5 lack the first function, 6–11 the second
    signs = torch.tensor([1.0, -1.0] * 6)[:, None]
    added = 0.03 * signs * seen[which, torch.arange(12)]
    found = residual_functions(model, [dataclasses.replace(batch, flux=plain + added)], 2)
    covered = (found.abs() > 0.1 * found.abs().max()).any(0).nonzero()
    region = slice(int(covered.min()) + 1000, int(covered.max()) - 1000)
    span = torch.linalg.qr(found[:, region].T.double())[0]  # orthonormal columns
    for function in lacking[:, region].double():
        assert (span.T @ function).norm() / function.norm() > 0.9


def test_each_re_estimate_of_the_velocities_logs_how_far_they_moved(packed, tmp_path):
    """From a data folder of MILES (rest frame) and LAMOST DR8 (observed) spectra, velocities
    re-found every 2 steps: the records after the second and third estimates carry LAMOST's
    median change, which is that of the velocities the checkpoints hold."""
    tiny = [a for a in TINY if a not in ("--warmup-steps", "1000")]
    out = tmp_path / "run"
    command = [sys.executable, "-m", "stargon", "train", "--data", str(packed.parent / "data"),
               "--out", str(out), "--steps", "5", *tiny, "--warmup-steps", "0",
               "--rv-every", "2", "--log-every", "1"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    shifts = {m["step"]: m["velocity_shift_kms"] for m in metrics(out) if "velocity_shift_kms" in m}
    assert list(shifts) == [3, 5]  # re-estimated at steps 2 and 4; the first estimate is none
    for step, shift in shifts.items():
        before, after = (
            load_checkpoint(out / f"checkpoints/step-{s:07d}")[2]["source.velocities"].numpy()
            for s in (step - 1, step)
        )
        observed = before != 0.0
        assert list(shift) == ["lamost_dr8"]
        assert shift["lamost_dr8"] == pytest.approx(np.median((after - before)[observed]))
