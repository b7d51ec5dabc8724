"""Datasets: each returns images in [0, 1], NCHW, with integer labels."""
