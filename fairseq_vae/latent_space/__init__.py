"""What acts on z: fitted priors and their file, steering, the latents generation decodes."""
