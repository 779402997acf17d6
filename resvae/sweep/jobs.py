"""A sweep's jobs: the list Hydra's basic sweeper runs, and the table of them at the sweep's end.

The table (`format_sweep_report`) has a line per job folder and tells apart jobs that failed,
jobs that were interrupted (a stop signal: status `interrupted`, last.ckpt saved, the same command
resumes them), jobs refused before they owned their folder (they wrote nothing there), jobs whose
folder another process still runs and, for Hydra's basic sweeper, whose job list is known in
advance (`sweep_jobs`), jobs that never started.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from resvae.sweep.runs import FAILED, collect_runs

log = logging.getLogger("resvae.sweep")

NOT_STARTED = "not started"


@dataclass(frozen=True)
class SweepJob:
    """One job of the sweep: its overrides, as Hydra's basic sweeper makes them, and its folder."""

    overrides: tuple[str, ...]
    folder: Path


def sweep_jobs(config: DictConfig) -> list[SweepJob] | None:
    """Every job of a basic-sweeper multirun, in the order they run, or None when the job list
    cannot be known here (another sweeper, e.g. Optuna's, picks its trials as it goes; a sweep
    kind the basic sweeper refuses anyway).

    As the basic sweeper does: the config's hydra.sweeper.params, then the command line's
    overrides, parsed with Hydra's override parser; a later override of a key replaces the
    earlier one in its place; the jobs are the cartesian product of the values, in order. Each
    job's folder is hydra.sweep.dir / hydra.sweep.subdir resolved with the job's overrides and
    number, as the launcher resolves it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    # Hydra's basic sweeper is the option `basic` of the config group hydra/sweeper
    if (config.hydra.runtime.get("choices") or {}).get("hydra/sweeper") != "basic":
        return None
    sweeper = config.hydra.get("sweeper") or {}
    words = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    words += list(config.hydra.overrides.task)
    choices: dict[str, list[str]] = {}
    try:
        for override in OverridesParser.create().parse_overrides(words):
            key = override.get_key_element()
            if not override.is_sweep_override():
                choices[key] = [f"{key}={override.get_value_element_as_str()}"]
            elif override.is_discrete_sweep():
                choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
            else:
                return None  # a range the basic sweeper does not run
        combos = [tuple(c) for c in itertools.product(*choices.values())]
        sweep_dir = Path(str(config.hydra.sweep.dir))  # the sweep's, named by its own command line
        return [SweepJob(c, sweep_dir / _job_subdir(config, list(c), i)) for i, c in enumerate(combos)]
    except Exception as err:  # e.g. a glob over config groups needs Hydra's config loader
        log.info("the sweep's job list is not known (%s): jobs that never start are not listed", err)
        return None


def _job_subdir(config: DictConfig, overrides: list[str], num: int) -> str:
    job = copy.deepcopy(config)
    with read_write(job), open_dict(job):
        job.hydra.overrides.task = overrides
        job.hydra.job.num = num
        return str(OmegaConf.select(job, "hydra.sweep.subdir"))


def format_sweep_report(
    sweep_dir: Path,
    refused: Sequence[str] = (),
    ended: bool = False,
    jobs: Sequence[SweepJob] | None = None,
    started: Collection[tuple[str, ...]] = (),
) -> tuple[str, int]:
    """(the table of jobs with the failed, interrupted and not started ones listed, the number
    of jobs not done). `refused`: output folders of this process's jobs that were refused before
    they owned their folder (they wrote nothing there). `ended`: all of the sweep's jobs have
    ended, so a folder still `running` is another process's (the same sweep started twice, jobs
    orphaned by a SIGKILLed sweep) or was killed unrecorded. `jobs`: the sweep's job list
    (sweep_jobs), whose jobs with no folder that were not `started` (overrides seen by
    on_job_start) never started (the sweep was stopped first, or a job's exception ended it)."""
    runs = collect_runs(sweep_dir)
    have = {r.folder.resolve() for r in runs}
    gone = {Path(f).resolve() for f in refused}
    waiting = [
        j
        for j in jobs or ()
        if j.folder.resolve() not in have and j.folder.resolve() not in gone and j.overrides not in started
    ]
    lines = [f"sweep {sweep_dir}: {len(runs) + len(waiting)} job(s)"]
    for r in runs:
        s = r.summary
        lines.append(
            f"  {r.name:<40} {r.status:<11} depth={s.get('depth')} epochs={s.get('epochs')} "
            f"best_val_loss={s.get('best_val_loss')}"
        )
    lines += [f"  {j.folder.name:<40} {NOT_STARTED}" for j in waiting]
    failed = [r for r in runs if r.status in FAILED and r.status != "interrupted"]
    if failed:
        lines.append(f"{len(failed)} job(s) FAILED:")
        lines += [f"  {r.folder}: {r.error}" for r in failed]
    stopped = [r for r in runs if r.status == "interrupted"]
    if stopped:
        lines.append(f"{len(stopped)} job(s) interrupted (rerun the same command to resume them):")
        lines += [f"  {r.folder}" for r in stopped]
    if waiting:
        lines.append(f"{len(waiting)} job(s) {NOT_STARTED} (rerun the same command to run them):")
        lines += [f"  {j.folder}" for j in waiting]
    failed += stopped
    named = {r.folder.resolve() for r in failed}
    unrecorded = [Path(f).resolve() for f in refused if Path(f).resolve() not in named]
    if unrecorded:
        lines.append(f"{len(unrecorded)} job(s) did not run in this sweep (the reason is above):")
        lines += [f"  {f}" for f in unrecorded]
    named.update(unrecorded)
    elsewhere = [r.folder.resolve() for r in runs if ended and r.status == "running"]
    elsewhere = [f for f in elsewhere if f not in named]
    if elsewhere:
        lines.append(
            f"{len(elsewhere)} job(s) not finished by this sweep (another process has them, or they "
            "were killed; rerun the same command when they are done):"
        )
        lines += [f"  {f}" for f in elsewhere]
    return "\n".join(lines), len(failed) + len(unrecorded) + len(elsewhere) + len(waiting)
