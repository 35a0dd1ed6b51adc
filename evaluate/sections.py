"""The report's sections, each one object that measures, draws its figures, gives its numbers
to metrics.json and writes its Markdown — so a section is read, changed or added in one place.

A section computes after the ones listed before it in `report.SECTIONS` and may read their
results (the held-out fits, the sensitive regions) through `earlier`.
"""

from __future__ import annotations

import math
from pathlib import Path

from stargon.core.records import format_number as _n
from stargon.core.records import markdown_table
from stargon.evaluate import figures, invariance, measurements
from stargon.evaluate.context import Evaluation

TARGETS = {
    "chi2_apogee_galah": 1.2,
    "chi2_other": 1.5,
    "emulator_mae": 0.0015,
    "probe": {"teff": 150.0, "logg": 0.3, "fe_h": 0.2},
    "rv_scatter": 5.0,
    "rv_bias": 2.0,
    "rv_catastrophic": 0.02,  # share of a survey's scans still > 50 km/s off after the full fit
    "c2st": 0.75,
    "snr_partial": 0.3,
    "degradation_shift": 1.0,
    "repeat_ratio": 0.25,
    "repeat_rv": 5.0,
    "on_lines": 0.7,
    "samples_below_real": 0.01,  # share in range, prior samples below real spectra
}


def verdict(value, target: float) -> str:
    if value is None or not math.isfinite(value):
        return "not measured"
    return (
        f"met ({_n(value)} ≤ {target})"
        if value <= target
        else f"**missed** ({_n(value)} > {target})"
    )


class Section:
    """One part of the report. `compute` stores what it measured; `draw` writes its figures
    and remembers their file names for `markdown`; `metrics` is its part of metrics.json
    (numbers only, no arrays)."""

    name: str

    def __init__(self, ev: Evaluation, **settings) -> None:
        self.ev = ev
        self.settings = settings
        self.figures: dict[str, str] = {}

    def compute(self, earlier: dict[str, Section]) -> None:
        raise NotImplementedError

    def draw(self, out: Path) -> None:
        """Most sections have figures; those without keep this."""

    def metrics(self) -> dict:
        raise NotImplementedError

    def markdown(self) -> list[str]:
        raise NotImplementedError


class Reconstruction(Section):
    name = "reconstruction"

    def compute(self, earlier: dict[str, Section]) -> None:
        max_per_survey = self.settings.get("max_per_survey", 60)
        self.per_survey, self.fits = measurements.reconstruction(self.ev, max_per_survey)

    def draw(self, out: Path) -> None:
        self.figures = {
            "reconstruction": figures.reconstruction(self.per_survey, out / "reconstruction.png"),
            "examples": figures.example_fits(self.ev.dataset, self.fits, out / "example_fits.png"),
        }

    def metrics(self) -> dict:
        return {"reconstruction": self.per_survey}

    def markdown(self) -> list[str]:
        rows, verdicts = [], []
        for survey, m in self.per_survey.items():
            rows.append({"survey": survey} | m)
            if not m["has_errors"] or m["model_chi2_dof"] is None or survey == "payne_synthetic":
                continue
            target = (
                TARGETS["chi2_apogee_galah"]
                if survey.startswith(("apogee", "galah"))
                else TARGETS["chi2_other"]
            )
            line = f"- {survey}: χ²/dof {verdict(m['model_chi2_dof'], target)}"
            if m["n_train"] > 50 and m["pca_chi2_dof"] is not None:
                better = m["model_chi2_dof"] < m["pca_chi2_dof"]
                line += f"; vs PCA {'below' if better else '**above**'} ({_n(m['pca_chi2_dof'])})"
            verdicts.append(line)
        columns = ["survey", "n_train", "n_held_out", "has_errors", "model_chi2_dof",
                   "pca_chi2_dof", "model_fractional_rms", "span_fractional_rms",
                   "pca_fractional_rms"]  # fmt: skip
        return [
            "## Reconstruction of held-out stars",
            "Full fit (v for observed-frame spectra, latents, continuum) on every valid pixel; "
            "baseline: PCA with as many components as latent dimensions fitted per survey on its "
            "training spectra. Surveys without published errors (MILES, STELIB, MIKE) carry a "
            "DER_SNR noise estimate, so their fractional RMS is the fairer number. "
            "`span_fractional_rms`: the best any weights of the decoder's basis functions reach "
            "under the fit's continuum — no latent does better, so a model close to it is "
            "limited by its number of basis functions.",
            markdown_table(rows, columns),
            "Targets:\n" + "\n".join(verdicts),
            f"![reconstruction]({self.figures['reconstruction']})",
            f"![example fits]({self.figures['examples']})",
        ]


