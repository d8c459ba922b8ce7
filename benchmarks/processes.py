"""Five Gaussian diffusions trained at the same budget on the digits: which gives the best samples.

Every row is the `vp_digits` recipe (16x16 digits, the same 1.1M-parameter `ddpm` U-Net, batch
64, 6000 steps, Adam at lr 1e-3 with warm-up, EMA 0.999) trained as another process or with
another network output:

    vp_eps     VP SDE, the network predicts the noise (DDPM's choice)    configs/vp_digits.py
    vp_v       VP SDE, v-prediction (Salimans & Ho 2022)                  + model.parameterization=v
    cosine_vp  cosine VP schedule (Nichol & Dhariwal 2021), v-prediction  configs/cosine_vp_digits.py
    edm        EDM: sigma in [0.002, 80], preconditioning, its loss       configs/edm_digits.py
    fm         flow matching: linear path, velocity, its loss             configs/fm_digits.py

Each row trains in its own workdir under --root (resumed where it stopped; a finished one is
only read; its results are kept there and reused while checkpoint and settings are the same), then: FD in digit-classifier features (`evaluation.judges`, as `--mode study` reports it)
of 500 samples against the test split at 10, 20 and 50 NFE for each sampler of SAMPLERS named
with a budget only, the best sampler per budget; the share of samples the classifier is at
least 90% sure of ("confident", against the test images' share); bits/dim of 128 test images
through the probability-flow ODE (Hutchinson trace, uniform dequantization: `--mode likelihood`);
and 64 samples of the best 20-NFE sampler, one panel per row in processes.png.

Run: python benchmarks/processes.py [--root runs/processes] [--out benchmarks/results] [--rows vp_eps,edm] [--quick]
(--quick: 200 training steps per row in a temporary root, 100 samples, NFE 10 only, 16 images
for bits/dim: a check that the script runs, not a result.)
Writes processes.md, processes.csv (every study row) and processes.png.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import importlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `configs.*`

from sde_diffusion.app.metrics import data_judge, quality_metric_for  # noqa: E402
from sde_diffusion.app.modes import load_trained, run_likelihood  # noqa: E402
from sde_diffusion.app.plan import make_plan  # noqa: E402
from sde_diffusion.app.train import train  # noqa: E402
from sde_diffusion.files.plotting import image_grid  # noqa: E402
from sde_diffusion.sampling import sample  # noqa: E402
from sde_diffusion.evaluation.study import markdown_table, parse_spec, run_study  # noqa: E402

ROWS = (  # name, config module, overrides, what it is
    ("vp_eps", "configs.vp_digits", {}, "VP, noise prediction"),
    ("vp_v", "configs.vp_digits", {"model.parameterization": "v"}, "VP, v-prediction"),
    ("cosine_vp", "configs.cosine_vp_digits", {}, "cosine VP, v-prediction"),
    ("edm", "configs.edm_digits", {}, "EDM (preconditioned, its loss)"),
    ("fm", "configs.fm_digits", {}, "flow matching (velocity)"),
)
SAMPLERS = ("dpm_solver++", "dpm_solver++ order=3 unipc=true", "heun", "ddim",
            "pc predictor=euler_maruyama corrector=none")
NFES = (10, 20, 50)
CONFIDENT = 0.9


def row_config(module: str, overrides: dict, threads: int):
    config = importlib.import_module(module).get_config()
    for dotted, value in overrides.items():
        section, field = dotted.split(".")
        config[section][field] = value
    config.threads = threads
    return config


def confident_share(judge, images: torch.Tensor) -> float:
    """Share of images whose most likely class has probability >= CONFIDENT under `judge`."""
    logits = judge.features(images) @ judge.weights[1] + judge.biases[1]
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return float((probabilities.max(axis=1) >= CONFIDENT).mean())


def evaluate_row(name: str, config, workdir: Path, trained: tuple, num_samples: int, nfes, bpd_images: int) -> tuple:
    """(summary row, every study row, 64 samples of the best 20-NFE sampler in [0, 1])."""
    plan = dataclasses.replace(make_plan(config), device=torch.device("cpu"))
    model, sde, step = trained  # load_trained's
    denoiser = plan.denoiser(model)
    test = plan.dataset("test").data
    metric, key = quality_metric_for(plan, test)
    rows = run_study(denoiser, sde, (num_samples,) + plan.data.shape, list(SAMPLERS), list(nfes),
                     lambda x: metric(plan.to_data_space(x)), seed=config.seed, reference_ode=False,
                     progress=False)
    for row in rows:
        row["process"] = name
    summary = {"row": name, "step": step}
    best = {}
    for nfe in nfes:
        fitting = [r for r in rows if r["target_nfe"] == nfe and r["status"] == "ok" and r["nfe"] <= nfe]
        best[nfe] = min(fitting, key=lambda r: r[key])
        summary[f"FD @{nfe}"] = f"{best[nfe][key]:.3f} ({best[nfe]['sampler']})"
    picture_nfe = 20 if 20 in best else nfes[-1]
    with torch.no_grad():
        x, _ = sample(denoiser, sde, (64,) + plan.data.shape, parse_spec(best[picture_nfe]["sampler"]),
                      generator=config.seed)
    pictures = plan.to_data_space(x).clamp(0, 1)
    judge = data_judge(plan)
    summary["confident"] = f"{confident_share(judge, pictures):.2f} (test {confident_share(judge, test):.2f})"
    config.eval.bpd_num_images = bpd_images
    likelihood = run_likelihood(config, workdir)
    summary["bits/dim"] = f"{likelihood['mean']:.3f} ± {likelihood['stderr']:.3f}"
    return summary, rows, pictures


def evaluated_row(name: str, config, workdir: Path, num_samples: int, nfes, bpd_images: int) -> tuple:
    """`evaluate_row`, or its results kept in the workdir from an earlier run with the same
    checkpoint and settings (so rows can be evaluated as their training ends)."""
    trained = load_trained(config, workdir, torch.device("cpu"))
    settings = {"num_samples": num_samples, "nfes": list(nfes), "bpd_images": bpd_images, "samplers": list(SAMPLERS),
                "step": trained[2]}
    kept = workdir / "benchmark_processes.json"
    if kept.is_file():
        saved = json.loads(kept.read_text())
        if saved["settings"] == settings:
            return saved["summary"], saved["rows"], torch.tensor(saved["pictures"])
    summary, rows, pictures = evaluate_row(name, config, workdir, trained, num_samples, nfes, bpd_images)
    kept.write_text(json.dumps({"settings": settings, "summary": summary, "rows": rows,
                               "pictures": pictures.tolist()}))
    return summary, rows, pictures


def save_panels(pictures: dict, path: Path, captions: dict) -> None:
    figure, axes = plt.subplots(1, len(pictures), figsize=(3.2 * len(pictures), 3.6))
    for axis, (name, images) in zip(np.atleast_1d(axes), pictures.items()):
        axis.imshow(image_grid(images, 8)[..., 0], cmap="gray", vmin=0, vmax=1)
        axis.set_title(captions[name], fontsize=8)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/processes", help="one workdir per row under it")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="200 steps, 100 samples, NFE 10: a smoke run")
    parser.add_argument("--rows", default=",".join(row[0] for row in ROWS), help="comma-separated row names")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp()) if args.quick else Path(args.root)
    num_samples, nfes, bpd_images = (100, (10,), 16) if args.quick else (500, NFES, 128)
    table, every, pictures, captions = [], [], {}, {}
    start = time.perf_counter()
    for name, module, overrides, what in (row for row in ROWS if row[0] in args.rows.split(",")):
        config = row_config(module, overrides, args.threads)
        if args.quick:
            config.training.n_iters, config.training.snapshot_freq = 200, 200
        workdir = root / name
        train(config, workdir)
        summary, rows, pictures[name] = evaluated_row(name, config, workdir, num_samples, nfes, bpd_images)
        table.append({"row": name, "what": what, **{k: v for k, v in summary.items() if k != "row"}})
        every += rows
        captions[name] = f"{name}: FD {summary[f'FD @{20 if 20 in nfes else nfes[-1]}'].split(' ')[0]}"
        print(markdown_table(table[-1:]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_panels(pictures, out / "processes.png", captions)
    columns = ["process", "sampler", "target_nfe", "nfe", "fd_digits", "kd_digits", "seconds", "status"]
    with open(out / "processes.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(every)
    machine = (f"{platform.machine()}, {args.threads} torch threads, torch {torch.__version__}; "
               f"{datetime.date.today().isoformat()}; {time.perf_counter() - start:.0f} s of evaluation "
               f"(training not included)")
    text = (f"## Five processes at the vp_digits budget\n\n{machine}\n\n"
            f"FD in digit-classifier features, {num_samples} samples against the test split, best sampler per "
            f"budget (in brackets); confident: share of 64 samples the classifier gives >= {CONFIDENT:g}; "
            f"bits/dim: {bpd_images} test images, Hutchinson trace.\n\n{markdown_table(table)}\n")
    (out / "processes.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
