"""Sweeps: the Hydra callbacks of a multirun (report, submitit jobs, Optuna) and resvae-report."""
