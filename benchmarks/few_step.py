"""One and two steps: a consistency-tuned (or reflowed) student against its teacher's samplers.

    python benchmarks/few_step.py --teacher runs/edm_digits --student runs/ect_digits \
        [--samples 1000] [--seeds 0,1,2] [--out benchmarks/results/few_step/digits.md]

Scores, through `main.py --mode eval` (so the numbers are what a user's eval reports: FD in the
data set's classifier features against its test split, with the floor of as many real training
images), the student's own sampler at 1, 2 and 4 steps and the teacher's training-free samplers
at 1, 2, 4, 10 and 20 NFE (or `--teacher-nfes`; STEPPING, or `--teacher-samplers`: each named
with a step count only, at its defaults), each
over `--seeds`, and writes a Markdown table of mean +- std, the best teacher sampler per NFE
marked (the eval reports also land in the workdirs' eval/ folders). `--only teacher` or
`--only student` scores one side (the other's cells stay empty), e.g. while the student trains;
`--cache FILE` keeps each eval's report as it comes, so a rerun after an interruption goes on
where it stopped (a report whose call the sampler's defaults now resolve differently is measured
again); `--student-checkpoints 1500,0` scores the student at a kept step and at its
latest, one row each (quality against tuning time).
`--picture FILE`: 64 samples (seed 0, the same latents) of the student at 1 and 2 steps beside
the teacher's default sampler at 20 NFE, through `--mode sample`. `--straightness N` (a reflowed
flow student) measures only this: from N fresh noises, the RMS distance per pixel of one Euler step of the teacher
and of the student to the teacher's probability-flow ODE solution (adaptive RK45, rtol = atol =
1e-5), the measure of how straight the paths are (the toy's in tests/test_reflow.py).
"""
from __future__ import annotations

import argparse
import ast
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for `configs.*`
from configs.workdir import get_config as workdir_config  # noqa: E402
from sde_diffusion.app.config import sampler_spec  # noqa: E402
from sde_diffusion.files.plotting import image_grid  # noqa: E402

NFES = (1, 2, 4, 10, 20)  # the teacher's, unless --teacher-nfes
STUDENT_NFES = (1, 2, 4)
STEPPING = ("dpm_solver++", "ddim", "dpm_solver++ order=3 unipc=True")


def main_py(workdir: str, mode: str, *flags: str) -> dict:
    """The report (the last stdout line) of main.py in `mode` on `workdir`; its stderr on failure."""
    command = [sys.executable, "main.py", f"--workdir={workdir}", f"--mode={mode}", *flags]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)}\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def sampler_settings(sampler: str) -> tuple:
    """'dpm_solver++ eta=1 schedule=karras' -> ('dpm_solver++', [('eta', '1'), ('schedule', 'karras')])."""
    method, *options = sampler.split()
    return method, [tuple(option.split("=", 1)) for option in options]


def evaluate(workdir: str, sampler: str, steps: int, samples: int, seeds: str, checkpoint: int = 0) -> dict:
    """main.py's eval report; `checkpoint` a kept step of the workdir's run (0: the latest)."""
    method, settings = sampler_settings(sampler)
    flags = [f"--config.sampling.{name}={value}" for name, value in settings]
    if checkpoint:
        flags.append(f"--config.eval.checkpoint={checkpoint}")
    return main_py(workdir, "eval", f"--config.sampling.method={method}", f"--config.sampling.steps={steps}",
                   f"--config.eval.num_samples={samples}", f"--config.eval.seeds={seeds}", *flags)


def resolved_call(workdir: str, sampler: str, steps: int) -> str:
    """What `evaluate` would run, as its report names it ("sampler"): the call with the
    defaults declared for the workdir's model family filled in. A cached report that names
    another call was made under other defaults, and is measured again."""
    config = workdir_config(workdir)  # as main.py reads it: unset fields typed, so eta=1 is 1.0
    method, settings = sampler_settings(sampler)
    config.sampling.method, config.sampling.steps = method, steps
    for name, value in settings:
        try:
            config.sampling[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):  # a name, such as a schedule's
            config.sampling[name] = value
    return sampler_spec(config).summary()


def fd_key(report: dict) -> str:
    """The report's metric: its FD (fd_digits, fd_classifier, ...; not the floor or spread), or
    the sliced Wasserstein distance of 2-D sets."""
    if "sliced_wasserstein" in report:
        return "sliced_wasserstein"
    return next(key for key in report if key.startswith("fd_") and "floor" not in key
                and not key.endswith(("_std", "_per_seed")))


def summary(report: dict) -> tuple:
    key = fd_key(report)
    return report[key], report.get(f"{key}_std", 0.0)


def sampled(workdir: str, method: str, steps: int) -> torch.Tensor:
    """64 samples of `--mode sample` (seed 0), in [0, 1]."""
    flags = [f"--config.sampling.steps={steps}", "--config.sampling.num_samples=64", "--config.seed=0"]
    report = main_py(workdir, "sample", *flags, *([f"--config.sampling.method={method}"] if method else []))
    return torch.from_numpy(numpy.load(report["npz"])["samples"])


