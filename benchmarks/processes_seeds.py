"""How far apart the processes of `benchmarks/processes.py` really are: their FD over several seeds.

processes.py scores each trained row with one set of 500 samples. Here every row is sampled with
one sampler (3M UniPC, the best or near-best at 10 and 20 NFE in every row there) at each NFE
budget from several seeds, through `--mode eval` (`eval.seeds`): the mean and standard deviation
of the FD across seeds, and each row's difference from the VP-eps row computed seed by seed.
Every row starts seed s from the same latent noise, so the seed-to-seed variation that all rows
share (which latents came out easy) cancels in the paired difference, which is therefore much
tighter than either row's spread.

Run after processes.py has trained the rows:
    python benchmarks/processes_seeds.py [--root runs/processes] [--out benchmarks/results] [--seeds 0,1,2]
Writes processes_seeds.md. An eval report already in a row's workdir for the same call (same
checkpoint step, sampler, samples and seeds; named by the call) is read instead of sampling again.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `configs.*` and processes.py's rows

from benchmarks.processes import ROWS, row_config  # noqa: E402
from sde_diffusion.files import checkpoints  # noqa: E402
from sde_diffusion.app.config import build_sde, sampler_spec  # noqa: E402
from sde_diffusion.app.modes import batch_tag, run_eval  # noqa: E402

SAMPLER = {"method": "dpm_solver++", "order": 3, "unipc": True}
NFES = (10, 20, 50)


def eval_report(config, workdir: Path, nfe: int, num_samples: int, seeds) -> dict:
    """The row's `--mode eval` report for this call: read back when its file exists, else run."""
    config.sampling.update(steps=nfe, **SAMPLER)
    config.eval.update(num_samples=num_samples, seeds=tuple(seeds))
    call = sampler_spec(config).file_tag(build_sde(config))  # as the app names the report
    pattern = f"eval_*_{call}_{num_samples}x{batch_tag(config, num_samples)}_seed{'-'.join(map(str, seeds))}.json"
    for kept in sorted((workdir / "eval").glob(pattern)):
        report = json.loads(kept.read_text())
        if report["step"] == max(checkpoints.snapshot_steps(workdir)):
            return report
    return run_eval(config, workdir)


def table(reports: dict, nfes, key: str = "fd_digits") -> str:
    """Markdown: per row and NFE, mean +- std over seeds, and the paired difference from vp_eps."""
    lines = ["| row | " + " | ".join(f"FD @{nfe} | vs VP-eps @{nfe}" for nfe in nfes) + " |",
             "|---|" + "---|---|" * len(nfes)]
    for name, by_nfe in reports.items():
        cells = []
        for nfe in nfes:
            values = np.array(by_nfe[nfe][f"{key}_per_seed"])
            cells.append(f"{values.mean():.3f} ± {values.std(ddof=1):.3f}")
            if name == "vp_eps":
                cells.append("")
                continue
            differences = values - np.array(reports["vp_eps"][nfe][f"{key}_per_seed"])
            cells.append(f"{differences.mean():+.3f} ± {differences.std(ddof=1):.3f} "
                         f"({', '.join(f'{d:+.2f}' for d in differences)})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/processes"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--nfe", default=",".join(map(str, NFES)))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    nfes = [int(nfe) for nfe in args.nfe.split(",")]
    reports = {}
    for name, module, overrides, _ in ROWS:
        workdir = args.root / name
        if not checkpoints.snapshot_steps(workdir):
            raise SystemExit(f"error: no trained row {name} in {workdir}: run benchmarks/processes.py first")
        reports[name] = {}
        for nfe in nfes:
            config = row_config(module, overrides, args.threads)
            reports[name][nfe] = eval_report(config, workdir, nfe, args.num_samples, seeds)
            print(name, nfe, reports[name][nfe]["fd_digits_per_seed"], flush=True)
    header = (f"FD in digit-classifier features, {args.num_samples} samples per seed, seeds {seeds}, "
              f"dpm_solver++ order=3 unipc=True; mean ± std over seeds, and the difference from VP-eps "
              f"seed by seed (mean ± std, then each). {platform.machine()}, torch {torch.__version__}, "
              f"{datetime.date.today()}.")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "processes_seeds.md").write_text(header + "\n\n" + table(reports, nfes) + "\n")
    print(table(reports, nfes))


if __name__ == "__main__":
    main()
