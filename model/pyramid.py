"""The LSF pyramid: a table on the decoder's ln λ grid blurred to a ladder of Gaussian widths,
computed only where reads ask for it.

Level ℓ is the table blurred by a Gaussian of σ_ℓ (in ln λ) and sampled every h_ℓ table steps
(`pyramid_plan`). Its definition is a cascade — each level is the one before blurred by the
width it adds (a Gaussian truncated at 4σ, edge values repeated) and sampled half as often once
σ ≥ 8 steps — and models are trained on exactly that. Running the cascade over the whole
112,780-step table, every training step, cost most of the step. Here every level is the table
convolved once with the cascade's composite filter (`PyramidFilters.kernels`), which gives the
same numbers, computed one of two ways:

* in blocks: the level's samples around the ones a read asks for, each block one row of a
  matrix product with the level's block matrix (`block_matrix`) — a training step's scattered
  reads cost what they read;
* whole by FFT: the table's Fourier transform times the cascade's transfer function (the
  product of its stages'), cut at the level's Nyquist frequency — which is its sampling; the
  filter is far below float precision beyond it.

A training step reads the levels on the table's grid in blocks and the coarser ones by FFT;
fitting and the explorer, which read the same levels many times, keep whole levels. Both agree
with the cascade to float rounding, except for the last few dozen samples of a level at either
end of the table (where the cascade repeated each level's own edge value, and here the
table's): within 400 table steps of 3,150 Å and 17,100 Å, where no survey has pixels.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.fft
import torch

from stargon.core.physics import FWHM_PER_SIGMA

DECIMATE_AT = 8.0  # a level's sampling halves once its σ spans this many of its steps


@dataclass(frozen=True)
class PyramidLevel:
    sigma: float  # Gaussian σ in ln λ applied so far
    step: float  # grid step in ln λ of this level


def pyramid_plan(
    ln_step: float, lowest_resolving_power: float, levels_per_octave: int
) -> list[PyramidLevel]:
    """σ grows by 2^(1/levels_per_octave) per level up to the LSF of the lowest R; the grid
    halves once σ ≥ DECIMATE_AT steps."""
    sigma_max = 1.0 / (FWHM_PER_SIGMA * lowest_resolving_power)
    ratio = 2.0 ** (1.0 / levels_per_octave)
    levels = [PyramidLevel(0.0, ln_step)]
    sigma, step = ln_step, ln_step
    while True:
        if sigma / step >= DECIMATE_AT:
            step *= 2.0
        levels.append(PyramidLevel(sigma, step))
        if sigma >= sigma_max:
            return levels
        sigma *= ratio


def stage_kernel(sigma_steps: float) -> np.ndarray:
    """One cascade stage: a Gaussian of `sigma_steps` samples, truncated at 4σ, summing to 1."""
    radius = max(1, math.ceil(4.0 * sigma_steps))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_steps) ** 2)
    return kernel / kernel.sum()


class PyramidFilters:
    """The cascade of a plan as filters on the table's grid: each level's composite kernel
    (and its block matrices), and its transfer function on an FFT grid padded for the edges."""

    def __init__(self, levels: list[PyramidLevel], n_table: int):
        self.levels, self.n_table = levels, n_table
        base = levels[0].step
        self.strides = [round(level.step / base) for level in levels]
        self.stages = [
            (
                stage_kernel(math.sqrt(lv.sigma**2 - prev.sigma**2) / prev.step),
                round(prev.step / base),
            )
            for prev, lv in itertools.pairwise(levels)
        ]  # (kernel, the step it runs at, in table steps), from level ℓ − 1 to ℓ
        self.lengths = [n_table]
        for previous, stride in zip(self.strides[:-1], self.strides[1:], strict=True):
            self.lengths.append(math.ceil(self.lengths[-1] * previous / stride))
        radius = sum((len(kernel) // 2) * step for kernel, step in self.stages)
        top = max(self.strides)
        self.pad = math.ceil(radius / top) * top  # edge values repeated this far, both sides
        self.n_fft = _fast_length(n_table + 2 * self.pad, top)
        self._factors: dict[tuple, torch.Tensor] = {}

    def factor(self, level: int, direction: str, like: torch.Tensor) -> torch.Tensor:
        """The real factor by which the level's FFT path multiplies a spectrum, as a tensor
        like `like` (kept): forward, the transfer function over the stride (sampling one in
        `stride` keeps 1/stride of the sum); backward, that times the adjoint's weights —
        irfft's 2/n for inner bins and 1/n for the ends, then rfft's adjoint, n_fft · irfft
        with the full spectrum's inner bins halved."""
        key = (level, direction, like.dtype, like.device)
        if key not in self._factors:
            stride = self.strides[level]
            values = self.transfer(level) / stride
            if direction == "backward":
                n = self.n_fft // stride
                weights = np.full(len(values), 1.0 / n)
                weights[-1] = 1.0 / n if n == self.n_fft else 0.5 / n
                values = values * weights * self.n_fft
            self._factors[key] = torch.as_tensor(values, dtype=like.dtype, device=like.device)
        return self._factors[key]

    @cached_property
    def kernels(self) -> list[np.ndarray]:
        """Each level's composite filter on the table's grid (float64, symmetric; level 0: the
        identity): its stages convolved, a stage at step h spread over h table steps. Level ℓ's
        sample i is the table filtered by it at table position i · stride."""
        kernels = [np.ones(1)]
        for kernel, step in self.stages:
            spread = np.zeros((len(kernel) - 1) * step + 1)
            spread[::step] = kernel
            kernels.append(np.convolve(kernels[-1], spread))
        return kernels

    def block_matrix(self, level: int, size: int, like: torch.Tensor) -> torch.Tensor:
        """(width, size): `size` consecutive samples of a level from the `width` table samples
        around them, column j the level's kernel starting at row j · stride (kept)."""
        key = (level, "block", size, like.dtype, like.device)
        if key not in self._factors:
            kernel, stride = self.kernels[level][::-1], self.strides[level]
            matrix = np.zeros(((size - 1) * stride + len(kernel), size))
            for j in range(size):
                matrix[j * stride : j * stride + len(kernel), j] = kernel
            self._factors[key] = torch.as_tensor(matrix, dtype=like.dtype, device=like.device)
        return self._factors[key]

    def transfer(self, level: int) -> np.ndarray:
        """The level's transfer function (float64) at the rfft frequencies of its own
        sampling: the product of its stages' (a stage at step h responds at h·ω)."""
        n_bins = self.n_fft // self.strides[level] // 2 + 1
        omega = 2 * np.pi * np.arange(n_bins) / self.n_fft
        response = np.ones(n_bins)
        for kernel, step in self.stages[:level]:
            radius = len(kernel) // 2
            taps = np.arange(1, radius + 1)
            response *= (
                kernel[radius] + 2 * np.cos(np.outer(step * omega, taps)) @ kernel[radius + 1 :]
            )
        return response


