"""FID's Frechet distance at Inception's 2048 features: clean-fid's `frechet_distance` (scipy's
general matrix square root) against `evaluation.frechet` (two symmetric eigendecompositions).

    python benchmarks/frechet.py

Prints the seconds of each and their difference, for covariances of full rank and of rank 40
(40 samples, as a small evaluation has). Results: docs/benchmarks.md, "FID's matrix square root".
"""
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread, as the timings in the docs
import numpy as np  # noqa: E402
from cleanfid import fid as cleanfid_fid  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sde_diffusion.evaluation.frechet import frechet_distance  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(0)
    print("| samples per set | clean-fid (s) | ours (s) | FD clean-fid | FD ours | relative difference |")
    print("|---|---|---|---|---|---|")
    for samples in (40, 4096):
        x, y = rng.standard_normal((samples, 2048)), rng.standard_normal((samples, 2048)) * 1.1 + 0.05
        statistics = (x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
        start = time.perf_counter()
        theirs = float(cleanfid_fid.frechet_distance(*statistics))
        middle = time.perf_counter()
        ours = frechet_distance(*statistics)
        end = time.perf_counter()
        print(f"| {samples} | {middle - start:.1f} | {end - middle:.1f} | {theirs:.6f} | {ours:.6f} | "
              f"{abs(ours - theirs) / abs(theirs):.1e} |")


if __name__ == "__main__":
    main()
