"""StarGON: a Gradient Origin Network for stellar spectra from many surveys."""

__version__ = "0.1.0"
