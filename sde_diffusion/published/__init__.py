"""Readers of networks published by other projects: score_sde checkpoints and EDM pickles, each
loaded onto this package's networks and denoiser without running the other project's code."""
