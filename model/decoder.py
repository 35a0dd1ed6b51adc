"""The rest-frame, continuous-wavelength decoder f(λ_rest, z).

f(λ, z) = T₀(λ) + Σ_k h_k(z) T_k(λ): a small MLP h of the latent weighs K learned functions of
ln λ, stored as a fine table and read by linear interpolation. Everything that happens to
wavelengths — Doppler shift, the instrument's LSF, the pixel grid — is linear in T, so it is
applied to the table, not to the network:

* the LSF: a Gaussian of σ = 1/(2.355 R) in ln λ. The table is blurred into a pyramid of levels
  of growing σ (decimated as σ grows); a pixel of resolving power R reads the two levels that
  bracket its σ and mixes them in σ². Per-pixel R (MILES, STELIB, GALAH) costs nothing extra.
* Doppler: pixels are read at ln λ_obs − ln(1 + v/c).

`pixel_basis(...)` returns the (K+1, …) basis at any pixels; decoding is then `decode(z, basis)`,
one MLP and one matrix product, and the basis can be cached per instrument and velocity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from stargon.core.physics import C_KMS, FWHM_PER_SIGMA, lsf_sigma, observed_to_rest


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model (stored in every checkpoint)."""

    latent_dim: Annotated[int, "Latent dimensions."] = 16
    n_basis: Annotated[int, "Learned functions of ln λ the MLP weighs."] = 32
    hidden: Annotated[int, "Width of the latent MLP's hidden layers."] = 128
    n_hidden_layers: Annotated[int, "Hidden layers of the latent MLP."] = 2
    wave_min: Annotated[float, "Bluest rest-frame vacuum Å the decoder knows."] = 3150.0
    wave_max: Annotated[float, "Reddest rest-frame vacuum Å the decoder knows."] = 17100.0
    ln_step: Annotated[float, "Table step in ln λ (1.5e-5: R_grid ≈ 67,000)."] = 1.5e-5
    lowest_resolving_power: Annotated[float, "The LSF pyramid reaches down to this R."] = 800.0
    lsf_levels_per_octave: Annotated[int, "LSF pyramid levels per doubling of σ."] = 3
    lsf_mixing: Annotated[str, "How two pyramid levels make one R: fwhm or variance."] = "fwhm"
    inner_step: Annotated[str, "GON step: gauss_newton, gradient, normalised_gradient."] = (
        "gauss_newton"
    )
    prior_precision: Annotated[float, "Λ of the latent prior N(0, Λ⁻¹ I), in units of χ²."] = 1.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}")
        # Checkpoints written before the Gauss–Newton step have no `inner_step`, those before
        # the equal-FWHM LSF no `lsf_mixing`: they are decoded as they were trained.
        return cls(**({"inner_step": "gradient", "lsf_mixing": "variance"} | values))

    @property
    def n_table(self) -> int:
        return math.ceil(math.log(self.wave_max / self.wave_min) / self.ln_step) + 1


@dataclass(frozen=True)
class PyramidLevel:
    sigma: float  # Gaussian σ in ln λ applied so far
    step: float  # grid step in ln λ of this level


def pyramid_plan(config: ModelConfig) -> list[PyramidLevel]:
    """σ grows by 2^(1/levels_per_octave) per level; the grid halves once σ ≥ 8 steps."""
    sigma_max = 1.0 / (FWHM_PER_SIGMA * config.lowest_resolving_power)
    ratio = 2.0 ** (1.0 / config.lsf_levels_per_octave)
    levels = [PyramidLevel(0.0, config.ln_step)]
    sigma, step = config.ln_step, config.ln_step
    while True:
        if sigma / step >= 8.0:
            step *= 2.0
        levels.append(PyramidLevel(sigma, step))
        if sigma >= sigma_max:
            return levels
        sigma *= ratio


def gaussian_blur(table: torch.Tensor, sigma_steps: float) -> torch.Tensor:
    """Depthwise Gaussian convolution along the last axis (edge values repeated)."""
    radius = max(1, math.ceil(4.0 * sigma_steps))
    offsets = torch.arange(-radius, radius + 1, dtype=table.dtype, device=table.device)
    kernel = torch.exp(-0.5 * (offsets / sigma_steps) ** 2)
    kernel = (kernel / kernel.sum()).expand(table.shape[0], 1, -1)
    padded = F.pad(table.unsqueeze(0), (radius, radius), mode="replicate")
    return F.conv1d(padded, kernel, groups=table.shape[0]).squeeze(0)


