"""The explorer's state and computations, free of Panel: testable without a browser.

`Explorer` is loaded once per server (model, prior, star table; read-only and shared by all
sessions); `View` is one view's values (latents, velocity, instrument, frame, the observation
being fitted), as a page's `page_state.PageState` hands them to the computations. Latents are
shown in the checkpoint's whitened coordinates (decorrelated, unit variance over training
stars, ordered by variance): `View.z` holds them, and the raw latent the decoder takes is
`Explorer.raw(view.z)`. Decoding reuses the instrument's pixel basis, cached per
(instrument, v): a slider move is one small MLP and one matrix product.
"""

from __future__ import annotations

import io
import itertools
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from threading import Lock

import numpy as np
import torch
from astropy.io import fits
from astropy.table import Table

from stargon.assets import Line, line_list
from stargon.core.interop import UserSettings
from stargon.core.line_measurement import bin_widths, line_strength
from stargon.core.physics import observed_to_rest, rest_to_observed
from stargon.core.spectrum import Spectrum, SpectrumReadError
from stargon.model.directions import LabelDirections
from stargon.model.fitter import Fitter
from stargon.model.pseudo_continuum import pseudo_continuum, stretches
from stargon.model.refine import FitResult
from stargon.model.release import Release
from stargon.surveys import read_file
from stargon.surveys.fetch import Remote, apogee_star, fetch, galah_arms, lamost_spectrum
from stargon.surveys.instruments import drawable

ZOOMS = {  # vacuum Å windows around lines a teacher points at
    "full range": None,
    "Hα": (6540.0, 6590.0),
    "Hβ": (4840.0, 4885.0),
    "Ca II H & K": (3910.0, 3990.0),
    "Mg b": (5155.0, 5200.0),
    "Na D": (5880.0, 5905.0),
    "Ca II triplet": (8480.0, 8690.0),
    "Brackett 11": (16790.0, 16830.0),
    "Mg I (H band)": (15735.0, 15780.0),
}
MAX_UPLOAD_BYTES = 50 * 2**20
BASIS_CACHE = 64
DRAWN_CACHE = 8  # the latest views' drawings and sensitivities: a release reads each 2–4 times
ARCHIVE_IDS = {  # what the page offers to fetch, and an example of the id it expects
    "LAMOST DR8 obsid": "e.g. 101001",
    "GALAH DR3 sobject_id (red arm, Hα)": "e.g. 210115000101001",
    "APOGEE DR17 apStar": "id field [telescope], e.g. 2M17335483-2753043 000+02",
}
LABELS = ("teff", "logg", "fe_h")


def archive_remote(kind: str, identifier: str) -> Remote:
    """The archive file for an id typed into the page; ValueError says what was expected."""
    words = identifier.split()
    if kind.startswith("LAMOST") and len(words) == 1 and words[0].isdigit():
        return lamost_spectrum(int(words[0]), "dr8")
    if kind.startswith("GALAH") and len(words) == 1 and words[0].isdigit():
        return galah_arms(words[0], "dr3")[2]
    if kind.startswith("APOGEE") and len(words) in (2, 3) and words[0].startswith("2M"):
        telescope = words[2] if len(words) == 3 else "apo25m"
        return apogee_star(words[0], telescope, words[1], "dr17")
    if kind not in ARCHIVE_IDS:
        raise ValueError(f"unknown archive '{kind}'; known: {', '.join(ARCHIVE_IDS)}")
    raise ValueError(f"{kind}: '{identifier}' is not an id of that kind ({ARCHIVE_IDS[kind]})")


_SERIALS = itertools.count()


@dataclass
class Observation:
    spectrum: Spectrum
    fit: FitResult
    model_sigma: np.ndarray  # ±1σ of the normalised model from the latent covariance
    # What caches key on: unique for the process's life (Python reuses the id() of freed objects).
    serial: int = field(default_factory=_SERIALS.__next__, init=False)

    @property
    def residual_sigma(self) -> np.ndarray:
        valid = self.spectrum.valid
        flux, ivar = self.spectrum.flux[valid], self.spectrum.ivar[valid]
        return (flux - self.fit.model_flux) * np.sqrt(ivar)


@dataclass
class View:
    z: np.ndarray  # whitened latents
    v_kms: float = 0.0
    instrument: str = "miles"
    frame: str = "observed"  # or "rest": the axis divided by (1 + v/c)
    zoom: str = "full range"
    latent: int = 0  # the latent whose sensitivity is shaded
    observation: Observation | None = field(default=None, repr=False)


