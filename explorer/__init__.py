"""The Panel explorer over a trained checkpoint (issue 6 builds it)."""
