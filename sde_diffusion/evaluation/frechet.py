"""The Frechet distance between two Gaussians (Dowson & Landau 1982), the FID of Heusel et al.
2017 when the Gaussians are fitted to Inception features:

    d^2 = |mu_1 - mu_2|^2 + Tr(S_1) + Tr(S_2) - 2 Tr((S_1 S_2)^(1/2)).

clean-fid (like the original TF code) takes the matrix square root of S_1 S_2 with
`scipy.linalg.sqrtm`, a Schur decomposition of a non-symmetric matrix. Only its trace is needed,
and S_1 S_2 is similar to the symmetric positive semi-definite S_1^(1/2) S_2 S_1^(1/2) (conjugate
by S_1^(1/2); by continuity when S_1 is singular), so

    Tr((S_1 S_2)^(1/2)) = sum_i sqrt(lambda_i(S_1^(1/2) S_2 S_1^(1/2))),

two symmetric eigendecompositions in float64: the same number to rounding, in a fraction of the
time (docs/benchmarks.md, "FID's matrix square root").
"""
from __future__ import annotations

import numpy as np


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (rounding's small
    negative eigenvalues clipped to 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mu_1: np.ndarray, sigma_1: np.ndarray, mu_2: np.ndarray, sigma_2: np.ndarray) -> float:
    """d^2 between N(mu_1, sigma_1) and N(mu_2, sigma_2) (module docstring); covariances [F, F]."""
    mu_1, mu_2 = np.atleast_1d(np.asarray(mu_1, np.float64)), np.atleast_1d(np.asarray(mu_2, np.float64))
    sigma_1, sigma_2 = np.atleast_2d(np.asarray(sigma_1, np.float64)), np.atleast_2d(np.asarray(sigma_2, np.float64))
    if mu_1.shape != mu_2.shape or sigma_1.shape != sigma_2.shape or sigma_1.shape != (mu_1.size, mu_1.size):
        raise ValueError(f"means {mu_1.shape}, {mu_2.shape} and covariances {sigma_1.shape}, {sigma_2.shape} "
                         f"do not describe two Gaussians of one dimension")
    root = _psd_sqrt((sigma_1 + sigma_1.T) / 2)
    inner = root @ sigma_2 @ root
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_of_root = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    difference = mu_1 - mu_2
    return float(difference @ difference + np.trace(sigma_1) + np.trace(sigma_2) - 2 * trace_of_root)
