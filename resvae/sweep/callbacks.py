"""The sweep's Hydra callback: its report, stopping local jobs, continuing an Optuna study.

`SweepReport` (hydra.callbacks.sweep_report in conf/train.yaml): a multirun ends with its report
(report.md/.csv/.html, resvae/sweep/report.py), a table of its jobs, and a non-zero exit code when a job
failed. A job that fails with a user error (resvae/run/errors.py) returns and the sweep goes on; this
callback's on_multirun_end then sees it in summary.json and exits 1. A job that fails with any
other exception makes Hydra's basic sweeper re-raise it after the sweep, which skips
on_multirun_end; so the report is also registered with atexit and written however the process
ends (the exit code then stays Hydra's, non-zero). A job refused before it owned its folder (in
use by another trainer) writes nothing there; an in-process job of that kind is listed after
the table and also makes the sweep exit 1. The table tells apart jobs that failed, jobs that
were interrupted (a stop signal: status `interrupted`, last.ckpt saved, the same command resumes
them) and, for Hydra's basic sweeper, whose job list is known in advance (`sweep_jobs`), jobs
that never started. Logging the report to W&B may fail (after a stop signal W&B has shut down
before the report is written at exit): that is one line, and the report is still written.

Under `hydra/launcher=submitit_local` the jobs are child processes of the sweep, which would
keep training when the sweep process is stopped. `SweepReport` then forwards SIGTERM and SIGINT
sent to the sweep process to every running job as SIGTERM (each saves last.ckpt at its current
batch, resvae/run/signals.py), waits for them (`stop_grace_s`, then kills them), writes
the report and exits with 128 + the signal. A second signal kills the jobs at once. Jobs still
running when the sweep process ends for another reason are stopped the same way.

With Optuna's sweeper (conf/hparams_search/*.yaml), `SweepReport` also prepares the study kept in
the sweep folder so that the same command continues it (`OptunaStudy`). See docs/sweeps.md.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import fcntl
import itertools
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from resvae.run.config import SWEEP_ENV, run_leaf
from resvae.sweep.report import FAILED, collect_runs, log_report_to_wandb, write_report

log = logging.getLogger("resvae.sweep")

# the _target_ of Hydra's default sweeper (compared as text: its module is Hydra's, not imported)
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
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

    sweeper = config.hydra.get("sweeper") or {}
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return None
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
        self._pending: Any = None
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
        sweep_dir, wandb = Path(config.hydra.sweep.dir), wandb_target(config)
        self._jobs = sweep_jobs(config)
        # at exit (a stop signal, a job's exception): the same report, with what is known then
        self._pending = lambda: finish_sweep(sweep_dir, wandb, self._not_ok, False, self._jobs, self._started)
        atexit.register(self._pending)
        if OptunaStudy.applies(config):
            self._study = OptunaStudy()
            self._study.prepare(config, sweep_dir)
        if is_submitit_local(config):
            JobStopper(grace_s=self.stop_grace_s).install()

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


# ----------------------------------------------------------------------------- stopping local jobs
# submitit's local executor: the sweep process starts one controller per job
# (python -m submitit.local._local FOLDER), which starts the job (python -u -m submitit.core._submit
# FOLDER) and sends it SIGUSR2 signal_delay_s before timeout_min.
CONTROLLER_MARK = "submitit.local._local"
JOB_MARK = "submitit.core._submit"


def is_submitit_local(config: DictConfig) -> bool:
    target = str((config.hydra.get("launcher") or {}).get("_target_", ""))
    return target.startswith("hydra_plugins.hydra_submitit_launcher.") and target.endswith(".LocalLauncher")


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process this user can see."""
    table: dict[int, tuple[int, str]] = {}
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # gone meanwhile, or not ours to read
                continue
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            table[int(entry.name)] = (ppid, cmdline)
        return table
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,command="], capture_output=True, text=True).stdout
    for line in out.splitlines():
        pid, ppid, *command = line.split(None, 2)
        table[int(pid)] = (int(ppid), command[0] if command else "")
    return table