class EmulatorFidelity(Section):
    name = "emulator_fidelity"

    def compute(self, earlier: dict[str, Section]) -> None:
        self.result = measurements.emulator_fidelity(self.ev, earlier["reconstruction"].fits)

    def metrics(self) -> dict:
        return {"emulator_fidelity": self.result}

    def markdown(self) -> list[str]:
        result = self.result
        if not result:
            return ["## Emulator fidelity", "No synthetic survey in this checkpoint's data."]
        probes = ", ".join(f"{k} {_n(v)}" for k, v in result["label_probe_rmse"].items())
        return [
            "## Emulator fidelity (controlled benchmark)",
            f"{result['n_held_out']} held-out noiseless emulator spectra: mean |model − truth| "
            f"{_n(result['model_mae'])} (median {_n(result['model_mae_median'])}) vs PCA "
            f"{_n(result['pca_mae'])}; target ≤ {TARGETS['emulator_mae']}: "
            f"{verdict(result['model_mae'], TARGETS['emulator_mae'])}.",
            f"Fractional RMS {_n(result['model_frac_rms'])}; the best any weights of the "
            f"decoder's {self.ev.model.config.n_basis + 1} basis functions reach, under the same "
            f"continuum: {_n(result['span_frac_rms'])} (where the two are close, the number of "
            "basis functions, not training, limits the fit).",
            f"Linear probe from latents to the labels that made them (RMSE): {probes}.",
        ]


class LabelProbes(Section):
    """Probes of catalogue labels from latents, their correlations, and the latent map."""

    name = "probes"

    def compute(self, earlier: dict[str, Section]) -> None:
        self.result = measurements.label_probes(self.ev)
        self.latent_map = measurements.latent_map(self.ev)

    def draw(self, out: Path) -> None:
        self.figures = {"latent_map": figures.latent_map(self.latent_map, out / "latent_map.png")}
        if self.result["rows"]:
            self.figures["probes"] = figures.probes(self.result, out / "probes.png")
            self.figures["correlation"] = figures.correlation(self.result, out / "correlation.png")

    def metrics(self) -> dict:
        return {"probes": self.result["rows"]}

    def markdown(self) -> list[str]:
        result = self.result
        if not result["rows"]:
            return ["## Label probes", result.get("note", "")]
        verdicts = []
        for label, target in TARGETS["probe"].items():
            best = min(
                (r for r in result["rows"] if r["subset"] == "3500–8000 K" and r["label"] == label),
                key=lambda r: r["latents_rmse"],
            )
            beats = best["latents_rmse"] < best["pca_rmse"]
            verdicts.append(
                f"- {label} ({best['probe']}): {verdict(best['latents_rmse'], target)}; "
                f"{'better' if beats else '**not better**'} than PCA ({_n(best['pca_rmse'])})"
            )
        columns = ["subset", "label", "probe", "n_train", "n_test", "latents_rmse", "pca_rmse"]
        return [
            f"## Label probes ({result['survey']}, held-out stars)",
            "Probes fitted on training stars' latents (one GON step) and, as the baseline, on "
            "PCA coefficients of the same spectra; scored on held-out stars.",
            markdown_table(result["rows"], columns),
            "Targets (3,500–8,000 K):\n" + "\n".join(verdicts),
            f"![probes]({self.figures['probes']})",
            f"![correlation]({self.figures['correlation']}) "
            f"![latent map]({self.figures['latent_map']})",
        ]


