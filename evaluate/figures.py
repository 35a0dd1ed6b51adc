"""The report's PNG figures (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

LABEL_TITLES = {"teff": "Teff [K]", "logg": "log g", "fe_h": "[Fe/H]", "log_teff": "log Teff"}


def _subplots(n_rows: int = 1, n_columns: int = 1, figsize=(9, 4), squeeze: bool = True):
    """A figure without pyplot: no global state, no display backend."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(n_rows, n_columns, squeeze=squeeze)


def _save(fig: Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name


def reconstruction(per_survey: dict, path: Path) -> str:
    names = [s for s, m in per_survey.items() if m["model_chi2_dof"] is not None]
    model = [per_survey[s]["model_chi2_dof"] for s in names]
    pca = [per_survey[s]["pca_chi2_dof"] or np.nan for s in names]
    x = np.arange(len(names))
    fig, ax = _subplots(figsize=(9, 3.5))
    ax.bar(x - 0.2, model, 0.4, label="StarGON")
    ax.bar(x + 0.2, pca, 0.4, label="per-survey PCA")
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set(xticks=x, yscale="log", ylabel="held-out median χ²/dof")
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.legend()
    return _save(fig, path)


def example_fits(dataset, fits: dict, path: Path) -> str:
    """For each survey, the held-out star with the median χ²/dof: data, model, residual/σ."""
    chosen = []
    for survey, results in fits.items():
        if results:
            order = np.argsort([r.chi2_dof for _, r in results])
            chosen.append((survey, *results[order[len(order) // 2]]))
    fig, axes = _subplots(len(chosen), 1, figsize=(10, 2.2 * len(chosen)), squeeze=False)
    for ax, (survey, i, result) in zip(axes[:, 0], chosen, strict=True):
        spectrum = dataset.spectra[i]
        flux, ivar = spectrum.flux[spectrum.valid], spectrum.ivar[spectrum.valid]
        ax.plot(result.wave, flux / result.continuum, "k", lw=0.5, label="observed")
        ax.plot(result.wave, result.normalised_model, "C3", lw=0.6, label="model")
        residual = np.clip((flux - result.model_flux) * np.sqrt(ivar), -10, 10)
        ax.plot(
            result.wave,
            0.25 + 0.02 * residual,
            "C0",
            lw=0.3,
            label="residual/σ (clipped ±10) × 0.02 + 0.25",
        )
        ax.set_title(f"{survey}: {spectrum.star_id}, χ²/dof {result.chi2_dof:.2f}", fontsize=9)
        ax.set_ylim(0, 1.4)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    axes[-1, 0].set_xlabel("observed vacuum wavelength [Å]")
    return _save(fig, path)


def probes(result: dict, path: Path) -> str:
    labels = ("teff", "logg", "fe_h")
    fig, axes = _subplots(1, 3, figsize=(11, 3.5))
    for ax, label in zip(axes, labels, strict=True):
        for name, colour in (("latents", "C3"), ("pca", "C0")):
            truth, predicted = result["predictions"][("3500–8000 K", label, "linear", name)]
            ax.scatter(truth, predicted, s=8, c=colour, label=f"linear on {name}")
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k", lw=0.6)
        ax.set(xlabel=f"catalogue {LABEL_TITLES[label]}", ylabel="predicted")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"label probes, held-out {result['survey']} stars of 3,500–8,000 K")
    return _save(fig, path)


def correlation(result: dict, path: Path) -> str:
    fig, ax = _subplots(figsize=(4, 6))
    image = ax.imshow(result["correlation"], cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set(xticks=range(3), ylabel="latent k", title=f"Spearman ρ ({result['survey']})")
    ax.set_xticklabels(["log Teff", "log g", "[Fe/H]"])
    ax.set_yticks(range(result["correlation"].shape[0]))
    fig.colorbar(image, ax=ax)
    return _save(fig, path)


def latent_map(result: dict, path: Path) -> str:
    fig, axes = _subplots(1, 3, figsize=(13, 4))
    xy = result["xy"]
    for ax, (label, values) in zip(axes, result["labels"].items(), strict=True):
        known = np.isfinite(values)
        ax.scatter(*xy[~known].T, s=3, c="0.85")
        points = ax.scatter(*xy[known].T, s=6, c=values[known], cmap="viridis")
        fig.colorbar(points, ax=ax, label=LABEL_TITLES[label])
        ax.set(xlabel="latent PC 1", ylabel="latent PC 2")
    return _save(fig, path)


def radial_velocity(rows: list[dict], path: Path) -> str:
    scans = [r for r in rows if r["catalogue"] is not None]
    fig, axes = _subplots(1, max(len(scans), 1), figsize=(4 * max(len(scans), 1), 3.6))
    for ax, row in zip(np.atleast_1d(axes), scans, strict=False):
        catalogue, fitted = np.array(row["catalogue"]), np.array(row["fitted"])
        ax.scatter(catalogue, fitted - catalogue, s=6)
        ax.axhline(0, color="k", lw=0.6)
        ax.set(xlabel="catalogue RV [km/s]", ylabel="fitted − catalogue [km/s]", ylim=(-30, 30))
        ax.set_title(f"{row['survey']}: scatter {row['scatter_kms']:.2f} km/s", fontsize=9)
    return _save(fig, path)


def realism(rows: list[dict], path: Path) -> str:
    fig, axes = _subplots(len(rows), 1, figsize=(10, 2.4 * len(rows)), squeeze=False)
    for ax, row in zip(axes[:, 0], rows, strict=True):
        for key, colour in (("real", "k"), ("generated", "C3")):
            lo, mid, hi = np.percentile(row[key], [16, 50, 84], axis=0)
            ax.fill_between(row["grid"], lo, hi, color=colour, alpha=0.2, lw=0)
            ax.plot(row["grid"], mid, colour, lw=0.5, label=f"{key} (median, 16–84 %)")
        ax.set_title(f"{row['survey']}: C2ST accuracy {row['c2st_accuracy']:.2f}", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    axes[-1, 0].set_xlabel("rest vacuum wavelength [Å]")
    return _save(fig, path)


def line_depths(rows: list[dict], path: Path) -> str:
    panels = [(r["survey"], d) for r in rows for d in r["line_depths"]]
    columns = 4
    n_rows = max(1, -(-len(panels) // columns))
    fig, axes = _subplots(n_rows, columns, figsize=(12, 2.6 * n_rows), squeeze=False)
    for ax, (survey, depth) in zip(axes.flat, panels, strict=False):
        bins = np.histogram_bin_edges(np.r_[depth["real"], depth["generated"]], 20)
        ax.hist(depth["real"], bins, histtype="step", color="k", label="real")
        ax.hist(depth["generated"], bins, histtype="step", color="C3", label="generated")
        ax.set_title(f"{survey} {depth['line']}", fontsize=9)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path)


def sensitivity(result: dict, path: Path) -> str:
    values = result["values"] / result["values"].max(axis=1, keepdims=True)
    fig, ax = _subplots(figsize=(12, 4))
    wave = result["wave"]
    ax.pcolormesh(
        np.log10(wave),
        np.arange(values.shape[0] + 1) - 0.5,
        values[:, :-1],
        cmap="magma",
        shading="flat",
    )
    ticks = [3500, 4000, 5000, 6000, 8000, 10000, 15000]
    ax.set(xticks=np.log10(ticks), ylabel="latent k", xlabel="rest vacuum wavelength [Å]")
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_title("|∂f/∂z_k| (each row scaled to its maximum)")
    return _save(fig, path)


def prior_samples(rows: list[dict], path: Path, n_shown: int = 6) -> str:
    """A few prior samples per instrument (normalised, rest frame), offset for legibility."""
    fig, axes = _subplots(len(rows), 1, figsize=(10, 2.4 * len(rows)), squeeze=False)
    for ax, row in zip(axes[:, 0], rows, strict=True):
        for k in range(min(n_shown, len(row["flux"]))):
            ax.plot(row["wave"], row["flux"][k] + 0.6 * k, lw=0.5)
        ax.set(ylabel="flux + offset", title=f"{row['instrument']}: prior samples "
               f"({row['share_in_range']:.1%} of all pixels in [−0.05, 1.2])")  # fmt: skip
    axes[-1, 0].set_xlabel("rest vacuum wavelength [Å]")
    return _save(fig, path)
