"""Bits/dim through the probability-flow ODE: this package against score_sde_pytorch's
`likelihood.py`, side by side on the same network, images and noise.

    python benchmarks/likelihood.py --workdir runs/vp_digits --reference-repo DIR \
        [--images 128] [--tolerances 1e-5,1e-4,3e-4] [--tight 1e-6] [--threads 1] [--out F]

`--workdir` holds a VP model trained here with continuous time (configs/vp_digits.py); its
network is handed as it is to the reference's `get_likelihood_fn` (whose score function calls
it with labels 999 t and divides by the std, as this package's denoiser does: checked before
timing). `--reference-repo` is a checkout of yang-song/score_sde_pytorch (its likelihood.py,
sde_lib.py and models/utils.py import without its CUDA ops). Both sides see the same uniformly
dequantized test images and the same Rademacher probe (the reference draws it from the global
generator, this package from a seeded one: checked equal). Rows: the reference at rtol = atol =
each tolerance of `--reference-tolerances` (its default is 1e-5), this package at each of
`--tolerances`, and the accuracy yardstick, this package at `--tight`. Printed and written as a
Markdown table: NFE, wall time, time over the reference's default, mean bits/dim and its
distance from the yardstick (mean and worst image).
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tolerances(text: str) -> list:
    return [float(value) for value in text.split(",") if value.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--reference-repo", required=True)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tolerances", type=tolerances, default=[1e-5, 3e-5, 1e-4, 3e-4])
    parser.add_argument("--reference-tolerances", type=tolerances, default=[1e-5, 1e-4])
    parser.add_argument("--tight", type=float, default=1e-6)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "likelihood.md"))
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    torch.set_num_threads(args.threads)
    from sde_diffusion.app.loading import load_model
    from sde_diffusion.evaluation.likelihood import log_likelihood

    repo = Path(args.reference_repo).expanduser().resolve()
    if not (repo / "likelihood.py").is_file():
        sys.exit(f"{repo} has no likelihood.py: pass a checkout of yang-song/score_sde_pytorch")
    sys.path.insert(0, str(repo))
    reference_likelihood, reference_sdes = importlib.import_module("likelihood"), importlib.import_module("sde_lib")
    reference_models = importlib.import_module("models.utils")

    model = load_model(args.workdir)
    sde = model.plan.sde
    if type(sde).__name__ != "VPSDE" or not model.plan.config.training.continuous:
        sys.exit(f"{args.workdir}: the side-by-side needs a continuous-time VP model, this one is {sde}")
    network = model.network
    reference_sde = reference_sdes.VPSDE(beta_min=sde.beta_min, beta_max=sde.beta_max, N=sde.N)

    images = model.plan.dataset("test").data[:args.images]
    generator = torch.Generator().manual_seed(args.seed)
    levels = torch.round(images * 255)
    x = 2 * (levels + torch.rand(images.shape, generator=generator)) / 256 - 1  # y = (k + u) / 256 on [-1, 1]
    dim = x[0].numel()
    probe_seed = args.seed + 1
    torch.manual_seed(probe_seed)
    reference_probe = torch.randint_like(x, low=0, high=2)
    own_probe = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(probe_seed))
    assert torch.equal(reference_probe, own_probe.to(reference_probe.dtype)), "the two probes differ"
    t = torch.full((len(x),), 0.37)
    with torch.no_grad():
        reference_score = reference_models.get_score_fn(reference_sde, network, train=False, continuous=True)(x, t)
        own_score = model.denoiser.score(x, t)
    gap = float((reference_score - own_score).norm() / own_score.norm())
    assert gap < 1e-5, f"the reference's score differs from this package's by {gap:.2e}"

    def bits(logp):  # bpd of y = (x + 1) / 2 with 256 levels, the reference's formula: -logp / (D ln 2) + 7
        return -logp.double() / (dim * math.log(2)) + 7

    rows = []

    def timed(name, run):
        start = time.perf_counter()
        value, nfe = run()
        rows.append((name, nfe, time.perf_counter() - start, value))
        print(f"{name}: NFE {nfe}, {rows[-1][2]:.1f} s, {value.mean():.5f} bits/dim", flush=True)

    for tol in args.reference_tolerances:
        def reference(tol=tol):
            function = reference_likelihood.get_likelihood_fn(reference_sde, lambda v: (v + 1) / 2, rtol=tol, atol=tol)
            torch.manual_seed(probe_seed)
            bpd, _, nfe = function(network, x)
            return bpd.double(), nfe
        timed(f"score_sde likelihood.py, RK45, rtol = atol = {tol:g}", reference)
    for tol in [*args.tolerances, args.tight]:
        def own(tol=tol):
            logp, _, nfe = log_likelihood(model.denoiser, sde, x, rtol=tol, atol=tol, generator=probe_seed)
            return bits(logp), nfe
        timed(f"sde_diffusion log_likelihood, RK45, rtol = atol = {tol:g}", own)

    tight = rows[-1][3]
    baseline = rows[0][2]
    table = [f"| run | NFE | wall s | time / reference at {args.reference_tolerances[0]:g} | bits/dim | "
             f"mean - tight | worst image |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, nfe, seconds, value in rows:
        table.append(f"| {name} | {nfe} | {seconds:.1f} | {seconds / baseline:.2f} | {value.mean():.5f} | "
                     f"{value.mean() - tight.mean():+.5f} | {(value - tight).abs().max():.5f} |")
    header = (f"{args.images} test images of {args.workdir} (step {model.step}), one batch, {args.threads} torch "
              f"thread(s), same dequantization and Rademacher probe on every row (seed {args.seed}); NFE: "
              f"the solver's evaluations (the reference's each run the network twice, this package's once)")
    text = header + "\n\n" + "\n".join(table) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
