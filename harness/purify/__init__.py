"""Purification: the diffusion schedule, reverse samplers, Tucker denoising, the loops."""
