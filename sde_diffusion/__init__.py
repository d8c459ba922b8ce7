"""sde_diffusion: score-based generative modelling through SDEs, in PyTorch.

Its layers and what each may import: the README's architecture table (written from the one
declaration that tests/test_architecture.py checks); what each module offers: docs/package.md.
The library never imports the application behind main.py (`app`).
"""
__version__ = "0.1.0"

from .processes import gaussian_paths  # noqa: E402,F401 - registers the edm, rectified_flow and cosine_vp SDEs
from .processes import discrete_vp  # noqa: E402,F401 - registers the discrete_vp SDE (diffusers' chains)
from .published import diffusers_schedules  # noqa: E402,F401 - registers diffusers' timestep grids
from .training import consistency  # noqa: E402,F401 - registers the ect loss (consistency tuning)
from .training import reflow  # noqa: E402,F401 - registers the reflow loss (paired noise)
