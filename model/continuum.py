"""The smooth multiplicative continuum C(λ): a Legendre polynomial per detector segment,
solved in closed form by weighted least squares (differentiable, batched)."""

from __future__ import annotations

import torch


def legendre_design(
    x: torch.Tensor, segment_id: torch.Tensor, n_segments: int, degree: int
) -> torch.Tensor:
    """Continuum design matrix (..., N, n_segments · (degree+1)): Legendre P_0…P_degree of x,
    one block of columns per segment, zero outside it."""
    polys = [torch.ones_like(x), x]
    for order in range(1, degree):
        polys.append(((2 * order + 1) * x * polys[-1] - order * polys[-2]) / (order + 1))
    legendre = torch.stack(polys[: degree + 1], dim=-1)  # (..., N, degree+1)
    orders = torch.arange(degree + 1, device=x.device)
    columns = segment_id.unsqueeze(-1) * (degree + 1) + orders  # each pixel's own block
    design = x.new_zeros(*x.shape, n_segments * (degree + 1))
    return design.scatter_(-1, columns, legendre)


def solve_continuum(
    design: torch.Tensor,
    flux: torch.Tensor,
    ivar: torch.Tensor,
    model: torch.Tensor,
    ridge: float = 1e-9,
) -> torch.Tensor:
    """C = design · c with c = argmin Σ ivar (flux − model · design c)², in closed form.

    Solved in the design's dtype (C is returned in the model's): fitting gives a float64
    design, because Legendre polynomials over the part of a segment that has valid pixels
    (STELIB's partial coverage) are nearly collinear, and in float32 the solution moved with
    the order of the sums — χ² by ~10⁻³ of itself with the padding a spectrum's batch-mates
    gave it. The ridge is relative to the mean of the normal matrix's non-zero diagonal, so it
    depends neither on the flux units nor on columns no pixel uses; it keeps segments without
    valid pixels solvable (their C is then 0).
    """
    dtype = model.dtype
    flux, ivar, model = (x.to(design.dtype) for x in (flux, ivar, model))
    weighted = design * (ivar * model**2).unsqueeze(-1)  # (model·design)ᵀ W (model·design)
    normal = weighted.transpose(-1, -2) @ design
    diagonal = normal.diagonal(dim1=-2, dim2=-1)
    used = (diagonal > 0).sum(-1).clamp_min(1)
    scale = (diagonal.sum(-1) / used).clamp_min(1e-30)
    eye = torch.eye(normal.shape[-1], dtype=normal.dtype, device=normal.device)
    normal = normal + ridge * scale[..., None, None] * eye
    rhs = design.transpose(-1, -2) @ (ivar * model * flux).unsqueeze(-1)
    coeffs = torch.linalg.solve(normal, rhs)  # (…, C, 1)
    return (design @ coeffs).squeeze(-1).to(dtype)
