"""Fitting at survey scale: batched fits equal one-at-a-time fits, `stargon fit` resumes after a
kill without writing a spectrum twice, and its exit status and errors say what failed."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import torch

from stargon.model.batch import make_batch
from stargon.model.fitter import Fitter
from stargon.model.release import Release
from stargon.surveys import read_file

LAMOST_DR8 = "lamost_dr8/20220313_CCF_test_grouped_fits"
MIXED = [
    "lamost_dr1/SampleFits/spec-55862-B6212_sp06-003.fits",
    "miles/MILES_res2.50_star_m0001V.fits",
    "stelib/STELIB_v3.2_HD002857.fits",
    "stelib/STELIB_v3.2_HD157856.fits",  # valid over a third of its range: a delicate continuum
]


@pytest.fixture(scope="module")
def fitter() -> Fitter:
    return Fitter.from_release(Release.load(None))


def lamost_files(data, n: int) -> list:
    return sorted((data / LAMOST_DR8).iterdir())[:n]


def test_a_batch_fits_each_spectrum_as_it_is_fitted_alone(data, fitter):
    """Observed-frame LAMOST DR8 stars (v fitted) with rest-frame MILES and STELIB stars (v
    held) of other lengths, in one padded batch: RV within 0.1 σ_v, χ²/dof within 1 %, latents
    within 0.1 σ_z of the spectrum fitted alone, and the posterior within 0.05."""
    model = fitter.model
    spectra = [read_file(path)[0] for path in lamost_files(data, 6)]
    spectra += [read_file(data / name)[0] for name in MIXED]
    together = fitter.fit_batch(spectra)  # one padded batch, instruments mixed
    for spectrum, batched in zip(spectra, together, strict=True):
        (alone,) = fitter.fit([spectrum])
        assert abs(batched.v_kms - alone.v_kms) <= 0.1 * alone.v_err_kms, spectrum.source
        assert batched.chi2_dof == pytest.approx(alone.chi2_dof, rel=0.01), spectrum.source
        np.testing.assert_array_less(np.abs(batched.z - alone.z), 0.1 * alone.z_err + 1e-6)
        assert reported_posterior(model, batched) == pytest.approx(
            reported_posterior(model, alone), abs=0.05
        )
        assert batched.n_pix == alone.n_pix and batched.model_flux.shape == alone.model_flux.shape
    assert all(r.v_kms == 0.0 for r, s in zip(together, spectra, strict=True) if s.frame == "rest")


def test_the_fit_ends_at_the_maximum_of_the_posterior(data, fitter):
    """From each fitted (z, v), half a σ along any latent or along v — the basis read afresh
    at that v, the continuum solved again — never lowers −2 ln posterior (beyond float32
    round-off): the fit stops at the MAP, not short of it (a fit 0.25 σ off fails)."""
    model, pyramid = fitter.model, fitter.pyramid
    spectra = [read_file(path)[0] for path in lamost_files(data, 3)]
    spectra += [read_file(data / name)[0] for name in MIXED[1:]]
    fits = fitter.fit(spectra)
    for spectrum, fit in zip(spectra, fits, strict=True):
        dim = len(fit.z)
        moves = np.zeros((2 * dim + 3, dim + 1))
        for axis, size in enumerate([*fit.z_err, fit.v_err_kms]):
            moves[1 + 2 * axis : 3 + 2 * axis, axis] = [0.5 * size, -0.5 * size]
        if spectrum.frame == "rest":
            moves = moves[:-2]  # v is held at 0
        z = torch.as_tensor(fit.z + moves[:, :dim], dtype=torch.float32)
        v = torch.as_tensor(fit.v_kms + moves[:, dim], dtype=torch.float32)
        batch = make_batch([spectrum] * len(moves), v_kms=v, design_dtype=torch.float64)
        with torch.no_grad():
            chi2 = model.chi2(z, model.basis(batch, pyramid), batch) * batch.n_valid
            posterior = (chi2 + model.prior_term(z)).double().numpy()
        assert posterior[0] == pytest.approx(reported_posterior(model, fit), rel=1e-5)
        slack = 1e-3 + 1e-6 * posterior[0]
        lowest = posterior[1:].min() - posterior[0]
        assert lowest >= -slack, (spectrum.source, posterior - posterior[0])


def reported_posterior(model, fit) -> float:
    """−2 ln posterior of a fit: χ² + zᵀΛz."""
    dof = fit.n_pix - len(fit.z) - 1
    return fit.chi2_dof * dof + float(model.prior_term(torch.as_tensor(fit.z)))


def _fit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "stargon", "fit", *args]


def _sources(out) -> list[str]:
    return [row["source"] for row in csv.DictReader(out.open())]


def test_fit_resumes_after_a_kill_and_writes_each_source_once(data, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    files = lamost_files(data, 24)
    for path in files:
        (inputs / path.name).symlink_to(path)
    out = tmp_path / "fits.csv"
    command = _fit_command(str(inputs), "--out", str(out), "--batch-size", "4", "--device", "cpu")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and len(out.read_text().splitlines()) >= 1 + 8:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed = _sources(out)
    assert 8 <= len(killed) < len(files)
    finished = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    counts = Counter(_sources(out))
    assert set(counts) == {str(inputs / path.name) for path in files}
    assert set(counts.values()) == {1}
    assert f"{len(killed)} kept from before" in " ".join(finished.stdout.split())


def test_reading_in_worker_processes_gives_the_same_rows(data, tmp_path):
    files = [str(path) for path in lamost_files(data, 3)]
    rows = {}
    for workers in ("0", "1"):
        out = tmp_path / f"fits_{workers}.csv"
        command = _fit_command(*files, "--out", str(out), "--device", "cpu", "--workers", workers)
        subprocess.run(command, check=True, capture_output=True)
        rows[workers] = list(csv.DictReader(out.open()))
    assert len(rows["0"]) == 3 and rows["1"] == rows["0"]


def test_fit_exits_non_zero_and_names_each_input_that_failed(data, tmp_path):
    broken = tmp_path / "broken.fits"
    broken.write_bytes(b"SIMPLE  = T" + b" " * 100)
    missing = tmp_path / "nowhere.fits"
    good = lamost_files(data, 1)[0]
    out = tmp_path / "fits.csv"
    result = subprocess.run(
        _fit_command(str(missing), str(broken), str(good), "--out", str(out), "--device", "cpu"),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "failed" in line]
    assert any(str(missing) in line and "no such file" in line for line in lines), lines
    assert any(str(broken) in line for line in lines), lines
    assert "2 inputs failed" in result.stderr
    assert _sources(out) == [str(good)]
    nothing = subprocess.run(
        _fit_command(str(missing), "--out", str(tmp_path / "none.csv")),
        capture_output=True,
        text=True,
    )
    assert nothing.returncode == 1 and "Traceback" not in nothing.stderr


FREE_AND_MEASURE = """
import numpy as np
from stargon.model.devices import keep_freed_memory
if {keep}:
    assert keep_freed_memory()
def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
before = resident_mb()
block = np.ones(300 * 2**20 // 8)
del block
print(resident_mb() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_the_cli_keeps_freed_memory_for_reuse():
    """After `keep_freed_memory` (called by the CLI) a freed 300 MB block stays in the process
    for the next temporaries; by default glibc hands it back to the system at once."""
    kept = {}
    for keep in (False, True):
        script = FREE_AND_MEASURE.format(keep=keep)
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        kept[keep] = float(run.stdout)
    assert kept[False] < 50 and kept[True] > 250, kept