class RadialVelocity(Section):
    """Fitted velocities against catalogues, and blind fits of injected shifts."""

    name = "radial_velocity"

    def compute(self, earlier: dict[str, Section]) -> None:
        fits = earlier["reconstruction"].fits
        self.catalogue = measurements.rv_against_catalogue(self.ev, fits)
        self.catastrophic = measurements.catastrophic_velocities(self.ev, self.catalogue)
        trials = self.settings.get("injection_trials", 40)
        self.injection = measurements.rv_injection(self.ev, trials)

    def draw(self, out: Path) -> None:
        if self.catalogue:
            self.figures["rv"] = figures.radial_velocity(self.catalogue, out / "rv_catalogue.png")

    def metrics(self) -> dict:
        catalogue = [
            {k: v for k, v in r.items() if k not in ("catalogue", "fitted", "indices")}
            for r in self.catalogue
        ]
        return {"rv_catalogue": catalogue, "rv_catastrophic": self.catastrophic,
                "rv_injection": self.injection}  # fmt: skip

    def markdown(self) -> list[str]:
        parts = ["## Radial velocity"]
        rows = self.catalogue
        if rows:
            scans = [r for r in rows if r["stage"].startswith("scan")]
            lamost = [r for r in scans if r["survey"].startswith("lamost")]
            targets = "; ".join(
                f"{r['survey']} scatter {verdict(r['scatter_kms'], TARGETS['rv_scatter'])}, "
                f"|bias| {verdict(abs(r['bias_kms']), TARGETS['rv_bias'])}"
                for r in lamost
            )
            parts += [
                "Fitted v against the catalogue's RV (|Δv| > 50 km/s counted as catastrophic "
                "and left out of bias and scatter; scatter = 1.4826 MAD).",
                markdown_table(
                    rows, ["survey", "stage", "n", "bias_kms", "scatter_kms", "catastrophic"]
                ),
                "Targets (LAMOST): " + targets,
                f"![rv]({self.figures['rv']})",
            ]
        if self.catastrophic:
            parts += self._catastrophic_markdown(scans)
        if self.injection:
            columns = ["setting", "trials", "bias_kms", "scatter_kms", "median_sigma_v_kms",
                       "catastrophic"]  # fmt: skip
            parts += [
                "Injection: real rest-frame spectra moved to v ~ U(−500, 500) km/s, noised, "
                "fitted blind (benchmarks/rv_injection.py runs the 1,000-trial version).",
                markdown_table(self.injection, columns),
            ]
        return parts

    def _catastrophic_markdown(self, scans: list[dict]) -> list[str]:
        """The scans' catastrophic velocities one by one, and which velocity the model prefers."""
        columns = ["survey", "star", "v_other_kms", "catalogue_rv_err", "v_scan_kms",
                   "v_fit_kms", "chi2_dof_other", "chi2_dof_fit", "delta_chi2",
                   "prefer"]  # fmt: skip
        verdicts = []
        for row in scans:
            mine = [r for r in self.catastrophic if r["survey"] == row["survey"]]
            if not mine:
                continue
            limit = measurements.CATASTROPHIC_KMS
            resolved = [r for r in mine if abs(r["v_fit_kms"] - r["v_other_kms"]) < limit]
            preferred = [r for r in mine if r not in resolved and r["prefer"] == "fit"]
            remaining = len(mine) - len(resolved)
            no_error = sum(not math.isfinite(r["catalogue_rv_err"]) for r in mine)
            verdicts.append(
                f"- {row['survey']}: {len(mine)} of {row['n']} ({no_error} with no catalogue RV "
                f"error); the full fit comes within {limit:g} km/s of the catalogue for "
                f"{len(resolved)}; of the other {remaining}, the pixels as this model fits them "
                f"decisively prefer the fit's velocity for {len(preferred)} (not proof of the "
                f"catalogue's error); catastrophic after the full fit: "
                f"{verdict(remaining / row['n'], TARGETS['rv_catastrophic'])}"
            )
        return [
            "Catastrophic scans, one by one: each star fitted held at the full fit's velocity "
            "and at the catalogue's RV (latents and continuum free in both). `delta_chi2`: how "
            "much higher −2 ln posterior (χ² + zᵀΛz) is at the catalogue's, over the better "
            "fit's χ²/dof; ≥ 25 means the pixels prefer the fit's velocity (5σ for one "
            "parameter), ≤ −25 the catalogue's. The verdict is the model's: a star it cannot "
            "fit at its true velocity (`chi2_dof_other` far above 1) is decisive too, so only an "
            "independent look (the lines' positions) can show a catalogue's error. A "
            "missing `catalogue_rv_err`: the catalogue gave the star no RV error.",
            markdown_table(self.catastrophic, columns),
            *verdicts,
        ]


