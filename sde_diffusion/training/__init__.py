"""What training needs besides the network: losses, the optimizer step, EMA, classifier-free
guidance's label dropping, speed options and torchrun."""
