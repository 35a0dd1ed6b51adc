"""The outlier score: anomalies made from real stars score above the stars they were made from,
`stargon fit` writes the score with its parts, and the score is what its parts say."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
from astropy.table import Table

from stargon.evaluate.anomalies import ANOMALIES, emission_at_h_alpha
from stargon.model.fitter import Fitter
from stargon.model.outliers import POOLED, OutlierReference, latent_nll
from stargon.model.release import Release
from stargon.surveys import read_file

LAMOST = "lamost_dr8/20220313_CCF_test_grouped_fits/spec-55859-F5902_sp03-232.fits.gz"


@pytest.fixture(scope="module")
def release() -> Release:
    release = Release.load(None)
    assert release.outliers is not None, "the embedded release carries its outlier reference"
    return release


@pytest.fixture(scope="module")
def stars(data, release):
    """Six held-out MILES stars and the embedded model's fitter."""
    held = release.held_out_star_ids
    folder = sorted((data / "miles").glob("MILES_*.fits"))
    spectra = [s for path in folder for s in read_file(path) if s.star_id in held][:6]
    return spectra, Fitter.from_release(release)


def test_each_kind_of_anomaly_scores_above_the_star_it_was_made_from(stars, release):
    spectra, fitter = stars
    reference = release.outliers

    def scores(batch):
        fits = fitter.fit(batch)
        return reference.score([s.instrument for s in batch], np.array([f.z for f in fits]),
                               [f.chi2_dof for f in fits])  # fmt: skip

    clean = scores(spectra)
    assert np.median(clean.outlier_score) < 2.0  # ordinary stars are ordinary
    rng = np.random.default_rng(1)
    for kind, make in ANOMALIES.items():
        made = scores([make(s, 0.0, rng) for s in spectra])
        raised = made.outlier_score > clean.outlier_score
        assert raised.mean() >= 5 / 6, (kind, clean.outlier_score, made.outlier_score)


def test_the_score_is_the_length_of_the_excesses_above_typical(release):
    prior = release.prior
    rng = np.random.default_rng(0)
    z = prior.sample(400, seed=3)
    chi2 = np.exp(rng.normal(0.0, 0.3, len(z)))
    reference = OutlierReference.fit(prior, ["A"] * len(z), z, chi2)
    scores = reference.score(["A"] * len(z), z, chi2)
    assert abs(np.median(scores.latent_excess)) < 0.05
    assert abs(np.median(scores.fit_excess)) < 0.05
    expected = np.hypot(np.clip(scores.latent_excess, 0, None), np.clip(scores.fit_excess, 0, None))
    np.testing.assert_allclose(scores.outlier_score, expected)
    # A fit e^(3 × 0.3) worse than typical is 3 spreads out; an unknown instrument uses the pool.
    far = reference.score(["B"], z[:1], [np.exp(0.9) * np.median(chi2)])
    assert far.fit_excess[0] == pytest.approx(3.0, abs=0.3)
    assert set(reference.stats) == {POOLED, "A"}


def test_stargon_fit_writes_the_score_and_its_parts(data, release, tmp_path):
    (spectrum,) = read_file(data / LAMOST)
    bright = emission_at_h_alpha(spectrum, 0.0, np.random.default_rng(0))
    paths = []
    for name, flux in (("plain", spectrum.flux), ("emission", bright.flux)):
        keep = spectrum.valid
        table = Table({"wavelength": spectrum.wave[keep], "flux": flux[keep],
                       "error": 1 / np.sqrt(spectrum.ivar[keep])})  # fmt: skip
        paths.append(tmp_path / f"{name}.csv")
        table.write(paths[-1], format="ascii.csv")
    out = tmp_path / "fits.csv"
    command = ["fit", "--resolving-power", "1800", "--out", str(out), *map(str, paths)]
    subprocess.run([sys.executable, "-m", "stargon", *command], check=True, capture_output=True)
    rows = {row["source"].split("/")[-1]: row for row in csv.DictReader(out.open())}
    plain, emission = rows["plain.csv"], rows["emission.csv"]
    for row in (plain, emission):
        parts = [max(float(row[k]), 0.0) for k in ("latent_excess", "fit_excess")]
        assert float(row["outlier_score"]) == pytest.approx(np.hypot(*parts), rel=1e-3)
        z = [float(row[f"z_{k}"]) for k in range(release.model.config.latent_dim)]
        assert float(row["latent_nll"]) == pytest.approx(latent_nll(release.prior, z)[0], rel=1e-3)
    assert float(emission["fit_excess"]) > float(plain["fit_excess"]) + 1.0
    assert float(emission["outlier_score"]) > float(plain["outlier_score"])
