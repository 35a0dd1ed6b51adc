"""Two `stargon evaluate` runs side by side, from their metrics.json files.

git show fdc22d1:reports/default/metrics.json > /tmp/old.json
python benchmarks/compare_reports.py /tmp/old.json reports/default/metrics.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import table


def rows(old: dict, new: dict) -> list[dict]:
    out = []

    def add(what, a, b):
        out.append({"measure": what, "old": a, "new": b})

    for survey in sorted(set(old["reconstruction"]) | set(new["reconstruction"])):
        a, b = old["reconstruction"].get(survey, {}), new["reconstruction"].get(survey, {})
        pca = f"PCA old / new: {_g(a.get('pca_chi2_dof'))} / {_g(b.get('pca_chi2_dof'))}"
        add(f"held-out χ²/dof {survey} ({pca})", a.get("model_chi2_dof"), b.get("model_chi2_dof"))
        if "span_fractional_rms" in a or "span_fractional_rms" in b:
            add(f"held-out frac. RMS {survey}", a.get("model_fractional_rms"),
                b.get("model_fractional_rms"))  # fmt: skip
            add(f"  span floor {survey}", a.get("span_fractional_rms"),
                b.get("span_fractional_rms"))  # fmt: skip
    probes = {}
    for name, metrics in (("old", old), ("new", new)):
        for r in metrics["probes"]:
            if r["subset"] == "3500–8000 K" and r["label"] in ("teff", "logg", "fe_h"):
                key = (r["label"], r["probe"])
                probes.setdefault(key, {})[name] = r["latents_rmse"]
                probes[key]["pca"] = r["pca_rmse"]
    for (label, kind), v in sorted(probes.items()):
        add(f"MILES probe {label} {kind} (PCA {_g(v['pca'])})", v.get("old"), v.get("new"))
    for name, metrics in (("old", old), ("new", new)):
        for r in metrics["realism"]:
            key = f"C2ST {r['survey']}"
            match = [o for o in out if o["measure"] == key]
            if not match:
                out.append({"measure": key, "old": None, "new": None})
                match = out[-1:]
            match[0][name] = r["c2st_accuracy"]
    for r_old, r_new in zip(old["cross_instrument"], new["cross_instrument"], strict=False):
        add(f"cross-instrument {r_new['from']}→{r_new['to']} frac. RMS (PCA regression "
            f"{_g(r_new['pca_regression_fractional_rms'])})", r_old["model_fractional_rms"],
            r_new["model_fractional_rms"])  # fmt: skip
    a, b = old.get("emulator_fidelity", {}), new.get("emulator_fidelity", {})
    add(f"emulator MAE (PCA {_g(b.get('pca_mae'))})", a.get("model_mae"), b.get("model_mae"))
    if "span_frac_rms" in a or "span_frac_rms" in b:
        add("emulator frac. RMS", a.get("model_frac_rms"), b.get("model_frac_rms"))
        add("  span floor (emulator)", a.get("span_frac_rms"), b.get("span_frac_rms"))
    for r_old in old["rv_catalogue"]:
        key = (r_old["survey"], r_old["stage"])
        same = [r for r in new["rv_catalogue"] if (r["survey"], r["stage"]) == key]
        new_value = same[0]["scatter_kms"] if same else None
        add(f"RV scatter {key[0]} {key[1]}", r_old["scatter_kms"], new_value)
    return out


def _g(value) -> str:
    return "—" if value is None else f"{value:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args()
    old, new = (json.loads(p.read_text()) for p in (args.old, args.new))
    print(table(rows(old, new), ["measure", "old", "new"]))


if __name__ == "__main__":
    main()
