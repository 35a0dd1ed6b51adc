"""What a latent slider's release changes, written straight into the page's Bokeh sources.

When only the latents change, the shaded regions and their line labels, the line response's
curves and window, and the latent map's marker follow them, and nothing else does. Rendering
their DynamicMaps again costs HoloViews most of a second per release
(`benchmarks/explorer_browser.py`); here their new columns go into the sources those
DynamicMaps drew, caught by plot hooks, in one message. Any other change (instrument, velocity,
frame, zoom, the latent shown, an observation) renders the DynamicMaps as before, and that
render is what the sources are checked against: its key must be the view's, its columns the
ones written here.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import holoviews as hv
import numpy as np
from bokeh.models import ColumnDataSource

from stargon.explorer import plots


class LiveSources:
    """The Bokeh sources of the plots that follow the latents, and the keys of the view the
    context's and the response's DynamicMaps last drew (None until each has drawn)."""

    def __init__(self) -> None:
        self.sources: dict[str, ColumnDataSource] = {}  # spans, labels, marker
        self.curves: dict[str, ColumnDataSource] = {}  # the line response's, by legend label
        self.response_ranges: tuple | None = None  # its (x_range, y_range)
        self.context_key: Hashable = None
        self.response_key: Hashable = None

    def keep(self, name: str) -> Callable:
        """A plot hook that keeps the plot's data source under `name`."""

        def hook(plot, element) -> None:
            self.sources[name] = plot.handles["source"]

        return hook

    def keep_context(self, plot, element) -> None:
        """Plot hook of the spectrum's overlay: the sources of its shading (Rectangles) and of
        the shading's line names (Labels of the default group; the listed lines' names are
        another group)."""
        for subplot in plot.subplots.values():
            frame = subplot.current_frame
            if isinstance(frame, hv.Rectangles):
                self.sources["spans"] = subplot.handles["source"]
            elif isinstance(frame, hv.Labels) and frame.group == "Labels":
                self.sources["labels"] = subplot.handles["source"]

    def keep_curve(self, plot, element) -> None:
        """Plot hook of the line response's curves: each source under its legend label."""
        self.curves[element.label] = plot.handles["source"]
        self.response_ranges = plot.handles["x_range"], plot.handles["y_range"]

    def drew_context(self, key: Hashable) -> None:
        self.context_key = key

    def drew_response(self, key: Hashable) -> None:
        """The response is drawn anew for `key`: its curves (and labels) are the new ones."""
        self.response_key, self.curves = key, {}

    def follows(self, key: Hashable) -> bool:
        """Whether the latents alone changed since both DynamicMaps drew: the sources can take
        the new columns."""
        ready = {"spans", "labels", "marker"} <= set(self.sources) and self.curves
        return bool(ready) and self.context_key == key and self.response_key == key

    def write(
        self,
        spans: list[tuple[float, float]],
        labels: list[tuple[float, str]],
        response: tuple[np.ndarray, list[str], np.ndarray, tuple[float, float]],
        marker: np.ndarray,
    ) -> bool:
        """Write the new columns; False (nothing written) if a source no longer has the
        columns or curves it was drawn with — then the caller renders instead."""
        x, names, fluxes, window = response
        columns = {
            "spans": plots.span_columns(spans),
            "labels": plots.label_columns(labels),
            "marker": plots.marker_columns(marker),
        }
        for name, new in columns.items():
            if set(new) != set(self.sources[name].data):
                return False
        if set(names) != set(self.curves) or any(
            set(source.data) != {"wavelength", "flux"} for source in self.curves.values()
        ):
            return False
        for name, new in columns.items():
            self.sources[name].data = new
        for name, flux in zip(names, fluxes, strict=True):
            self.curves[name].data = {"wavelength": x, "flux": flux}
        x_range, y_range = self.response_ranges
        low, high = plots.response_ylim(x, fluxes, window)
        x_range.update(start=window[0], end=window[1], reset_start=window[0], reset_end=window[1])
        y_range.update(start=low, end=high, reset_start=low, reset_end=high)
        return True
