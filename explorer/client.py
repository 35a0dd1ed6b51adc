"""Decoding in the browser, so a slider move redraws the model curve without the server.

The curve the page draws is cut to the plot's pixel columns (the first, lowest, highest and
last point of each, "M4"), which rasterises as the full curve does at a quarter of 16k points,
and cut again when the wavelength range changes.

The page gets, once per instrument/velocity/observation (with the model curve's data): the
cached pixel basis (K+1 columns of a data source of its own) with the plan of the model's
pseudo-continuum (its stretches and windows, `model.pseudo_continuum.stretches`), and — once per
session — the latent MLP's weights and the whitening. They reach the JavaScript as named fields
of the curve's data source (`curve_fields`). A slider's JavaScript callback then does what
`Explorer.spectrum` does: z = mean + M w, h = MLP(z), g = T₀ + Σ h_k T_k, and f = g / pseudo-
continuum(g), so the curve is the normalised model at every slider setting, not only after a
release; a release asks nothing of the server for the curve.
"""

from __future__ import annotations

import json

import numpy as np
from bokeh.models import ColumnDataSource, GlyphRenderer, Plot
from torch import nn

from stargon.model import pseudo_continuum
from stargon.model.gon import StarGON
from stargon.model.whitening import Whitening

BASIS_COLUMN = "b{}"
WAVELENGTH_COLUMN = "x"


def decoder_payload(model: StarGON, whitening: Whitening) -> str:
    """The latent MLP (layer by layer) and the whitening as one JSON string: Bokeh walks every
    list in a model's properties each time the document's models change (a release's plot
    updates walked the ~10⁴ weights 3 times, ~70 ms); a string it passes over."""
    layers = []
    for module in model.decoder.h.net:
        if isinstance(module, nn.Linear):
            layers.append({"kind": "linear", "weight": module.weight.detach().cpu().tolist(),
                           "bias": module.bias.detach().cpu().tolist()})  # fmt: skip
        elif isinstance(module, nn.LayerNorm):
            weight, bias = module.weight.detach().cpu(), module.bias.detach().cpu()
            layers.append({"kind": "layernorm", "weight": weight.tolist(), "bias": bias.tolist(),
                           "eps": module.eps})  # fmt: skip
        elif isinstance(module, nn.SiLU):
            layers.append({"kind": "silu"})
        else:
            raise TypeError(f"the browser decoder has no {type(module).__name__} layer")
    net = {"layers": layers, "mean": whitening.mean.tolist(), "matrix": whitening.matrix.tolist()}
    return json.dumps(net)


def curve_fields(net: str, basis: ColumnDataSource, plot: Plot, renderer: GlyphRenderer) -> dict:
    """What the curve's JavaScript reads, by name (Bokeh's `tags` is the one free property of
    a model, so they travel as its one dict): the decoder, the basis source (its own `tags`
    hold `{"plan": …}`), the plot (range, width) and the curve's renderer."""
    return {"net": net, "basis": basis, "plot": plot, "renderer": renderer}


def basis_columns(
    x: np.ndarray, basis: np.ndarray, stretches: list[tuple[int, int, int]]
) -> tuple[dict[str, np.ndarray], dict]:
    """(data columns, pseudo-continuum plan): the wavelengths (P,) and pixel basis (K+1, P) with
    a NaN between the stretches (a break in the drawn line), and the stretches in the indices of
    those columns."""
    cuts = [start for start, _, _ in stretches[1:]]
    columns = {
        BASIS_COLUMN.format(k): np.insert(row, cuts, np.nan).astype(np.float32)
        for k, row in enumerate(basis)
    }
    columns[WAVELENGTH_COLUMN] = np.insert(np.asarray(x, dtype=float), cuts, np.nan)
    plan = {
        "stretches": [[start + k, stop + k, n] for k, (start, stop, n) in enumerate(stretches)],
        "percentile": pseudo_continuum.PERCENTILE,
        "blocks": pseudo_continuum.BLOCKS_PER_WINDOW,
    }
    return columns, plan


