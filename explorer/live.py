"""What a latent slider's release changes, written straight into the page's Bokeh sources.

When only the latents change, the shaded regions and their line labels, the line response's
curves and window, and the latent map's marker follow them, and nothing else does. Rendering
their DynamicMaps again costs HoloViews most of a second per release
(`benchmarks/explorer_browser.py`); here their new columns go into the sources those
DynamicMaps drew, caught by plot hooks. They travel as one array in one message, a carrier's,
which the page's `client.LIVE_JS` cuts into the sources (a column each went as its own
websocket buffer, fifty per release). The carrier holds no model references: the targets are
its callback's arguments, set again only after a render (a reference in a changed property
makes Bokeh walk every model of the page, on both sides). Any other change (instrument,
velocity, frame, zoom, the latent shown, an observation) renders the DynamicMaps as before,
and that render is what the sources are checked against: its key must be the view's, its
columns the ones written here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable

import holoviews as hv
import numpy as np
from bokeh.core.properties import Any, String
from bokeh.model import DataModel
from bokeh.models import ColumnDataSource, CustomJS

from stargon.explorer import client, plots


class LiveColumns(DataModel):
    """A release's columns as one array, and where each goes (`client.LIVE_JS`)."""

    layout = String(default="{}", help="JSON: per target its columns, per range its ends")
    # Any, not Seq(Float): Bokeh checks a Seq item by item (22 ms for a release's 21k values)
    packed = Any(default=None, help="every numeric column, one after the other (an array)")


class LiveSources:
    """The Bokeh sources of the plots that follow the latents, the keys of the view the
    context's and the response's DynamicMaps last drew (None until each has drawn), and the
    carrier that takes a release's columns to them."""

    def __init__(self) -> None:
        self.sources: dict[str, ColumnDataSource] = {}  # spans, labels, marker
        self.curves: dict[str, ColumnDataSource] = {}  # the line response's, by curve label
        self.response_ranges: tuple | None = None  # its (x_range, y_range)
        self.context_key: Hashable = None
        self.response_key: Hashable = None
        self.carrier = LiveColumns()
        self.deliver = CustomJS(args={"targets": {}}, code=client.LIVE_JS)
        self.carrier.js_on_change("packed", self.deliver)

    def keep(self, name: str) -> Callable:
        """A plot hook that keeps the plot's data source under `name`."""

        def hook(plot, element) -> None:
            self.sources[name] = plot.handles["source"]
            self._aim()

        return hook

    def keep_context(self, plot, element) -> None:
        """Plot hook of the spectrum's overlay: the sources of its shading (Rectangles) and of
        the shading's line names (Labels of the default group; the listed lines' names are
        another group). The figure's tags hold the carrier, which puts it in the page."""
        plot.state.tags = [self.carrier]
        for subplot in plot.subplots.values():
            frame = subplot.current_frame
            if isinstance(frame, hv.Rectangles):
                self.sources["spans"] = subplot.handles["source"]
            elif isinstance(frame, hv.Labels) and frame.group == "Labels":
                self.sources["labels"] = subplot.handles["source"]
        self._aim()

    def keep_curve(self, plot, element) -> None:
        """Plot hook of the line response's curves: each source under its curve's label."""
        self.curves[element.label] = plot.handles["source"]
        self.response_ranges = plot.handles["x_range"], plot.handles["y_range"]
        self._aim()

    def _targets(self) -> dict:
        """What a release writes into, by the keys of the carrier's layout."""
        targets = dict(self.sources)
        if self.response_ranges is not None:
            targets["x_range"], targets["y_range"] = self.response_ranges
        targets.update({f"curve {name}": source for name, source in self.curves.items()})
        return targets

    def _aim(self) -> None:
        """The carrier's callback gets the targets as a render draws them: changing model
        references makes Bokeh walk the page's models, which a render does anyway and a
        release must not."""
        targets = self._targets()
        if targets != self.deliver.args["targets"]:
            self.deliver.args = {"targets": targets}

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
        columns.update({f"curve {name}": {"wavelength": x, "flux": flux}
                        for name, flux in zip(names, fluxes, strict=True)})  # fmt: skip
        ends = {"x_range": window, "y_range": plots.response_ylim(x, fluxes, window)}
        self._send(columns, ends)
        return True

    def _send(self, columns: dict[str, dict], ends: dict[str, tuple]) -> None:
        """The sources' new columns and the ranges' new ends, as the carrier's one array and
        its layout (`client.LIVE_JS`)."""
        self._aim()
        parts, sources, start = [], {}, 0
        for key, data in columns.items():
            sources[key] = []
            for name, values in data.items():
                values = np.asarray(values)
                if values.dtype.kind in "OUS":
                    sources[key].append([name, 0, 0, [str(value) for value in values]])
                    continue
                parts.append(values.astype(np.float64, copy=False))
                sources[key].append([name, start, start + values.size, None])
                start += values.size
        ranges = [[key, *(None if end is None else float(end) for end in pair)]
                  for key, pair in ends.items()]  # fmt: skip
        self.carrier.layout = json.dumps({"sources": sources, "ranges": ranges})
        self.carrier.packed = np.concatenate(parts) if parts else np.zeros(0)
