"""Few-step samplers on the exact score of every process: which default grid serves each one.

`benchmarks/fast_samplers.py` chose the fast samplers' default grids on the VP SDE, where a
grid's end `eps` is a time. A time means another noise level sigma/alpha on each process: at
t = 5e-4 (`dpm_solver++`'s declared end) VP's is 0.0072, EDM's 0.0005 (its t is sigma, and
0.0005 lies below its sigma_min 0.002) and the linear path's 0.0005. So on the Gaussian paths the
declared end is a noise level (`end_noise_level`, carried by `SDE.time_of_noise_level`); this benchmark
measures that choice. The 32-D mixture of `benchmarks/samplers.py` (4 components, stds
0.05-0.3, means 3 randn apart) is sampled with its exact score under `vpsde`, `edm`,
`rectified_flow` and `cosine_vp`, every row from the same latent (seed 0), scored by
`GaussianMixture.sample_errors` (weight, std errors, log-density gap): each fast sampler named
with a budget only, and `dpm_solver++` with its grid ending at fixed noise levels and with the
log-SNR warp power varied. The summary re-runs, with 200k samples on the held-out seed 1, the
default, the default with VP's end time kept as a time, and the grid's best spec.

Run: python benchmarks/process_grids.py [--quick] [--out benchmarks/results]
Writes process_grids.md (summary and full table) and process_grids.csv.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from samplers import mixtures  # noqa: E402

from sde_diffusion.processes.sdes import SDE, get_sde  # noqa: E402
from sde_diffusion.evaluation.study import markdown_table, parse_spec, run_study  # noqa: E402

SEED, HELD_OUT_SEED = 0, 1
TARGET_SAMPLES = 200_000  # the summary's re-runs: 10k samples leave a Monte Carlo noise of about 0.005
ERRORS = ("weight", "std", "logp_gap")
PROCESSES = ("vpsde", "edm", "rectified_flow", "cosine_vp")
DEFAULTS = ("ddim", "heun", "dpm_solver++", "dpm_solver++ order=3 unipc=true")
END_NOISE = (5e-4, 2e-3, 7.2e-3, 2e-2)  # sigma/alpha at the grid's end; 7.2e-3 is VP's t = 5e-4
POWERS = (1.0, 0.65, 0.5)
# The outside reference: k-diffusion's DPM++ 2M on Karras' sigmas (rho 7, down to its usual sigma_min
# 0.002), run as our 2M on that grid, which matches k-diffusion's sampler to float precision
# (docs/benchmarks.md, "Few-step samplers").
KARRAS_2M = "dpm_solver++ order=2 schedule=karras end_noise_level=0.002"


def end_time(sde: SDE, noise: float) -> float:
    """The time at which the process's noise level sigma(t)/alpha(t) equals `noise`."""
    return float(sde.time_of_log_snr(torch.tensor(-2.0 * math.log(noise), dtype=torch.float64)))


def noise_at(sde: SDE, t: float) -> float:
    return float(torch.exp(-0.5 * sde.log_snr(torch.tensor(t, dtype=torch.float64))))


def grid_specs(sde: SDE) -> list:
    """dpm_solver++ (2M, log-SNR grid) ending at each END_NOISE, with each warp POWER; labelled
    by the end noise level so that rows of different processes line up."""
    specs = []
    for noise in END_NOISE:
        for power in POWERS:
            text = f"dpm_solver++ schedule=logsnr power={power:g} eps={end_time(sde, noise):.6g}"
            specs.append((f"dpm_solver++ power={power:g} end noise {noise:g}", text))
    return specs


def study_process(name: str, n: int, nfes, seed: int = SEED, specs=None) -> list:
    mixture, sde = mixtures()["32-D, 4 components"], get_sde(name)
    labelled = specs if specs is not None else [(spec, spec) for spec in DEFAULTS] + grid_specs(sde)
    rows = run_study(mixture.score_fn(sde), sde, (n, mixture.dim), [text for _, text in labelled], nfes,
                     mixture.sample_errors, seed=seed, reference_ode=False, progress=False)
    labels = {text: label for label, text in labelled}
    for row in rows:
        row["process"], row["spec"] = name, row["sampler"]
        row["sampler"] = labels[row["sampler"]]
        row["end_noise"] = noise_at(sde, parse_spec(row["spec"]).end(sde))
    return rows


def rerun(name: str, label: str, text: str, nfe: int) -> dict:
    """One spec again with TARGET_SAMPLES samples on a held-out seed, free of the selection."""
    return study_process(name, TARGET_SAMPLES, [nfe], HELD_OUT_SEED, [(label, text)])[0]


def summary(rows, nfes) -> list:
    """Per process and budget, with TARGET_SAMPLES samples: dpm_solver++ named with a budget
    only (its end carried to the process's noise level), the same with VP's end time kept as
    a time, the best spec of the 10k-sample grid, and KARRAS_2M."""
    table = []
    for name in PROCESSES:
        for nfe in nfes:
            mine = [r for r in rows if r["process"] == name and r.get("target_nfe") == nfe and r["status"] == "ok"]
            best = min(mine, key=lambda r: abs(r["std"]))
            cases = {"default": ("dpm_solver++", "dpm_solver++"),
                     "vp_time": ("dpm_solver++ eps=5e-4", "dpm_solver++ eps=5e-4"),
                     "best": (best["sampler"], best["spec"]),
                     "karras": ("DPM++ 2M, Karras sigmas", KARRAS_2M)}
            again = {key: rerun(name, *case, nfe) for key, case in cases.items()}
            cell = lambda r: " / ".join(f"{abs(r[key]):.4f}" for key in ERRORS)  # noqa: E731
            table.append({"process": name, "NFE": nfe,
                          "default (end noise)": f"{cell(again['default'])} ({again['default']['end_noise']:.2g})",
                          "VP's end time kept (end noise)":
                              f"{cell(again['vp_time'])} ({again['vp_time']['end_noise']:.2g})",
                          "best spec of the grid": f"{cell(again['best'])} ({best['sampler']})",
                          "k-diffusion's DPM++ 2M, Karras sigmas": cell(again["karras"])})
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1000 samples, NFE 10 only")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)  # steady timings on a small shared machine, as benchmarks/samplers.py
    n, nfes = (1000, (10,)) if args.quick else (10000, (10, 20))
    start = time.perf_counter()
    rows = [row for name in PROCESSES for row in study_process(name, n, nfes)]
    table = summary(rows, nfes)
    machine = (f"{platform.machine()}, 1 torch thread, torch {torch.__version__}; "
               f"{datetime.date.today().isoformat()}; {n} samples; {time.perf_counter() - start:.0f} s in all")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    columns = ["process", "sampler", "target_nfe", "nfe", "end_noise", *ERRORS, "mean", "seconds", "status", "spec"]
    with open(out / "process_grids.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    head = ("## Few-step samplers on the exact 32-D mixture, per process\n\n" + machine + "\n\n"
            + f"Each cell: weight / std / log-density gap errors (abs), {TARGET_SAMPLES} samples, seed "
            f"{HELD_OUT_SEED}; in brackets the grid's end noise level sigma/alpha or the best spec.\n\n"
            + markdown_table(table) + "\n\n")
    (out / "process_grids.md").write_text(head + "### Every row\n\n" + markdown_table(rows, columns) + "\n")
    print(head)


if __name__ == "__main__":
    main()
