"""The Panel explorer over a trained checkpoint. In a notebook, an `Explorer` shows itself:

from stargon.explorer import Explorer
Explorer(data="../shared/data")
"""

from stargon.explorer.state import Explorer

__all__ = ["Explorer"]