class Explorer:
    """A trained model ready for interactive use."""

    def __init__(self, checkpoint: str | Path | None = None, data: str | Path | None = None,
                 device: str = "cpu", archive_url: str | None = None,
                 cache: Path | None = None):  # fmt: skip
        self.archive_url, self.cache = archive_url, cache
        self.device = torch.device(device)
        release = Release.load(checkpoint, self.device)
        self.checkpoint, self.model, self.card = release.folder, release.model, release.card
        self.fitter = Fitter.from_release(release, self.device)
        self.data = Path(data) if data else None
        self.release, self.whitening = release, release.whitening
        self.latent_dim = self.model.config.latent_dim
        self.instruments = drawable()
        self.stars = release.stars
        self.star_latents = self.whitening.whiten(release.star_latents)
        percentiles = self.card.get("whitened_percentiles", {})
        self.low = np.array(percentiles.get("1", [-3.0] * self.latent_dim))
        self.high = np.array(percentiles.get("99", [3.0] * self.latent_dim))
        self.centre = np.array(percentiles.get("50", [0.0] * self.latent_dim))
        self._cache: OrderedDict = OrderedDict()
        self._drawn: OrderedDict = OrderedDict()
        self._lock = Lock()
        self.directions = _label_directions(release)

    def new_view(self) -> View:
        return View(z=self.centre.copy())

    # -- in a notebook -------------------------------------------------------------------
    def __panel__(self):
        """The explorer's page over this model (`pn.panel(explorer)`; a new page each time)."""
        from stargon.explorer.app import ExplorerApp

        return ExplorerApp(self)

    def _repr_mimebundle_(self, include=None, exclude=None):
        """An `Explorer` as a notebook cell's last line shows the explorer inline, loading
        Panel's notebook extension first if the notebook has not."""
        import panel as pn

        if not pn.extension._loaded:
            pn.extension("tabulator", notifications=False)
        return pn.panel(self.__panel__())._repr_mimebundle_(include, exclude)

    # -- drawing -------------------------------------------------------------------------
    def pixels(self, view: View) -> tuple[np.ndarray, np.ndarray]:
        """(observed vacuum λ, R) of the view: the observation's pixels, else the preset's."""
        if view.observation is not None:
            spectrum = view.observation.spectrum
            resolving = np.broadcast_to(spectrum.resolving_power, spectrum.wave.shape)
            return spectrum.wave[spectrum.valid], resolving[spectrum.valid]
        wave = self.instruments[view.instrument].pixels()
        return wave, self.instruments[view.instrument].resolving_power_at(wave)

    def basis_key(self, view: View) -> tuple:
        """What the view's pixel basis depends on: its observation (by serial) or instrument,
        and its velocity."""
        pixels = ("observation", view.observation.serial) if view.observation else view.instrument
        return pixels, round(view.v_kms, 4)

    def stretches(self, view: View) -> list[tuple[int, int, int]]:
        """The view's pixels' stretches between gaps (`pseudo_continuum.stretches`), which the
        curve, its pseudo-continuum and the line response of every release share."""
        pixels, _ = self.basis_key(view)
        return self._kept(self._drawn, DRAWN_CACHE, ("stretches", pixels),
                          lambda: stretches(self.pixels(view)[0]))  # fmt: skip

    def _basis(self, view: View) -> torch.Tensor:
        return self._kept(self._cache, BASIS_CACHE, self.basis_key(view),
                          lambda: self._observation_basis(view))  # fmt: skip

    def _observation_basis(self, view: View) -> torch.Tensor:
        wave, resolving = self.pixels(view)
        with torch.no_grad():
            return self.model.observation_basis(
                torch.as_tensor(wave, device=self.device), view.v_kms,
                torch.as_tensor(np.ascontiguousarray(resolving), device=self.device),
                self.fitter.pyramid,
            )  # fmt: skip

    def _kept(self, store: OrderedDict, limit: int, key, compute):
        """`compute()` under `key`, kept in `store` with the `limit` latest used (the sessions
        of one server share it: guarded by the lock, computed outside it)."""
        with self._lock:
            if key in store:
                store.move_to_end(key)
                return store[key]
        value = compute()
        with self._lock:
            store[key] = value
            while len(store) > limit:
                store.popitem(last=False)
        return value

    def raw(self, w: np.ndarray) -> torch.Tensor:
        """The decoder's latents for whitened coordinates w (..., D)."""
        return torch.as_tensor(self.whitening.unwhiten(w), dtype=self.model.decoder.table.dtype,
                               device=self.device)  # fmt: skip

    def spectrum(self, view: View) -> tuple[np.ndarray, np.ndarray]:
        """(x axis in the view's frame, normalised model flux) for the current latents, over
        the model's own pseudo-continuum (line-free regions at 1, as a fit's normalised model)."""
        x, flux, _, continuum = self.drawing(view)
        return x, flux / continuum

    def _remembered(self, what: str, view: View, compute):
        """`compute()` for this view, kept for the latest few views (read-only arrays):
        drawing the shading, the line response and the curve each need the same ones."""
        key = (what, self.basis_key(view), view.frame, view.z.tobytes())

        def read_only():
            value = compute()
            return tuple(map(_read_only, value)) if isinstance(value, tuple) else _read_only(value)

        return self._kept(self._drawn, DRAWN_CACHE, key, read_only)

    def drawing(self, view: View) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x, the model before normalisation, the pixel basis (K+1, P), the pseudo-continuum):
        what the page needs to redraw the curve itself as the sliders move."""
        return self._remembered("drawing", view, lambda: self._drawing(view))

    def _drawing(self, view: View) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        basis = self._basis(view)
        z = self.raw(view.z[None])
        with torch.no_grad():
            flux = self.model.observe(z, basis)[0].cpu().numpy()
        wave, _ = self.pixels(view)
        continuum = pseudo_continuum(wave, flux, parts=self.stretches(view))
        return self.axis(view), flux, basis.cpu().numpy(), continuum

    def axis(self, view: View) -> np.ndarray:
        wave, _ = self.pixels(view)
        return observed_to_rest(wave, view.v_kms) if view.frame == "rest" else wave

    def sensitivity(self, view: View, latent: int | None = None) -> np.ndarray:
        """|∂f/∂w_k| at every pixel along every whitened direction (D, P), or along `latent`
        alone (P,): the fitter's ∂f/∂z on the cached basis times ∂z/∂w, the whitening's
        matrix. Divided by the view's pseudo-continuum, as the shown spectrum is (held fixed,
        as the page holds it while a slider moves)."""
        what = "sensitivity" if latent is None else f"sensitivity along {latent}"
        return self._remembered(what, view, lambda: self._sensitivity(view, latent))

    def _sensitivity(self, view: View, latent: int | None) -> np.ndarray:
        _, _, _, continuum = self.drawing(view)
        matrix = self.whitening.matrix if latent is None else self.whitening.matrix[:, [latent]]
        basis = self._basis(view)
        directions = torch.as_tensor(matrix, dtype=basis.dtype, device=self.device)
        along = self.fitter.jacobian(self.raw(view.z[None]), basis, directions)[0].T  # (M, P)
        values = along.abs().cpu().numpy() / continuum
        return values if latent is None else values[0]

    # -- changing the state --------------------------------------------------------------
    def random_view(self, view: View, seed: int) -> View:
        prior = self.release.prior_for(view.instrument)
        if prior is None:
            raise ValueError(f"{self.checkpoint}: no latent prior in this checkpoint")
        z = self.whitening.whiten(prior.sample(1, seed=seed)[0])
        return replace(view, z=z, observation=None)

    def from_labels(self, view: View, teff: float, logg: float, fe_h: float) -> View:
        """The latent the release's label directions give these labels (linear in them: no
        jump between neighbouring stars)."""
        return replace(view, z=self._directions().typical(np.array([teff, logg, fe_h])))

    def along_labels(self, view: View, **changes: float) -> View:
        """The view's star moved along label directions by `changes` (e.g. teff=+200), the
        other labels held: the teaching view's sliders, continuous from the current star."""
        directions = self._directions()
        unknown = set(changes) - set(directions.names)
        if unknown:
            raise ValueError(f"unknown labels {sorted(unknown)}; known: {directions.names}")
        step = sum(change * directions.direction(label) for label, change in changes.items())
        return replace(view, z=view.z + step)

    def _directions(self) -> LabelDirections:
        if self.directions is None:
            raise ValueError("this checkpoint's star table has too few labelled stars")
        return self.directions

    def fit(self, view: View, spectrum: Spectrum) -> View:
        """Fit an observation (v, latents, continuum) and move the view to it."""
        (result,) = self.fitter.fit([spectrum])
        observation = Observation(spectrum, result, model_sigma=np.zeros(0))
        fitted = replace(view, z=self.whitening.whiten(result.z.astype(float)),
                         v_kms=result.v_kms, observation=observation)  # fmt: skip
        observation.model_sigma = self._model_sigma(fitted)
        return fitted

    def _model_sigma(self, view: View) -> np.ndarray:
        """±1σ of the fitted normalised model at the observation's valid pixels, propagated
        from the latent covariance: sqrt(diag(J Σ_z Jᵀ)) with J = ∂f/∂z at the fit. The basis
        is the view's, cached for drawing it."""
        fit = view.observation.fit
        basis = self._basis(view)
        z = torch.as_tensor(fit.z[None], dtype=basis.dtype, device=self.device)
        jacobian = self.fitter.jacobian(z, basis)[0].double().cpu().numpy()
        sigma = np.sqrt(np.einsum("pd,de,pe->p", jacobian, fit.z_cov, jacobian))
        return sigma / self.drawing(view)[3]  # over the pseudo-continuum, as the model is shown

    def read_upload(self, name: str, content: bytes, user: UserSettings | None = None) -> Spectrum:
        """A spectrum from uploaded bytes (a survey's file, or the user's own read with `user`'s
        settings); SpectrumReadError (naming the file) when it is not."""
        if len(content) > MAX_UPLOAD_BYTES:
            raise SpectrumReadError(Path(name), f"larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
        suffix = "".join(Path(name).suffixes[-2:]) or ".fits"
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"upload{suffix}"
            path.write_bytes(content)
            try:
                spectra = read_file(path, user=user)
            except SpectrumReadError as exc:
                raise SpectrumReadError(Path(name), exc.problem) from exc
        return spectra[0]

    def star_spectrum(self, index: int) -> Spectrum:
        """A star of the model's own table, read from the data folder."""
        if self.data is None:
            raise ValueError("start the explorer with --data to load stars from the data folder")
        row = self.stars[index]
        source = row["source"]
        path = self.data / source.split("[")[0]
        matches = [s for s in read_file(path) if s.source.endswith(source)]
        return matches[0] if matches else read_file(path)[0]

    def find_stars(self, survey: str = "all", **ranges: tuple[float, float] | None) -> list[int]:
        """Indices of table stars of `survey` whose labels lie in the given (low, high) ranges
        (teff=…, logg=…, fe_h=…); a star without a constrained label is left out."""
        unknown = set(ranges) - set(LABELS)
        if unknown:
            raise ValueError(f"unknown labels {sorted(unknown)}; known: {LABELS}")
        limits = {k: r for k, r in ranges.items() if r is not None}
        return [
            i
            for i, star in enumerate(self.stars)
            if (survey == "all" or star["survey"] == survey)
            and all(k in star and lo <= star[k] <= hi for k, (lo, hi) in limits.items())
        ]

    def unusual_stars(self, n: int = 50) -> list[int]:
        """Indices of the `n` table stars of highest outlier score (model/outliers.py), most
        unusual first; empty for a release made before the score existed."""
        scored = [i for i, star in enumerate(self.stars) if "outlier_score" in star]
        return sorted(scored, key=lambda i: -self.stars[i]["outlier_score"])[:n]

    def fetch_star(self, kind: str, identifier: str) -> Spectrum:
        """A spectrum from its survey's archive by id (cached, resumable; `stargon data fetch`).
        Raises ValueError for a malformed id, FetchError or SpectrumReadError naming the file."""
        remote = archive_remote(kind, identifier.strip())
        path = fetch(remote, cache=self.cache, base_url=self.archive_url, progress=False)
        return read_file(path)[0]

    def line_response(
        self, view: View, latent: int, n_values: int = 5, around: tuple | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """How the spectrum changes as latent `latent` moves across its training range (1st to
        99th percentile) with the others held: (x, the values, fluxes (n_values, P)). With
        `around` (low, high on the view's axis): only the stretches between gaps that reach
        into it, as the whole spectrum has them there (each stretch's pseudo-continuum is its
        own)."""
        values = np.linspace(self.low[latent], self.high[latent], n_values)
        w = np.repeat(view.z[None], n_values, axis=0)
        w[:, latent] = values
        wave, _ = self.pixels(view)
        x, parts = self.axis(view), self.stretches(view)
        if around is not None:
            parts = [(a, b, size) for a, b, size in parts
                     if x[a] <= around[1] and x[b - 1] >= around[0]] or parts  # fmt: skip
        start, stop = parts[0][0], parts[-1][1]
        with torch.no_grad():
            flux = self.model.observe(self.raw(w), self._basis(view)[:, start:stop]).cpu().numpy()
        shifted = [(a - start, b - start, size) for a, b, size in parts]
        continuum = pseudo_continuum(wave[start:stop], flux, parts=shifted)
        return x[start:stop], values, flux / continuum

    def listed_lines(self, view: View) -> list[tuple[float, Line]]:
        """The listed lines within the view's pixels, each with its place on the view's axis
        (moved by v in the observed frame)."""
        wave, _ = self.pixels(view)
        shown = []
        for line in line_list():
            seen = float(rest_to_observed(line.wavelength, view.v_kms))
            if wave[0] < seen < wave[-1]:
                shown.append((line.wavelength if view.frame == "rest" else seen, line))
        return shown

    def measurable_lines(self, view: View) -> list[str]:
        """The listed lines that fall on the view's observation at its velocity."""
        if view.observation is None:
            return []
        wave, _ = self.pixels(view)
        return [line.name for line in line_list()
                if wave[0] < rest_to_observed(line.wavelength, view.v_kms) < wave[-1]]  # fmt: skip

    def measure_line(self, view: View, name: str, half_width: float | None = None) -> dict:
        """Equivalent width and depth of the listed line `name` in the fitted observation and
        in the shown model, each with its 1σ: the data's from its ivar, the model's from the
        fit's latent covariance (g Σ_z gᵀ, g the measure's gradient through ∂f/∂z). Both are
        over the fit's continuum polynomial (the decoder's normalised flux, continuum at 1).
        The window: the line at the view's velocity ± 1.5 FWHM of the observation's R (at
        least ± 1 Å), or ± `half_width` Å."""
        if view.observation is None:
            raise ValueError("fit or load a star first: a line is measured on an observation")
        known = {line.name: line for line in line_list()}
        if name not in known:
            raise ValueError(f"unknown line {name!r}; listed lines: {', '.join(known)}")
        observation = view.observation
        wave, resolving = self.pixels(view)
        centre = float(rest_to_observed(known[name].wavelength, view.v_kms))
        half = half_width or max(1.5 * centre / float(np.median(resolving)), 1.0)
        inside = np.abs(wave - centre) <= half
        if inside.sum() < 2:
            raise ValueError(f"{name} ({centre:.1f} Å here) lies outside this spectrum's pixels")
        window = torch.as_tensor(np.flatnonzero(inside), device=self.device)
        basis = self._basis(view)[:, window]  # the window's pixels alone: this runs per redraw
        latents = torch.as_tensor(np.vstack([observation.fit.z, self.raw(view.z[None]).cpu()]),
                                  dtype=basis.dtype, device=self.device)  # fmt: skip
        with torch.no_grad():
            fitted, shown = self.model.observe(latents, basis).double().cpu().numpy()
        jacobian = self.fitter.jacobian(latents[1:], basis)[0].double().cpu().numpy()
        spectrum = observation.spectrum
        flux, ivar = spectrum.flux[spectrum.valid][inside], spectrum.ivar[spectrum.valid][inside]
        over_continuum = fitted / observation.fit.model_flux[inside]  # 1 / continuum polynomial
        sigma = over_continuum / np.sqrt(np.where(ivar > 0, ivar, np.inf))
        model = line_strength(wave[inside], shown, np.zeros(shown.size))
        gradient = -bin_widths(wave[inside]) @ jacobian  # ∂W/∂z
        covariance = observation.fit.z_cov
        lowest = jacobian[int(np.argmin(shown))]
        model.equivalent_width_error = float(np.sqrt(gradient @ covariance @ gradient))
        model.depth_error = float(np.sqrt(lowest @ covariance @ lowest))
        return {"line": name, "window": (centre - half, centre + half),
                "data": line_strength(wave[inside], flux * over_continuum, sigma),
                "model": model}  # fmt: skip

    # -- exporting -----------------------------------------------------------------------
    def export(self, view: View, kind: str) -> bytes:
        """The shown model spectrum as CSV or FITS (vacuum Å, units in the header)."""
        wave, _ = self.pixels(view)
        _, flux = self.spectrum(view)
        table = Table({"wavelength": wave, "flux": flux})
        table["wavelength"].unit = "Angstrom"
        table.meta.update({"RV": view.v_kms, "MODEL": self.checkpoint.name, "NORMALIS": True})
        buffer = io.BytesIO() if kind == "fits" else io.StringIO()
        if kind == "fits":
            hdu = fits.table_to_hdu(table)
            hdu.header["LATENTS"] = ",".join(f"{x:.5g}" for x in view.z)  # whitened
            hdu.header["ZRAW"] = ",".join(f"{x:.5g}" for x in self.whitening.unwhiten(view.z))
            fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
            return buffer.getvalue()
        table.write(buffer, format="ascii.ecsv")
        return buffer.getvalue().encode()


def _label_directions(release: Release) -> LabelDirections | None:
    """The release's Teff, log g, [Fe/H] directions, or None without enough labelled stars."""
    try:
        return release.label_directions()
    except ValueError:
        return None


def _read_only(array: np.ndarray) -> np.ndarray:
    """A read-only view (the array itself stays writeable for its owner)."""
    view = array.view()
    view.flags.writeable = False
    return view