def descendants(root: int, marks: Sequence[str]) -> list[int]:
    """Descendant processes of `root` whose command line contains one of `marks`."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if any(mark in table[pid][1] for mark in marks):
            found.append(pid)
        todo += children.get(pid, [])
    return sorted(found)


def _send(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(pid, sig)


class JobStopper:
    """In the sweep process: SIGTERM or SIGINT is forwarded once, as SIGTERM, to the running
    submitit_local jobs; the sweep then waits up to `grace_s` for the jobs and their controllers
    to exit, kills what is left, and exits with 128 + the signal (atexit writes the sweep's
    report). A second signal kills the jobs at once. The same happens to jobs still running when
    the sweep process ends otherwise (e.g. another job's failure raised in the launcher): none is
    left behind, untracked. The signal is sent once only: a job that has saved may still be
    closing its W&B run, which a second SIGTERM would cut short."""

    def __init__(
        self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT), grace_s: float = 300.0
    ) -> None:
        self.signals, self.grace_s = list(signals), grace_s
        self.stopping: int | None = None

    def install(self) -> None:
        for sig in self.signals:
            signal.signal(sig, self._handle)
        atexit.register(self._at_exit)  # after the report's: runs before it

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping is not None:  # asked twice: do not wait
            _send(descendants(os.getpid(), [JOB_MARK, CONTROLLER_MARK]), signal.SIGKILL)
            raise SystemExit(128 + signum)
        self.stopping = signum
        self.stop(signal.Signals(signum).name)
        raise SystemExit(128 + signum)

    def _at_exit(self) -> None:
        if self.stopping is None:
            self.stopping = 0
            self.stop("the sweep process ends")

    def stop(self, why: str) -> None:
        me = os.getpid()
        jobs = descendants(me, [JOB_MARK])
        if jobs:
            print(
                f"{why}: stopping {len(jobs)} running job(s) (each saves checkpoints/last.ckpt; "
                "rerun the same command to resume); send SIGTERM again to kill them",
                file=sys.stderr,
                flush=True,
            )
            _send(jobs, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while left := descendants(me, [JOB_MARK, CONTROLLER_MARK]):
            if time.monotonic() >= deadline:
                print(f"still running after {self.grace_s:g} s, killed: {left}", file=sys.stderr, flush=True)
                _send(left, signal.SIGKILL)
                break
            time.sleep(0.2)


# ----------------------------------------------------------------------------- Optuna
INTERRUPTED_ATTR = "resvae_interrupted_trials"  # study user attribute: numbers of trials a kill cut short


OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


class OptunaStudy:
    """Makes an Optuna search with a storage and a study name (as in conf/hparams_search/*.yaml:
    sqlite in the sweep folder) continue when the same command runs again. Run in
    on_multirun_start, before Hydra instantiates the sweeper from the same config:

    - `hydra.sweeper.n_trials` is lowered by the study's finished trials (complete, pruned,
      failed) of earlier attempts, so a rerun runs only the trials still missing, and a finished
      search runs none;
    - a trial that a killed sweep left RUNNING is marked FAIL (its number is kept in the study's
      user attribute `resvae_interrupted_trials` and does not count) and its parameters are
      enqueued: it runs again first, as a new trial, in the same run folder, so its job resumes
      from last.ckpt.

    It also writes the sweep's multirun.yaml, as Hydra's basic sweeper does and Optuna's does not.
    Trials left RUNNING are taken for interrupted only when no other sweep process works on the
    study: each holds a shared lock on `optuna.lock` in the sweep folder for as long as it runs,
    and the clean-up needs it exclusively.
    """

    def __init__(self) -> None:
        self._lock_fd: int | None = None

    @staticmethod
    def applies(config: DictConfig) -> bool:
        sweeper = config.hydra.get("sweeper") or {}
        return (
            sweeper.get("_target_") == OPTUNA_SWEEPER
            and sweeper.get("storage") is not None
            and sweeper.get("study_name") is not None
        )

    def prepare(self, config: DictConfig, sweep_dir: Path) -> None:
        sweeper = config.hydra.sweeper
        sweep_dir.mkdir(parents=True, exist_ok=True)  # sqlite does not create the folder
        OmegaConf.save(config, sweep_dir / "multirun.yaml")  # as Hydra's basic sweeper does
        self._lock_fd = os.open(sweep_dir / "optuna.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        done = resume_study(sweeper.study_name, str(sweeper.storage), interrupted_are_stale=alone)
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)  # kept until the process ends; others may join
        if not done:
            return
        left = max(int(sweeper.n_trials) - done, 0)
        print(
            f"continuing the Optuna study {sweeper.study_name}: {done} of {sweeper.n_trials} trial(s) "
            f"finished, {left} to run",
            flush=True,
        )
        with open_dict(sweeper), read_write(sweeper):
            sweeper.n_trials = left


def resume_study(study_name: str, storage: str, interrupted_are_stale: bool) -> int:
    """Prepare an existing study for another attempt (see OptunaStudy) and return how many of its
    trials are finished; 0 for a study not created yet."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    interrupted = list(study.user_attrs.get(INTERRUPTED_ATTR, []))
    if interrupted_are_stale:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            interrupted.append(trial.number)
            study.set_user_attr(INTERRUPTED_ATTR, interrupted)
            study.tell(trial.number, state=TrialState.FAIL)
            if trial.params:
                study.enqueue_trial(trial.params)
            log.warning(
                "trial %d was interrupted; it runs again with the same parameters %s",
                trial.number,
                trial.params,
            )
    finished = study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    )
    return sum(1 for t in finished if t.number not in interrupted)
