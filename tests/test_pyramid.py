"""The LSF pyramid as training and fitting compute it — windows of the table through each
level's composite FIR, the coarse levels by FFT with a written-out backward — against the
cascade that defines it (`oracle.cascade_pyramid`): the same levels, the same gradients, the
same decoded spectra. And every reader of a pyramid goes through the one read function."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stargon.model.batch import make_batch
from stargon.model.decoder import LatentMLP, ModelConfig
from stargon.model.gon import StarGON
from stargon.model.pyramid import LsfPyramid, pyramid_plan
from stargon.model.velocity import scan_templates, template_bank
from stargon.surveys import read_file
from tests.oracle import cascade_pyramid

CONFIG = ModelConfig(latent_dim=3, n_basis=3, hidden=16, wave_min=6000.0, wave_max=7000.0)
RESOLVING_POWERS = (1800.0, 7500.0, 22500.0, 28000.0)
LEVELS = pyramid_plan(CONFIG.ln_step, CONFIG.lowest_resolving_power, CONFIG.lsf_levels_per_octave)
TRAINING_PATHS = (frozenset(), frozenset(range(len(LEVELS))))  # all by FFT; all in blocks


pytestmark = pytest.mark.usefixtures("float64")


@pytest.fixture
def model() -> StarGON:
    torch.manual_seed(3)
    model = StarGON(CONFIG)
    with torch.no_grad():
        model.decoder.table.data = model.decoder.table.data.double().normal_()
    return model


def edge(level: int, model: StarGON) -> int:
    """Samples within the composite radius of a table's end, where the cascade repeated each
    level's own edge and the pyramid repeats the table's."""
    return math.ceil(model.decoder.filters.pad / model.decoder.filters.strides[level])


def test_every_level_is_the_cascade_whole_and_in_windows(model):
    table = model.decoder.table
    expected = cascade_pyramid(table.detach(), model.decoder.levels)
    with torch.no_grad():
        whole = model.decoder.pyramid()  # no gradient: each level computed whole and kept
        levels = [whole.whole(level) for level in range(len(expected))]
    rng = np.random.default_rng(0)
    for level, (cascade, found) in enumerate(zip(expected, levels, strict=True)):
        inner = slice(edge(level, model), -edge(level, model) or None)
        assert found.shape == cascade.shape
        torch.testing.assert_close(found[:, inner], cascade[:, inner], rtol=0, atol=1e-12)
        index = torch.as_tensor(rng.integers(inner.start, cascade.shape[1] + inner.stop, 300))
        for blocks in TRAINING_PATHS:  # the table needs gradients: blocks, or levels by FFT
            read = LsfPyramid(table, model.decoder.filters, blocks).gather({level: index})[level]
            torch.testing.assert_close(read, cascade[:, index], rtol=0, atol=1e-12)


@pytest.mark.parametrize("blocks", TRAINING_PATHS, ids=("by FFT", "in blocks"))
def test_the_pyramids_gradient_is_the_cascades(model, blocks):
    """The backward of the blocks and of the FFT levels (written out by hand) against
    autograd through the cascade, for reads at every resolving power a batch mixes."""
    gen = torch.Generator().manual_seed(1)
    wave = torch.sort(6000 + 1000 * torch.rand(3, 400, generator=gen)).values  # to the ends
    velocity = torch.tensor([40.0, -120.0, 310.0])
    for resolving_power in (*RESOLVING_POWERS, 1000 + 40000 * torch.rand(3, 400, generator=gen)):
        weights = torch.randn(CONFIG.n_basis + 1, 3, 400, generator=gen)
        model.decoder.table.grad = None
        training = LsfPyramid(model.decoder.table, model.decoder.filters, blocks)
        read = model.decoder.pixel_basis(wave, velocity, resolving_power, training)
        (read * weights).sum().backward()
        found = model.decoder.table.grad
        model.decoder.table.grad = None
        cascade = LsfPyramid(model.decoder.table, model.decoder.filters)
        cascade._whole = dict(enumerate(cascade_pyramid(model.decoder.table, cascade.levels)))
        expected = model.decoder.pixel_basis(wave, velocity, resolving_power, cascade)
        (expected * weights).sum().backward()
        inner = slice(edge(len(cascade.levels) - 1, model) * 8, -edge(0, model) * 8)
        step = (torch.log(wave) - model.decoder.ln_min) / CONFIG.ln_step
        away = (step > model.decoder.filters.pad) & (
            step < CONFIG.n_table - model.decoder.filters.pad
        )
        torch.testing.assert_close(read[:, away], expected[:, away], rtol=0, atol=1e-12)
        torch.testing.assert_close(found[:, inner], model.decoder.table.grad[:, inner])
        # Every level keeps a flat table flat, edges included: the same gradient in all.
        torch.testing.assert_close(found.sum(1), model.decoder.table.grad.sum(1))
        assert found.abs().max() > 0.1  # a gradient to compare


def test_the_default_model_decodes_as_it_was_trained(default_model_and_spectra):
    """The embedded model's spectra at the four resolving powers of the issue, read through
    the new pyramid and through the cascade it was trained with: ≤ 1e-4 relative (to the flux,
    or to 1 % of the continuum in a saturated line core, where the flux nears 0)."""
    model, _ = default_model_and_spectra
    torch.set_default_dtype(torch.float32)
    decoder = model.decoder
    with torch.no_grad():
        cascade = LsfPyramid(decoder.table, decoder.filters)
        cascade._whole = dict(enumerate(cascade_pyramid(decoder.table, cascade.levels)))
        z = torch.randn(8, model.config.latent_dim, generator=torch.Generator().manual_seed(0))
        for resolving_power in RESOLVING_POWERS:
            wave = torch.as_tensor(np.geomspace(3700.0, 16900.0, 40000))
            ours = model.observe(z, model.observation_basis(wave, 25.0, resolving_power))
            theirs = model.observe(z, model.observation_basis(wave, 25.0, resolving_power, cascade))
            assert ((ours - theirs).abs() / theirs.abs().clamp_min(0.01)).max() < 1e-4


@pytest.fixture(scope="module")
def default_model_and_spectra(data):
    from stargon.model.checkpoint import load_checkpoint

    model, _, _ = load_checkpoint(None)
    lamost = sorted((data / "lamost_dr8").rglob("*.fits*"))[:2]
    return model, [read_file(path)[0] for path in lamost]


def test_every_reader_sees_a_level_perturbed_in_the_pyramid(default_model_and_spectra, monkeypatch):
    """A bump added to one level, where the pyramid hands out its samples, reaches the velocity
    scan's templates, a star's own model in the fine scan and the basis `observe` reads — and
    the same bump in each: so none of them reads the table another way."""
    model, spectra = default_model_and_spectra
    torch.set_default_dtype(torch.float32)
    level = 13  # LAMOST's R reads levels 12 and 13

    def bump(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The level's first row (the mean spectrum T₀, or a template) plus a wave."""
        values = values.clone()
        values[0] += 0.05 * torch.sin(index.to(values.dtype) / 40.0)
        return values

    gather, window = LsfPyramid.gather, LsfPyramid.window

    def bumped_gather(self, wanted):
        found = gather(self, wanted)
        if level in found:
            found[level] = bump(found[level], wanted[level])
        return found

    def bumped_window(self, at, start, stop):
        values = window(self, at, start, stop)
        return bump(values, torch.arange(start, stop)) if at == level else values

    batch = make_batch(spectra[:1])
    wave = batch.wave[0]
    z = torch.zeros(1, model.config.latent_dim)
    resolving_power = float(batch.resolving_power[0, 0])
    sigma = 1.0 / (2 * math.sqrt(2 * math.log(2)) * resolving_power)

    def views():
        with torch.no_grad():
            basis = model.observation_basis(wave, 0.0, resolving_power)
            observed = model.observe(z, basis)[0]
            scanned = scan_templates(model, template_bank(model), torch.log(wave), sigma)[0]
            own = model.decoder.pixel_model(
                z, wave[None], torch.zeros(1, 1, dtype=torch.float64), batch.resolving_power,
                model.decoder.pyramid(),
            )[0, 0]  # fmt: skip
        return observed, scanned, own

    plain = views()
    monkeypatch.setattr(LsfPyramid, "gather", bumped_gather)
    monkeypatch.setattr(LsfPyramid, "window", bumped_window)
    perturbed = views()
    changes = [after - before for after, before in zip(perturbed, plain, strict=True)]
    assert changes[0].abs().max() > 0.01  # the bump shows
    for change in changes[1:]:
        torch.testing.assert_close(change, changes[0], rtol=0, atol=2e-5)