def slider_callback(n_sliders: int) -> tuple[str, list[str]]:
    """(the JavaScript, the names of its slider args s0, s1, …): Panel passes widgets one by one."""
    names = [f"s{k}" for k in range(n_sliders)]
    return f"const sliders = [{', '.join(names)}];\n" + DECODE_JS, names


# Draws the full curve `curve.stargonFull` (aligned with the basis source's wavelengths) cut to
# the plot's pixel columns over its current wavelength range: per column its first, lowest,
# highest and last point. The plot (field `plot`) gives the range and its inner width in CSS
# pixels. A gap (NaN) stays a break; the nearest point beyond each edge is kept so that the line
# reaches the edge. The first time the page draws the curve, it moves the curve's renderer (field
# `renderer`) to Bokeh's overlay layer, so that a move repaints the curve alone, not the axes,
# labels and observation beneath. Bokeh clips glyphs to the frame on its lower layers only, so
# glyph views are told to clip first (once per page); until then the server's curve stays on the
# glyph layer, clipped from the first paint.
DRAW_JS = """
function stargonBuffer(curve, name, length) {  // reused between moves: no garbage per move
  const buffers = curve.stargonBuffers = curve.stargonBuffers || {};
  if (!buffers[name] || buffers[name].length !== length) buffers[name] = new Float64Array(length);
  return buffers[name];
}
function stargonDraw(curve) {
  if (!window.stargonClipping) {
    const view = Bokeh.index.find_one(curve.tags[0].renderer);
    if (view === null) return;
    Object.defineProperty(Object.getPrototypeOf(view), "needs_clip", {get: () => true});
    window.stargonClipping = true;
  }
  const fields = curve.tags[0];  // client.curve_fields
  if (fields.renderer.level !== "overlay") fields.renderer.level = "overlay";
  const plot = fields.plot, xs = fields.basis.data.x, ys = curve.stargonFull;
  const start = plot.x_range.start, end = plot.x_range.end;
  const scale = Math.ceil(plot.inner_width * (window.devicePixelRatio || 1)) / (end - start);
  const outX = stargonBuffer(curve, "cutX", xs.length);
  const outY = stargonBuffer(curve, "cutY", xs.length);
  let n = 0, column = -1, first = -1, low = -1, high = -1, last = -1, before = -1;
  const push = (p) => { outX[n] = xs[p]; outY[n] = ys[p]; n++; };
  const flush = () => {
    if (first < 0) return;
    push(first);
    const [a, b] = low < high ? [low, high] : [high, low];
    if (a !== first) push(a);
    if (b !== a && b !== first) push(b);
    if (last !== b && last !== first) push(last);
    first = -1;
  };
  for (let p = 0; p < xs.length; p++) {
    const x = xs[p];
    if (Number.isNaN(x)) { flush(); before = -1; outX[n] = outY[n] = NaN; n++; continue; }
    if (x < start) { before = p; continue; }
    if (before >= 0) { push(before); before = -1; }
    if (x > end) { flush(); push(p); break; }
    const c = Math.floor((x - start) * scale);
    if (c !== column || first < 0) { flush(); column = c; first = low = high = p; }
    if (ys[p] < ys[low]) low = p;
    if (ys[p] > ys[high]) high = p;
    last = p;
  }
  flush();
  // in place, as Bokeh's streaming does: assigning `data` would also send it to the server
  curve.data.wavelength = outX.subarray(0, n);
  curve.data.flux = curve.stargonDrawn = outY.subarray(0, n);
  curve.change.emit();
}
"""

# The x-range callback (args: curve): a curve the page cut is cut again for the new range; a
# curve the server sent since (full, on release) is left as it is.
RANGE_JS = (
    DRAW_JS
    + """
if (curve.stargonDrawn !== undefined && curve.data.flux === curve.stargonDrawn) stargonDraw(curve);
"""
)

