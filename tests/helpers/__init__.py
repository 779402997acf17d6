"""Helpers shared by the test modules (fixtures live in tests/conftest.py):

- config: the repository's root, the tiny run's overrides (TINY), composing the train config;
- processes: starting resvae-train and the other console scripts as a user would, and waiting
  for them; a CLI's one-line error;
- records: what a run leaves: run folders, summary.json, metrics.csv, checkpoints, sweep folders;
- models: a quiet CPU Trainer, a tiny VAE, a small feature module in place of Inception;
- batches: a run's batches with one non-finite batch, as a dataloader;
- wandb_offline: the records of offline W&B runs, read from their .wandb files;
- browser: an HTML page in headless Chromium.
"""