def test_the_latent_jacobian_in_closed_form_is_autograds():
    """`LatentMLP.with_jacobian` (tangents through Linear, LayerNorm, SiLU) against autograd,
    and so is its own derivative in the weights, which training differentiates."""
    torch.manual_seed(0)
    mlp = LatentMLP(ModelConfig(latent_dim=5, n_basis=7, hidden=11))
    with torch.no_grad():
        for layer in mlp.net:
            if isinstance(layer, torch.nn.LayerNorm):
                layer.weight.normal_()
                layer.bias.normal_()
    z = torch.randn(4, 5)
    values, jacobian = mlp.with_jacobian(z)
    expected = torch.autograd.functional.jacobian(
        lambda x: mlp(x).sum(0), z, create_graph=True, vectorize=True
    ).permute(1, 0, 2)
    torch.testing.assert_close(values, mlp(z), rtol=0, atol=1e-12)
    torch.testing.assert_close(jacobian, expected, rtol=0, atol=1e-12)
    weights = torch.randn_like(jacobian)
    parameters = list(mlp.parameters())[:-1]  # the last bias moves h, not its Jacobian
    first = torch.autograd.grad((jacobian * weights).sum(), parameters)
    second = torch.autograd.grad((expected * weights).sum(), parameters)
    for ours, theirs in zip(first, second, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
