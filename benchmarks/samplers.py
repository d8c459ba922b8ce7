"""Sampler benchmarks: loop overhead against a naive loop, and accuracy on exact scores.

1. Overhead. With the trivial score -x on a [256, 2] float32 batch and one CPU thread, the
   time of a step is almost all sampler bookkeeping. We time our predictor-corrector loop
   (Euler-Maruyama, ancestral, reverse diffusion + Langevin) against a loop written the way
   the score_sde reference code is: predictor and reverse-SDE objects built at every step,
   `t` rebuilt as torch.ones(B) * t each step, and the SDE's tensor API (`sde`,
   `discretize`) called for coefficients each step. Best of 3 runs after a warm-up.
2. Accuracy. With the exact score of a Gaussian mixture (the model error removed), each
   sampler's samples are compared with the mixture by `GaussianMixture.sample_errors`:
   weight, mean and std errors per component and the log-density gap. A row of exact
   mixture samples gives the Monte Carlo floor of those errors.

Everything runs on one CPU thread: on small shared machines torch's thread pool, competing
with other processes, made steps up to 40x slower and timings erratic.

Run: python benchmarks/samplers.py [--quick] [--out benchmarks/results]
Writes samplers.md (tables), samplers.csv (every row) and samplers.png (std error vs NFE).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import functools
import math
import os
import platform
import time
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from sde_diffusion.processes.distributions import GaussianMixture  # noqa: E402
from sde_diffusion.sampling import sample  # noqa: E402
from sde_diffusion.processes.sdes import VESDE, VPSDE  # noqa: E402

EPS = 1e-3  # last time of the grid, as `sample` uses by default
SEED = 0
ERRORS = ("weight", "mean", "std", "logp_gap")


# -- 1. the naive baseline: the reference code's structure, in our own code -------------------
class _NaiveReverse:
    """Reverse SDE built anew at every step, like the reference's sde.reverse(score_fn).
    Indexing with [:, None] is the reference's hand-written broadcasting, for [B, D] data."""

    def __init__(self, sde, score_fn):
        self.sde, self.score_fn = sde, score_fn

    def sde_terms(self, x, t):
        drift, g = self.sde.sde(x, t)
        return drift - g[:, None] ** 2 * self.score_fn(x, t), g

    def discretize(self, x, t):
        f, G = self.sde.chain.discretize(x, t)
        return f - G[:, None] ** 2 * self.score_fn(x, t), G


class _NaiveEulerMaruyama:
    def __init__(self, sde, score_fn):
        self.reverse, self.N = _NaiveReverse(sde, score_fn), sde.N

    def update(self, x, t):
        dt = -1.0 / self.N
        drift, g = self.reverse.sde_terms(x, t)
        x_mean = x + drift * dt
        return x_mean + g[:, None] * math.sqrt(-dt) * torch.randn_like(x), x_mean


class _NaiveReverseDiffusion:
    def __init__(self, sde, score_fn):
        self.reverse = _NaiveReverse(sde, score_fn)

    def update(self, x, t):
        f, G = self.reverse.discretize(x, t)
        x_mean = x - f
        return x_mean + G[:, None] * torch.randn_like(x), x_mean


class _NaiveAncestral:
    """DDPM's step, with the chain index recomputed from t at every step."""

    def __init__(self, sde, score_fn):
        self.sde, self.score_fn = sde, score_fn

    def update(self, x, t):
        index = (t * (self.sde.N - 1) / self.sde.T).round().long()
        beta = self.sde.chain.betas[index].to(x.dtype)
        x_mean = (x + beta[:, None] * self.score_fn(x, t)) / torch.sqrt(1 - beta)[:, None]
        return x_mean + torch.sqrt(beta)[:, None] * torch.randn_like(x), x_mean


class _NaiveLangevin:
    def __init__(self, sde, score_fn, snr):
        self.sde, self.score_fn, self.snr = sde, score_fn, snr

    def update(self, x, t):
        index = (t * (self.sde.N - 1) / self.sde.T).round().long()
        alpha = self.sde.chain.alphas[index].to(x.dtype)
        score, noise = self.score_fn(x, t), torch.randn_like(x)
        ratio = self.snr * noise.norm(dim=-1).mean() / score.norm(dim=-1).mean()
        step_size = 2 * alpha * ratio ** 2
        x_mean = x + step_size[:, None] * score
        return x_mean + torch.sqrt(2 * step_size)[:, None] * noise, x_mean


