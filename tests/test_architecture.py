"""The layers import one way (docs/architecture.md): import-linter's contracts in
pyproject.toml, checked on the package as it is installed (folders mapped by package-dir)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def installed_tree(into: Path) -> Path:
    """The stargon package laid out as a wheel would lay it out: import-linter reads source
    files from the package's folder, which an editable install with package-dir does not have."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for package, folder in config["tool"]["setuptools"]["package-dir"].items():
        target = into / package.replace(".", "/")
        target.mkdir(parents=True, exist_ok=True)
        for source in (ROOT / folder).glob("*.py"):
            shutil.copy(source, target / source.name)
    return into


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    linter = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(linter), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=os.environ | {"PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_layers_import_downward_only_and_readers_need_no_torch(tmp_path):
    result = lint_imports(installed_tree(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The check can fail: the readers importing the model is reported."""
    tree = installed_tree(tmp_path)
    reader = tree / "stargon" / "surveys" / "lamost.py"
    reader.write_text("from stargon.model.gon import StarGON  # noqa\n" + reader.read_text())
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "stargon.surveys.lamost -> stargon.model.gon" in result.stdout


def test_the_readme_python_blocks_run_and_print_the_numbers_they_state(capsys, monkeypatch):
    """README's Python examples are the code users copy: each block runs as written (from the
    project root, where `../shared/data` is), and the physics block prints what it says."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(ROOT)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    printed = [float(line) for line in capsys.readouterr().out.split()]
    assert printed == pytest.approx([6566.80, 6564.61], abs=0.005)
