"""The sweep's Hydra callback, `SweepReport` (hydra.callbacks.sweep_report in conf/train.yaml).

A multirun ends with its report (report.md/.csv/.html, resvae/sweep/report.py), a table of its
jobs (resvae/sweep/jobs.py), and a non-zero exit code when a job failed. A job that fails with a
user error (resvae/run/errors.py) returns and the sweep goes on; this callback's
on_multirun_end then sees it in summary.json and exits 1. A job that fails with any other
exception makes Hydra's basic sweeper re-raise it after the sweep, which skips on_multirun_end;
so the report is also registered with atexit and written however the process ends (the exit code
then stays Hydra's, non-zero). A job refused before it owned its folder (in use by another
trainer) writes nothing there; an in-process job of that kind is listed after the table and also
makes the sweep exit 1. Logging the report to W&B may fail (after a stop signal W&B has shut down
before the report is written at exit): that is one line, and the report is still written.

Under `hydra/launcher=submitit_local`, `SweepReport` also stops the jobs with the sweep process
(resvae/sweep/submitit_local.py), and with Optuna's sweeper (conf/hparams_search/*.yaml) it
prepares the study kept in the sweep folder so that the same command continues it
(resvae/sweep/optuna_study.py). See docs/sweeps.md.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from resvae.run.config import SWEEP_ENV, SWEEP_KEYS_ENV, run_leaf, varied_keys
from resvae.sweep.jobs import SweepJob, format_sweep_report, sweep_jobs
from resvae.sweep.optuna_study import OptunaStudy
from resvae.sweep.report import log_report_to_wandb, write_report
from resvae.sweep.submitit_local import JobStopper, is_submitit_local


def finish_sweep(
    sweep_dir: Path,
    wandb: dict[str, Any] | None = None,
    refused: Sequence[str] = (),
    ended: bool = False,
    jobs: Sequence[SweepJob] | None = None,
    started: Collection[tuple[str, ...]] = (),
) -> int:
    """Write the report (and log it to W&B in the sweep's group when `wandb` has the project and
    group) and print the table; returns the number of jobs not done (format_sweep_report).
    Nothing when the sweep ended before its folder was made (e.g. a sweeper that could not start)."""
    if not sweep_dir.is_dir():
        return 0
    text, not_done = format_sweep_report(sweep_dir, refused, ended, jobs, started)
    try:
        page = write_report(sweep_dir)
        text += f"\nreport: {page}"
    except Exception as err:  # the table still matters when a plot cannot be drawn
        text += f"\nreport not complete ({type(err).__name__}: {err})"
    else:
        if wandb and os.environ.get("WANDB_MODE", "").lower() != "disabled":
            text += _log_to_wandb(sweep_dir, wandb)
    print(text, flush=True)
    return not_done


def _log_to_wandb(sweep_dir: Path, wandb: dict[str, Any]) -> str:
    """Log the written report to W&B; a failure is one line, never a lost report. After a stop
    signal the sweep writes its report at exit, when W&B's own exit hook (registered after ours,
    so run before it) has shut its service down: wandb.init then fails (MailboxClosedError)."""
    try:
        log_report_to_wandb(sweep_dir, **wandb)
    except Exception as err:
        detail = " ".join(str(err).split()) or "no message"
        return (
            f"\nW&B logging of the report skipped: {type(err).__name__}: {detail} (the report is written; "
            f"`resvae-report {sweep_dir} --wandb-project {wandb.get('project')}` logs it)"
        )
    return ""


def wandb_target(config: DictConfig) -> dict[str, Any] | None:
    """The W&B project, entity and group of the sweep's runs, when its logger writes to W&B."""
    node = (config.get("logger") or {}).get("wandb")
    if not node:
        return None
    return {
        "project": node.get("project"),
        "group": node.get("group") or config.name,
        "entity": node.get("entity"),
    }


class SweepReport(Callback):
    """stop_grace_s: how long the sweep process waits, after forwarding a stop signal, for its
    submitit_local jobs to save and exit before it kills them."""

    def __init__(self, stop_grace_s: float = 300.0) -> None:
        self._pending: Callable[[], int] | None = None
        self._study: OptunaStudy | None = None
        self._not_ok: list[str] = []  # output folders of this process's jobs that returned NaN
        self._jobs: list[SweepJob] | None = None  # the sweep's job list, when it is known
        self._started: set[tuple[str, ...]] = set()  # overrides of the jobs started in this process
        self.stop_grace_s = stop_grace_s

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # the sweep's folder, named by its command line, fixed for the jobs (see config.sweep_leaf)
        os.environ[SWEEP_ENV] = run_leaf(
            config.hydra.overrides.task, config.run.excludes, config.run.name_excludes
        )
        # what the sweep varies names its jobs' folders (see config.job_leaf)
        params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
        os.environ[SWEEP_KEYS_ENV] = ",".join(varied_keys(config.hydra.overrides.task, params))
        sweep_dir, wandb = Path(config.hydra.sweep.dir), wandb_target(config)
        self._jobs = sweep_jobs(config)
        # at exit (a stop signal, a job's exception): the same report, with what is known then
        self._pending = lambda: finish_sweep(sweep_dir, wandb, self._not_ok, False, self._jobs, self._started)
        atexit.register(self._pending)
        if OptunaStudy.applies(config):
            self._study = OptunaStudy()
            self._study.prepare(config, sweep_dir)
        if is_submitit_local(config):
            JobStopper.for_sweep(config, grace_s=self.stop_grace_s).install()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        # In-process jobs only, as on_job_end: a job refused before it made its folder started
        self._started.add(tuple(config.hydra.overrides.task))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        # In-process jobs only (basic launcher; submitit runs this in the job's process). A job
        # refused before it owned its folder (in use by another trainer, a bad config) returns NaN
        # and writes nothing there, so the folder's summary.json cannot tell the sweep.
        value = job_return.return_value if job_return.status == JobStatus.COMPLETED else math.nan
        if isinstance(value, float) and math.isnan(value):
            self._not_ok.append(str(config.hydra.runtime.output_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._pending is not None:
            atexit.unregister(self._pending)
        sweep_dir = Path(config.hydra.sweep.dir)
        # every job has returned by now, so none is `not started` (the job list is for the exit path)
        if finish_sweep(sweep_dir, wandb_target(config), refused=self._not_ok, ended=True):
            sys.exit(1)
