"""The bottom layer: the Spectrum record and the physical constants and conversions that every
other layer shares. It imports nothing else from stargon, and no torch."""
