"""Training speed of the toy config against `config.threads`, on an idle and on a busy machine.

    python benchmarks/threads.py [--steps 1500] [--busy 4]

Runs `main.py --mode train` on configs/vp_toy.py for `--steps` steps with threads = 0 (the
default: the usable cores, less those other processes keep busy; `app/cpu_share.py`), 1 and the
number of cores (torch's own default, fixed), first alone, then beside one two-thread matrix
product loop (another program's parallel job), then beside `--busy` one-thread training runs of
the same config (several runs side by side), and prints steps/s (wall time of the training
loop, from the run's end line) and the ratio to the idle default as a Markdown table. Run it on
an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--config=configs/vp_toy.py", "--mode=train", "--config.training.snapshot_sampling=False",
       "--config.training.eval_freq=100000"]
MATMUL_LOOP = ("import torch; torch.set_num_threads(2); a = torch.randn(512, 512)\n"
               "while True: a = torch.tanh(a @ a)")


def train_command(workdir: Path, steps: int, threads: int) -> list:
    return [sys.executable, "main.py", *TOY, f"--workdir={workdir}", f"--config.training.n_iters={steps}",
            f"--config.training.snapshot_freq={steps}", f"--config.threads={threads}"]


def steps_per_second(workdir: Path, steps: int, threads: int) -> float:
    result = subprocess.run(train_command(workdir, steps, threads), cwd=ROOT, capture_output=True, text=True,
                            check=True)
    seconds = re.search(r"trained to step \d+: loss \S+, ([\d.]+) (s|min)", result.stderr)
    return steps / (float(seconds.group(1)) * (60 if seconds.group(2) == "min" else 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--busy", type=int, default=4)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    loads = [("none", lambda tmp: []),
             ("one two-thread matmul loop", lambda tmp: [[sys.executable, "-c", MATMUL_LOOP]]),
             (f"{args.busy} one-thread training runs",
              lambda tmp: [train_command(Path(tmp) / f"busy{i}", 10**7, 1) for i in range(args.busy)])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, commands in loads:
            others = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                      for command in commands(tmp)]
            try:
                for threads in (0, 1, cores):
                    rows.append((name, threads, steps_per_second(Path(tmp) / f"run_{len(rows)}", args.steps, threads)))
            finally:
                for process in others:
                    process.kill()
                    process.wait()
    idle = rows[0][2]
    print(f"cores: {cores}, steps: {args.steps}")
    print("| other jobs | config.threads | steps/s | of idle default |\n|---|---|---|---|")
    for name, threads, rate in rows:
        print(f"| {name} | {threads or '0 (default)'} | {rate:.1f} | {rate / idle:.2f}x |")


if __name__ == "__main__":
    main()