class CrossInstrument(Section):
    name = "cross_instrument"

    def compute(self, earlier: dict[str, Section]) -> None:
        self.rows = measurements.cross_instrument(self.ev)

    def metrics(self) -> dict:
        return {"cross_instrument": self.rows}

    def markdown(self) -> list[str]:
        if not self.rows:
            return ["## Cross-instrument prediction", "No stars shared between MILES and STELIB."]
        columns = ["from", "to", "n_held_out_stars", "n_train_pairs", "model_fractional_rms",
                   "pca_regression_fractional_rms"]  # fmt: skip
        return [
            "## Cross-instrument prediction",
            "Held-out stars observed by both MILES and STELIB: latents from one instrument's "
            "spectrum, the other's predicted on its own pixels and resolution (continuum "
            "fitted). Baseline: ridge regression from one survey's PCA coefficients to the "
            "other's flux, trained on the shared training stars, given the same continuum "
            "freedom.",
            markdown_table(self.rows, columns),
        ]


class Realism(Section):
    name = "realism"
    COLUMNS = ("survey", "real_from", "n_real", "c2st_accuracy", "c2st_std",
               "c2st_real_vs_reconstruction", "c2st_real_vs_fitted",
               "c2st_reconstruction_vs_samples", "c2st_masked_pixels",
               "modelled_share")  # fmt: skip

    def compute(self, earlier: dict[str, Section]) -> None:
        self.rows = measurements.realism(self.ev)

    def draw(self, out: Path) -> None:
        if self.rows:
            self.figures = {
                "realism": figures.realism(self.rows, out / "realism.png"),
                "depths": figures.line_depths(self.rows, out / "line_depths.png"),
            }

    def metrics(self) -> dict:
        arrays = ("grid", "real", "generated", "line_depths")
        rows = [
            {k: v for k, v in row.items() if k not in arrays}
            | {"line_depths": [_numbers(depth) for depth in row["line_depths"]]}
            for row in self.rows
        ]
        return {"realism": rows}

    def markdown(self) -> list[str]:
        if not self.rows:
            return ["## Realism", "No survey with more than 200 spectra."]
        largest = "largest real − reconstruction at (Å)"
        table_rows = [
            {k: r[k] for k in self.COLUMNS}
            | {largest: ", ".join(f"{w:.0f}" for w in r["largest_differences_a"])}
            | {"verdict": verdict(r["c2st_accuracy"], TARGETS["c2st"])}
            for r in self.rows
        ]
        looked_at = [
            {
                "survey": r["survey"],
                "real against samples": _wavelengths(r["c2st_samples_features"]),
                "real against fitted reconstructions": _wavelengths(r["c2st_fitted_features"]),
            }
            for r in self.rows
        ]
        depths = [
            {"survey": r["survey"]} | _numbers(d) for r in self.rows for d in r["line_depths"]
        ]
        return [
            "## Realism of samples",
            "For each survey with more than 200 spectra: latents drawn from a Gaussian mixture "
            "fitted to that survey's training latents, decoded at real spectra's pixels, "
            "resolution and velocity, with their noise; real and generated both divided by the "
            "same running 90th-percentile pseudo-continuum. C2ST: 5-fold accuracy of a logistic "
            "regression on 10 PCA features (0.5 = indistinguishable), on the pixels the model is "
            "asked to model (no atmosphere band or segment edge in any star; `modelled_share` of "
            "the grid): real against samples (`c2st_accuracy`), real against each star's own "
            "reconstruction from its one-step and its fitted latent (the decoder's failure), "
            "reconstructions against samples (the latent density's), and real against samples "
            "on the masked pixels alone (what a stellar model does not generate). The last "
            "column: where the mean real − reconstruction difference is largest.",
            markdown_table(table_rows, [*self.COLUMNS, largest, "verdict"]),
            "Where the classifier looks: the five modelled wavelengths (Å, rest frame) its "
            "weights lean on most (|∂ logit/∂ pixel| through its PCA features, peaks 300 km/s "
            "apart), with the listed line within 150 km/s. Lines here mean the depths differ; "
            "bare wavelengths, the continuum's shape.",
            markdown_table(looked_at, list(looked_at[0])),
            "Line depths (1 − mean normalised flux within ±FWHM), real vs generated:",
            markdown_table(depths, ["survey", "line", "real_median", "generated_median", "ks_p"]),
            f"![realism]({self.figures['realism']})",
            f"![line depths]({self.figures['depths']})",
        ]


