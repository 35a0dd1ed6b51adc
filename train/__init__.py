"""Training of the GON on mixed-survey batches (issue 4 builds it)."""
