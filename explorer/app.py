"""The Panel app: a thin `pn.viewable.Viewer` over `state.Explorer` and the pure plots."""

from __future__ import annotations

import itertools
from io import BytesIO
from typing import ClassVar

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
from bokeh.models import ColumnDataSource, CustomJS
from sklearn.decomposition import PCA

from stargon.core.interop import UserSettings
from stargon.core.spectrum import SpectrumReadError
from stargon.explorer import client, plots
from stargon.explorer.figure import view_png
from stargon.explorer.live import LiveSources
from stargon.explorer.page_state import PageState
from stargon.explorer.state import ARCHIVE_IDS, MAX_UPLOAD_BYTES, ZOOMS, Explorer, View
from stargon.surveys.fetch import FetchError

Refresh = hv.streams.Stream.define("Refresh")
COLOUR_LABELS = {"Teff": "teff", "log g": "logg", "[Fe/H]": "fe_h"}
LABEL_RANGES = {"teff": (3000.0, 10000.0), "logg": (0.0, 5.5), "fe_h": (-3.0, 1.0)}
TEACHING = """**What you see.** Each slider moves the star on screen along one label's direction
in latent space (learned from the labelled training stars, the other labels held) by as much
as you move it. Hotter stars show deeper hydrogen Balmer lines (Hα, Hβ) up to ~8,000 K; as Teff
falls, metal lines (Mg b, Na D, Fe) and, below ~4,000 K, molecular bands take over. Lower log g
(giants) narrows the wings of strong lines; higher [Fe/H] deepens every metal line. Watch the
shaded regions: they are where the model's spectrum reacts."""


class LatentSlider(pn.widgets.FloatSlider):
    """A latent slider whose release the server handles at once: Panel otherwise waits 50 ms
    (its debounce) before it handles a change from the page."""

    _priority_changes: ClassVar[list[str]] = ["value_throttled"]


