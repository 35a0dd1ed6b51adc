"""The `stargon` command: `data check` on the whole shared data folder (table and JSON), and
what each command says when the user has something to fix."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import pytest

from stargon import __version__


def stargon(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stargon", *args], capture_output=True, text=True, check=check
    )


def test_version():
    assert stargon("--version").stdout.strip() == f"stargon {__version__}"


def test_data_check_json_and_table_agree_with_the_manifest(data, manifest):
    report = json.loads(stargon("data", "check", str(data), "--json").stdout)
    by_source = {s["source"]: s for s in report["sources"]}
    assert set(by_source) == set(manifest)
    for folder, entry in manifest.items():
        assert by_source[folder]["spectra"] == entry["n_spectra"], folder
        assert by_source[folder]["failed"] == 0, folder
    assert report["totals"]["spectra"] == sum(e["n_spectra"] for e in manifest.values())

    table = stargon("data", "check", str(data)).stdout
    for folder, entry in manifest.items():
        row = next(line for line in table.splitlines() if re.search(rf"\b{folder}\b", line))
        numbers = [int(n) for n in re.findall(r"│\s+(\d+)\s+(?=│)", row)[:3]]
        assert numbers[1] == entry["n_spectra"], row
        assert numbers[2] == 0, row
    assert "files failed" not in table


def test_a_named_file_that_holds_no_spectrum_fails_with_its_reason(tmp_path):
    """A folder's walk skips what is not a spectrum; a file the user names is never skipped
    in silence."""
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,4\n")
    run = stargon("fit", "--resolving-power", "2000", "--out", str(tmp_path / "x.csv"), str(bad),
                  check=False)  # fmt: skip
    assert run.returncode == 1
    assert f"failed {bad}: found columns a, b; no wavelength or flux column" in run.stderr


@pytest.mark.parametrize("command", [["evaluate"], ["serve"], ["sample", "-n", "1"]])
def test_a_missing_checkpoint_is_one_error_line(command, tmp_path):
    run = stargon(*command, "--checkpoint", str(tmp_path / "nope"), check=False)
    assert run.returncode == 2 and "Traceback" not in run.stderr + run.stdout
    assert (
        run.stderr.strip() == f"error: {tmp_path / 'nope'}: a checkpoint is not there "
        "(expected model.json and model.safetensors)"
    )


def test_serving_on_a_port_in_use_is_one_error_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = stargon("serve", "--port", str(port), check=False)
    assert run.returncode == 2 and "Traceback" not in run.stderr + run.stdout
    assert (
        run.stderr.strip() == f"error: port {port} is in use: choose another with --port "
        "(0 takes any free one)"
    )
