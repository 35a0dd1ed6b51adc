"""Spectrum physics the model leans on, as pure, batched, differentiable torch functions.

Wavelengths are vacuum Ångström unless a name says otherwise, velocities km/s. Every function
works on CPU or GPU tensors and broadcasts over leading batch dimensions; the last dimension is
the pixel axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from astropy import constants

C_KMS: float = constants.c.to_value("km/s")
FWHM_PER_SIGMA: float = 2.0 * math.sqrt(2.0 * math.log(2.0))

# Below this wavelength air and vacuum coincide by convention (IAU; the UV is quoted in vacuum).
AIR_VACUUM_MIN_ANGSTROM = 2000.0


def doppler_factor(v_kms: torch.Tensor | float, relativistic: bool = False) -> torch.Tensor:
    """λ_obs / λ_rest for a radial velocity v (positive = receding)."""
    beta = torch.as_tensor(v_kms, dtype=torch.float64) / C_KMS
    if relativistic:
        return torch.sqrt((1.0 + beta) / (1.0 - beta))
    return 1.0 + beta


def rest_to_observed(
    wave_rest: torch.Tensor, v_kms: torch.Tensor | float, relativistic: bool = False
) -> torch.Tensor:
    """λ_obs = λ_rest (1 + v/c); `v_kms` broadcasts against the leading dims of `wave_rest`."""
    factor = doppler_factor(v_kms, relativistic).to(wave_rest)
    return wave_rest * _per_row(factor, wave_rest)


def observed_to_rest(
    wave_obs: torch.Tensor, v_kms: torch.Tensor | float, relativistic: bool = False
) -> torch.Tensor:
    """λ_rest = λ_obs / (1 + v/c): where an observed pixel samples the rest-frame spectrum."""
    factor = doppler_factor(v_kms, relativistic).to(wave_obs)
    return wave_obs / _per_row(factor, wave_obs)


def _per_row(factor: torch.Tensor, wave: torch.Tensor) -> torch.Tensor:
    """Give a per-spectrum factor of shape (B,) a trailing pixel axis to broadcast with (B, N)."""
    return factor.unsqueeze(-1) if factor.ndim > 0 and wave.ndim > 0 else factor


def vacuum_to_air(wave_vac: torch.Tensor) -> torch.Tensor:
    """IAU standard conversion (Morton 2000, ApJS 130, 403; the SDSS/VALD form)."""
    s2 = (1.0e4 / wave_vac) ** 2
    n = 1.0 + 0.0000834254 + 0.02406147 / (130.0 - s2) + 0.00015998 / (38.9 - s2)
    return torch.where(wave_vac < AIR_VACUUM_MIN_ANGSTROM, wave_vac, wave_vac / n)


def air_to_vacuum(wave_air: torch.Tensor) -> torch.Tensor:
    """Inverse of `vacuum_to_air` (N. Piskunov's fit to Morton 2000, as used by VALD)."""
    s2 = (1.0e4 / wave_air) ** 2
    n = (
        1.0
        + 0.00008336624212083
        + 0.02408926869968 / (130.1065924522 - s2)
        + 0.0001599740894897 / (38.92568793293 - s2)
    )
    return torch.where(wave_air < AIR_VACUUM_MIN_ANGSTROM, wave_air, wave_air * n)


def pixel_widths(wave: torch.Tensor) -> torch.Tensor:
    """Δλ of each pixel from the midpoints between neighbours (edges mirrored)."""
    mid = 0.5 * (wave[..., 1:] + wave[..., :-1])
    left = torch.cat([2 * wave[..., :1] - mid[..., :1], mid], dim=-1)
    right = torch.cat([mid, 2 * wave[..., -1:] - mid[..., -1:]], dim=-1)
    return right - left


def lsf_sigma(wave: torch.Tensor, resolving_power: torch.Tensor | float) -> torch.Tensor:
    """Gaussian σ in Å of an instrument of resolving power R = λ / FWHM (scalar or per pixel)."""
    return wave / (torch.as_tensor(resolving_power).to(wave) * FWHM_PER_SIGMA)


def convolve_lsf(
    wave: torch.Tensor,
    flux: torch.Tensor,
    resolving_power: torch.Tensor | float,
    n_sigma: float = 5.0,
) -> torch.Tensor:
    """Convolve with a Gaussian line-spread function on a (possibly non-uniform) grid.

    Each input pixel j spreads its flux f_j Δλ_j as a Gaussian of σ_j = λ_j / (R_j · 2.355),
    normalised over the output pixels, so Σ_i Δλ_i out_i = Σ_j Δλ_j f_j holds to round-off
    (the flux integral is kept, edges included). The kernel is banded (± `n_sigma` σ), so cost
    is O(N · band) and memory O(B · N · band).
    """
    wave = wave.to(flux.dtype) if wave.dtype != flux.dtype else wave
    widths = pixel_widths(wave)
    sigma = lsf_sigma(wave, resolving_power)
    half_band = _half_band(widths, sigma, n_sigma)
    offsets = torch.arange(-half_band, half_band + 1, device=wave.device)

    # weight[..., j, k] = G(λ_{j+k}; λ_j, σ_j) Δλ_{j+k}: where input pixel j lands.
    wave_nb, valid = _neighbours(wave, offsets)
    width_nb, _ = _neighbours(widths, offsets)
    gauss = torch.exp(-0.5 * ((wave_nb - wave.unsqueeze(-1)) / sigma.unsqueeze(-1)) ** 2)
    landing = gauss * width_nb * valid
    landing = landing / landing.sum(-1, keepdim=True)

    # out_i = Σ_k f_{i-k} Δλ_{i-k} landing[i-k, k] / Δλ_i
    spread = (flux * widths).unsqueeze(-1) * landing
    n = wave.shape[-1]
    out = torch.zeros_like(flux)
    for col, k in enumerate(offsets.tolist()):
        lo, hi = max(0, -k), min(n, n - k)
        if lo < hi:
            out[..., lo + k : hi + k] += spread[..., lo:hi, col]
    return out / widths


def _half_band(widths: torch.Tensor, sigma: torch.Tensor, n_sigma: float) -> int:
    with torch.no_grad():
        ratio = (sigma / widths.clamp_min(1e-12)).max().item()
    return max(1, math.ceil(n_sigma * ratio))


def _neighbours(values: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """values[..., j + k] for each offset k, with a mask of which neighbours exist."""
    n = values.shape[-1]
    index = torch.arange(n, device=values.device).unsqueeze(-1) + offsets
    valid = (index >= 0) & (index < n)
    gathered = values[..., index.clamp(0, n - 1)]
    return gathered, valid.to(values.dtype)


def resample(
    wave_in: torch.Tensor,
    flux_in: torch.Tensor,
    ivar_in: torch.Tensor,
    wave_out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear interpolation onto `wave_out` with inverse variances propagated.

    f_out = (1-t) f_a + t f_b, var_out = (1-t)² var_a + t² var_b. An output pixel is masked
    (ivar 0) if it lies outside the input range or leans on a masked input pixel. Meant for
    output grids no coarser than the input; convolve with the LSF first when degrading.
    """
    n = wave_in.shape[-1]
    right = torch.searchsorted(wave_in.contiguous(), wave_out.contiguous()).clamp(1, n - 1)
    left = right - 1
    w_left = torch.gather(wave_in, -1, left)
    w_right = torch.gather(wave_in, -1, right)
    t = ((wave_out - w_left) / (w_right - w_left)).to(flux_in.dtype)
    inside = (wave_out >= wave_in[..., :1]) & (wave_out <= wave_in[..., -1:])

    f_left, f_right = _take(flux_in, left), _take(flux_in, right)
    i_left, i_right = _take(ivar_in, left), _take(ivar_in, right)
    flux_out = (1 - t) * f_left + t * f_right
    usable = inside & ((i_left > 0) | (t >= 1)) & ((i_right > 0) | (t <= 0))
    var = (1 - t) ** 2 * _safe_inverse(i_left) + t**2 * _safe_inverse(i_right)
    ivar_out = torch.where(usable, _safe_inverse(var), torch.zeros_like(var))
    return torch.where(inside, flux_out, torch.zeros_like(flux_out)), ivar_out


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather along the pixel axis, broadcasting a shared index over a batch of spectra."""
    if index.ndim < values.ndim:
        index = index.expand(*values.shape[:-1], index.shape[-1])
    return torch.gather(values, -1, index)


def _safe_inverse(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, 1.0 / x.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


def fit_continuum(
    wave: torch.Tensor,
    flux: torch.Tensor,
    ivar: torch.Tensor,
    model: torch.Tensor,
    segments: Sequence[tuple[int, int]] | None = None,
    degree: int = 2,
) -> torch.Tensor:
    """Closed-form weighted least squares for a smooth multiplicative continuum C(λ).

    Minimises Σ ivar (flux − C · model)² with C a Legendre polynomial of `degree` per detector
    segment (pixel ranges [start, stop)). Batched over leading dims, differentiable in `model`
    and `flux`.
    """
    n = wave.shape[-1]
    segment_id, x = segment_coordinates(wave, segments or [(0, n)])
    design = legendre_design(x, segment_id, len(segments or [0]), degree).to(flux.dtype)
    return solve_continuum(design, flux, ivar, model)


def segment_coordinates(
    wave: torch.Tensor, segments: Sequence[tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each pixel: which segment it is in, and its position x ∈ [-1, 1] inside it."""
    segment_id = torch.zeros(wave.shape[-1], dtype=torch.long, device=wave.device)
    x = torch.zeros_like(wave)
    for index, (start, stop) in enumerate(segments):
        segment_id[start:stop] = index
        lo, hi = wave[..., start : start + 1], wave[..., stop - 1 : stop]
        span = (hi - lo).clamp_min(1e-12)
        x[..., start:stop] = 2 * (wave[..., start:stop] - lo) / span - 1
    return segment_id, x


def legendre_design(
    x: torch.Tensor, segment_id: torch.Tensor, n_segments: int, degree: int
) -> torch.Tensor:
    """Continuum design matrix (..., N, n_segments · (degree+1)): Legendre P_0…P_degree of x,
    one block of columns per segment, zero outside it."""
    polys = [torch.ones_like(x), x]
    for order in range(1, degree):
        polys.append(((2 * order + 1) * x * polys[-1] - order * polys[-2]) / (order + 1))
    legendre = torch.stack(polys[: degree + 1], dim=-1)  # (..., N, degree+1)
    one_hot = F.one_hot(segment_id, n_segments).to(x.dtype)  # (..., N, S)
    return (one_hot.unsqueeze(-1) * legendre.unsqueeze(-2)).flatten(-2)


def solve_continuum(
    design: torch.Tensor,
    flux: torch.Tensor,
    ivar: torch.Tensor,
    model: torch.Tensor,
    ridge: float = 1e-9,
) -> torch.Tensor:
    """C = design · c with c = argmin Σ ivar (flux − model · design c)², in closed form.

    The ridge is relative to the normal matrix's mean diagonal, so it does not depend on the
    flux units; it keeps segments without valid pixels solvable (their C is then 0).
    """
    columns = model.unsqueeze(-1) * design
    weighted = columns * ivar.unsqueeze(-1)
    normal = weighted.transpose(-1, -2) @ columns
    scale = normal.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)
    eye = torch.eye(normal.shape[-1], dtype=normal.dtype, device=normal.device)
    normal = normal + ridge * scale[..., None, None] * eye
    rhs = (weighted * flux.unsqueeze(-1)).sum(-2)
    coeffs = torch.linalg.solve(normal, rhs.unsqueeze(-1)).squeeze(-1)
    if design.ndim < coeffs.ndim + 1:
        design = design.expand(*coeffs.shape[:-1], *design.shape)
    return (design @ coeffs.unsqueeze(-1)).squeeze(-1)
