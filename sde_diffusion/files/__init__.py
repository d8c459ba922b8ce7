"""Files the package writes and reads: atomic outputs, image arrays, checkpoints, pictures."""
