"""Few-step samplers on the exact score: ours against k-diffusion's, error against NFE.

The case is the oracle's sharpest: a 32-D Gaussian mixture (4 components, stds 0.05-0.3, means
3 randn apart; `benchmarks/samplers.py`'s) under the VP SDE, so every error is the sampler's
own. Every row draws 10k samples from one seed and is scored by `GaussianMixture.sample_errors`
(weight, mean, std errors; log-density gap). Our rows run through `sde_diffusion.study`; the
reference level is the 1000-step predictor-corrector samplers.

k-diffusion (Crowson, github.com/crowsonkb/k-diffusion) runs on the same exact denoiser: in its
variables y = x / alpha_t and sigma = sigma_t / alpha_t, D(y, sigma) = E[x_0 | x_t] at the time
whose noise level is sigma, on its Karras schedule from sigma(T) to sigma_min (two sigma_min
tried, the better reported), with its own starting noise sigma_max * randn. Its samplers' NFE
is counted by the same wrapper. k-diffusion is an optional `bench` extra, never a dependency of
the package; its full dependency list is heavy, and its samplers need only
    pip install --no-deps k-diffusion safetensors
`k_diffusion.sampling` is then loaded without the package __init__ (which imports its training
stack). Without it the script runs our rows and says so.

Run: python benchmarks/fast_samplers.py [--quick] [--out benchmarks/results]
Writes fast_samplers.csv, fast_samplers.md, fast_samplers.png.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import platform
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from samplers import mixtures  # noqa: E402

from sde_diffusion.sdes import VPSDE  # noqa: E402
from sde_diffusion.study import run_study, write_study  # noqa: E402

SEED = 0
ERRORS = ("weight", "mean", "std", "logp_gap")
NFES = (5, 8, 10, 12, 15, 20, 30, 50)
OURS = (
    "ddim schedule=logsnr",
    "heun schedule=karras",
    "dpm_solver++ order=2 schedule=logsnr",
    "dpm_solver++ order=3 schedule=logsnr",
    "dpm_solver++ order=2 schedule=karras",
    "dpm_solver++ order=3 schedule=logsnr eps=1e-4",
    "dpm_solver++ order=2 schedule=logsnr eps=1e-4",
    "dpm_solver++ order=2 eta=1 schedule=logsnr",
    "dpm_solver++ order=2 unipc=true schedule=logsnr",
    "dpm_solver++ order=3 unipc=true schedule=logsnr",
    "dpm_solver++ order=3 unipc=true schedule=logsnr eps=3e-4",
)
REFERENCE = {  # 1000 steps each: NFE 1000 without a corrector, 1999 with Langevin after each step
    "pc predictor=euler_maruyama corrector=none": 1000,
    "pc predictor=reverse_diffusion corrector=none": 1000,
    "pc predictor=reverse_diffusion corrector=langevin snr=0.16": 1999,
}
K_SAMPLERS = {  # name -> (function name, NFE for n sigmas before the final 0)
    "heun": ("sample_heun", lambda n: 2 * n - 1),
    "dpmpp_2m": ("sample_dpmpp_2m", lambda n: n),
    "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", lambda n: n),
    "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", lambda n: n),
    "lms": ("sample_lms", lambda n: n),
}


def load_k_diffusion_sampling():
    """k_diffusion.sampling without running k_diffusion/__init__.py, or None if not installed."""
    try:
        root = Path(importlib.metadata.distribution("k-diffusion").locate_file("k_diffusion"))
    except importlib.metadata.PackageNotFoundError:
        return None
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(root)]
    sys.modules.setdefault("k_diffusion", package)
    import k_diffusion.sampling as k_sampling
    return k_sampling


class ExactDenoiser(torch.nn.Module):
    """D(y, sigma) of the mixture in k-diffusion's variables, counting its calls."""

    def __init__(self, mixture, sde):
        super().__init__()
        self.score_fn, self.sde, self.calls = mixture.score_fn(sde), sde, 0

    def forward(self, y, sigma):
        self.calls += 1
        t = self.sde.time_of_log_snr(-2 * torch.log(sigma.double()))
        alpha, std = (c.to(y.dtype)[:, None] for c in self.sde.marginal_coefs(t))
        x = alpha * y
        return (x + std ** 2 * self.score_fn(x, t.to(y.dtype))) / alpha


