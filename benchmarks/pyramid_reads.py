"""What does each pyramid level cost a training step, in blocks and whole by FFT? For the
default recipe's step (`benchmarks.train_speed`'s batches: 64 spectra × 1,000 pixels and
2,000 roughness cells), every level the step reads, timed forward and backward both ways on
the embedded model's table, and the way a training pyramid takes (blocks on the table's
grid, FFT for the coarser levels). The FFT column holds a level alone, so it includes the
transforms every FFT level shares (the table's, and its adjoint), paid once per step however
many levels are made by FFT; the last line times those alone.

    python -m benchmarks.pyramid_reads     # ≈ 1 min on 2 cores
"""

from __future__ import annotations

import functools

import torch

from benchmarks.common import median_time, table
from benchmarks.train_speed import Trainer, default_config, prepare_steps
from stargon.model import decoder, gon
from stargon.model.pyramid import FourierLevels, LsfPyramid


def reads_of_a_step(trainer: Trainer, step) -> dict[int, torch.Tensor]:
    """The indices each level is asked for in one training step (one `gather` per step)."""
    asked: dict[int, torch.Tensor] = {}
    gather = LsfPyramid.gather

    def recording(self, wanted):
        asked.update(wanted)
        return gather(self, wanted)

    LsfPyramid.gather = recording
    try:
        trainer.step(*step)
    finally:
        LsfPyramid.gather = gather
    return asked


def forward_and_backward(basis, filters, level: int, index: torch.Tensor, in_blocks: bool):
    """One level read at `index` and its gradient, in blocks or by FFT."""
    blocks = frozenset([level] if in_blocks else [])
    LsfPyramid(basis, filters, blocks).gather({level: index})[level].sum().backward()


def main() -> None:
    config = default_config()
    trainer = Trainer(gon, decoder, config)
    asked = reads_of_a_step(trainer, prepare_steps(config, 1)[0])
    filters = trainer.model.decoder.filters
    basis = trainer.model.decoder.table.detach().clone().requires_grad_()
    rows = []
    for level, index in sorted(asked.items()):
        if level == 0:
            continue  # the table itself
        rows.append({
            "level": level, "samples read": len(index), "stride": filters.strides[level],
            "taps": len(filters.kernels[level]),
            "taken": "blocks" if level in LsfPyramid(basis, filters).block_levels else "FFT",
            **{name: 1e3 * median_time(
                functools.partial(forward_and_backward, basis, filters, level, index, blocks))
               for name, blocks in (("blocks ms", True), ("FFT ms (alone)", False))},
        })  # fmt: skip
    coarsest = len(filters.levels) - 1

    def shared():
        (level,) = FourierLevels.apply(basis, filters, (coarsest,))
        level[:, :1].sum().backward()

    print(f"device: CPU, {torch.get_num_threads()} threads; medians of 5 "
          "(python -m benchmarks.pyramid_reads)\n")  # fmt: skip
    print(table(rows, list(rows[0])))
    print(f"\nThe shared transforms (level {coarsest} alone by FFT, read at one sample): "
          f"{1e3 * median_time(shared):.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
