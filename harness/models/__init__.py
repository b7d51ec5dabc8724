"""Classifiers (inputs in [0,1]) and diffusion backbones (noise predictors)."""