# The model's pseudo-continuum of `flux` into `out`, as `model.pseudo_continuum` computes it:
# per stretch of the plan (the basis source's field `plan`), the 95th percentile of blocks,
# their running median (the upper middle of an even window, as scipy's), linear interpolation to
# the pixels and a running mean, both windows clamped at the stretch's ends ("nearest").
ENVELOPE_FN = """
function stargonEnvelope(flux, plan, out) {
  for (const [start, stop, size] of plan.stretches) {
    const n = stop - start;
    if (size === 0) { for (let p = start; p < stop; p++) out[p] = flux[p]; continue; }
    const block = Math.max(1, Math.floor(size / plan.blocks)), blocks = Math.ceil(n / block);
    const values = new Float64Array(block), tops = new Float64Array(blocks);
    const h = ((block - 1) * plan.percentile) / 100, low = Math.floor(h);
    for (let b = 0; b < blocks; b++) {
      for (let i = 0; i < block; i++) values[i] = flux[start + Math.min(b * block + i, n - 1)];
      values.sort();
      const below = values[low], above = low + 1 < block ? values[low + 1] : below;
      tops[b] = below + (h - low) * (above - below);
    }
    const m = Math.max(1, Math.min(plan.blocks, blocks)), half = m >> 1;
    const window = new Float64Array(m), smooth = new Float64Array(blocks);
    for (let b = 0; b < blocks; b++) {
      for (let j = 0; j < m; j++) window[j] = tops[Math.min(Math.max(b - half + j, 0), blocks - 1)];
      window.sort();
      smooth[b] = window[half];
    }
    const sums = new Float64Array(n + 1);
    for (let p = 0; p < n; p++) {
      const t = (p + 0.5) / block - 0.5, b = Math.floor(t);
      const e = b < 0 ? smooth[0] : b >= blocks - 1 ? smooth[blocks - 1]
        : smooth[b] + (t - b) * (smooth[b + 1] - smooth[b]);
      sums[p + 1] = sums[p] + e;
    }
    const first = sums[1], last = sums[n] - sums[n - 1], reach = size >> 1;
    for (let p = 0; p < n; p++) {
      const a = p - reach, z = a + size - 1;
      let total = sums[Math.min(z, n - 1) + 1] - sums[Math.max(a, 0)];
      if (a < 0) total += -a * first;
      if (z > n - 1) total += (z - n + 1) * last;
      const value = total / size;
      out[start + p] = value > 0 ? value : 1;
    }
  }
}
"""

# Decodes the sliders' whitened latents into the full curve over its own pseudo-continuum and
# draws it; remembers the sliders for a new basis.
DECODE_FN = (
    ENVELOPE_FN
    + """
function stargonDecode(curve, sliders) {
  curve.stargonSliders = sliders;
  const fields = curve.tags[0];  // client.curve_fields
  if (curve.stargonNetOf !== fields.net) {  // parsed once per payload
    curve.stargonNet = JSON.parse(fields.net);
    curve.stargonNetOf = fields.net;
  }
  const net = curve.stargonNet;
  const w = sliders.map((s) => s.value);
  let x = net.mean.map((m, i) => m + net.matrix[i].reduce((acc, v, j) => acc + v * w[j], 0));
  for (const layer of net.layers) {
    if (layer.kind === "linear") {
      x = layer.bias.map((b, i) => layer.weight[i].reduce((acc, v, j) => acc + v * x[j], b));
    } else if (layer.kind === "layernorm") {
      const mean = x.reduce((a, v) => a + v, 0) / x.length;
      const variance = x.reduce((a, v) => a + (v - mean) * (v - mean), 0) / x.length;
      const scale = 1 / Math.sqrt(variance + layer.eps);
      x = x.map((v, i) => (v - mean) * scale * layer.weight[i] + layer.bias[i]);
    } else {
      x = x.map((v) => v / (1 + Math.exp(-v)));
    }
  }
  const basis = fields.basis.data;  // a source of its own: the curve's holds x and flux only
  const plan = fields.basis.tags[0].plan, length = basis.b0.length;
  const last = plan.stretches[plan.stretches.length - 1];
  if (last === undefined || last[1] !== length) return;  // a plan of another basis
  const flux = stargonBuffer(curve, "full", length);
  flux.set(basis.b0);
  for (let k = 0; k < x.length; k++) {
    const row = basis["b" + (k + 1)], weight = x[k];
    for (let p = 0; p < length; p++) flux[p] += weight * row[p];
  }
  const continuum = stargonBuffer(curve, "continuum", length);
  continuum.fill(1);
  stargonEnvelope(flux, plan, continuum);
  for (let p = 0; p < length; p++) flux[p] /= continuum[p];
  curve.stargonFull = flux;
  stargonDraw(curve);
}
"""
)

