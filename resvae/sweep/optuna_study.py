"""An Optuna search that the same command continues: `OptunaStudy`, run by the sweep's callback.

With Optuna's sweeper (conf/hparams_search/*.yaml: a study name and an sqlite storage in the
sweep folder), a rerun of the same command runs only the trials still missing, reruns a trial
that a kill interrupted (same parameters, so its run folder resumes from last.ckpt), and a
finished search runs none. See docs/sweeps.md.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger("resvae.sweep")

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
        """Whether the sweep is an Optuna search with a storage and a study name."""
        sweeper = config.hydra.get("sweeper") or {}
        return (
            sweeper.get("_target_") == OPTUNA_SWEEPER
            and sweeper.get("storage") is not None
            and sweeper.get("study_name") is not None
        )

    def prepare(self, config: DictConfig, sweep_dir: Path) -> None:
        """Clean up the study, lock it for this process and lower the sweeper's n_trials."""
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
        # no public hook: its config is the budget (tested: hydra-core 1.3.8, hydra-optuna-sweeper 1.3.0)
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
