"""Label directions: the regression recovers known directions, and on the embedded model the
[α/Fe] direction of the Payne spectra deepens α-element lines, not Fe lines."""

from __future__ import annotations

import numpy as np
import pytest

from stargon.evaluate.context import prepare
from stargon.evaluate.measurements import DIRECTION_STEPS, label_directions
from stargon.model.directions import LabelDirections, line_response
from stargon.model.fitter import Fitter
from stargon.model.release import Release
from stargon.train.dataset import SYNTHETIC_SURVEY

ALPHA_ELEMENTS = {"Mg I", "Si I", "Ti I", "Ca I", "Ca II", "O I"}


def test_directions_are_the_latent_change_per_unit_label_with_the_others_held():
    rng = np.random.default_rng(0)
    labels = np.column_stack([rng.normal(5000, 800, 500), rng.normal(0, 0.4, 500)])
    labels[:, 1] += 2e-4 * (labels[:, 0] - 5000)  # correlated labels, as in real samples
    per_unit = rng.normal(size=(2, 6)) / np.array([[800.0], [0.4]])
    whitened = 0.3 + labels @ per_unit + rng.normal(0, 0.01, (500, 6))
    directions = LabelDirections.fit(whitened, labels, ("teff", "fe_h"))
    assert np.allclose(directions.direction("fe_h"), per_unit[1], atol=0.01 / 0.4 * 0.2)
    assert np.allclose(directions.direction("teff"), per_unit[0], rtol=0.02, atol=1e-5)
    assert np.allclose(directions.typical(labels[0]), whitened[0], atol=0.05)
    with pytest.raises(ValueError, match="cannot fix"):
        LabelDirections.fit(whitened[:3], labels[:3], ("teff", "fe_h"))


def _alpha_lines_deepen_more_than_iron(lines) -> bool:
    alpha = [r.change for r in lines if r.line.species in ALPHA_ELEMENTS]
    iron = [r.change for r in lines if r.line.species == "Fe I"]
    assert alpha and iron
    return min(alpha) > 0 and np.mean(alpha) > 3 * abs(np.mean(iron))


@pytest.mark.slow  # encodes the 1,000 Payne spectra of the embedded model's training set
def test_the_alpha_direction_deepens_alpha_element_lines_more_than_iron_lines(data):
    """Mg I, Si I and Ti I (H band) deepen along [α/Fe] + 0.2 and Fe I does not move by a third
    as much; directions drawn at random, of the same length, almost never do that."""
    ev = prepare(None, data, [SYNTHETIC_SURVEY])
    (row,) = [r for r in label_directions(ev) if r["label"] == "alpha_fe"]
    alpha = [r for r in row["lines"] if r["species"] in ALPHA_ELEMENTS]
    assert {r["species"] for r in alpha} >= {"Mg I", "Si I", "Ti I"}
    stars = ev.members(SYNTHETIC_SURVEY, held_out=False)
    names = ("teff", "logg", "fe_h", "alpha_fe")
    labels = np.array([[ev.dataset.spectra[i].labels[k] for k in names] for i in stars])
    directions = LabelDirections.fit(ev.whitened[stars], labels, names)
    move = DIRECTION_STEPS["alpha_fe"] * directions.direction("alpha_fe")
    measure = lambda step: line_response(  # noqa: E731
        ev.fitter, ev.whitening, directions.typical(), step, (15000.0, 17000.0),
        row["resolving_power"],
    )  # fmt: skip
    along_alpha = measure(move)
    assert [r.change for r in along_alpha if r.line.species in ALPHA_ELEMENTS] == pytest.approx(
        [r["change"] for r in alpha], abs=1e-6
    )  # the report's numbers are these
    assert _alpha_lines_deepen_more_than_iron(along_alpha)
    rng = np.random.default_rng(0)
    random = [rng.normal(size=move.size) for _ in range(20)]
    scaled = [r * np.linalg.norm(move) / np.linalg.norm(r) for r in random]
    chance = [_alpha_lines_deepen_more_than_iron(measure(r)) for r in scaled]
    assert sum(chance) <= 2


def test_the_release_s_directions_move_the_lines_a_teacher_expects():
    """From the embedded release's labelled training stars: hotter deepens the Balmer lines
    and weakens Ca I 4228; metal-richer deepens Fe I; higher gravity deepens Mg b."""
    release = Release.load()
    directions = release.label_directions()
    assert directions.names == ("teff", "logg", "fe_h") and directions.n_stars > 500
    fitter = Fitter.from_release(release)

    def change(label: str, step: float) -> dict[str, float]:
        move = step * directions.direction(label)
        lines = line_response(fitter, release.whitening, directions.typical(), move,
                              (3600.0, 7400.0), 2500.0)  # fmt: skip
        return {r.line.name: r.change for r in lines}

    hotter, richer, denser = change("teff", 500.0), change("fe_h", 0.5), change("logg", 0.5)
    assert min(hotter["Hβ"], hotter["Hγ"], hotter["Hδ"]) > 0.03 > -0.03 > hotter["Ca I 4228"]
    assert richer["Fe I 5271"] > 0.02 and richer["Ca I 4228"] > 0.03
    assert denser["Mg b1"] > 0.01 and denser["Mg b1"] > denser["Hβ"]