# The slider callback body: `sliders` are all latent sliders; the curve's data source (named
# `curve`: Panel passes the slider itself as `source`) is the one whose fields carry the decoder.
# Times go to window.stargonTimes (ms) for benchmarks.
DECODE_JS = (
    DRAW_JS
    + DECODE_FN
    + """
const start = performance.now();
let curve = window.stargonSource;
const isCurve = (model) => model.tags && model.tags.length && model.tags[0] && model.tags[0].net;
if (!curve || !isCurve(curve)) {
  curve = null;
  for (const doc of Bokeh.documents)
    for (const model of doc.all_models)
      if (isCurve(model))
        curve = model;
  window.stargonSource = curve;
}
if (curve === null) return;
stargonDecode(curve, sliders);
(window.stargonTimes = window.stargonTimes || []).push(performance.now() - start);
"""
)

# The basis source's change callback (args: curve): the server sent a new basis (instrument,
# velocity, observation); the page redraws from the sliders it last decoded.
BASIS_JS = (
    DRAW_JS
    + DECODE_FN
    + """
if (curve.stargonSliders !== undefined) stargonDecode(curve, curve.stargonSliders);
"""
)

# For tests and benchmarks driving a page: `MOVE_SLIDER_JS + "…"` is the body of a function of
# ([index, value]) that sets latent slider `index` as a drag does (the decode runs async).
MOVE_SLIDER_JS = """
  const sliders = [];
  for (const doc of Bokeh.documents)
    for (const model of doc.all_models)
      if (model.type === "Slider" && /^w\\d+$/.test(model.title)) sliders.push(model);
  sliders.sort((a, b) => Number(a.title.slice(1)) - Number(b.title.slice(1)));
  window.stargonTimes = [];
  sliders[index].value = value;
"""

# The carrier's callback (`explorer.live`, args: targets, the sources and ranges by key): a
# release's numeric columns come as one array, `cb_obj.packed`, and its layout as JSON,
# `cb_obj.layout` (set before the array): per target source its columns, each a slice
# [start, stop) of the array or a list of strings, and per range its new ends. The columns are
# not sent back to the server (eight messages after every release): Bokeh sends a source's
# data on every change, equal or not, so a later render reaches the page whatever the server
# held. The ranges are sent back: Bokeh would not send a render's end equal to the one it holds.
LIVE_JS = """
const layout = JSON.parse(cb_obj.layout);
const target = (key) => (targets instanceof Map ? targets.get(key) : targets[key]);
const packed = cb_obj.packed;
for (const [key, columns] of Object.entries(layout.sources)) {
  const data = {};
  for (const [name, start, stop, strings] of columns)
    data[name] = strings === null ? packed.slice(start, stop) : strings;
  target(key).setv({data}, {sync: false});
}
for (const [key, low, high] of layout.ranges)
  target(key).setv({start: low, end: high, reset_start: low, reset_end: high});
"""

# The line names' x_range callback (args: source): every listed line in view is in
# `source.tags[0]` (x, line, y, at_most, and the source's column names), and the names are thinned
# to the new range as `plots.line_names` thins them.
THIN_NAMES_JS = """
const all = source.tags[0];
if (all === undefined) return;
const low = Math.min(cb_obj.start, cb_obj.end), high = Math.max(cb_obj.start, cb_obj.end);
const spacing = (high - low) / all.at_most;
const xs = [], ys = [], names = [];
let last = -Infinity;
for (let i = 0; i < all.x.length; i++) {
  const x = all.x[i];
  if (x >= low && x <= high && x - last >= spacing) {
    xs.push(x); ys.push(all.y); names.push(all.line[i]); last = x;
  }
}
source.data = {[all.columns[0]]: xs, [all.columns[1]]: ys, [all.columns[2]]: names};
"""