def _wavelengths(features: list[dict]) -> str:
    return ", ".join(f"{f['wavelength']:.0f}" + (f" {f['line']}" if f["line"] else "")
                     for f in features)  # fmt: skip


def _numbers(depth: dict) -> dict:
    """A line-depth row without its per-star arrays."""
    return {k: v for k, v in depth.items() if k not in ("real", "generated")}


class Sensitivity(Section):
    name = "sensitivity"

    def compute(self, earlier: dict[str, Section]) -> None:
        self.result = measurements.sensitivity(self.ev)

    @property
    def regions(self) -> dict:
        return self.result["regions"]

    def draw(self, out: Path) -> None:
        self.figures = {"sensitivity": figures.sensitivity(self.result, out / "sensitivity.png")}

    def metrics(self) -> dict:
        regions = {
            str(k): [
                {
                    "wavelength": r.wavelength,
                    "strength": r.strength,
                    "line": r.line.name if r.line else None,
                }
                for r in found
            ]
            for k, found in self.regions.items()
        }
        return {"sensitivity": regions}

    def markdown(self) -> list[str]:
        column = "strongest regions (Å, nearest line within 150 km/s)"
        rows = [
            {"latent": k, column: ", ".join(
                f"{r.wavelength:.1f}" + (f" {r.line.name}" if r.line else "") for r in found)}
            for k, found in self.regions.items()
        ]  # fmt: skip
        return [
            "## What each latent changes",
            "Mean |∂f/∂w_k| along each whitened direction over 64 training latents on a "
            "rest-frame grid at R = 5,000, its five strongest peaks matched to the line list in "
            "`assets/lines.csv`.",
            markdown_table(rows, ["latent", column]),
            f"![sensitivity]({self.figures['sensitivity']})",
        ]


class Directions(Section):
    """Where each catalogue label points in latent space, and which lines a step along it
    deepens: 'does a latent relate to an abundance feature', answered with a number."""

    name = "label_directions"

    def compute(self, earlier: dict[str, Section]) -> None:
        self.rows = measurements.label_directions(self.ev)

    def metrics(self) -> dict:
        return {"label_directions": self.rows}

    def markdown(self) -> list[str]:
        if not self.rows:
            return ["## Label directions", "No survey with labelled training stars."]
        column = "lines it deepens most (Δ depth, % of the continuum)"
        table = []
        for row in self.rows:
            deepened = sorted(row["lines"], key=lambda r: r["change"], reverse=True)[:5]
            table.append({
                "survey": row["survey"], "direction": f"{row['label']} +{row['step']:g}",
                "n_stars": row["n_stars"],
                column: ", ".join(f"{r['line']} {100 * r['change']:+.1f}" for r in deepened),
            })  # fmt: skip
        return [
            "## Label directions",
            "Whitened one-step latents of each survey's labelled training stars (MILES: "
            "3,500–8,000 K) regressed on all their labels at once; a label's direction is the "
            "latent change per unit of it with the others held. From the latent of the stars' "
            "mean labels, one step along it (±half a step, the survey's median R, rest frame) "
            "changes each listed line's central depth by Δ depth.",
            markdown_table(table, ["survey", "direction", "n_stars", column]),
        ]