def naive_pc(score_fn, sde, shape, predictor_cls, corrector_cls=None):
    """The reference code's sampling loop: corrector then predictor, objects made per step."""
    x = x_mean = torch.randn(shape)
    for t_scalar in torch.linspace(sde.T, EPS, sde.N):
        t = torch.ones(shape[0]) * t_scalar
        if corrector_cls is not None:
            x, x_mean = corrector_cls(sde, score_fn).update(x, t)
        x, x_mean = predictor_cls(sde, score_fn).update(x, t)
    return x_mean


# name -> (our pc options, naive predictor, naive corrector)
OVERHEAD_CASES = {
    "euler_maruyama": (dict(predictor="euler_maruyama", corrector="none"), _NaiveEulerMaruyama, None),
    "ancestral": (dict(predictor="ancestral", corrector="none"), _NaiveAncestral, None),
    "reverse_diffusion+langevin": (dict(predictor="reverse_diffusion", corrector="langevin", snr=0.16),
                                   _NaiveReverseDiffusion, functools.partial(_NaiveLangevin, snr=0.16)),
}


def best_time(fn, repeats: int = 3) -> float:
    fn()  # warm-up: first-call allocations and lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_overhead(steps: int) -> list:
    """Microseconds per step of our loop and the naive one."""
    shape, sde, score_fn = (256, 2), VPSDE(N=steps), (lambda x, t: -x)
    rows = []
    for name, (options, predictor_cls, corrector_cls) in tqdm(OVERHEAD_CASES.items(), desc="overhead"):
        ours = best_time(lambda: sample(score_fn, sde, shape, "pc", steps=steps, generator=SEED, **options))
        naive = best_time(lambda: naive_pc(score_fn, sde, shape, predictor_cls, corrector_cls))
        rows.append(dict(method=name, steps=steps, ours_us=1e6 * ours / steps,
                         naive_us=1e6 * naive / steps, ratio=ours / naive))
    return rows


# -- 2. accuracy on exact-score mixtures -------------------------------------------------------
def mixtures() -> dict:
    generator = torch.Generator().manual_seed(1234)
    means_32d = 3.0 * torch.randn(4, 32, generator=generator, dtype=torch.float64)
    return {
        "2-D, 3 components": GaussianMixture([0.2, 0.3, 0.5], [[-3, 0], [3, 2], [0, -3]], [0.3, 0.5, 0.8]),
        "32-D, 4 components": GaussianMixture([0.1, 0.2, 0.3, 0.4], means_32d, [0.05, 0.1, 0.2, 0.3]),
    }


def sampler_grid(quick: bool) -> list:
    """(family, method, options, steps) for each row; steps None where the solver adapts."""
    pc_steps, langevin_steps, solver_steps = ([50, 250], [100, 500], [100]) if quick else \
        ([50, 100, 250, 1000], [100, 500, 1000], [100, 1000])
    grid = [(f"pc {p}", "pc", dict(predictor=p, corrector="none"), n)
            for p in ("euler_maruyama", "reverse_diffusion", "ancestral") for n in pc_steps]
    grid += [("pc reverse_diffusion+langevin", "pc",
              dict(predictor="reverse_diffusion", corrector="langevin", snr=0.16, corrector_steps=1), n)
             for n in langevin_steps]
    # RK45 is the ode sampler's default: its `method` option cannot pass through `sample`,
    # whose own `method` argument (the sampler's name) takes it.
    grid += [("ode RK45", "ode", dict(rtol=tol, atol=tol), None) for tol in (1e-3, 1e-5)]
    grid += [("sde_solver euler", "sde_solver", dict(solver="euler"), n) for n in solver_steps]
    return grid


def run_row(mixture, sde, method, options, steps, n) -> dict:
    """Sample, time and score one configuration; failures become a status, not a crash."""
    row = dict(nfe=0, time_s=math.nan, status="ok", **{k: math.nan for k in ERRORS})
    start = time.perf_counter()
    try:
        if method == "exact":
            x = mixture.sample(n, generator=torch.Generator().manual_seed(SEED)).float()
        else:
            x, row["nfe"] = sample(mixture.score_fn(sde), sde, (n, mixture.dim), method,
                                   steps=steps, generator=SEED, **options)
    except Exception as error:  # noqa: BLE001 (a benchmark reports failures and goes on)
        row["status"] = f"{type(error).__name__}: {error}"[:80]
        return row
    row["time_s"] = time.perf_counter() - start
    if not torch.isfinite(x).all():
        row["status"] = "non-finite samples"
        return row
    row.update(mixture.sample_errors(x))
    return row