def k_diffusion_rows(k_sampling, mixture, sde, n: int, nfes) -> list:
    denoiser = ExactDenoiser(mixture, sde)
    sigma_of = lambda t: (lambda a, s: (s / a).item())(*sde.marginal_coefs(torch.tensor(t, dtype=torch.float64)))  # noqa: E731
    sigma_max = sigma_of(sde.T)
    rows = []
    for name, (function, nfe_of) in K_SAMPLERS.items():
        for sigma_min in (sigma_of(1e-3), 0.002):
            for target in nfes:
                count = max(n_ for n_ in range(1, target + 2) if nfe_of(n_) <= target)
                sigmas = k_sampling.get_sigmas_karras(count, sigma_min, sigma_max, rho=7.0)
                torch.manual_seed(SEED)
                noise = torch.randn(n, mixture.dim, generator=torch.Generator().manual_seed(SEED)) * sigma_max
                denoiser.calls = 0
                start = time.perf_counter()
                with torch.no_grad():
                    x = getattr(k_sampling, function)(denoiser, noise, sigmas, disable=True)
                row = {"sampler": f"k-diffusion {name} karras sigma_min={sigma_min:.3g}", "method": name,
                       "target_nfe": target, "nfe": denoiser.calls, "seconds": time.perf_counter() - start,
                       "status": "ok" if torch.isfinite(x).all() else "non-finite"}
                if row["status"] == "ok":
                    row.update(mixture.sample_errors(x))
                rows.append(row)
    return rows


def best_by(rows, nfe: int, key: str):
    chosen = [r for r in rows if r["nfe"] == nfe and r["status"] == "ok" and key in r]
    return min(chosen, key=lambda r: abs(r[key]), default=None)


def summary(ours, theirs, reference, exact) -> str:
    lines = ["| NFE | error | ours (best) | k-diffusion (best) | exact samples (Monte Carlo floor) |",
             "|---|---|---|---|---|"]
    for nfe in (10, 20):
        for key in ("weight", "std", "logp_gap"):
            mine, other = best_by(ours, nfe, key), best_by(theirs, nfe, key)
            cell = lambda r: f"{abs(r[key]):.4f} ({r['sampler']})" if r else "-"  # noqa: E731
            label = "logp_gap (abs)" if key == "logp_gap" else key
            lines.append(f"| {nfe} | {label} | {cell(mine)} | {cell(other)} | {abs(exact[key]):.4f} |")
    pc_std = min(abs(r["std"]) for r in reference if r["status"] == "ok")
    reached = sorted(r["nfe"] for r in ours if r["status"] == "ok" and abs(r["std"]) <= pc_std)
    lines += ["", f"1000-step predictor-corrector std error (best of {len(reference)}): {pc_std:.4f}; "
              f"fewest NFE at which one of ours reaches it: {reached[0] if reached else 'not within the grid'}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1000 samples, three NFE budgets")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)  # steady timings on a small shared machine, as benchmarks/samplers.py
    n, nfes = (1000, (10, 20, 50)) if args.quick else (10000, NFES)
    mixture, sde = mixtures()["32-D, 4 components"], VPSDE()
    shape = (n, mixture.dim)
    start = time.perf_counter()
    ours = run_study(mixture.score_fn(sde), sde, shape, OURS, nfes, mixture.sample_errors, seed=SEED)
    reference = [row for spec, nfe in REFERENCE.items()
                 for row in run_study(mixture.score_fn(sde), sde, shape, [spec], [nfe], mixture.sample_errors,
                                      seed=SEED, reference_ode=False)]
    exact = {"sampler": "exact samples", "method": "exact", "nfe": 0, "status": "ok",
             **mixture.sample_errors(mixture.sample(n, generator=torch.Generator().manual_seed(SEED)).float())}
    k_sampling = load_k_diffusion_sampling()
    theirs = k_diffusion_rows(k_sampling, mixture, sde, n, nfes) if k_sampling is not None else []
    rows = [exact] + ours + theirs + reference
    machine = (f"{platform.machine()}, 1 torch thread, torch {torch.__version__}; "
               f"{datetime.date.today().isoformat()}; {n} samples; {time.perf_counter() - start:.0f} s in all")
    out = Path(args.out)
    paths = write_study(rows, out, "std", title=f"32-D mixture, VP, exact score ({machine})", name="fast_samplers")
    text = Path(paths["md"]).read_text()
    head = summary(ours, theirs, reference, exact) if theirs else "k-diffusion not installed: its rows were skipped."
    Path(paths["md"]).write_text(f"## Few-step samplers on the exact 32-D mixture\n\n{machine}\n\n{head}\n\n{text}")
    print(head)


if __name__ == "__main__":
    main()
