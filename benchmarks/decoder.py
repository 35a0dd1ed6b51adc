"""Decoder designs, measured in one run on real MILES spectra (rest frame, 984 stars).

* basis-GON    — ours: f = T₀ + Σ h_k(z) T_k, a learned ln λ table with the LSF pyramid, GON.
* fourier-GON  — a Fourier-feature MLP f(γ(ln λ), z) per pixel, GON (no LSF: it cannot be
                 applied outside the network cheaply, which is part of the point).
* basis-AE     — an autoencoder (MLP encoder on the 4,300 MILES pixels, spender-style) with
                 the same basis decoder, trained for the same wall-clock time.
* PCA          — as many components as latent dimensions: the speed limit for decoding.

Columns: parameters, training throughput (spectra/s, 1,000 pixels each), decoding throughput
at 8,000 pixels (batch), one spectrum + its latent Jacobian (forward mode, ms), peak RSS of
the training process, and held-out χ²/dof after equal training time. Ratios are to PCA
(decode) and to the autoencoder (training throughput), measured in this same run.

    python -m benchmarks.decoder --seconds 60
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np
import torch
from torch import nn
from torch.func import jacfwd

from benchmarks.common import DATA, best_time, in_child, split_by_star, table
from stargon.evaluate.holdout import pca_baseline
from stargon.model.batch import make_batch
from stargon.model.continuum import solve_continuum
from stargon.model.decoder import ModelConfig
from stargon.model.gon import StarGON
from stargon.surveys import iter_spectra

LATENT, PIXELS, BATCH = 16, 1000, 64
CONFIG = ModelConfig(latent_dim=LATENT, wave_min=3400.0, wave_max=7600.0)


def miles():
    spectra = list(iter_spectra(DATA / "miles"))
    train, held = split_by_star(len(spectra))
    return spectra, train, held


class FourierGON(nn.Module):
    """GON over f(ln λ, z) = 1 + MLP([sin, cos](2^j π x), z): every pixel runs the MLP."""

    def __init__(self, n_frequencies: int = 12, hidden: int = 128):
        super().__init__()
        self.frequencies = 2.0 ** torch.arange(n_frequencies) * math.pi
        self.net = nn.Sequential(
            nn.Linear(2 * n_frequencies + LATENT, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 1),
        )  # fmt: skip
        self.log_step = nn.Parameter(torch.tensor(0.0))
        self.lo, self.hi = math.log(CONFIG.wave_min), math.log(CONFIG.wave_max)

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        x = ((torch.log(wave) - self.lo) / (self.hi - self.lo)).float().unsqueeze(-1)
        angles = x * self.frequencies
        return torch.cat([angles.sin(), angles.cos()], -1)

    def decode(self, z: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        zz = z.unsqueeze(-2).expand(*features.shape[:-1], z.shape[-1])
        return 1.0 + self.net(torch.cat([features, zz], -1)).squeeze(-1)

    def chi2(self, z, features, batch):
        model = self.decode(z, features)
        continuum = solve_continuum(batch.design, batch.flux, batch.ivar, model)
        return (batch.ivar * (batch.flux - continuum * model) ** 2).sum(-1) / batch.n_valid

    def encode(self, batch, create_graph=False):
        features = self.features(batch.wave)
        with torch.enable_grad():
            z0 = torch.zeros(batch.flux.shape[0], LATENT, requires_grad=True)
            (grad,) = torch.autograd.grad(
                self.chi2(z0, features, batch).sum(), z0, create_graph=create_graph
            )
        return -self.log_step.exp() * grad, features

    def loss(self, batch):
        z, features = self.encode(batch, create_graph=True)
        return self.chi2(z, features, batch).mean()

    def held_out_chi2(self, batch):
        z, features = self.encode(batch)
        return self.chi2(z.detach(), features, batch)


class BasisGON(StarGON):
    def held_out_chi2(self, batch):
        basis = self.basis(batch)
        return self.chi2(self.encode(batch, basis), basis, batch)

    def loss(self, batch):
        return super().loss(batch)[0]


class BasisAE(nn.Module):
    """Encoder network + the same basis decoder (an autoencoder, spender-style)."""

    def __init__(self, n_input: int):
        super().__init__()
        self.gon = StarGON(CONFIG)
        self.encoder = nn.Sequential(
            nn.Linear(n_input, 256), nn.LayerNorm(256), nn.SiLU(),
            nn.Linear(256, 128), nn.LayerNorm(128), nn.SiLU(),
            nn.Linear(128, LATENT),
        )  # fmt: skip

    def encode(self, full_flux: torch.Tensor) -> torch.Tensor:
        return self.encoder(full_flux)

    def loss_for(self, batch, full_flux):
        basis = self.gon.basis(batch)
        return self.gon.chi2(self.encode(full_flux), basis, batch)


def full_grid_flux(spectra) -> torch.Tensor:
    """The encoder's input: flux / median on MILES's common 4,300-pixel grid (0 where masked)."""
    rows = []
    for s in spectra:
        scale = np.median(np.abs(s.flux[s.valid]))
        rows.append(np.where(s.valid, s.flux / scale, 0.0))
    return torch.as_tensor(np.array(rows), dtype=torch.float32)


def train_for(design: str, seconds: float) -> dict:
    """Train one design for `seconds` (runs in a child process), then evaluate it."""
    torch.manual_seed(0)
    spectra, train, held = miles()
    model = {"basis-GON": lambda: BasisGON(CONFIG), "fourier-GON": FourierGON}.get(
        design, lambda: BasisAE(spectra[0].n_pixels)
    )()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    full = full_grid_flux(spectra)
    rng = np.random.default_rng(0)
    seen, start, step = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        chosen = rng.choice(train, BATCH, replace=False)
        rngs = [np.random.default_rng([step, int(i)]) for i in chosen]
        batch = make_batch([spectra[i] for i in chosen], n_pixels=PIXELS, rngs=rngs)
        if design == "basis-AE":
            loss = model.loss_for(batch, full[chosen]).mean()
        else:
            loss = model.loss(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        seen += BATCH
        step += 1
    elapsed = time.perf_counter() - start
    chi2 = []
    for chunk in np.array_split(held, 8):
        batch = make_batch([spectra[i] for i in chunk])
        with torch.no_grad() if design == "basis-AE" else torch.enable_grad():
            if design == "basis-AE":
                values = model.loss_for(batch, full[chunk])
            else:
                values = model.held_out_chi2(batch)
        dof = (batch.n_valid - LATENT - 1) / batch.n_valid
        chi2.extend((values.detach() / dof).tolist())
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_spectra_per_s": seen / elapsed,
        "steps": step,
        "held_out_chi2_dof": float(np.median(chi2)),
    }


def pca_quality() -> dict:
    spectra, train, held = miles()
    result = pca_baseline([spectra[i] for i in train], [spectra[i] for i in held], LATENT)
    return {"held_out_chi2_dof": result["chi2_dof"], "parameters": (LATENT + 1) * 4300}


def decode_speed() -> dict[str, dict]:
    """Spectra/s at 8,000 pixels and one spectrum + latent Jacobian, per design."""
    torch.manual_seed(0)
    wave = torch.exp(torch.linspace(math.log(3600.0), math.log(7400.0), 8000))
    z = torch.randn(4096, LATENT)
    out = {}

    gon = StarGON(CONFIG)
    with torch.no_grad():
        basis = gon.observation_basis(wave, 0.0, 2000.0)
        seconds = best_time(lambda: gon.observe(z, basis))
    jac = best_time(lambda: jacfwd(lambda zz: gon.observe(zz[None], basis)[0])(z[0]))
    out["basis-GON"] = {"decode_spectra_per_s": len(z) / seconds, "jacobian_ms": 1e3 * jac}
    out["basis-AE"] = dict(out["basis-GON"])

    fourier = FourierGON()
    features = fourier.features(wave)
    small = z[:16]
    with torch.no_grad():
        seconds = best_time(lambda: fourier.decode(small, features.expand(16, -1, -1)), repeat=2)
    jac = best_time(lambda: jacfwd(lambda zz: fourier.decode(zz[None], features[None])[0])(z[0]), 2)
    out["fourier-GON"] = {"decode_spectra_per_s": len(small) / seconds, "jacobian_ms": 1e3 * jac}

    components, mean = torch.randn(LATENT, 8000), torch.randn(8000)
    seconds = best_time(lambda: z @ components + mean)
    jac = best_time(lambda: jacfwd(lambda zz: zz @ components + mean)(z[0]))
    out["PCA"] = {"decode_spectra_per_s": len(z) / seconds, "jacobian_ms": 1e3 * jac}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="training time per design")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    speeds = decode_speed()
    rows = []
    for design in ("basis-GON", "fourier-GON", "basis-AE"):
        result, peak = in_child(train_for, design, args.seconds)
        rows.append({"design": design, **result, **speeds[design], "peak_rss_mib": peak})
    pca, peak = in_child(pca_quality)
    rows.append({"design": "PCA", **pca, **speeds["PCA"], "peak_rss_mib": peak})
    by = {r["design"]: r for r in rows}
    for r in rows:
        r["decode_vs_PCA"] = r["decode_spectra_per_s"] / by["PCA"]["decode_spectra_per_s"]
        if "train_spectra_per_s" in r:
            r["train_vs_AE"] = r["train_spectra_per_s"] / by["basis-AE"]["train_spectra_per_s"]
        r["chi2_vs_PCA"] = r["held_out_chi2_dof"] / by["PCA"]["held_out_chi2_dof"]
    device = f"CPU, {torch.get_num_threads()} threads ({platform.machine()})"
    print(f"device: {device}; {args.seconds:.0f} s training per design; MILES, {LATENT}-d\n")
    print(table(rows, ["design", "parameters", "train_spectra_per_s", "train_vs_AE", "steps",
                       "decode_spectra_per_s", "decode_vs_PCA", "jacobian_ms", "peak_rss_mib",
                       "held_out_chi2_dof", "chi2_vs_PCA"]))  # fmt: skip


if __name__ == "__main__":
    main()
