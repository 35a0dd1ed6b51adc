"""The `stargon data check` command on the whole shared data folder, table and JSON."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from stargon import __version__


def stargon(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stargon", *args], capture_output=True, text=True, check=True
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
