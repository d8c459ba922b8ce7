"""ml_collections config files, loaded by main.py through `--config configs/NAME.py`."""
