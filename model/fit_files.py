"""`stargon fit`: fit every readable spectrum in files or folders, one CSV row each."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from tqdm import tqdm

from stargon.core.interop import UserSettings
from stargon.model.checkpoint import load_checkpoint, resolve_checkpoint
from stargon.model.fit import fit_spectrum, template_pyramid
from stargon.surveys.registry import scan

COLUMNS = ["source", "star_id", "instrument", "frame", "rv_kms", "rv_err_kms", "chi2_dof", "n_pix"]


def fit_paths(
    paths: list[Path],
    checkpoint: Path | None,
    out: Path,
    device: str = "cpu",
    user: UserSettings | None = None,
) -> list[tuple[str, str]]:
    """Write `out` (CSV) and return the files that were skipped, with the reason. Files of no
    known survey are read with `user`'s settings (resolving power, medium, frame)."""
    model, _, extra = load_checkpoint(resolve_checkpoint(checkpoint), device)
    with torch.no_grad():
        pyramid = model.decoder.pyramid()
    templates = template_pyramid(model, extra.get("prototypes"))
    latent_columns = [f"z_{k}" for k in range(model.config.latent_dim)]
    error_columns = [f"z_err_{k}" for k in range(model.config.latent_dim)]
    failures = []
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS + latent_columns + error_columns)
        writer.writeheader()
        for path in paths:
            for outcome in tqdm(scan(path, user=user), desc=f"fitting {path}", unit="file"):
                if outcome.error:
                    failures.append((str(outcome.path), outcome.error))
                for spectrum in outcome.spectra:
                    result = fit_spectrum(
                        model, spectrum, device=device, pyramid=pyramid, templates=templates
                    )
                    row = {
                        "source": spectrum.source,
                        "star_id": spectrum.star_id,
                        "instrument": spectrum.instrument,
                        "frame": spectrum.frame,
                        "rv_kms": f"{result.v_kms:.3f}",
                        "rv_err_kms": f"{result.v_err_kms:.3f}",
                        "chi2_dof": f"{result.chi2_dof:.4f}",
                        "n_pix": result.n_pix,
                    }
                    row |= {c: f"{v:.5g}" for c, v in zip(latent_columns, result.z, strict=True)}
                    row |= {c: f"{v:.5g}" for c, v in zip(error_columns, result.z_err, strict=True)}
                    writer.writerow(row)
                    handle.flush()
    return failures
