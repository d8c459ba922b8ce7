"""Scores of a model: likelihood through the probability-flow ODE, sample-quality distances,
FID reference statistics, the classifier judges of small image sets, and sampler studies."""
