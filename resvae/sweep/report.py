"""Sweep report: one table, three plots and one static HTML page for a folder of runs.

Usage::

    resvae-report outputs/depth_sweep/multirun
    resvae-report outputs/depth_sweep/multirun --wandb-project resvae --wandb-group depth_sweep
    python -m resvae.sweep.report outputs/depth_sweep/multirun

A sweep folder holds one folder per job (one with a `summary.json` or a `.hydra/` folder; read by
resvae/sweep/runs.py). `write_report(sweep_dir)` writes into the sweep folder:

- `report.md` and `report.csv`: the study's "Table 1" (resvae/sweep/tables.py), one row per job,
  with a column per parameter the sweep varied (resvae/sweep/varied.py: `lr`, `latent`, ...),
  sorted by depth, those parameters, then seed, plus a mean ± sample-std row per depth (and
  parameter values) wherever two or more finished runs of it differ in seed;
- `report/*.png`: validation loss per epoch for every run, and minimum validation loss, test
  bits/dim, training hours and images/s against what the sweep varied: depth, else its first
  numeric parameter, else per run (resvae/sweep/plots.py);
- `report.html`: one static page (no server, no network, relative links, so the sweep folder
  can be moved) with the table, the plots, each run's latest sample and reconstruction grid,
  and the failed and broken runs with their errors (resvae/sweep/pages.py).

A job whose summary.json is missing or unreadable is "broken"; it is listed with the reason
and the report covers the rest. `log_report_to_wandb` logs the table and the plots to W&B.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from resvae.run.io import atomic_write
from resvae.sweep.pages import SweepPages, html_report, markdown_report
from resvae.sweep.plots import write_plots
from resvae.sweep.runs import RunRecord, collect_runs, read_curves, sweep_name
from resvae.sweep.tables import Row, csv_fields, csv_text, csv_values, markdown_table, table_rows
from resvae.sweep.varied import Param, varied_params

# collect_runs and read_curves are imported from here by resvae-analyze (resvae/cli/analyze/)
__all__ = ["PLOTS_DIR", "collect_runs", "log_report_to_wandb", "main", "read_curves", "write_report"]

PLOTS_DIR = "report"


def write_report(sweep_dir: str | Path) -> Path:
    """Write report.md, report.csv, report.html and report/*.png into `sweep_dir`; returns the
    HTML page's path. Each file is replaced atomically (written next to it, then renamed)."""
    sweep_dir = Path(sweep_dir)
    runs, params, rows, plots = _read_and_plot(sweep_dir)
    pages = SweepPages(sweep_dir, runs, rows, plots, params)
    _write_text(sweep_dir / "report.md", markdown_report(pages))
    _write_text(sweep_dir / "report.csv", csv_text(rows, params))
    return _write_text(sweep_dir / "report.html", html_report(pages))


def _read_and_plot(sweep_dir: Path) -> tuple[list[RunRecord], list[Param], list[Row], list[Path]]:
    """The sweep's runs, the parameters it varied, its table rows and the plots written into
    its report/ folder."""
    runs = collect_runs(sweep_dir)
    params = varied_params(runs)
    rows = table_rows(runs, params)
    return runs, params, rows, write_plots(runs, rows, sweep_dir / PLOTS_DIR, params)


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def log_report_to_wandb(sweep_dir: str | Path, project: str, group: str, entity: str | None = None) -> None:
    """Log the table (a wandb.Table) and the plots (wandb.Image) as one W&B run of `group` with
    job_type "report". WANDB_MODE decides the mode when set (offline, disabled, online);
    otherwise the run is online only when a W&B API key is configured."""
    import wandb

    sweep_dir = Path(sweep_dir)
    _, params, rows, plots = _read_and_plot(sweep_dir)
    mode = None
    if not os.environ.get("WANDB_MODE"):
        from resvae.run.config import wandb_offline

        mode = "offline" if wandb_offline() else "online"
    wandb.init(
        project=project, group=group, entity=entity, job_type="report", name=f"report-{group}", mode=mode,
        dir=str(sweep_dir),  # the W&B run's files stay with the sweep (offline: synced from there)
    )  # fmt: skip
    table = wandb.Table(columns=csv_fields(params), data=[csv_values(row, params) for row in rows])
    wandb.log({"report/table": table, **{f"report/{p.stem}": wandb.Image(str(p)) for p in plots}})
    wandb.finish()


def main(argv: Sequence[str] | None = None) -> int:
    """resvae-report: write a sweep folder's report, print its table, optionally log it to W&B."""
    parser = argparse.ArgumentParser(
        prog="resvae-report",
        description="Write report.md, report.csv, report.html and report/*.png for a sweep folder.",
    )
    parser.add_argument(
        "sweep_dir", metavar="SWEEP_DIR", type=Path, help="folder with one sub-folder per job"
    )
    parser.add_argument("--wandb-project", help="also log the table and plots to this W&B project")
    parser.add_argument("--wandb-group", help="W&B group (default: the sweep's name)")
    parser.add_argument("--wandb-entity", help="W&B entity (default: yours)")
    args = parser.parse_args(argv)
    sweep_dir: Path = args.sweep_dir
    if not sweep_dir.is_dir():
        print(f"resvae-report: error: no such sweep folder: {sweep_dir}", file=sys.stderr)
        return 2
    runs = collect_runs(sweep_dir)
    if not runs:
        hint = f" (did you mean {sweep_dir / 'multirun'}?)" if (sweep_dir / "multirun").is_dir() else ""
        print(
            f"resvae-report: error: no job folders (with summary.json or .hydra/) in {sweep_dir}{hint}",
            file=sys.stderr,
        )
        return 2
    try:
        page = write_report(sweep_dir)
    except OSError as err:  # a read-only sweep folder, or a file where report/ goes
        print(f"resvae-report: error: cannot write the report into {sweep_dir}: {err}", file=sys.stderr)
        return 2
    params = varied_params(runs)
    print(markdown_table(table_rows(runs, params), params))
    print(f"\nreport: {page}")
    if args.wandb_project:
        group = args.wandb_group or sweep_name(sweep_dir)
        log_report_to_wandb(sweep_dir, args.wandb_project, group, args.wandb_entity)
    return 0


if __name__ == "__main__":
    sys.exit(main())