class Outliers(Section):
    """Does the outlier score find unusual stars? Anomalies made from held-out stars, ranked
    among the untouched ones."""

    name = "outliers"

    def compute(self, earlier: dict[str, Section]) -> None:
        self.result = measurements.outlier_injection(
            self.ev, self.settings.get("max_per_survey", 60)
        )

    def metrics(self) -> dict:
        return {"outliers": self.result}

    def markdown(self) -> list[str]:
        if "rows" not in self.result:
            return ["## Unusual stars", self.result["note"] + "."]
        clean = self.result
        return [
            "## Unusual stars",
            "`stargon fit`'s outlier score on held-out real stars that cover Hα, and on "
            "anomalies made from some of them (evaluate/anomalies.py). Per kind, one injected "
            "spectrum per 19 clean ones (5 % of the pool); the top 5 % of the pool by score is "
            "flagged. The score's parts, standardised against the release's own fitted stars of "
            "the same instrument: latent_excess (−ln p(z)) and fit_excess (ln χ²/dof). Clean "
            f"stars' medians: score {_n(clean['clean_median_outlier_score'])}, latent_excess "
            f"{_n(clean['clean_median_latent_excess'])}, fit_excess "
            f"{_n(clean['clean_median_fit_excess'])}.",
            markdown_table(self.result["rows"], list(self.result["rows"][0])),
        ]


SAMPLE_COLUMNS = ["instrument", "view_density", "n_samples", "share_in_range",
                  "worst_sample_share", "n_real", "real_share_in_range", "verdict"]  # fmt: skip


def shortfall(row: dict) -> float | None:
    """How far prior samples' share of flux in range lies below real spectra's."""
    real = row.get("real_share_in_range")
    return None if real is None else round(real - row["share_in_range"], 6)


