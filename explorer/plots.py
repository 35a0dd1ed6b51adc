"""Pure HoloViews figures of the explorer: data in, elements out (no Panel, no state)."""

from __future__ import annotations

import holoviews as hv
import numpy as np
from bokeh.models import ColorBar, FixedTicker, LinearColorMapper
from scipy.ndimage import uniform_filter1d

from stargon.assets import Line, line_list, nearest_line
from stargon.core.physics import doppler_factor
from stargon.model.pseudo_continuum import gap_starts

hv.extension("bokeh", logo=False)

FLUX_RANGE = (-0.05, 1.35)


def sensitive_spans(x: np.ndarray, sensitivity: np.ndarray, fraction: float = 0.5):
    """Contiguous pixel runs where the latent's |∂f/∂z_k| exceeds `fraction` of its maximum:
    (x0, x1) pairs, and (x, name) labels of the known lines at their strongest points."""
    if sensitivity.size == 0 or sensitivity.max() <= 0:
        return [], []
    sensitivity = uniform_filter1d(sensitivity, 5, mode="nearest")  # one span per feature
    strong = sensitivity >= fraction * sensitivity.max()
    edges = np.flatnonzero(np.diff(np.r_[0, strong.astype(int), 0]))
    spans, labels = [], []
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        spans.append((float(x[start]), float(x[stop - 1])))
        peak = start + int(np.argmax(sensitivity[start:stop]))
        line = nearest_line(float(x[peak]))
        if line is not None and all(name != line.name for _, name in labels):
            labels.append((float(x[peak]), line.name))
    return spans, labels


WAVELENGTH = hv.Dimension("wavelength", label="vacuum wavelength", unit="Å")
SPECTRUM_STYLE = [  # applied once to the DynamicMap: per-redraw .opts calls cost ~30 ms
    hv.opts.Rectangles(color="gold", alpha=0.3, line_alpha=0, framewise=True),
    hv.opts.Spread(color="#d62728", alpha=0.25, line_alpha=0, framewise=True),
    hv.opts.Curve("Observation", color="black", line_width=0.8, framewise=True),
    hv.opts.Curve("Model", color="#d62728", line_width=1.2, framewise=True),
    hv.opts.Labels(text_font_size="9pt", text_color="#7a5c00", framewise=True),
    hv.opts.Labels("LineNames", text_font_size="8pt", text_color="#555555", text_baseline="top"),
    hv.opts.Overlay(
        # Canvas, not Panel's default WebGL: a 16k-point line repainted ~200 ms per slider move
        # in WebGL under Chromium's software GL, ~10× less on canvas (benchmarks/README.md).
        backend_opts={"plot.output_backend": "canvas"},
        responsive=True,
        height=360,
        ylim=FLUX_RANGE,
        ylabel="normalised flux",
        legend_position="bottom_right",
        toolbar="above",
        framewise=True,
    ),
]


SPAN_LABEL_Y = 1.16  # where the shaded regions' line names sit


def span_columns(spans: list[tuple[float, float]]) -> dict[str, np.ndarray]:
    """The shaded regions as the Rectangles of `spectrum_context` hold them in the page (the
    columns HoloViews draws them from; `explorer.live` writes them directly)."""
    left, right = (np.array([span[i] for span in spans], dtype=float) for i in (0, 1))
    bottom, top = (np.full(len(spans), edge) for edge in FLUX_RANGE)
    return {"left": left, "right": right, "bottom": bottom, "top": top}


def label_columns(labels: list[tuple[float, str]]) -> dict[str, np.ndarray]:
    """The shaded regions' line names as the Labels of `spectrum_context` hold them."""
    x = np.array([x for x, _ in labels], dtype=float)
    names = np.array([name for _, name in labels], dtype=object)
    return {"wavelength": x, "y": np.full(len(labels), SPAN_LABEL_Y), "line": names}


