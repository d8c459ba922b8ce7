"""Twins of the score_sde_pytorch configs whose checkpoints were published (see the README,
"Published score_sde checkpoints")."""
