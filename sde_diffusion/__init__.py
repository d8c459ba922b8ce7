"""sde_diffusion: score-based generative modelling through SDEs, in PyTorch.

Modules: `sdes` (VP, sub-VP, VE), `distributions` (exact-score Gaussian mixtures),
`sampling` (one entry point over all samplers), `likelihood` (probability-flow ODE),
`losses` (denoising score matching).
"""
__version__ = "0.1.0"