class Invariance(Section):
    """Whether the latents describe the star, not its noise: S/N, degradation, repeat visits,
    the same star across instruments, where the latents act, their extent, prior samples."""

    name = "invariance"

    def compute(self, earlier: dict[str, Section]) -> None:
        ev = self.ev
        self.snr = invariance.snr_correlation(ev)
        self.degradation = invariance.degradation(ev)
        self.repeats = invariance.repeat_visits(ev)
        self.samples = invariance.prior_samples(ev)
        self.extent = invariance.fitted_extent(ev, earlier["reconstruction"].fits)
        self.neighbours = invariance.same_star_neighbours(ev)
        self.peaks = invariance.sensitivity_peaks(earlier["sensitivity"].regions)

    def draw(self, out: Path) -> None:
        if self.samples:
            self.figures["samples"] = figures.prior_samples(self.samples, out / "prior_samples.png")

    def metrics(self) -> dict:
        samples = [{k: v for k, v in r.items() if k not in ("wave", "flux")} for r in self.samples]
        return {
            "snr_correlation": self.snr,
            "degradation": self.degradation,
            "repeat_visits": self.repeats,
            "sensitivity_peaks": self.peaks,
            "prior_samples": samples,
            "fitted_extent": self.extent,
            "same_star_neighbours": self.neighbours,
        }

    def markdown(self) -> list[str]:
        parts = [
            "## Latents that describe the star, not its noise",
            "Latents are whitened (the checkpoint's PCA of training latents: unit variance, "
            "ordered by variance). Spearman(S/N, |w|) of one-step latents per survey, and the "
            "partial correlation given Teff, log g, [Fe/H] where every spectrum has them.",
            markdown_table(self.snr, ["survey", "n", "spearman", "partial_given_labels"]),
        ]
        miles = [r for r in self.snr if r["survey"] == "miles"]
        if miles and miles[0]["partial_given_labels"] is not None:
            value = abs(miles[0]["partial_given_labels"])
            parts.append(f"Target |partial| on MILES: {verdict(value, TARGETS['snr_partial'])}.")
        parts += self._degradation() + self._repeats() + self._neighbours() + self._peaks()
        parts += self._extent() + self._samples()
        return parts

    def _degradation(self) -> list[str]:
        degraded = self.degradation
        if not degraded["rows"]:
            return []
        at_30 = next(r for r in degraded["rows"] if r["snr"] == 30.0)
        return [
            f"The same {degraded['n_stars']} {degraded['survey']} spectra degraded to S/N 100, "
            "30 and 10 and fitted: median |Δw| from S/N 100 in units of the degraded fit's own "
            "σ_w, and the median σ_w.",
            markdown_table(degraded["rows"], ["snr", "median_shift_in_sigma", "median_sigma_w"]),
            "Target S/N 100 → 30: "
            + verdict(at_30["median_shift_in_sigma"], TARGETS["degradation_shift"])
            + ".",
        ]

    def _repeats(self) -> list[str]:
        repeats = self.repeats
        if not repeats:
            return []
        return [
            f"{repeats['survey']} repeat visits ({repeats['n_stars']} stars, "
            f"{repeats['n_pairs']} pairs, full fits): median latent distance within a star "
            f"{_n(repeats['same_star_distance'])} vs random pairs "
            f"{_n(repeats['random_pair_distance'])}, ratio "
            f"{verdict(repeats['distance_ratio'], TARGETS['repeat_ratio'])}; RV difference "
            "between visits (robust σ) "
            f"{verdict(repeats['rv_difference_scatter_kms'], TARGETS['repeat_rv'])}, "
            f"{repeats['rv_difference_over_20_kms']} pairs apart by > 20 km/s."
        ]

    def _neighbours(self) -> list[str]:
        found = self.neighbours
        if not found:
            return []
        return [
            f"The same star across instruments ({found['n_shared']} stars in MILES and STELIB): "
            f"its latent from one is among the {found['k']} nearest of the other instrument's "
            f"stars for {found['miles_to_stelib']:.0%} (MILES → STELIB) and "
            f"{found['stelib_to_miles']:.0%} (STELIB → MILES); target ≥ 50 %."
        ]

    def _peaks(self) -> list[str]:
        peaks = self.peaks
        return [
            f"Sensitivity: the median direction has {peaks['median_share_on_lines']:.0%} of its "
            "five strongest regions within 150 km/s of a listed stellar line; "
            f"{peaks['latents_at_least_70_percent']} of {peaks['n_latents']} directions reach "
            f"{TARGETS['on_lines']:.0%}; {peaks['peaks_in_atmosphere_bands']} peaks lie inside an "
            "atmosphere band of `assets/atmosphere.csv` (target: none)."
        ]

    def _extent(self) -> list[str]:
        extent = self.extent
        if not extent:
            return []
        return [
            f"Fitted latents of {extent['n_fits']} held-out spectra: largest |w_k| "
            f"{_n(extent['max_abs_w'])} σ; {extent['beyond_10_sigma']} beyond 10 σ."
        ]

    def _samples(self) -> list[str]:
        if not self.samples:
            return []
        rows = [
            r | {"verdict": verdict(shortfall(r), TARGETS["samples_below_real"])}
            for r in self.samples
        ]
        return [
            "Prior samples (100 per instrument, normalised, rest frame) and real spectra of the "
            "same instrument (each over its fit's continuum polynomial, as a sample is "
            "normalised): share of pixels with flux in [−0.05, 1.2]; verdict on how far the "
            f"samples' share lies below the real one (target ≤ {TARGETS['samples_below_real']}).",
            markdown_table(rows, SAMPLE_COLUMNS),
            f"![prior samples]({self.figures['samples']})",
        ]