def straightness(teacher_dir: str, student_dir: str, count: int) -> str:
    """The `--straightness` line (module docstring): one Euler step against the teacher's ODE."""
    from sde_diffusion.app.loading import load_model
    from sde_diffusion.sampling import sample

    teacher, student = load_model(teacher_dir), load_model(student_dir)
    z = torch.randn((count, *teacher.shape), generator=torch.Generator().manual_seed(12345))
    with torch.no_grad():
        solution, nfe = sample(teacher.denoiser, teacher.sde, z.shape, "ode", z=z)
        errors = [float(((sample(model.denoiser, model.sde, z.shape, "ddim", steps=1, z=z)[0] - solution)
                         .flatten(1).pow(2).mean(1).sqrt()).mean()) for model in (teacher, student)]
    return (f"Straightness: RMS distance per pixel (data on [-1, 1]) of one Euler step to the teacher's ODE "
            f"solution (RK45, rtol 1e-5, {nfe} NFE) from {count} fresh noises: teacher {errors[0]:.4f}, "
            f"student {errors[1]:.4f} ({errors[0] / errors[1]:.1f}x less)")


def picture(args, path: Path) -> None:
    panels = [(f"student, {args.student_sampler} 1 step", sampled(args.student, args.student_sampler, 1)),
              (f"student, {args.student_sampler} 2 steps", sampled(args.student, args.student_sampler, 2)),
              ("teacher, its default sampler, 20 NFE", sampled(args.teacher, "", 20))]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4))
    for axis, (title, images) in zip(axes, panels):
        grid = image_grid(images, nrow=8)
        axis.imshow(grid[..., 0] if grid.shape[2] == 1 else grid, cmap="gray", vmin=0, vmax=1)
        axis.set_title(title, fontsize=10)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--student-sampler", default="consistency")
    parser.add_argument("--student-checkpoints", default="0",
                        help="steps of the student's run to score, one row each (0: the latest), e.g. 1500,0")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--teacher-samplers", default=";".join(STEPPING),
                        help="the teacher's rows, ';'-separated specs (default: %(default)s)")
    parser.add_argument("--teacher-nfes", default=",".join(map(str, NFES)),
                        help="the NFEs of the teacher's rows, e.g. 10,20 (default: %(default)s)")
    parser.add_argument("--only", choices=("teacher", "student"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--picture", type=Path)
    parser.add_argument("--straightness", type=int, default=0)
    parser.add_argument("--cache", type=Path, help="eval reports so far (JSON): a rerun skips what it holds")
    args = parser.parse_args()
    if args.straightness:
        print(straightness(args.teacher, args.student, args.straightness))
        return
    if args.picture:
        picture(args, args.picture)
    rows, floor = [], None
    done = json.loads(args.cache.read_text()) if args.cache and args.cache.is_file() else {}
    student_rows = [(args.student_sampler, int(step)) for step in args.student_checkpoints.split(",")]
    teacher_nfes = tuple(int(nfe) for nfe in args.teacher_nfes.split(","))
    columns = set()
    for name, workdir, samplers, nfes in (("student", args.student, student_rows, STUDENT_NFES),
                                          ("teacher", args.teacher, [(s, 0) for s in args.teacher_samplers.split(";")], teacher_nfes)):
        if args.only not in (None, name):
            continue
        columns.update(nfes)
        for sampler, checkpoint in samplers:
            cells = {}
            for nfe in nfes:
                key = f"{workdir}|{sampler}|{nfe}|{args.samples}|{args.seeds}" + (f"|{checkpoint}" if checkpoint else "")
                if key not in done or done[key]["sampler"] != resolved_call(workdir, sampler, nfe):
                    done[key] = evaluate(workdir, sampler, nfe, args.samples, args.seeds, checkpoint)
                    if args.cache:
                        args.cache.write_text(json.dumps(done, indent=1))
                report = done[key]
                if report["nfe"] != nfe:
                    continue  # a sampler that cannot spend exactly this many evaluations
                cells[nfe] = summary(report)
                metric_key = fd_key(report)
                floor = floor or (report.get(f"{metric_key}_floor"), report.get(f"{metric_key}_floor_spread"))
            rows.append((name, sampler, report["step"], cells))
    columns = sorted(columns)
    best = {nfe: min((cells[nfe][0] for name, _, _, cells in rows if name == "teacher" and nfe in cells),
                     default=None) for nfe in columns}
    metric = "sliced Wasserstein distance" if floor[0] is None else "FD in the classifier's features"
    lines = [f"## Few-step sampling: {args.student} against its teacher {args.teacher}", "",
             f"{platform.machine()}, torch {torch.__version__}, {datetime.date.today()}; {metric} ({args.samples} samples "
             f"against the test split, mean +- std over seeds {args.seeds}); floor, as many real training images: "
             + (f"{floor[0]:.3f} +- {floor[1]:.3f}" if floor[0] is not None else "none reported") + "; the teacher's best per NFE in bold.", "",
             "| model | sampler | step | " + " | ".join(f"NFE {nfe}" for nfe in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for name, sampler, step, cells in rows:
        shown = []
        for nfe in columns:
            if nfe not in cells:
                shown.append("")
                continue
            text = f"{cells[nfe][0]:.2f} +- {cells[nfe][1]:.2f}"
            shown.append(f"**{text}**" if name == "teacher" and cells[nfe][0] == best[nfe] else text)
        lines.append(f"| {name} | {sampler} | {step} | " + " | ".join(shown) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
