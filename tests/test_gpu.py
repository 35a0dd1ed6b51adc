"""The GPU path (`pytest -m gpu`): fits and the training loss on a CUDA device agree with the
CPU's. Skipped where there is no GPU (the CI machine has none)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stargon.model.batch import make_batch
from stargon.model.fitter import Fitter
from stargon.model.release import Release
from stargon.surveys import read_file

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]

FILES = [
    "lamost_dr8/20220313_CCF_test_grouped_fits/spec-55859-F5902_sp03-232.fits.gz",
    "lamost_dr1/SampleFits/spec-55862-B6212_sp06-003.fits",
    "miles/MILES_res2.50_star_m0001V.fits",
]


def on(device: str) -> Fitter:
    return Fitter.from_release(Release.load(None, device), device)


def test_fits_and_the_training_loss_agree_on_cpu_and_gpu(data):
    spectra = [read_file(data / name)[0] for name in FILES]
    cpu_fitter, gpu_fitter = on("cpu"), on("cuda")
    cpu, gpu = cpu_fitter.model, gpu_fitter.model
    on_cpu, on_gpu = cpu_fitter.fit_batch(spectra), gpu_fitter.fit_batch(spectra)
    for a, b in zip(on_cpu, on_gpu, strict=True):
        assert abs(a.v_kms - b.v_kms) <= 0.1 * a.v_err_kms
        assert b.chi2_dof == pytest.approx(a.chi2_dof, rel=0.01)
        np.testing.assert_allclose(b.normalised_model, a.normalised_model, atol=1e-3)
    batch = make_batch(spectra, n_pixels=2000)
    loss_cpu = cpu.loss(batch)[0].item()
    loss_gpu = gpu.loss(batch.to("cuda"))[0].item()
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-3)
