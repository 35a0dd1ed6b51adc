"""The explorer in a real Jupyter kernel: an `Explorer` as a cell's last line shows the explorer
inline (Panel's notebook extension), with nothing but the page in its output."""

from __future__ import annotations

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.slow  # starts a kernel


def test_an_explorer_displays_inline_in_a_notebook(data):
    notebook = nbformat.v4.new_notebook()
    source = f"from stargon.explorer import Explorer\nExplorer(data={str(data)!r})"
    notebook.cells = [nbformat.v4.new_code_cell(source)]
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    outputs = notebook.cells[0].outputs
    shown = [out for out in outputs if out.output_type == "execute_result"]
    assert len(shown) == 1
    bundle = shown[0]["data"]
    assert "application/vnd.holoviews_exec.v0+json" in bundle  # a live Panel view, not text
    page = bundle["text/html"]
    for part in ("Random star from the prior", "Teaching view", "most unusual stars"):
        assert part in page, part
    loading = "application/vnd.holoviews_load.v0+json"
    loaded = [out for out in outputs if loading in out.get("data", {})]
    assert loaded, "the notebook extension was loaded"
    warnings = [out.get("text", "") for out in outputs if out.output_type == "stream"]
    assert not any("WARNING" in text for text in warnings), warnings