class LatentMLP(nn.Module):
    """h(z): latent → K basis weights. LayerNorm, never BatchNorm (a spectrum's code must not
    depend on its batch-mates)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = []
        width = config.latent_dim
        for _ in range(config.n_hidden_layers):
            layers += [nn.Linear(width, config.hidden), nn.LayerNorm(config.hidden), nn.SiLU()]
            width = config.hidden
        layers.append(nn.Linear(width, config.n_basis))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class BasisDecoder(nn.Module):
    """f(λ_rest, z) as a latent-weighted sum of learned functions of ln λ."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        table = 1e-3 * torch.randn(config.n_basis + 1, config.n_table)
        table[0] = 1.0  # T₀ starts as a flat continuum
        self.table = nn.Parameter(table)
        self.h = LatentMLP(config)
        self.levels = pyramid_plan(config)
        self.ln_min = math.log(config.wave_min)

    def pyramid(self, table: torch.Tensor | None = None) -> list[torch.Tensor]:
        """A table (default: the basis) blurred to every LSF level. Any rows on the same grid
        work, e.g. decoded template spectra for a fast velocity scan."""
        tables = [self.table if table is None else table]
        for previous, level in zip(self.levels[:-1], self.levels[1:], strict=True):
            added = math.sqrt(level.sigma**2 - previous.sigma**2) / previous.step
            blurred = gaussian_blur(tables[-1], added)
            if level.step > previous.step:
                blurred = blurred[:, ::2]
            tables.append(blurred)
        return tables

    def pixel_basis(
        self,
        wave_obs: torch.Tensor,
        v_kms: torch.Tensor | float = 0.0,
        resolving_power: torch.Tensor | float = math.inf,
        pyramid: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The (K+1, *wave_obs.shape) basis seen by pixels at observed vacuum wavelengths.

        `v_kms` is per spectrum (shape of wave_obs without its last axis) or a scalar;
        `resolving_power` is a scalar or per pixel. Differentiable in the table, v and λ.
        """
        pyramid = self.pyramid() if pyramid is None else pyramid
        v = torch.as_tensor(v_kms, device=wave_obs.device)
        ln_rest = _ln_rest(wave_obs, v.unsqueeze(-1) if v.ndim > 0 else v)
        return self._read(pyramid, ln_rest, resolving_power)[0]

    def pixel_basis_and_slope(
        self,
        wave_obs: torch.Tensor,
        v_kms: torch.Tensor,
        resolving_power: torch.Tensor | float,
        pyramid: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`pixel_basis` at v_kms (B,) and its derivative in v, in one pass (without graph):
        linear interpolation's slope is the table's difference across the cell, and
        ∂ ln λ_rest / ∂v = −1 / (c + v)."""
        v = v_kms.to(torch.float64).unsqueeze(-1)
        basis, slope = self._read(pyramid, _ln_rest(wave_obs, v), resolving_power, gradient=True)
        return basis, slope * (-1.0 / (C_KMS + v)).to(slope.dtype)

    def _read(self, pyramid, ln_rest, resolving_power, gradient: bool = False):
        """The pyramid read at ln λ_rest through an LSF of resolving power R: (K+1, …) values
        and, with `gradient`, their derivative in ln λ (zero beyond the table's ends).

        Each level is read only at the pixels whose R it serves (two levels per pixel), so
        per-pixel R costs two reads, not one per level it spans; a pixel's level weight and
        interpolation weights are folded into one factor per table row read."""
        rows, size = pyramid[0].shape[0], ln_rest.numel()
        flat = ln_rest.reshape(-1)
        basis = slope = None
        for index, weight in self._level_weights(resolving_power, ln_rest.device):
            table, step = pyramid[index], self.levels[index].step
            weight = weight.expand(ln_rest.shape).reshape(-1).to(table.dtype)
            where = torch.nonzero(weight > 0).squeeze(-1)
            every = len(where) == size
            position = (flat if every else flat[where]) - self.ln_min
            position = position / step
            left = position.detach().floor().clamp(0, table.shape[-1] - 2).long()
            t = (position - left).clamp(0, 1).to(table.dtype)
            w = weight if every else weight[where]
            reads = [table.index_select(-1, left), table.index_select(-1, left + 1)]
            factors = [w * (1 - t), w * t]
            if gradient:
                inside = (position >= 0) & (position <= table.shape[-1] - 1)
                change = w * inside.to(table.dtype) / step
                slope = _accumulate(slope, reads, [-change, change], where, (rows, size), every)
            basis = _accumulate(basis, reads, factors, where, (rows, size), every)
        unflat = (rows, *ln_rest.shape)
        return basis.reshape(unflat), slope.reshape(unflat) if gradient else None

    def pixel_model(
        self,
        z: torch.Tensor,
        wave_obs: torch.Tensor,
        v_kms: torch.Tensor,
        resolving_power: torch.Tensor,
        pyramid: list[torch.Tensor],
    ) -> torch.Tensor:
        """Normalised flux (B, V, P) of each star's latent z (B, D) at each of its velocities
        v_kms (B, V), at pixels wave_obs (B, P) of resolving power (B, P): `decode` of
        `pixel_basis`, but the star's own spectrum is summed on the table first (over the
        stretch the pixels read), so each pixel reads one row instead of K+1."""
        ln_rest = _ln_rest(wave_obs.unsqueeze(1), v_kms.unsqueeze(-1))  # (B, V, P)
        weights = self.h(z)
        model = torch.zeros(ln_rest.shape, dtype=self.table.dtype, device=wave_obs.device)
        for index, weight in self._level_weights(resolving_power, wave_obs.device):
            step, table = self.levels[index].step, pyramid[index]
            position = (ln_rest - self.ln_min) / step
            low = int(position.min().floor().clamp(0, table.shape[-1] - 2))
            high = int(position.max().floor().clamp(0, table.shape[-1] - 2)) + 2
            stars = table[0, low:high] + weights @ table[1:, low:high]  # (B, high − low)
            values = _interpolate_rows(stars, position - low)
            model = model + weight.unsqueeze(1).to(model.dtype) * values
        return model

    def _level_weights(self, resolving_power, device) -> list[tuple[int, torch.Tensor]]:
        """The pyramid levels a resolving power (scalar or per pixel) reads, with their
        weights: the two that bracket its LSF σ (`_bracketing_level`)."""
        resolving_power = torch.as_tensor(resolving_power, device=device)
        # The LSF level weights depend on R only (not on v): computed at R's own shape.
        var = lsf_sigma(1.0, resolving_power.to(torch.float64)) ** 2  # in ln λ
        sigmas2 = torch.tensor([lv.sigma**2 for lv in self.levels], dtype=torch.float64)
        lower, t = _bracketing_level(var, sigmas2.to(var.device), self.config.lsf_mixing)
        reads = []
        for index in torch.unique(torch.cat([lower.reshape(-1), lower.reshape(-1) + 1])).tolist():
            weight = torch.where(lower == index, 1 - t, 0) + torch.where(lower + 1 == index, t, 0)
            if bool((weight > 0).any()):
                reads.append((index, weight))
        return reads

    def templates(self, z: torch.Tensor) -> torch.Tensor:
        """Rest-frame spectra (M, n_table) on the table grid at intrinsic resolution."""
        return self.table[0] + self.h(z) @ self.table[1:]

    def latent_jacobian(
        self, z: torch.Tensor, basis: torch.Tensor, create_graph: bool = False
    ) -> torch.Tensor:
        """∂f/∂z (B, P, D) at z (B, D): Σ_k T_k ∂h_k/∂z, the basis weighed by h's Jacobian."""
        jacobian = torch.autograd.functional.jacobian(
            lambda x: self.h(x).sum(0), z, create_graph=create_graph, vectorize=True
        )  # (K, B, D): h acts on each row alone
        if basis.ndim == 2:
            return torch.einsum("kp,kbd->bpd", basis[1:], jacobian)
        return torch.einsum("kbp,kbd->bpd", basis[1:], jacobian)

    def roughness(
        self,
        z: torch.Tensor,
        wave: torch.Tensor,
        resolving_power: torch.Tensor,
        pyramid: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Mean square of the structure in f(·, z) finer than `resolving_power` at rest-frame
        `wave`: the decoder at its own resolution minus the decoder blurred to R. Penalised
        where few high-resolution spectra taught the model, so it does not invent detail."""
        sharp = self.pixel_basis(wave, 0.0, math.inf, pyramid)
        smooth = self.pixel_basis(wave, 0.0, resolving_power, pyramid)
        return ((self.decode(z, sharp) - self.decode(z, smooth)) ** 2).mean()

    def decode(self, z: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        """Normalised flux: z (B, D) with a basis (K+1, B, P) per spectrum or (K+1, P) shared."""
        weights = self.h(z)
        if basis.ndim == 2:
            return basis[0] + weights @ basis[1:]
        return basis[0] + torch.einsum("bk,kbp->bp", weights, basis[1:])


def _bracketing_level(
    var: torch.Tensor, sigmas2: torch.Tensor, mixing: str = "fwhm"
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each σ²: the pyramid level just below it and the weight t of the next one.

    A pixel of resolving power R is drawn as the mix (1−t)·G(σ_lo) + t·G(σ_hi) of two levels.
    t is chosen so that the mix has the FWHM of G(σ) — R = λ/FWHM is what an instrument's R
    means; mixing in σ² instead keeps the variance but gives a peakier profile, 1.4 % narrow
    at R = 1,800 and 6 % at R = 4,000 (`mixing="variance"`, kept for models trained with it).
    Above the first blurred level (σ_lo = 0: the table itself) t always mixes in σ².
    """
    var = var.clamp(max=float(sigmas2[-1]))
    upper = torch.searchsorted(sigmas2, var.contiguous()).clamp(1, len(sigmas2) - 1)
    lower = upper - 1
    lo, hi = sigmas2[lower], sigmas2[upper]
    in_variance = ((var - lo) / (hi - lo)).clamp(0, 1)
    if mixing == "variance":
        return lower, in_variance
    return lower, torch.where(lo > 0, _equal_fwhm_weight(lo, hi, var), in_variance)


def _equal_fwhm_weight(lo: torch.Tensor, hi: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """t with (1−t)G_lo(h) + tG_hi(h) = ½((1−t)G_lo(0) + tG_hi(0)) at h = the half width at
    half maximum of G(σ): linear in t, so t = a / (a − b) in closed form."""
    half_width2 = 2.0 * math.log(2.0) * var
    lo = lo.clamp_min(torch.finfo(lo.dtype).tiny)
    a = (torch.exp(-half_width2 / (2 * lo)) - 0.5) / lo.sqrt()
    b = (torch.exp(-half_width2 / (2 * hi)) - 0.5) / hi.sqrt()
    return (a / (a - b).where(a != b, torch.ones_like(a))).clamp(0, 1)


def _ln_rest(wave_obs: torch.Tensor, v_kms: torch.Tensor) -> torch.Tensor:
    """ln λ_rest of observed vacuum λ from a star at v, in float64: float32 would limit
    velocities to ε·c ≈ 0.3 km/s."""
    return torch.log(observed_to_rest(wave_obs.to(torch.float64), v_kms.to(torch.float64)))


def _interpolate_rows(table: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Row b of `table` (B, N) read by linear interpolation at fractional indices
    position[b] (B, …)."""
    flat = position.reshape(len(table), -1)
    left = flat.floor().clamp(0, table.shape[-1] - 2).long()
    t = (flat - left).clamp(0, 1).to(table.dtype)
    values_left, values_right = table.gather(1, left), table.gather(1, left + 1)
    return (values_left + t * (values_right - values_left)).reshape(position.shape)


def _accumulate(total, reads, factors, where, shape, every: bool) -> torch.Tensor:
    """total + Σ read·factor (rows read at `where`, factors per pixel); total None is zero.
    The sum is formed the same way whether a level serves every pixel of the batch or some,
    so that a pixel's value does not depend on its batch-mates, not even in the last bit."""
    term = torch.addcmul(reads[0] * factors[0], reads[1], factors[1])
    if every:
        return term if total is None else total + term
    total = reads[0].new_zeros(shape) if total is None else total
    return total.index_add(1, where, term)
