"""Inpainting with every stepping sampler (the replacement step hook) on the trained digits model.

For each mask (`half_left`, `center_square`) the digits test split is inpainted by each sampler
named with a budget only, at 20 and 50 NFE, and by PC (Euler-Maruyama, no corrector) at 1000
steps, the reference sampler of inpainting before the hook existed, over three seeds. Scored:

    mse        mean squared error of the filled-in pixels to the original ones ([0, 1] pixels;
               a sample of the conditional is not the original, so this rewards fills close to
               the posterior mean, and is reported beside the two below)
    fd         FD in digit-classifier features of the completed images against the test split
               (`--mode eval`'s metric for digits): are the completions digits?
    accuracy   share of completed images the classifier labels as the original's class: do the
               completions agree with what the kept pixels show?

Run: python benchmarks/inpainting.py --workdir runs/vp_digits [--out benchmarks/results] [--seeds 0,1,2]
     [--reference-seeds 0] [--threads 1]
(the workdir of `main.py --config configs/vp_digits.py --mode train`). Writes inpainting.md and
inpainting.csv; prints each row as it is measured.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `configs.*`

from configs.vp_digits import get_config  # noqa: E402
from sde_diffusion.app.metrics import data_judge, quality_metric_for  # noqa: E402
from sde_diffusion.app.modes import load_trained  # noqa: E402
from sde_diffusion.app.plan import make_plan  # noqa: E402
from sde_diffusion.files.image_scaling import to_model_space  # noqa: E402
from sde_diffusion.sampling import parse_spec  # noqa: E402
from sde_diffusion.sampling.controllable import inpaint  # noqa: E402
from sde_diffusion.sampling.masks import make_mask  # noqa: E402

MASKS = ("half_left", "center_square")
FAST = ("ddim", "heun", "dpm_solver++", "dpm_solver++ order=3 unipc=true", "sde_solver",
        "pc predictor=euler_maruyama corrector=none", "ddim eta=1", "dpm_solver++ eta=1")
REFERENCE = ("pc predictor=euler_maruyama corrector=none", 1000)
NFES = (20, 50)


def calls(nfes=NFES):
    """(sampler spec text, target NFE) of every row: the fast samplers at each budget, then PC at 1000."""
    return [(text, nfe) for nfe in nfes for text in FAST] + [REFERENCE]


def run(workdir: Path, out: Path, seeds, threads: int, reference_seeds=None) -> list:
    torch.set_num_threads(threads)
    config = get_config()
    plan = dataclasses.replace(make_plan(config), device=torch.device("cpu"))
    model, sde, step = load_trained(config, workdir, plan.device, plan)
    denoiser = plan.denoiser(model)
    test = plan.dataset("test")
    originals, labels = test.data, test.labels
    metric, key = quality_metric_for(plan, originals)
    judge = data_judge(plan)
    observation = to_model_space(originals, config.data.centered)
    rows = []
    for mask_name in MASKS:
        mask = make_mask(mask_name, config.data.image_size, config.seed)
        hole = ~mask.expand_as(originals)
        for text, nfe in calls():
            spec = parse_spec(text)
            spec = parse_spec(f"{text} steps={spec.steps_for_nfe(nfe)}")
            for seed in (seeds if (text, nfe) != REFERENCE or reference_seeds is None else reference_seeds):
                start = time.perf_counter()
                with torch.no_grad():
                    x, used = inpaint(denoiser, sde, observation, mask, generator=seed, spec=spec)
                completed = plan.to_data_space(x).clamp(0, 1)
                row = {"mask": mask_name, "sampler": text, "nfe": used, "seed": seed,
                       "mse": float(((completed - originals)[hole] ** 2).mean()),
                       "fd": float(metric(completed)[key]),
                       "accuracy": float(judge.accuracy(completed, labels)),
                       "seconds": round(time.perf_counter() - start, 1)}
                rows.append(row)
                print(row, flush=True)
    write(rows, out, step, len(originals), seeds, threads)
    return rows


def write(rows: list, out: Path, step, count: int, seeds, threads: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "inpainting.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Inpainting with every sampler: vp_digits step {step}, {count} test images, seeds "
             f"{', '.join(map(str, seeds))}",
             "",
             f"{platform.machine()}, {os.cpu_count()} cores ({threads} thread), torch {torch.__version__}, "
             f"{datetime.date.today()}. Mean ± std over the seeds; mse of the filled-in pixels to the "
             "originals, FD in classifier features against the test split, the classifier's agreement "
             "with the original's label.",
             "",
             "| mask | sampler | NFE | mse | FD | accuracy | seconds |",
             "|---|---|---|---|---|---|---|"]
    groups = {}
    for row in rows:
        groups.setdefault((row["mask"], row["sampler"], row["nfe"]), []).append(row)
    for (mask, sampler, nfe), group in groups.items():
        def stat(name, digits=3):
            values = np.array([r[name] for r in group])
            return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"
        seconds = np.mean([r["seconds"] for r in group])
        lines.append(f"| {mask} | `{sampler}` | {nfe} | {stat('mse', 4)} | {stat('fd')} | {stat('accuracy')} | "
                     f"{seconds:.0f} |")
    (out / "inpainting.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--reference-seeds", default=None, help="seeds of the 1000-step PC rows (default: --seeds)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    reference = [int(s) for s in args.reference_seeds.split(",")] if args.reference_seeds else None
    run(args.workdir, args.out, [int(s) for s in args.seeds.split(",")], args.threads, reference)


if __name__ == "__main__":
    main()
