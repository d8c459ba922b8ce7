"""The sampler study: quality and cost of samplers as the number of score evaluations varies.

A study runs a grid of sampler specs x NFE budgets from the same seed and scores every result with
one metric (a callable x -> {name: value}): errors against the truth for the exact-score oracle,
sliced Wasserstein distance or FID for trained models. For deterministic samplers it also reports
the distance to a tight-tolerance probability-flow ODE solution from the same latent, which
isolates the discretization error from the model's. Behind `main.py --mode study` and
`benchmarks/fast_samplers.py`.

A spec is a string "method key=value ...", e.g. "dpm_solver++ order=3 schedule=logsnr" or
"pc predictor=euler_maruyama corrector=none" (`sampling.parse_spec`): what it leaves unset is
the sampler's default. What the study needs to know of a sampler (adaptive, deterministic, the
score evaluations of a grid) the sampler declares where it is registered. Adaptive samplers
(`ode`, `adaptive_sde`) choose their own steps: they run once, at the tolerances in their spec,
and report their NFE.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from tqdm import tqdm

from ..files.output_files import write_text_atomic
from ..sampling import SamplerSpec, parse_spec, sample
from ..sampling.spec import Model, grid_text
from ..processes.sdes import SDE

Metric = Callable[[torch.Tensor], Dict[str, float]]
log = logging.getLogger(__name__)


def _distances(x: torch.Tensor, reference: torch.Tensor) -> Dict[str, float]:
    per_sample = (x.double() - reference.double()).flatten(1).norm(dim=1)
    return {"ode_rms": per_sample.pow(2).mean().sqrt().item(), "ode_median": per_sample.median().item()}


def run_study(model: Model, sde: SDE, shape: Sequence[int], specs: Sequence[Union[str, SamplerSpec]], nfes: Sequence[int],
              metric: Metric, *, seed: int = 0, reference_ode: bool = True, reference_tol: float = 1e-6,
              device=None, dtype: torch.dtype = torch.float32, progress: bool = True) -> List[dict]:
    """Run every spec at every NFE budget (adaptive specs once) from the latent drawn with
    `seed` with `model` (a Denoiser or a score function); one row per run with its true NFE, wall seconds, the metric and, for deterministic
    samplers, the distance to the probability-flow ODE solution from the same latent (RK45 at
    `reference_tol`, then the denoiser's x0 at the spec's own eps, so that only the discretization
    error remains; `reference_ode=False` skips that solve, often the study's longest phase). A
    failing run gives a status, not a crash. Each phase logs its start and end; `progress` is a
    tqdm bar on a terminal and a log line per row otherwise (no carriage returns in a log file)."""
    family = getattr(model, "family", None)  # the options declared for it run, and the rows name them
    parsed = [_named((parse_spec(spec) if isinstance(spec, str) else spec).for_family(family)) for spec in specs]
    latent = sde.prior_sampling(tuple(shape), generator=torch.Generator().manual_seed(seed),
                                dtype=dtype).to(device)
    grid = [(spec, None) if spec.adaptive else (spec, nfe) for spec in parsed
            for nfe in ([None] if spec.adaptive else sorted(nfes))]
    references = {}
    ends = sorted({spec.end(sde) for spec in parsed if spec.deterministic}) if reference_ode else []
    if ends:  # one solve per eps that a deterministic spec ends at
        log.info("study: the reference ODE first: %d adaptive RK45 solve(s) at rtol=atol=%g of %d samples, each "
                 "often more score evaluations than the whole grid's %d (study.reference=False skips it)",
                 len(ends), reference_tol, shape[0], sum(nfe for _, nfe in grid if nfe is not None))
        start = time.perf_counter()
        for eps in ends:
            references[eps] = _reference(model, sde, latent, eps, reference_tol)
        log.info("study: reference ODE done in %.1f s (%s)", time.perf_counter() - start,
                 ", ".join(f"eps={eps:.4g}: {'NFE ' + str(nfe) if x is not None else 'failed'}"
                           for eps, (x, nfe) in references.items()))
    log.info("study: %d runs (%d specs x NFE %s)", len(grid), len(parsed), tuple(sorted(nfes)))
    rows, bar = [], progress and sys.stderr.isatty()
    for index, (spec, target) in enumerate(tqdm(grid, desc="study", disable=not bar), 1):
        rows.append(_run_one(model, sde, latent, spec, target, metric, seed,
                             references.get(spec.end(sde), (None, 0))[0]))
        if progress and not bar:
            row = rows[-1]
            log.info("study: %d/%d %s at NFE %s: %s, %.2f s", index, len(grid), spec.text, row["nfe"], row["status"],
                     row["seconds"])
    return rows


def _named(spec: SamplerSpec) -> SamplerSpec:
    """`spec` whose text (its rows' name) adds the options and the grid filled in for the
    model's family."""
    text = spec.text + "".join(f" {name}={_format(spec.options[name])}" for name in spec.declared)
    grid = spec.family_grid()
    if grid is not None:
        text += f" schedule={grid_text(*grid)}"
    return dataclasses.replace(spec, text=text)


def _reference(model, sde: SDE, latent: torch.Tensor, eps: float, tol: float):
    """(the ODE's solution or None where it failed, its NFE)."""
    try:
        with torch.no_grad():
            x, nfe = sample(model, sde, latent.shape, "ode", z=latent, eps=eps, rtol=tol, atol=tol, denoise=True)
    except Exception:  # noqa: BLE001 (no reference: the rows go without ODE distances)
        return None, 0
    return (x if torch.isfinite(x).all() else None), nfe


def _run_one(model, sde, latent, spec: SamplerSpec, target: Optional[int], metric: Metric, seed: int,
             reference: Optional[torch.Tensor]) -> dict:
    row = {"sampler": spec.text, "method": spec.method, "target_nfe": target if target is not None else "",
           "nfe": 0, "seconds": math.nan, "status": "ok"}
    start = time.perf_counter()
    try:
        steps = spec.steps_for_nfe(target) if target is not None else spec.steps
        with torch.no_grad():
            x, row["nfe"] = sample(model, sde, latent.shape, dataclasses.replace(spec, steps=steps), z=latent,
                                   generator=seed)
        row["seconds"] = time.perf_counter() - start
        if not torch.isfinite(x).all():
            raise FloatingPointError("non-finite samples")
        row.update(metric(x))
        if reference is not None and spec.deterministic:
            row.update(_distances(x, reference))
    except Exception as error:  # noqa: BLE001 (a study reports a failed run and goes on)
        row["status"] = f"{type(error).__name__}: {error}"[:100]
    return row


# -- output ----------------------------------------------------------------------------------
def _format(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Optional[Sequence[str]] = None) -> str:
    columns = list(columns or _columns(rows))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _columns(rows: Sequence[dict]) -> List[str]:
    columns: List[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    return columns


def plot_study(rows: Sequence[dict], path, metric_keys: Union[str, Sequence[str]], title: str = "") -> None:
    """Panels against NFE, log-log, two to a row: each metric in `metric_keys` (its absolute
    value) and the wall seconds; one line per sampler spec, the legend below."""
    from ..files.plotting import save_figure  # first: it sets the Agg backend (files only)

    import matplotlib.pyplot as plt

    keys = [metric_keys] if isinstance(metric_keys, str) else list(metric_keys)
    labels = [f"|{key}|" for key in keys] + ["wall seconds"]
    samplers = list(dict.fromkeys(row["sampler"] for row in rows))
    grid_rows, legend_rows = math.ceil(len(labels) / 2), math.ceil(len(samplers) / 3)
    height = 4 * grid_rows + 0.2 * legend_rows + 0.6
    figure, axes = plt.subplots(grid_rows, 2, figsize=(12, height), squeeze=False)
    axes = axes.flatten()
    for index, sampler in enumerate(samplers):
        mine = sorted((r for r in rows if r["sampler"] == sampler and r["status"] == "ok" and r["nfe"] > 0),
                      key=lambda r: r["nfe"])
        if not mine or keys[0] not in mine[0]:
            continue
        nfe = [r["nfe"] for r in mine]
        # a new line style each time the colour cycle (10 colours) comes round again
        style = dict(marker="o", markersize=3, linewidth=1, label=sampler,
                     linestyle=("-", "--", ":", "-.")[index // 10 % 4])
        for axis, key in zip(axes, keys):
            axis.plot(nfe, [abs(r.get(key, math.nan)) for r in mine], **style)
        axes[len(keys)].plot(nfe, [r["seconds"] for r in mine], **style)
    for axis, label in zip(axes, labels):
        axis.set(xscale="log", yscale="log", xlabel="score evaluations (NFE)", ylabel=label)
        axis.grid(True, which="both", alpha=0.3)
    for axis in axes[len(labels):]:
        axis.set_visible(False)
    legend_height = (0.2 * legend_rows + 0.2) / height
    figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=7, frameon=False)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0, legend_height, 1, 1))
    save_figure(figure, path, dpi=110)


def write_study(rows: Sequence[dict], out_dir, metric_key: Union[str, Sequence[str]], title: str = "",
                name: str = "study") -> dict:
    """Write <name>.csv (every row), <name>.md (the table) and <name>.png (`metric_key`, one key
    or several, and wall time against NFE); returns the paths."""
    out_dir = Path(out_dir)
    paths = {kind: out_dir / f"{name}.{kind}" for kind in ("csv", "md", "png")}
    columns = _columns(rows)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(paths["csv"], table.getvalue())  # each file whole or not at all
    write_text_atomic(paths["md"], (f"### {title}\n\n" if title else "") + markdown_table(rows, columns) + "\n")
    plot_study(rows, paths["png"], metric_key, title)
    return {kind: str(path) for kind, path in paths.items()}
