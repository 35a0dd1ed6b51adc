"""Decoding in the browser, so a slider move redraws the model curve without the server.

The page gets, once per instrument/velocity/observation (with the model curve's data): the
cached pixel basis (K+1 columns of a data source of its own), the pseudo-continuum the server last
divided by, and — once per session — the latent MLP's weights and the whitening. A slider's
JavaScript callback then does what `Explorer.spectrum` does: z = mean + M w, h = MLP(z),
f = (T₀ + Σ h_k T_k) / pseudo-continuum. On release the server redraws as before (and renews
the pseudo-continuum).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from stargon.model.gon import StarGON
from stargon.model.whitening import Whitening

BASIS_COLUMN = "b{}"
CONTINUUM_COLUMN = "pseudo_continuum"


def decoder_payload(model: StarGON, whitening: Whitening) -> dict:
    """The latent MLP as plain lists (layer by layer) and the whitening, JSON-ready."""
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
    return {
        "stargon_decoder": True,
        "layers": layers,
        "mean": whitening.mean.tolist(),
        "matrix": whitening.matrix.tolist(),
    }


def basis_columns(basis: np.ndarray, continuum: np.ndarray) -> dict[str, np.ndarray]:
    """The pixel basis (K+1, P) and the pseudo-continuum (P,) as curve-data columns."""
    columns = {BASIS_COLUMN.format(k): row.astype(np.float32) for k, row in enumerate(basis)}
    return columns | {CONTINUUM_COLUMN: continuum.astype(np.float32)}


def slider_callback(n_sliders: int) -> tuple[str, list[str]]:
    """(the JavaScript, the names of its slider args s0, s1, …): Panel passes widgets one by one."""
    names = [f"s{k}" for k in range(n_sliders)]
    return f"const sliders = [{', '.join(names)}];\n" + DECODE_JS, names


# The slider callback body: `sliders` are all latent sliders; the curve's data source (named
# `curve`: Panel passes the slider itself as `source`) is the one whose tags carry the decoder.
# Times go to window.stargonTimes (ms) for benchmarks.
DECODE_JS = """
const start = performance.now();
let curve = window.stargonSource;
if (!curve || !curve.tags.length || !curve.tags[0].stargon_decoder) {
  curve = null;
  for (const doc of Bokeh.documents)
    for (const model of doc.all_models)
      if (model.tags && model.tags.length && model.tags[0] && model.tags[0].stargon_decoder)
        curve = model;
  window.stargonSource = curve;
}
if (curve === null) return;
const net = curve.tags[0];
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
const basis = curve.tags[1].data;  // a source of its own: the curve's holds x and flux only
const continuum = basis.pseudo_continuum;
const flux = Float64Array.from(basis.b0);
for (let k = 0; k < x.length; k++) {
  const row = basis["b" + (k + 1)], weight = x[k];
  for (let p = 0; p < flux.length; p++) flux[p] += weight * row[p];
}
for (let p = 0; p < flux.length; p++) flux[p] /= continuum[p];
curve.data.flux = flux;
curve.change.emit();
(window.stargonTimes = window.stargonTimes || []).push(performance.now() - start);
"""

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
