"""Training speed of the toy config against `config.threads`, on an idle and on a busy machine.

    python benchmarks/threads.py [--steps 1500] [--busy 4]

Runs `main.py --mode train` on configs/vp_toy.py for `--steps` steps with threads = 0 (torch's
default: one per core) and 1, first alone and then beside `--busy` other CPU-bound processes
(each a one-thread training run of the same config, the situation of a shared machine), and
prints steps/s (wall time of the training loop, from the run's end line) as a Markdown table.
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
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for load in (0, args.busy):
            others = [subprocess.Popen(train_command(Path(tmp) / f"busy{i}", 10**7, 1), cwd=ROOT,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(load)]
            try:
                for threads in (0, 1):
                    rate = steps_per_second(Path(tmp) / f"run_{load}_{threads}", args.steps, threads)
                    rows.append((load, threads, rate))
            finally:
                for process in others:
                    process.kill()
                    process.wait()
    print(f"cores: {os.cpu_count()}, steps: {args.steps}")
    print("| other jobs | config.threads | steps/s |\n|---|---|---|")
    for load, threads, rate in rows:
        print(f"| {load} | {threads or 'default (' + str(os.cpu_count()) + ')'} | {rate:.1f} |")


if __name__ == "__main__":
    main()