def measure_accuracy(quick: bool) -> list:
    n = 2000 if quick else 10_000
    cases = [(name, mixture, sde) for name, mixture in mixtures().items()
             for sde in ([VPSDE(), VESDE()] if mixture.dim == 2 else [VPSDE()])]
    grid = [("exact samples", "exact", {}, None)] + sampler_grid(quick)
    rows = []
    progress = tqdm(total=len(cases) * len(grid), desc="accuracy")
    for name, mixture, sde in cases:
        for family, method, options, steps in grid:
            progress.set_postfix_str(f"{type(sde).__name__} {family} {steps or ''}")
            described = ", ".join(f"{k}={v}" for k, v in options.items() if k != "predictor")
            rows.append(dict(mixture=name, sde=type(sde).__name__, sampler=family, options=described,
                             steps=steps, **run_row(mixture, sde, method, options, steps, n)))
            progress.update()
    progress.close()
    return rows


# -- 3. output ---------------------------------------------------------------------------------
def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def markdown_table(rows: list, columns: list) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown(path: Path, overhead: list, accuracy: list, n: int, elapsed: float):
    machine = platform.processor() or platform.machine()
    header = (f"Machine: {machine}, {os.cpu_count()} CPUs (1 thread used), torch {torch.__version__}, "
              f"load average {os.getloadavg()[0]:.1f} at the end; {datetime.date.today().isoformat()}; "
              f"total run time {elapsed:.0f} s.")
    parts = ["# Sampler benchmarks", "", header, "",
             f"## Per-step overhead (score -x, batch [256, 2] float32, "
             f"{overhead[0]['steps']} steps, best of 3)", "",
             "Ours: `sample(..., method=\"pc\")`; naive: objects, `t` and SDE coefficients rebuilt "
             "every step, as in score_sde. Target ratio <= 0.5.", "",
             markdown_table(overhead, ["method", "ours_us", "naive_us", "ratio"]), "",
             f"## Accuracy with the exact score ({n} samples, seed {SEED})", "",
             "Errors from `GaussianMixture.sample_errors`; `exact samples` is the Monte Carlo floor."]
    columns = ["sampler", "options", "steps", "nfe", "time_s", *ERRORS, "status"]
    for mixture, sde in dict.fromkeys((r["mixture"], r["sde"]) for r in accuracy):
        chosen = [r for r in accuracy if (r["mixture"], r["sde"]) == (mixture, sde)]
        parts += ["", f"### {mixture}, {sde}", "", markdown_table(chosen, columns)]
    path.write_text("\n".join(parts) + "\n")


def write_csv(path: Path, accuracy: list):
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(accuracy[0]))
        writer.writeheader()
        writer.writerows(accuracy)


def plot(path: Path, accuracy: list):
    """Component-std error against NFE, one panel per mixture and SDE."""
    panels = list(dict.fromkeys((r["mixture"], r["sde"]) for r in accuracy))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        rows = [r for r in accuracy if (r["mixture"], r["sde"]) == panel and r["std"] > 0]
        for family in dict.fromkeys(r["sampler"] for r in rows if r["nfe"] > 0):
            points = sorted((r["nfe"], r["std"]) for r in rows if r["sampler"] == family)
            ax.plot(*zip(*points), marker="o", label=family)
        for r in rows:
            if r["sampler"] == "exact samples":
                ax.axhline(r["std"], color="gray", linestyle="--", label="exact samples (MC floor)")
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="component-std error",
               title=f"{panel[0]}, {panel[1]}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and steps (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # see the module docstring
    start = time.perf_counter()
    overhead = measure_overhead(steps=500 if args.quick else 2000)
    accuracy = measure_accuracy(args.quick)
    elapsed = time.perf_counter() - start
    write_markdown(args.out / "samplers.md", overhead, accuracy, 2000 if args.quick else 10_000, elapsed)
    write_csv(args.out / "samplers.csv", accuracy)
    plot(args.out / "samplers.png", accuracy)
    for row in overhead:
        print(f"{row['method']:>28}: ours {row['ours_us']:.1f} us/step, naive {row['naive_us']:.1f} "
              f"us/step, ratio {row['ratio']:.2f}")
    print(f"done in {elapsed:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
