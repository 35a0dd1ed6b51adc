"""`stargon evaluate`: how good a checkpoint is and what its latents mean, against baselines."""
