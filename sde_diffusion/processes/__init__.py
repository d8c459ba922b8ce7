"""The forward processes (VP, VE, sub-VP, EDM, rectified flow, cosine VP), the denoiser D(x, t)
that every network becomes, and Gaussian mixtures whose perturbed scores are exact."""
