"""One page's state as parameters: its widgets and its URL follow it through Panel's own links.

`PageState` holds what a user sets (latents, velocity, instrument, frame, zoom, the latent
shaded) and the observation being fitted. The widgets are built from its parameters
(`Widget.from_param`), the URL query is `pn.state.location.sync`ed to it, and the app watches it
once per batch of changes: nothing keeps them in step by hand.
"""

from __future__ import annotations

import numpy as np
import param

from stargon.explorer.state import ZOOMS, Explorer, View

LATENT_NAME = "w{}"  # whitened direction k: the slider's label and its URL key
SETTINGS_IN_URL = {"v_kms": "v", "instrument": "instrument", "frame": "frame", "zoom": "zoom",
                   "latent": "latent"}  # fmt: skip


class PageState(param.Parameterized):
    """The settings every page has; `for_explorer` adds one parameter per latent."""

    v_kms = param.Number(0.0, softbounds=(-500.0, 500.0), step=0.5, label="radial velocity (km/s)")
    instrument = param.Selector(default="miles", objects=["miles"], label="instrument")
    frame = param.Selector(default="observed", objects=["observed", "rest"], label="frame")
    zoom = param.Selector(default="full range", objects=list(ZOOMS), label="zoom")
    latent = param.Selector(default=0, objects=[0], label="sensitivity of")
    observation = param.Parameter(None, doc="the fitted star shown (not in the URL)")

    latent_names: tuple[str, ...] = ()

    @classmethod
    def for_explorer(cls, explorer: Explorer) -> PageState:
        """A state class with a slider parameter per whitened latent, spanning the training
        stars' 1st–99th percentiles, and the explorer's instruments; one instance of it."""
        names = tuple(LATENT_NAME.format(k) for k in range(explorer.latent_dim))
        latents = {
            name: param.Number(
                float(explorer.centre[k]),
                softbounds=(float(explorer.low[k]), float(explorer.high[k])),
                step=float((explorer.high[k] - explorer.low[k]) / 200) or 0.01,
                label=name,
            )
            for k, name in enumerate(names)
        }
        subclass = param.parameterized_class(f"{cls.__name__}{len(names)}", latents, cls)
        subclass.latent_names = names
        state = subclass()
        state.param.instrument.objects = list(explorer.instruments)
        state.param.latent.objects = list(range(explorer.latent_dim))
        return state

    def url_names(self) -> dict[str, str]:
        """Parameter → URL key: the settings and the latents, not the observation."""
        return {**SETTINGS_IN_URL, **{name: name for name in self.latent_names}}

    def watched(self) -> list[str]:
        return [*self.url_names(), "observation"]

    def set_what_is_valid(self, values: dict) -> None:
        """`location.sync`'s fallback when a URL holds a value a parameter refuses (a typo, an
        unknown instrument): keep the valid ones; a refused one keeps its default."""
        for name, value in values.items():
            try:
                setattr(self, name, value)
            except (ValueError, TypeError):
                continue

    @property
    def view(self) -> View:
        """The state as the explorer's computations take it."""
        z = np.array([getattr(self, name) for name in self.latent_names], dtype=float)
        return View(z=z, v_kms=self.v_kms, instrument=self.instrument, frame=self.frame,
                    zoom=self.zoom, latent=self.latent, observation=self.observation)  # fmt: skip

    def show(self, view: View) -> None:
        """Move to `view` in one batch: watchers, widgets and the URL see one change."""
        latents = dict(zip(self.latent_names, map(float, view.z), strict=True))
        self.param.update(v_kms=float(view.v_kms), instrument=view.instrument, frame=view.frame,
                          zoom=view.zoom, latent=view.latent, observation=view.observation,
                          **latents)  # fmt: skip
