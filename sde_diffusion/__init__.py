"""sde_diffusion: score-based generative modelling through SDEs, in PyTorch.

The library: `sdes` (VP, sub-VP, VE; `gaussian_paths`: EDM, rectified flow, cosine VP), `distributions` (exact-score Gaussian mixtures),
`sampling` (every sampler behind one entry point and one `SamplerSpec`), `likelihood`
(probability-flow ODE), `losses` and `training_step` (denoising score matching), `models`
(score networks), `datasets`, `evaluate`, `checkpoints`, `compat` (published checkpoints).
The application behind main.py lives in `app` (configs, the trainer loop, the modes); the
library never imports it.
"""
__version__ = "0.1.0"

from . import gaussian_paths  # noqa: E402,F401 - registers the edm, rectified_flow and cosine_vp SDEs