class ExplorerApp(pn.viewable.Viewer):
    """One session: its own `PageState`, widgets built from it, plots redrawn when it changes.

    `location` is the page's URL (`pn.state.location` in a server session): its query and the
    state follow each other."""

    def __init__(self, explorer: Explorer, location: pn.io.location.Location | None = None,
                 **params):  # fmt: skip
        super().__init__(**params)
        self.explorer = explorer
        self.state = PageState.for_explorer(explorer)
        self._built = False  # until then, a change of the state is the first view itself
        # The URL follows after the plots' watcher, so that a release's new columns reach the
        # page before it does.
        self.state.param.watch(self._on_state, self.state.watched())
        self.location = location if location is not None else pn.state.location
        if self.location is not None:
            self.location.sync(
                self.state, self.state.url_names(), on_error=self.state.set_what_is_valid
            )
        self.refresh = Refresh()  # the basis changed (instrument, velocity, frame, observation)
        self.refresh_context = Refresh()  # any change: shading, data, the map's marker
        self.refresh_fit = Refresh()  # observation, zoom, frame or velocity: the residuals
        self.refresh_strip = Refresh()  # only while the heat strip is shown
        self.refresh_response = Refresh()  # any change: the line response
        self.refresh_colour = Refresh()  # the map's colouring label changed
        self._draws = itertools.count(1)  # seeds of "Random star from the prior"
        self._model_shown: tuple | None = None
        self._residual_shown: tuple | None = None
        self._lines_shown: list = []  # the listed lines whose ticks are drawn, in order
        self._names_lines: list = []  # the listed lines the names were last thinned from
        self._live = LiveSources()  # what follows the latents, written without a render
        self._build_widgets()
        self._build_map()
        self._built = True

    @property
    def view(self) -> View:
        return self.state.view

    # -- widgets -------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        ex, state = self.explorer, self.state
        # Whitened directions w0, w1, … (largest training variance first). A slider sets the
        # state when it is let go: a move is drawn in the browser (explorer.client).
        self.sliders = [
            LatentSlider.from_param(state.param[name], throttled=True, sizing_mode="stretch_width")
            for name in state.latent_names
        ]
        self.rv = pn.widgets.FloatSlider.from_param(state.param.v_kms, sizing_mode="stretch_width")
        self._widen_sliders()
        self.instrument = pn.widgets.Select.from_param(state.param.instrument)
        self.frame = pn.widgets.RadioButtonGroup.from_param(state.param.frame)
        self.zoom = pn.widgets.Select.from_param(state.param.zoom)
        self.latent = pn.widgets.Select.from_param(state.param.latent)
        self.heat = pn.widgets.Checkbox(label="all latents (heat strip)", value=False)
        self.reset = pn.widgets.Button(label="Reset", color="default")
        self.random = pn.widgets.Button(label="Random star from the prior", color="primary")
        self.status = pn.pane.Alert("", alert_type="light", visible=False)
        self.title = pn.pane.Markdown(f"**{self._title()}**")
        self.fit_summary = pn.pane.Markdown("")
        self.measure = pn.widgets.Select(label="measure a line of the fitted star", options=[])
        self.measured = pn.pane.Markdown("")
        self.upload = pn.widgets.FileInput(
            accept=".fits,.fit,.fits.gz,.csv,.ecsv,.txt,.dat,.npz", multiple=False
        )
        # What a file of no known survey does not say (`UserSettings`; survey files ignore it).
        self.upload_instrument = pn.widgets.Select(
            label="its instrument (if the file does not say)",
            options=["R below", *ex.instruments],
            value="R below",
        )
        self.upload_resolving_power = pn.widgets.FloatInput(
            label="resolving power R = λ/FWHM", value=None, start=100, placeholder="e.g. 20000"
        )
        self.upload_medium = pn.widgets.RadioButtonGroup(
            options=["λ as the file says", "vacuum", "air"], value="λ as the file says"
        )
        self.upload_frame = pn.widgets.RadioButtonGroup(
            options=["observed", "rest"], value="observed"
        )
        surveys = sorted({s["survey"] for s in ex.stars})
        self.survey_filter = pn.widgets.Select(label="survey", options=["all", *surveys])
        self._star_index = {self._star_label(i): i for i in range(len(ex.stars))}
        self.label_filters = {
            key: pn.widgets.RangeSlider(label=name, start=lo, end=hi, value=(lo, hi),
                                        step=50 if key == "teff" else 0.05)
            for name, key in COLOUR_LABELS.items()
            for lo, hi in [LABEL_RANGES[key]]
        }  # fmt: skip
        self.star_search = pn.widgets.AutocompleteInput(
            label="star id",
            options=self._star_options(),
            case_sensitive=False,
            search_strategy="includes",
            placeholder="e.g. HD 225239",
            min_characters=1,
        )
        self.unusual = self._unusual_table()
        self.teff = pn.widgets.FloatSlider(
            label="Teff (K)", start=3500, end=9000, step=50, value=5800
        )
        self.logg = pn.widgets.FloatSlider(label="log g", start=0.5, end=5.0, step=0.05, value=4.4)
        self.fe_h = pn.widgets.FloatSlider(
            label="[Fe/H]", start=-2.5, end=0.5, step=0.05, value=0.0
        )
        self.colour = pn.widgets.Select(label="colour map by", options=list(COLOUR_LABELS))
        self.archive_kind = pn.widgets.Select(label="archive", options=list(ARCHIVE_IDS))
        self.archive_id = pn.widgets.TextInput(
            label="id", placeholder=ARCHIVE_IDS[self.archive_kind.value]
        )
        self.archive_go = pn.widgets.Button(label="Fetch and fit", color="primary")
        self.png = pn.widgets.FileDownload(
            callback=lambda: BytesIO(self._png()), filename="stargon_view.png", label="Figure (PNG)"
        )
        self.csv = pn.widgets.FileDownload(
            callback=lambda: BytesIO(ex.export(self.view, "csv")),
            filename="stargon_spectrum.ecsv",
            label="Spectrum (CSV)",
        )
        self.fits = pn.widgets.FileDownload(
            callback=lambda: BytesIO(ex.export(self.view, "fits")),
            filename="stargon_spectrum.fits",
            label="Spectrum (FITS)",
        )
        self._decoder_net = client.decoder_payload(ex.model, ex.whitening)
        self._client_columns: tuple[dict, dict] = ({}, {})  # basis columns, continuum plan
        code, names = client.slider_callback(len(self.sliders))
        for slider in self.sliders:
            slider.jscallback(value=code, args=dict(zip(names, self.sliders, strict=True)))
        self.heat.param.watch(self._on_heat, "value")
        self.reset.on_click(lambda _: self._apply(ex.new_view()))
        self.random.on_click(self._on_random)
        self.upload.param.watch(self._on_upload, "value")
        self.star_search.param.watch(self._on_star, "value")
        self.survey_filter.param.watch(self._on_filter, "value")
        for widget in self.label_filters.values():
            widget.param.watch(self._on_filter, "value_throttled")
        self.archive_kind.param.watch(self._on_archive_kind, "value")
        self.archive_go.on_click(self._on_fetch)
        for widget in (self.teff, self.logg, self.fe_h):
            widget.param.watch(self._on_labels, "value_throttled")
        self.measure.param.watch(lambda _: self._show_measurement(), "value")
        self.colour.param.watch(self._on_colour, "value")

    def _widen_sliders(self) -> None:
        """A value beyond a slider's range (a star outside the training percentiles, a fast
        star) widens the slider, not clips the state."""
        for slider in [*self.sliders, self.rv]:
            slider.start = min(slider.start, slider.value)
            slider.end = max(slider.end, slider.value)

    def _star_options(self) -> list[str]:
        """Labels of the table stars passing the survey and label filters (a filter left at its
        full range constrains nothing, so stars without labels stay listed)."""
        ranges = {
            key: widget.value if tuple(widget.value) != LABEL_RANGES[key] else None
            for key, widget in self.label_filters.items()
        }
        chosen = self.explorer.find_stars(self.survey_filter.value, **ranges)
        return [self._star_label(i) for i in chosen]

    def _unusual_table(self) -> pn.widgets.Tabulator:
        """The table stars of highest outlier score: sortable by any column, a click loads and
        fits the star."""
        stars = self.explorer.stars
        rows = self.explorer.unusual_stars()
        frame = pd.DataFrame(
            [{"star": stars[i]["star_id"], "survey": stars[i]["survey"],
              "score": stars[i]["outlier_score"], "latent": stars[i]["latent_excess"],
              "fit": stars[i]["fit_excess"], "χ² per dof": stars[i]["chi2_dof"],
              "Teff": stars[i].get("teff")} for i in rows],
            index=pd.Index(rows, name="row"),
        ).round(2)  # fmt: skip
        table = pn.widgets.Tabulator(
            frame, disabled=True, show_index=False, selectable=False, height=240,
            sizing_mode="stretch_width", visible=bool(rows),
        )  # fmt: skip
        table.on_click(lambda event: self._load_star(int(table.value.index[event.row])))
        return table

    def _star_label(self, index: int) -> str:
        star = self.explorer.stars[index]
        return f"{star['star_id']} · {star['survey']}"

    # -- reacting ------------------------------------------------------------------------
    def _on_state(self, *events) -> None:
        """One batch of state changes (a slider let go, a setting, a whole new view): the
        plots follow on the next tick, a release that the page's sources can take at once
        (in the slider's own message, before the URL follows). Another instrument drops the
        observation fitted on the old one."""
        if not self._built:  # the URL's values, before the widgets are built from them
            return
        names = {event.name for event in events}
        if "instrument" in names and "observation" not in names:
            self.state.observation = None  # its own change redraws
            return
        if names <= set(self.state.latent_names) and self._live.follows(self._live_key()):
            self._redraw()  # a release: written into the page's sources now, in this message
            return
        self._soon(self._redraw)

    def _on_colour(self, _event) -> None:
        """The map is rendered again with its new colours, and with it the marker's last
        render: the marker is then written where the state has it."""
        self.refresh_colour.event()
        if self._live.follows(self._live_key()):
            self._write_live()

    def _on_heat(self, event) -> None:
        if event.new:
            self.refresh_strip.event()

    def _on_random(self, _event) -> None:
        self._apply(self.explorer.random_view(self.view, seed=next(self._draws)))

    def _on_labels(self, event) -> None:
        """A teaching slider moves the shown star along that label's direction by as much as
        the slider moved: continuous, whatever star is on screen."""
        label = {self.teff: "teff", self.logg: "logg", self.fe_h: "fe_h"}[event.obj]
        try:
            self._apply(self.explorer.along_labels(self.view, **{label: event.new - event.old}))
        except ValueError as exc:
            self._message(str(exc), "warning")

    def _on_upload(self, _event) -> None:
        if not self.upload.value:
            return
        name = self.upload.filename or "upload.fits"
        try:
            spectrum = self.explorer.read_upload(name, self.upload.value, self._upload_settings())
            self._fit(spectrum, f"uploaded {name}")
        except SpectrumReadError as exc:
            self._message(f"Could not read {name}: {exc.problem}", "danger")

    def _upload_settings(self) -> UserSettings:
        """The upload panel's answers: an instrument preset's R, or the R typed in."""
        preset = self.explorer.instruments.get(self.upload_instrument.value)
        resolving_power = self.upload_resolving_power.value
        if preset is not None:
            resolving_power = float(np.median(preset.resolving_power_at(preset.pixels())))
        return UserSettings(
            resolving_power=resolving_power or None,
            medium=None if self.upload_medium.value.startswith("λ") else self.upload_medium.value,
            frame=self.upload_frame.value,
            instrument=preset.name if preset is not None else "user spectrum",
        )

    def _on_filter(self, _event) -> None:
        self.star_search.options = self._star_options()
        self.fit_summary.object = f"{len(self.star_search.options)} stars match the filters"

    def _on_star(self, _event) -> None:
        index = self._star_index.get(self.star_search.value)
        if index is not None:
            self._load_star(index)

    def _on_archive_kind(self, _event) -> None:
        self.archive_id.placeholder = ARCHIVE_IDS[self.archive_kind.value]

    def _on_fetch(self, _event) -> None:
        kind, identifier = self.archive_kind.value, self.archive_id.value
        self._message(f"Fetching {identifier} from the {kind.split()[0]} archive …", "info")
        try:
            spectrum = self.explorer.fetch_star(kind, identifier)
        except (ValueError, FetchError, SpectrumReadError) as exc:
            self._message(str(exc), "danger")
            return
        self._fit(spectrum, f"{kind.split()[0]} {identifier}")

    @staticmethod
    def _soon(callback) -> None:
        """On the server's next tick, under the document's lock (a release is handled before
        its lock is taken: `LatentSlider`); at once without a server."""
        document = pn.state.curdoc
        if document is None or document.session_context is None:
            callback()
        else:
            document.add_next_tick_callback(callback)

    def _on_tap(self, index: list[int]) -> None:
        if index:
            self._load_star(int(index[0]))

    def _load_star(self, index: int) -> None:
        star = self.explorer.stars[index]
        try:
            spectrum = self.explorer.star_spectrum(index)
        except (ValueError, OSError) as exc:
            self._message(str(exc), "warning")
            return
        self._fit(spectrum, f"{star['star_id']} ({star['survey']})")

    def _fit(self, spectrum, what: str) -> None:
        """Says what is being fitted, then fits on the next tick: the page shows the message
        while the fit runs (this session's own busy sign; see `serve`)."""
        self._message(f"Fitting {what} …", "info")
        self._soon(lambda: self._show_fit(spectrum, what))

    def _show_fit(self, spectrum, what: str) -> None:
        view = self.explorer.fit(self.view, spectrum)
        result = view.observation.fit
        self.fit_summary.object = (
            f"**{what}** — {spectrum.instrument}: v = {result.v_kms:.2f} ± {result.v_err_kms:.2f} "
            f"km/s, χ²/dof = {result.chi2_dof:.2f} on {result.n_pix} pixels"
        )
        self.status.visible = False
        self._apply(view)

    def _show_measurement(self) -> None:
        """The chosen line's equivalent width and depth in the data and in the shown model."""
        names = self.explorer.measurable_lines(self.view)
        if self.measure.options != names:  # a new star: a new choice (once more on its event)
            self.measure.options = names
        if not names or self.measure.value not in names:
            self.measured.object = ""
            return
        found = self.explorer.measure_line(self.view, self.measure.value)
        data, model = found["data"], found["model"]
        low, high = found["window"]
        self.measured.object = (
            f"**{found['line']}** ({low:.1f}–{high:.1f} Å): equivalent width "
            f"data {data.equivalent_width:.3f} ± {data.equivalent_width_error:.3f} Å, "
            f"model {model.equivalent_width:.3f} ± {model.equivalent_width_error:.3f} Å; depth "
            f"data {data.depth:.3f} ± {data.depth_error:.3f}, "
            f"model {model.depth:.3f} ± {model.depth_error:.3f}"
        )

    def _message(self, text: str, kind: str) -> None:
        self.status.object, self.status.alert_type, self.status.visible = text, kind, True

    def _apply(self, view: View) -> None:
        """Move the state to `view` in one change (the widgets and the URL follow)."""
        if view.observation is None:
            self.fit_summary.object = ""
        self.state.show(view)
        self._widen_sliders()

    def _redraw(self) -> None:
        """Redraw what the state changed. The model curve is sent again only when its pixel
        basis changed: for latents alone the page decodes it itself (`explorer.client`), and
        sending the basis again would double the latency of a release. The shading, labels,
        line response and marker follow every change, but a slider sets the state only when
        let go (redrawing them on every move doubled a drag's latency, benchmarks/explorer.py);
        when the latents alone changed, their new columns are written into the page's sources
        (`explorer.live`) instead of rendering their plots again.
        """
        shown = self._shown_key()
        if shown != self._model_shown:
            self.refresh.event()
        if shown != self._residual_shown:
            self.refresh_fit.event()
        if self.heat.value:
            self.refresh_strip.event()
        self.title.object = f"**{self._title()}**"
        self._show_measurement()
        if not (self._live.follows(self._live_key()) and self._write_live()):
            self.refresh_context.event()
            self.refresh_response.event()

    def _live_key(self) -> tuple:
        """What the shading, the line response and the marker are drawn for, besides the
        latents."""
        return (*self._shown_key(), self.view.latent)

    def _write_live(self) -> bool:
        """The view's shading, line response and marker written into the page's sources in
        one message (only in a served page: a notebook's plots are rendered)."""
        document = pn.state.curdoc
        if document is None or document.session_context is None:
            return False
        parts = self._figure_parts()
        x, values, fluxes, window = self._response_data()
        response = (x, plots.response_labels(self.view.latent, values), fluxes, window)
        with pn.io.hold(document):
            return self._live.write(parts["spans"], parts["labels"], response, self._marker_xy())

    def _shown_key(self) -> tuple:
        """What the model curve and the residuals are drawn for, besides the latents."""
        view = self.view
        observation = view.observation.serial if view.observation else None
        return (observation, view.instrument, view.v_kms, view.frame, view.zoom)

    # -- plots ---------------------------------------------------------------------------
    def _build_map(self) -> None:
        latents = self.explorer.star_latents
        self._pca = PCA(2, random_state=0).fit(latents) if len(latents) > 2 else None
        self._xy = self._pca.transform(latents) if self._pca else np.zeros((0, 2))

    def _title(self) -> str:
        view = self.view
        source = view.observation.spectrum.instrument if view.observation else None
        name = source or self.explorer.instruments[view.instrument].name
        return f"{name}, v = {view.v_kms:+.1f} km/s, {view.frame} frame"

    def _figure_parts(self) -> dict:
        """What the spectrum panel and the PNG export both show."""
        ex, view = self.explorer, self.view
        x, flux = ex.spectrum(view)
        spans, labels = plots.sensitive_spans(x, ex.sensitivity(view, view.latent))
        observed = band = None
        if view.observation is not None:
            spectrum, fit = view.observation.spectrum, view.observation.fit
            observed = (x, spectrum.flux[spectrum.valid] / fit.continuum)
            band = (x, fit.normalised_model, view.observation.model_sigma)
        return dict(x=x, flux=flux, observed=observed, spans=spans, labels=labels,
                    xlim=ZOOMS[view.zoom], title=self._title(), band=band)  # fmt: skip

    def _context(self):
        self._live.drew_context(self._live_key())
        parts = self._figure_parts()
        return plots.spectrum_context(
            parts["x"], parts["observed"], parts["spans"], parts["labels"], parts["xlim"],
            parts["band"],
        )  # fmt: skip

    def _model(self):
        self._model_shown = self._shown_key()
        x, raw, basis, continuum = self.explorer.drawing(self.view)
        self._client_columns = client.basis_columns(x, basis, self.explorer.stretches(self.view))
        return plots.model_curve(x, raw / continuum, ZOOMS[self.view.zoom])

    def _attach_decoder(self, plot, element) -> None:
        """Plot hook: the model curve's data source carries the basis and the decoder, so that
        the sliders' JavaScript redraws the curve in the browser (`explorer.client`)."""
        source, x_range = plot.handles["source"], plot.handles["x_range"]
        basis = plot.handles.get("stargon_basis")
        if basis is None:  # its own source: the curve's stays two columns, quick to redraw
            basis = plot.handles["stargon_basis"] = ColumnDataSource()
            basis.js_on_change("data", CustomJS(args={"curve": source}, code=client.BASIS_JS))
        columns, plan = self._client_columns
        basis.tags = [{"plan": plan}]  # before the data: its change redraws with this plan
        basis.data = columns
        renderer = plot.handles["glyph_renderer"]  # the page lifts it to the overlay layer
        source.tags = [client.curve_fields(self._decoder_net, basis, plot.state, renderer)]
        if plot.handles.get("stargon_range") is not x_range:
            plot.handles["stargon_range"] = x_range
            redraw = CustomJS(args={"curve": source}, code=client.RANGE_JS)
            x_range.js_on_change("start", redraw)
            x_range.js_on_change("end", redraw)

    def _png(self) -> bytes:
        observation = self.view.observation
        residual = observation.residual_sigma if observation is not None else None
        return view_png(residual=residual, **self._figure_parts())

    def _response(self):
        self._live.drew_response(self._live_key())
        x, values, fluxes, window = self._response_data()
        return plots.line_response(x, values, fluxes, self.view.latent, window)

    def _response_data(self):
        """(x, the latent's values, their fluxes, the window shown) of the line response: the
        curves only over the window and as much again on either side, to pan a little. The
        whole spectrum five times over took the page ~40 ms to take in after each release."""
        ex, view = self.explorer, self.view
        x = ex.axis(view)
        window = ZOOMS[view.zoom] or plots.focus_window(x, ex.sensitivity(view, view.latent))
        if None in window:
            return (*ex.line_response(view, view.latent), window)
        width = window[1] - window[0]
        around = (window[0] - width, window[1] + width)
        x, values, fluxes = ex.line_response(view, view.latent, around=around)
        kept = (x >= around[0]) & (x <= around[1])
        return x[kept], values, fluxes[:, kept], window

    def _line_marks(self):
        self._lines_shown = self.explorer.listed_lines(self.view)
        return plots.line_marks(self._lines_shown)

    def _line_names(self):
        view = self.view
        self._names_lines = self.explorer.listed_lines(view)  # for `_thin_names_on_zoom`
        shown = ZOOMS[view.zoom] or plots.full_range(self.explorer.axis(view))
        return plots.line_names(self._names_lines, shown)

    def _thin_names_on_zoom(self, plot, element) -> None:
        """Plot hook: the names' source keeps every line in view (its `tags`), and the page
        thins them again whenever the range moves (a pan or a box zoom), as `line_names` did."""
        source, x_range = plot.handles["source"], plot.handles["x_range"]
        lines = self._names_lines
        source.tags = [{"x": [x for x, _ in lines], "line": [line.name for _, line in lines],
                        "y": plots.LINE_NAME_Y, "at_most": plots.NAMES_AT_MOST,
                        "columns": list(source.data)}]  # fmt: skip
        if plot.handles.get("stargon_names_range") is not x_range:
            plot.handles["stargon_names_range"] = x_range
            thin = CustomJS(args={"source": source}, code=client.THIN_NAMES_JS)
            x_range.js_on_change("start", thin)
            x_range.js_on_change("end", thin)

    def _on_line_tap(self, index: list[int]) -> None:
        """A click on a line's tick measures it in the fitted star."""
        if not index or int(index[0]) >= len(self._lines_shown):
            return
        name = self._lines_shown[int(index[0])][1].name
        if name in self.measure.options:
            self.measure.value = name
        else:
            self._message(
                f"{name}: fit or load a star first, then click a line to measure it", "info"
            )

    def _residual(self):
        self._residual_shown = self._shown_key()
        view = self.view
        x = self.explorer.axis(view)
        xlim = ZOOMS[view.zoom] or plots.full_range(x)
        if view.observation is None:
            return plots.residual_curve(np.array([]), np.array([]), xlim)
        return plots.residual_curve(x, view.observation.residual_sigma, xlim)

    def _strip(self):
        x = self.explorer.axis(self.view)
        return plots.sensitivity_strip(
            x, self.explorer.sensitivity(self.view), ZOOMS[self.view.zoom]
        )

    def _points(self):
        key = COLOUR_LABELS[self.colour.value]
        colour = np.array([s.get(key, np.nan) for s in self.explorer.stars], dtype=float)
        return plots.latent_points(self._xy, colour, self.colour.value)

    def _marker(self):
        return plots.latent_marker(self._marker_xy())

    def _marker_xy(self) -> np.ndarray:
        return self._pca.transform(self.view.z[None])[0] if self._pca else np.zeros(2)

    def __panel__(self):
        live = self._live
        context = hv.DynamicMap(self._context, streams=[self.refresh_context])
        model = hv.DynamicMap(self._model, streams=[self.refresh]).opts(
            hv.opts.Curve(hooks=[self._attach_decoder])
        )
        marks = hv.DynamicMap(self._line_marks, streams=[self.refresh_fit])
        names = hv.DynamicMap(self._line_names, streams=[self.refresh_fit]).opts(
            hv.opts.Labels(hooks=[self._thin_names_on_zoom])
        )
        hv.streams.Selection1D(source=marks).add_subscriber(self._on_line_tap)
        # The shading's sources are kept by a hook on the whole overlay: options on the
        # context's own DynamicMap unlinked the line ticks' tap (Selection1D on `marks`).
        spectrum = (context * marks * names * model).opts(
            *plots.SPECTRUM_STYLE, hv.opts.Overlay(hooks=[live.keep_context])
        )
        residual = hv.DynamicMap(self._residual, streams=[self.refresh_fit])
        strip = pn.pane.HoloViews(
            hv.DynamicMap(self._strip, streams=[self.refresh_strip]),
            visible=self.heat.param.value,
            sizing_mode="stretch_width",
        )
        points = hv.DynamicMap(self._points, streams=[self.refresh_colour])
        marker = hv.DynamicMap(self._marker, streams=[self.refresh_context]).opts(
            hv.opts.Points(hooks=[live.keep("marker")])
        )
        tap = hv.streams.Selection1D(source=points)
        tap.add_subscriber(self._on_tap)
        response = hv.DynamicMap(self._response, streams=[self.refresh_response]).opts(
            hv.opts.Curve(hooks=[live.keep_curve])
        )
        controls = pn.Column(
            "### Latents",
            "Whitened directions w0, w1, …: decorrelated, unit spread over the training stars, "
            "largest variance first.",
            self.reset,
            self.random,
            *self.sliders,
            "### Physics",
            self.rv,
            self.instrument,
            self.frame,
            self.zoom,
            self.latent,
            self.heat,
            "### Export",
            pn.Row(self.csv, self.fits),
            self.png,
            width=330,
            scroll=True,
            height=900,
        )
        observe = pn.Column(
            "### Check a fit",
            self.survey_filter,
            *self.label_filters.values(),
            self.star_search,
            "or fetch one from its archive:",
            self.archive_kind,
            pn.Row(self.archive_id, self.archive_go),
            "or upload a FITS / CSV spectrum (wavelength, flux and optional error columns):",
            self.upload,
            self.upload_instrument,
            self.upload_resolving_power,
            pn.Row(self.upload_medium, self.upload_frame),
            self.status,
            self.fit_summary,
            self.measure,
            self.measured,
        )
        teach = pn.Column(  # stretched: a Markdown pane sized by its text runs off the page
            "### Teaching view", self.teff, self.logg, self.fe_h,
            pn.pane.Markdown(TEACHING, sizing_mode="stretch_width"), sizing_mode="stretch_width",
        )  # fmt: skip
        map_panel = pn.Column(
            "### Latent map (click a star to fit it)",
            self.colour,
            pn.pane.HoloViews(points * marker, sizing_mode="stretch_width"),
        )
        unusual = pn.Column(
            "### The most unusual stars (click one to fit it)",
            "Outlier score: how rare a star's latent is under the latent density, and how much "
            "worse its fit is (χ² per degree of freedom) than its instrument's typical one "
            "(latent, fit: each in robust spreads from typical); sort by any column.",
            self.unusual,
            sizing_mode="stretch_width",
            visible=self.unusual.visible,
        )
        main = pn.Column(
            self.title,
            pn.pane.HoloViews(spectrum, sizing_mode="stretch_width"),
            pn.pane.HoloViews(residual, sizing_mode="stretch_width"),
            strip,
            pn.pane.HoloViews(response, sizing_mode="stretch_width"),
            pn.Row(observe, teach, sizing_mode="stretch_width"),
            unusual,
            map_panel,
            sizing_mode="stretch_width",
        )
        return pn.Row(controls, main, sizing_mode="stretch_width")


def serve(explorer: Explorer, address: str = "127.0.0.1", port: int = 5006, show: bool = False):
    """Serve the app; every browser session gets its own `ExplorerApp` (its own state)."""
    pn.extension("tabulator", notifications=False)

    def session():
        # No busy indicator: Panel's is one flag for the whole server, so every open page spun
        # its animation whenever any session handled an event — each slider move of one user
        # cost every other page paints (five pages: move p95 21 → 14 ms, benchmarks/README.md).
        # A session's own long work (a fit) says so in its status line instead.
        return pn.template.FastListTemplate(
            title="StarGON explorer",
            main=[ExplorerApp(explorer)],
            theme_toggle=False,
            busy_indicator=None,
        )

    return pn.serve(
        {"/": session},
        address=address,
        port=port,
        show=show,
        title="StarGON explorer",
        websocket_max_message_size=MAX_UPLOAD_BYTES + 2**20,
        websocket_origin=[f"{address}:{port}", f"localhost:{port}"],
    )
