"""docs/tutorial.md is code users copy: its blocks run in order, in one namespace, as written."""

from __future__ import annotations

import re

import pytest

from stargon.core.paths import REPOSITORY

pytestmark = pytest.mark.slow  # fits a star and loads the explorer's state


def test_the_tutorial_runs_as_written(data, monkeypatch, capsys):
    text = (REPOSITORY / "docs" / "tutorial.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 6
    monkeypatch.setenv("STARGON_DATA", str(data))
    monkeypatch.chdir(REPOSITORY)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/tutorial.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "Hβ EW: data" in printed and "Balmer" not in printed
    assert re.search(r"teff \+500: H", printed)  # hotter: a Balmer line deepens most
    scored = re.search(r"as observed ([\d.]+), with Hα emission added ([\d.]+)", printed)
    assert float(scored[2]) > float(scored[1])
    assert namespace["samples"].shape[0] == 5 and namespace["fit"].chi2_dof > 0