def _fast_length(size: int, multiple: int) -> int:
    """The smallest length ≥ size, a multiple of `multiple` whose quotient FFTs fast."""
    quotient = math.ceil(size / multiple)
    while scipy.fft.next_fast_len(quotient, real=True) != quotient:
        quotient += 1
    return quotient * multiple


BLOCK_SIZE = 16
# Samples per block. Blocks are aligned on multiples of it, so a sample is computed the same way
# whatever else the batch reads — which the 1- and 2-process DDP tests need bit for bit.


class LsfPyramid:
    """The levels of one table (rows × n_table), computed when first read.

    A pyramid made while its table needs gradients (a training step) computes, at each read,
    the levels on the table's grid in blocks around the samples read (the high-R levels:
    short filters, scattered reads), and the coarser levels whole by FFT (long filters over
    dense reads: `benchmarks/pyramid_reads.py` times both), with gradients. `block_levels`
    chooses other levels for blocks (tests take each way for every level). One made without
    gradients (fitting, the explorer, the velocity scan's templates: `torch.no_grad()`)
    computes every level it is asked for whole, by FFT, and keeps it for the many reads that
    follow."""

    def __init__(
        self,
        table: torch.Tensor,
        filters: PyramidFilters,
        block_levels: frozenset[int] | None = None,
    ):
        self.table, self.filters = table, filters
        self.levels = filters.levels
        if block_levels is None:
            block_levels = frozenset(lv for lv, s in enumerate(filters.strides) if s == 1)
        self.block_levels = block_levels
        self.training = table.requires_grad and torch.is_grad_enabled()
        self._whole: dict[int, torch.Tensor] = {0: table}

    @property
    def rows(self) -> int:
        return self.table.shape[0]

    def length(self, level: int) -> int:
        return self.filters.lengths[level]

    def gather(self, wanted: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Each level's samples at its indices (1-D, within the level): (rows, len) each.
        In training, the levels read in blocks share one read of the table, and the levels by
        FFT one transform of it."""
        plans = {lv: self._block_plan(lv, index) for lv, index in wanted.items()}
        found = self._filter_blocks({lv: plan for lv, plan in plans.items() if plan})
        self._compute_whole([lv for lv in wanted if lv not in found])
        for level, index in wanted.items():
            if level not in found:
                found[level] = self._whole[level].index_select(1, index)
        return found

    def window(self, level: int, start: int, stop: int) -> torch.Tensor:
        """Samples start … stop − 1 of a level: (rows, stop − start)."""
        index = torch.arange(start, stop, device=self.table.device)
        plan = self._block_plan(level, index)
        if plan:
            return self._filter_blocks({level: plan})[level]
        return self.whole(level)[:, start:stop]

    def whole(self, level: int) -> torch.Tensor:
        """The whole level (rows, length), kept for later reads."""
        self._compute_whole([level])
        return self._whole[level][:, : self.length(level)]

    def _compute_whole(self, levels: list[int]) -> None:
        """Compute the levels not yet kept, by FFT, all from one transform of the table."""
        missing = tuple(lv for lv in levels if lv not in self._whole)
        if missing:
            with torch.set_grad_enabled(self.training):
                blurred = FourierLevels.apply(self.table, self.filters, missing)
            self._whole |= dict(zip(missing, blurred, strict=True))

    def _block_plan(self, level: int, index: torch.Tensor) -> _BlockPlan | None:
        """The blocks around a level's indices, in training and for a level read in blocks
        that is not kept whole; else None."""
        if not self.training or level in self._whole or level not in self.block_levels:
            return None
        return _blocks(index, self.filters.strides[level], len(self.filters.kernels[level]))

    def _filter_blocks(self, plans: dict[int, _BlockPlan]) -> dict[int, torch.Tensor]:
        """Levels at their indices from the blocks of the table their plans read, all read
        from the table at once."""
        if not plans:
            return {}
        positions = torch.cat([plan.positions.reshape(-1) for plan in plans.values()])
        gathered = self.table.index_select(1, positions.clamp(0, self.filters.n_table - 1))
        pieces = gathered.split([plan.positions.numel() for plan in plans.values()], dim=1)
        found = {}
        for (level, plan), piece in zip(plans.items(), pieces, strict=True):
            matrix = self.filters.block_matrix(level, BLOCK_SIZE, self.table)
            blocks = piece.reshape(-1, matrix.shape[0]) @ matrix  # (rows · blocks, size)
            found[level] = blocks.reshape(self.rows, -1).index_select(1, plan.select)
        return found


@dataclass
class _BlockPlan:
    """The blocks of BLOCK_SIZE consecutive samples of a level that hold the indices wanted:
    the table samples each block's filter needs (`positions`: blocks × width, beyond the ends
    clamped) and where each wanted sample lies among the blocks' outputs (`select`). A block's
    outputs are its samples times the level's block matrix: one matrix product for all
    blocks, no output computed across two of them."""

    positions: torch.Tensor
    select: torch.Tensor


def _blocks(index: torch.Tensor, stride: int, taps: int) -> _BlockPlan:
    """The blocks (aligned on multiples of BLOCK_SIZE) around a level's indices."""
    blocks = torch.unique(index // BLOCK_SIZE)
    start = blocks * (BLOCK_SIZE * stride) - taps // 2
    width = (BLOCK_SIZE - 1) * stride + taps
    positions = start.unsqueeze(1) + torch.arange(width, device=index.device)
    select = torch.searchsorted(blocks, index // BLOCK_SIZE) * BLOCK_SIZE + index % BLOCK_SIZE
    return _BlockPlan(positions, select)


class FourierLevels(torch.autograd.Function):
    """The levels by FFT of a table, with a backward written out: the adjoint of each step
    (crop, inverse FFT at the level's sampling, transfer function, forward FFT of the padded
    table, edge padding), all levels summed into one spectrum and inverted once. Autograd's
    own backward of `rfft` is a complex FFT of the full length, and each level's slice of
    the spectrum would allocate a full-size gradient.

    The padded table is laid out [table, last value repeated, first value repeated], so that
    on the FFT's circle the table starts at 0, with its own edge values on either side."""

    @staticmethod
    def forward(table: torch.Tensor, filters: PyramidFilters, levels: tuple[int, ...]):
        right, left = filters.pad, filters.n_fft - filters.n_table - filters.pad
        edges = table[:, -1:].expand(-1, right), table[:, :1].expand(-1, left)
        spectrum = torch.fft.rfft(torch.cat([table, *edges], dim=1))
        blurred = []
        for level in levels:
            n = filters.n_fft // filters.strides[level]
            level_spectrum = spectrum[:, : n // 2 + 1] * filters.factor(level, "forward", table)
            blurred.append(torch.fft.irfft(level_spectrum, n=n))  # the level, then padding
        return tuple(blurred)

    @staticmethod
    def setup_context(ctx, inputs, output):
        table, ctx.filters, ctx.levels = inputs
        ctx.dtype = table.dtype

    @staticmethod
    def backward(ctx, *grads):
        """In float64: a transform spreads its round-off over every sample, at ~10⁻⁷ of the
        largest in float32, so table entries no read reaches would get gradients of that size
        instead of 0 — and Adam, which divides by a gradient's own scale, would move them by
        up to the learning rate (the cascade's convolutions left them at exactly 0)."""
        filters = ctx.filters
        total = None
        for level, grad in zip(ctx.levels, grads, strict=True):
            if grad is None:
                continue
            spectrum = torch.fft.rfft(grad.double())  # the adjoint of irfft, up to the weights
            n = grad.shape[-1]
            spectrum.mul_(filters.factor(level, "backward", spectrum.real))
            if total is None:
                total = spectrum.new_zeros(grad.shape[0], filters.n_fft // 2 + 1)
            total[:, : n // 2 + 1] += spectrum
        padded = torch.fft.irfft(total, n=filters.n_fft).to(ctx.dtype)
        grad_table = padded[:, : filters.n_table].clone()
        grad_table[:, -1] += padded[:, filters.n_table : filters.n_table + filters.pad].sum(-1)
        grad_table[:, 0] += padded[:, filters.n_table + filters.pad :].sum(-1)
        return grad_table, None, None
