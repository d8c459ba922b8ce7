"""Data sets behind a registry: toy sets, the bundled digits, MNIST-like files, CIFAR-10 and the
user's own image folders with their checked cache."""
