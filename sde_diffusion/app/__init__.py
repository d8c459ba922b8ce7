"""The application behind `main.py`: configs in (`config`), checked once into the run's objects
(`validation`, `plan`), the trainer loop with its checkpoints, logging and snapshots (`train`),
the modes that sample, score and evaluate a trained workdir (`modes`, `controllable_modes`) and
what a run says while it runs (`progress`). The library (everything outside this package) never
imports it."""
