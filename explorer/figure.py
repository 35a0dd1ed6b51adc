"""The shown view as a PNG (matplotlib, no browser needed): the explorer's figure export."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure


def view_png(
    x: np.ndarray,
    flux: np.ndarray,
    observed: tuple[np.ndarray, np.ndarray] | None,
    residual: np.ndarray | None,
    spans: list[tuple[float, float]],
    labels: list[tuple[float, str]],
    xlim: tuple[float, float] | None,
    title: str,
    band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> bytes:
    """Model, observation, the fit's ±1σ band, shaded sensitive regions with their lines, and
    residuals/σ."""
    figure = Figure(figsize=(11, 5.5 if residual is not None else 4), layout="constrained")
    rows = (3, 1) if residual is not None else (1,)
    axes = figure.subplots(len(rows), 1, sharex=True, height_ratios=rows, squeeze=False)[:, 0]
    top = axes[0]
    for a, b in spans:
        top.axvspan(a, b, color="gold", alpha=0.3, lw=0)
    if observed is not None:
        top.plot(*observed, color="black", lw=0.7, label="observation")
    if band is not None:
        band_x, centre, sigma = band
        top.fill_between(band_x, centre - sigma, centre + sigma, color="#d62728", alpha=0.25,
                         lw=0, label="fit ± 1σ (latents)")  # fmt: skip
    top.plot(x, flux, color="#d62728", lw=1.0, label="model")
    for position, name in labels:
        top.text(position, 1.25, name, ha="center", fontsize=8, color="#7a5c00")
    top.set(ylim=(-0.05, 1.35), ylabel="normalised flux", title=title)
    top.legend(loc="lower right")
    if residual is not None:
        axes[1].plot(x, residual, color="#1f77b4", lw=0.6)
        axes[1].axhline(0, color="grey", lw=0.5)
        axes[1].set(ylim=(-6, 6), ylabel="residual / σ")
    axes[-1].set(xlabel="vacuum wavelength [Å]", xlim=xlim or (x.min(), x.max()))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()
