"""The LSF pyramid: a table on the decoder's ln λ grid blurred to a ladder of Gaussian widths,
computed only where reads ask for it.

Level ℓ is the table blurred by a Gaussian of σ_ℓ (in ln λ) and sampled every h_ℓ table steps
(`pyramid_plan`). Its definition is a cascade — each level is the one before blurred by the
width it adds (a Gaussian truncated at 4σ, edge values repeated) and sampled half as often once
σ ≥ 8 steps — and models are trained on exactly that. Running the cascade over the whole
112,780-step table, every training step, cost most of the step. Here every level is the table
convolved once with the cascade's composite filter, which gives the same numbers:

* in a training step, the levels on the table's own grid with a short FIR (σ ≤ 4 steps, read
  by high-R pixels): the composite FIR, applied only over the windows of the table a read asks
  for;
* every other level (and, outside training, every level): the table's Fourier transform times
  the cascade's transfer function (the product of its stages'), cut at the level's Nyquist
  frequency — which is its sampling; the filter is far below float precision beyond it.

Both agree with the cascade to float rounding, except for the last few dozen samples of a
level at either end of the table (where the cascade repeated each level's own edge value, and
here the table's): within 400 table steps of 3,150 Å and 17,100 Å, where no survey has pixels.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.fft
import torch
import torch.nn.functional as F

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
    """The cascade of a plan as filters on the table's grid: a composite FIR per level still on
    that grid, and the transfer function of every level on an FFT grid padded for the edges."""

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

    def on_grid(self, level: int) -> bool:
        return self.strides[level] == 1

    @cached_property
    def firs(self) -> dict[int, np.ndarray]:
        """Composite FIR of each blurred level on the table's grid (float64, symmetric)."""
        firs, composite = {}, np.ones(1)
        for level, (kernel, step) in enumerate(self.stages, start=1):
            if step != 1:
                break
            composite = np.convolve(composite, kernel)
            firs[level] = composite
        return firs

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


class LsfPyramid:
    """The levels of one table (rows × n_table), computed when first read.

    A pyramid made while its table needs gradients (a training step) computes, at each read,
    only the windows of the high-R levels that the read asks for, and the other levels whole
    by FFT, with their gradients. One made without (fitting, the explorer, the velocity scan's
    templates: `torch.no_grad()`) computes every level it is asked for whole, by FFT and
    without gradients, and keeps it for the many reads that follow."""

    def __init__(self, table: torch.Tensor, filters: PyramidFilters):
        self.table, self.filters = table, filters
        self.levels = filters.levels
        self.training = table.requires_grad and torch.is_grad_enabled()
        self._whole: dict[int, torch.Tensor] = {0: table}

    @property
    def rows(self) -> int:
        return self.table.shape[0]

    def length(self, level: int) -> int:
        return self.filters.lengths[level]

    def gather(self, wanted: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Each level's samples at its indices (1-D, within the level): (rows, len) each.
        In training, the windowed levels share one read of the table, and the levels by FFT
        one transform of it."""
        windowed = {lv: index for lv, index in wanted.items() if self._windowed(lv)}
        found = self._fir_samples(windowed) if windowed else {}
        self._compute_whole([lv for lv in wanted if lv not in found])
        for level, index in wanted.items():
            if level not in found:
                found[level] = self._whole[level].index_select(1, index)
        return found

    def window(self, level: int, start: int, stop: int) -> torch.Tensor:
        """Samples start … stop − 1 of a level: (rows, stop − start)."""
        if self._windowed(level):
            index = torch.arange(start, stop, device=self.table.device)
            return self._fir_samples({level: index})[level]
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

    def _windowed(self, level: int) -> bool:
        """Read from windows of the table: in training, a level on the table's grid whose
        FIR is short."""
        if not self.training or level in self._whole or not self.filters.on_grid(level):
            return False
        return len(self.filters.firs[level]) < FOURIER_TAPS

    def _fir_samples(self, wanted: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Levels on the table's grid at their indices, from the windows of the table around
        those indices only (`_fir_plan`), all read from the table at once."""
        plans = [_fir_plan(index, self._fir(lv, index.device)) for lv, index in wanted.items()]
        positions = torch.cat([plan.positions for plan in plans])
        gathered = self.table.index_select(1, positions.clamp(0, self.filters.n_table - 1))
        pieces = gathered.split([len(plan.positions) for plan in plans], dim=1)
        pairs = zip(wanted, plans, pieces, strict=True)
        return {level: plan.apply(piece) for level, plan, piece in pairs}

    def _fir(self, level: int, device: torch.device) -> torch.Tensor:
        """The level's FIR (level 0: the identity) as a tensor."""
        fir = self.filters.firs.get(level, np.ones(1))
        return torch.as_tensor(fir, dtype=self.table.dtype, device=device)


@dataclass
class _FirPlan:
    """Which table samples one level's FIR needs for its indices, and how to filter them."""

    positions: torch.Tensor  # table indices to read (may lie beyond the ends: clamped)
    fir: torch.Tensor
    select: torch.Tensor  # where each wanted sample lies in the filtered sequence

    def apply(self, pieces: torch.Tensor) -> torch.Tensor:
        """The FIR run over the windows as one sequence (its outputs across a window's edge
        are never selected). A sample's value does not depend on the windows around it, not
        even in the last bit, so a spectrum's reads do not depend on its batch-mates."""
        if len(self.fir) == 1:
            return pieces.index_select(1, self.select)
        fir, pad = self.fir, max(0, (MIN_TAPS - len(self.fir)) // 2)
        if pad:  # zeros around it: the same sum, a faster convolution
            fir, pieces = F.pad(fir, (pad, pad)), F.pad(pieces, (pad, pad))
        return _depthwise(pieces, fir).index_select(1, self.select)


def _fir_plan(index: torch.Tensor, fir: torch.Tensor) -> _FirPlan:
    """The windows of the table around the wanted samples (those closer than the FIR's width
    share one), laid end to end."""
    radius = len(fir) // 2
    wanted, inverse = torch.unique(index, return_inverse=True)
    opens = torch.ones_like(wanted, dtype=torch.bool)
    opens[1:] = wanted.diff() > 2 * radius + 1
    closes = torch.ones_like(opens)
    closes[:-1] = opens[1:]
    first = wanted[opens]
    length = wanted[closes] - first + 1 + 2 * radius
    window = torch.cumsum(opens, 0) - 1
    offset = torch.cumsum(length, 0) - length
    positions = torch.arange(int(length.sum()), device=index.device)
    positions = positions + torch.repeat_interleave(first - radius - offset, length)
    return _FirPlan(positions, fir, (offset[window] + wanted - first[window])[inverse])


MIN_TAPS = 17
# Levels on the table's grid whose FIR is at least this long are made by FFT, even in
# training: the roughness penalty's cells, spread over the whole table, read them, and over
# windows that cover it the FIR costs more than the transform.
FOURIER_TAPS = 100


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


def _depthwise(table: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The same 1-D kernel along every row ('valid': len(kernel) − 1 samples shorter)."""
    weight = kernel.flip(0).expand(table.shape[0], 1, -1)
    return F.conv1d(table.unsqueeze(0), weight, groups=table.shape[0]).squeeze(0)
