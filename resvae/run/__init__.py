"""A run: its folder and records (summary.json, metrics.csv, checkpoints), its config checks,
signals and one-line errors."""