def spectrum_context(
    x: np.ndarray,
    observed: tuple[np.ndarray, np.ndarray] | None = None,
    spans: list[tuple[float, float]] = (),
    labels: list[tuple[float, str]] = (),
    xlim: tuple[float, float] | None = None,
    band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> hv.Overlay:
    """What stands behind the model: the observation (black, continuum-divided), the fitted
    model's ±1σ band from its latent covariance, and the latent-sensitive regions shaded and
    labelled. Always the same four layers, so a DynamicMap only swaps data; style with
    SPECTRUM_STYLE."""
    obs_x, obs_flux = observed if observed is not None else (np.array([]), np.array([]))
    band = with_gaps(*band) if band is not None else (np.array([]), np.array([]), np.array([]))
    rectangles = [(a, FLUX_RANGE[0], b, FLUX_RANGE[1]) for a, b in spans]
    label_rows = [(lx, SPAN_LABEL_Y, name) for lx, name in labels]
    observed_dim = hv.Dimension("observed", label="normalised flux")
    xlim = xlim or full_range(x)
    return (
        hv.Rectangles(rectangles, kdims=[WAVELENGTH, "flux", "x1", "y1"]).opts(xlim=xlim)
        * hv.Spread(band, WAVELENGTH, [observed_dim, "sigma"], label="fit ± 1σ (latents)").opts(
            xlim=xlim
        )
        * hv.Curve(
            with_gaps(obs_x, obs_flux),
            WAVELENGTH,
            observed_dim,
            group="Observation",
            label="observation",
        ).opts(xlim=xlim)
        * hv.Labels(label_rows, [WAVELENGTH, "y"], "line").opts(xlim=xlim)
    )


LINE_MARK_Y = 1.32  # where the listed lines' ticks sit, above the spectrum
LINE_NAME_Y = 1.29


def line_marks(lines: list[tuple[float, Line]]) -> hv.Scatter:
    """Every listed line in view as a tick along the top: hovering names the nearest ones
    (name, species, rest λ), a click measures one."""
    rows = [(x, LINE_MARK_Y, line.name, line.species, line.wavelength) for x, line in lines]
    return hv.Scatter(
        rows, WAVELENGTH, ["y", "line", "species", hv.Dimension("rest", unit="Å")], group="Lines"
    ).opts(
        marker="inverted_triangle", size=7, color="#555555", nonselection_alpha=0.6,
        selection_color="#d62728", tools=["hover", "tap"], hover_mode="vline",
        hover_tooltips=[("line", "@line"), ("species", "@species"), ("rest λ", "@rest{0.00} Å")],
    )  # fmt: skip


NAMES_AT_MOST = 12  # line names across the shown range


def line_names(
    lines: list[tuple[float, Line]], x_range: tuple[float, float], at_most: int = NAMES_AT_MOST
) -> hv.Labels:
    """The names of the listed lines in `x_range`, thinned so that they do not crowd: from the
    blue end, a name is kept when it lies at least 1/`at_most` of the range from the last one
    kept. Zooming in makes room for more (the page thins again as the range moves:
    `client.THIN_NAMES_JS`)."""
    low, high = x_range
    spacing, kept, last = (high - low) / at_most, [], -np.inf
    for x, line in lines:
        if low <= x <= high and x - last >= spacing:
            kept.append((x, LINE_NAME_Y, line.name))
            last = x
    return hv.Labels(kept, [WAVELENGTH, "y"], "line", group="LineNames")


def model_curve(x: np.ndarray, flux: np.ndarray, xlim=None) -> hv.Curve:
    """The model spectrum (red): the one layer redrawn on every slider move."""
    flux_dim = hv.Dimension("flux", label="normalised flux", range=FLUX_RANGE)
    return hv.Curve(with_gaps(x, flux), WAVELENGTH, flux_dim, group="Model", label="model").opts(
        xlim=xlim or full_range(x)
    )


def full_range(x: np.ndarray) -> tuple[float | None, float | None]:
    return (float(np.nanmin(x)), float(np.nanmax(x))) if x.size else (None, None)


def with_gaps(x: np.ndarray, *ys: np.ndarray) -> tuple[np.ndarray, ...]:
    """(x, *ys) with a NaN at every gap in x (`pseudo_continuum.gap_starts`), so a line is
    broken there, not drawn straight across."""
    cuts = gap_starts(np.asarray(x, dtype=float))
    return tuple(np.insert(np.asarray(a, dtype=float), cuts, np.nan) for a in (x, *ys))


def residual_curve(x: np.ndarray, residual: np.ndarray, xlim=None) -> hv.Curve:
    """(observation − model)/σ under the spectrum. Give `xlim` even when there is nothing to
    draw: Panel links this plot's wavelength axis to the spectrum's, and an empty range would
    pull that axis to start at 0 Å."""
    xlim = xlim or full_range(x)
    return hv.Curve(
        with_gaps(x, residual), WAVELENGTH, hv.Dimension("residual", label="residual / σ")
    ).opts(
        responsive=True,
        height=150,
        color="#1f77b4",
        line_width=0.6,
        xlim=xlim or (None, None),
        ylim=(-6, 6),
        framewise=True,
    )


def sensitivity_strip(x: np.ndarray, sensitivity: np.ndarray, xlim=None) -> hv.QuadMesh:
    """All latents at once: |∂f/∂z_k| per pixel, each row scaled to its maximum."""
    scaled = sensitivity / np.clip(sensitivity.max(axis=1, keepdims=True), 1e-12, None)
    edges = np.r_[x[0], 0.5 * (x[1:] + x[:-1]), x[-1]]
    rows = np.arange(sensitivity.shape[0] + 1) - 0.5
    return hv.QuadMesh((edges, rows, scaled), ["wavelength", "latent"], "sensitivity").opts(
        cmap="magma", responsive=True, height=170, xlim=xlim or (None, None), tools=["hover"]
    )


MAP_AXES = ["latent PC 1", "latent PC 2"]


def latent_points(xy: np.ndarray, colour: np.ndarray, colour_label: str) -> hv.Points:
    """Training stars in a 2-D projection of latent space, coloured by a label; tap to pick."""
    return hv.Points((xy[:, 0], xy[:, 1], colour), MAP_AXES, [colour_label]).opts(
        color=colour_label,
        cmap="viridis",
        colorbar=True,
        size=5,
        tools=["tap", "hover"],
        responsive=True,
        height=330,
        nonselection_alpha=0.4,
    )


def latent_marker(marker: np.ndarray) -> hv.Points:
    """The current slider state on the latent map (a red star)."""
    return hv.Points([tuple(marker)], MAP_AXES).opts(
        marker="star", size=18, color="red", line_color="black"
    )


def marker_columns(marker: np.ndarray) -> dict[str, np.ndarray]:
    """The marker as `latent_marker`'s Points hold it in the page."""
    return {axis: np.array([float(value)]) for axis, value in zip(MAP_AXES, marker, strict=True)}


def focus_window(x: np.ndarray, sensitivity: np.ndarray, half_width: float = 0.004):
    """A window of ±half_width (fractional) around the known line (line list, ±150 km/s) where
    a latent acts most, else around its most sensitive pixel: where to look when no zoom preset
    is chosen (a detector edge is rarely what a student wants to see)."""
    if sensitivity.size == 0 or sensitivity.max() <= 0:
        return (float(x.min()), float(x.max())) if x.size else (None, None)
    near_line = _near_lines(x, 150.0)
    weighted = np.where(near_line, sensitivity, 0.0) if near_line.any() else sensitivity
    peak = float(x[int(np.argmax(weighted))])
    return peak * (1 - half_width), peak * (1 + half_width)


def _near_lines(x: np.ndarray, tolerance_kms: float) -> np.ndarray:
    """Which pixels of `x` lie within ±tolerance of a listed line (x need not be sorted)."""
    rest = np.array([line.wavelength for line in line_list()])
    order = np.argsort(x)
    starts = np.searchsorted(x[order], rest * doppler_factor(-tolerance_kms))
    stops = np.searchsorted(x[order], rest * doppler_factor(tolerance_kms), side="right")
    marks = np.zeros(x.size + 1, dtype=int)
    np.add.at(marks, starts, 1)
    np.add.at(marks, stops, -1)
    near = np.zeros(x.size, dtype=bool)
    near[order] = np.cumsum(marks[:-1]) > 0
    return near


def line_response(
    x: np.ndarray, values: np.ndarray, fluxes: np.ndarray, latent: int, xlim=None
) -> hv.Overlay:
    """The spectrum at several values of one latent (the others held): a line that deepens,
    widens or shifts as the slider moves shows as a fan of curves, dark to light, keyed by a
    colour bar of the latent's values. A colour bar, not a legend: Bokeh draws a legend's
    entries again whenever one of its curves' data changes, and a release writes all five
    (`explorer.live`)."""
    colours = hv.plotting.util.process_cmap("viridis", len(values))
    curves = [
        hv.Curve((x, flux), WAVELENGTH, hv.Dimension("flux", label="normalised flux"),
                 label=name).opts(color=colour, line_width=1.2, framewise=True,
                                  shared_axes=False)
        for name, flux, colour in zip(response_labels(latent, values), fluxes, colours,
                                      strict=True)
    ]  # fmt: skip
    return hv.Overlay(curves).opts(
        responsive=True,
        height=260,
        xlim=xlim or (None, None),
        ylim=response_ylim(x, fluxes, xlim),
        show_legend=False,
        hooks=[_value_key(latent, values, colours)],
        framewise=True,
        shared_axes=False,  # its own window: zooming here must not move the spectrum above
        title=f"How the spectrum changes along w{latent} (1st → 99th percentile)",
    )


def _value_key(latent: int, values: np.ndarray, colours: list[str]):
    """A plot hook adding the response's key: one colour per curve, ticked at its value."""

    def hook(plot, element) -> None:
        half = (values[-1] - values[0]) / max(2 * (len(values) - 1), 1) or 0.5
        scale = dict(palette=list(colours), low=values[0] - half, high=values[-1] + half)
        ticks = [float(value) for value in values]
        key = plot.handles.get("stargon_key")
        if key is None:  # once per plot, then changed in place: a removed one leaves no view
            key = ColorBar(color_mapper=LinearColorMapper(**scale), width=12,
                           ticker=FixedTicker(ticks=ticks), title=f"w{latent}")  # fmt: skip
            plot.state.add_layout(key, "right")
            plot.handles["stargon_key"] = key
        key.color_mapper.update(**scale)
        key.ticker.ticks, key.title = ticks, f"w{latent}"

    return hook


def response_labels(latent: int, values: np.ndarray) -> list[str]:
    """The line response's curve labels (the keys `explorer.live` writes each curve by): one
    per value of the latent."""
    return [f"w{latent} = {value:+.2f}" for value in values]


def response_ylim(
    x: np.ndarray, fluxes: np.ndarray, window, padding: float = 0.05
) -> tuple[float | None, float | None]:
    """The flux range of the response's curves within its window (all of them without one),
    padded: the fan of one line fills the plot, whatever the spectrum does elsewhere."""
    if fluxes.size == 0:
        return None, None
    inside = np.ones(x.shape, dtype=bool)
    if window and None not in window:
        inside = (x >= window[0]) & (x <= window[1])
    shown = fluxes[:, inside] if inside.any() else fluxes
    low, high = float(np.nanmin(shown)), float(np.nanmax(shown))
    margin = padding * max(high - low, 1e-3)
    return low - margin, high + margin
