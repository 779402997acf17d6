"""One training job of resvae-train (resvae/cli/train.py): the run folder, the loggers and
callbacks, fit and test, the record. Imported only once a job runs (torch and Lightning load here).

A run's folder has no timestamp, so the same command finds it again: a rerun or a requeued job
continues from checkpoints/last.ckpt, and a finished run is not trained twice (resvae/run/folder.py).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from resvae.callbacks import RNGState, RunSummary, RunTag
from resvae.models import NonFiniteTrainingError
from resvae.run import errors
from resvae.run.checkpoints import AtomicCheckpointIO, BackgroundCheckpointIO, read_checkpoint
from resvae.run.folder import Run, RunFolderError, checkpoint_callbacks, hashed_config
from resvae.run.io import atomic_write
from resvae.run.loggers import MetricsCSVLogger, finish_wandb, quiet_boilerplate, wandb_summary_mirror
from resvae.run.numerics import set_float32_precision
from resvae.run.signals import Preempted, Preemption, StopNow, signal_exit

log = logging.getLogger("resvae.cli.train")


def make_loggers(cfg: DictConfig, run: Run) -> list[Any]:
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        factory = instantiate(node, _partial_=True)
        if not issubclass(factory.func, WandbLogger):
            loggers.append(factory())
        elif os.environ.get("WANDB_MODE", "").lower() != "disabled":
            wandb_logger = factory(
                id=run.wandb_id(), resume="allow", name=node.get("name") or run.folder.name,
                tags=[*(node.get("tags") or []), *run_tags(cfg)],
            )  # fmt: skip
            wandb_logger.log_hyperparams(flat_config(cfg))  # the model's own hparams are not logged again
            loggers.append(wandb_logger)
    return loggers


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config once, as dotted keys (`model.arch.depth`), W&B's columns to compare."""

    def walk(node: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(node, dict) or not node:
            return {prefix.rstrip("."): node}
        return {k: v for key, value in node.items() for k, v in walk(value, f"{prefix}{key}.").items()}

    return walk(OmegaConf.to_container(cfg, resolve=True), "")


def run_tags(cfg: DictConfig) -> list[str]:
    """W&B tags to filter by: the model, its depth and likelihood, and the sweep."""
    arch = cfg.model.get("arch") or {}
    tags = [f"model={str(cfg.model._target_).rsplit('.', 1)[-1]}", f"depth={arch.get('depth')}"]
    if cfg.model.get("likelihood"):
        tags.append(f"likelihood={cfg.model.likelihood}")
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        tags.append(f"sweep={cfg.name}")
    return [t[:64] for t in tags]  # W&B's limit per tag


def log_test_table(loggers: list[Any], summary: dict[str, Any]) -> None:
    """The test results as one W&B table row per run (W&B can then join a sweep's tables)."""
    columns = ["run", "depth", "params", "test_bpd", "test_bpd_iw", "best_epoch", "min_val_bpd"]
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table(key="test/results", columns=columns, data=[[summary.get(c) for c in columns]])


def run_callbacks(cfg: DictConfig, run: Run, loggers: list[Any]) -> list[Any]:
    """What the run folder's contract needs besides the configured callbacks."""
    csv = [lg for lg in loggers if isinstance(lg, MetricsCSVLogger)]  # also a callback: rows in checkpoints
    if run.todo == "test" and csv and run.last_checkpoint.is_file():  # keep the history it had
        epochs, step = run.summary.get("epochs", 0), run.summary.get("global_step", 0)
        csv[0].restore_for_test(read_checkpoint(run.last_checkpoint), epochs, step)
    provenance = {
        "name": cfg.name, "protocol": cfg.protocol, "seed": cfg.seed, "run": run.folder.name,
        "run_dir": str(run.folder), "overrides": list(HydraConfig.get().overrides.task),
        "git_commit": git_commit(),
    }  # fmt: skip
    if run.todo == "train":  # a test-only attempt keeps the training attempt's record
        provenance["resumed_from"] = str(run.resume_from) if run.resume_from else None
    summary = RunSummary(run, provenance, mirror=wandb_summary_mirror(loggers))
    return [*csv, summary, RNGState(), RunTag(run), Preemption(run.last_checkpoint, cfg.run.signals)]


def git_commit() -> str:
    """HEAD of the repository holding this package, with '-dirty' for uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def save_config_record(cfg: DictConfig, folder: Path) -> None:
    """`.hydra/` (config.yaml, hydra.yaml, overrides.yaml) as Hydra writes it, but only once this
    attempt owns the folder and was not refused (hydra.output_subdir is null for that reason)."""
    hydra_cfg = HydraConfig.get()
    files = {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.to_container(hydra_cfg)})),
        "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(hydra_cfg.overrides.task))),
    }
    for name, text in files.items():
        atomic_write(folder / ".hydra" / name, lambda f, text=text: f.write(text.encode()))


def train(cfg: DictConfig) -> float | None:
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()]
    best, latest = checkpoint_callbacks(callbacks)
    run = Run(
        Path(HydraConfig.get().runtime.output_dir), hashed_config(cfg, cfg.run.excludes),
        last_checkpoint=Path(latest.dirpath) / f"{latest.filename}{latest.FILE_EXTENSION}",
        resume=str(cfg.resume), test=cfg.test, max_epochs=cfg.trainer.max_epochs,
        owner=rank_zero_only.rank == 0,  # DDP's other ranks rerun this command in the same folder
    ).open()  # fmt: skip
    exit_code, preempted = 1, False
    previous = {sig: signal.getsignal(signal.Signals[sig]) for sig in cfg.run.signals}
    stoppers = [StopNow(handler) for handler in previous.values()]
    for sig, stopper in zip(previous, stoppers):
        signal.signal(signal.Signals[sig], stopper)
    try:
        datamodule = instantiate(cfg.data)
        if hasattr(datamodule, "fingerprint"):  # reads the images; refuses another run's data
            run.check_data(datamodule.fingerprint)
        if run.todo == "nothing":
            log.info(
                "%s: this run already finished (%s epochs); nothing to do",
                run.folder,
                run.summary.get("epochs"),
            )
            exit_code = 0
            return run.result()
        L.seed_everything(cfg.seed, workers=True)
        set_float32_precision(cfg.matmul_precision, cfg.get("conv_precision"))  # convolutions too
        loggers = make_loggers(cfg, run)  # before the model, so that a failing job shows in W&B
        model = instantiate(cfg.model, _convert_="all")
        run.check_checkpoint(type(model).__name__, model.shape_signature())
        if cfg.trainer.get("enable_progress_bar"):  # a terminal: Rich's bar (speed, ETA per batch)
            callbacks.append(RichProgressBar())
        if not loggers:  # Lightning refuses a LearningRateMonitor with nothing to log to
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        plugins: list[Any] = [BackgroundCheckpointIO() if cfg.run.async_checkpoints else AtomicCheckpointIO()]
        if SLURMEnvironment.detect():  # submitit requeues; Lightning must not requeue as well
            plugins.append(SLURMEnvironment(auto_requeue=False))
        trainer: L.Trainer = instantiate(
            cfg.trainer, callbacks=[*callbacks, *run_callbacks(cfg, run, loggers)], logger=loggers or False,
            plugins=plugins,
        )  # fmt: skip
        if run.owner:  # once the attempt is built: a config that fails to build leaves the run's record
            save_config_record(cfg, run.folder)
        if run.todo == "train":
            trainer.fit(model, datamodule=datamodule, ckpt_path=run.resume_from, weights_only=True)
            if run.summary.get("status") == "failed":  # diverged: RunSummary says how
                raise NonFiniteTrainingError(run.summary["error"])
        if cfg.test and (tested := run.tested_checkpoint(best, cfg.test_weights)) is not None:
            L.seed_everything(cfg.seed, workers=True)  # the same test numbers in any attempt
            trainer.test(model, datamodule=datamodule, ckpt_path=tested, weights_only=True)
            log_test_table(loggers, run.summary)
        elif cfg.test:
            log.warning(
                "no checkpoint to test (test_weights=%s): no epoch had a finite val/loss", cfg.test_weights
            )
        exit_code = 0
        log.info(final_line(run.summary, run.folder, cfg.model.get("iw_samples")))
    except BaseException as raised:
        err = signal_exit(raised, stoppers)
        preempted = isinstance(err, (Preempted, SIGTERMException, SystemExit))
        run.fail(err, errors.one_line(err))
        if err is raised:
            raise
        raise err from raised
    finally:
        for sig, handler in previous.items():
            signal.signal(signal.Signals[sig], handler if handler is not None else signal.SIG_DFL)
        finish_wandb(exit_code, preempted)
        run.close()
    return run.result()


def final_line(summary: dict[str, Any], folder: Path, iw_samples: int | None) -> str:
    """The run's one-line result: best epoch, best val bits/dim, test bits/dim (ELBO, IW), folder."""

    def bpd(key: str) -> str:
        value = summary.get(key)
        return f"{value:.4f}" if isinstance(value, (int, float)) else "-"

    parts = [f"done: {summary.get('epochs', '?')} epochs", f"best epoch {summary.get('best_epoch', '-')}"]
    parts.append(f"best val {bpd('min_val_bpd')} bits/dim")
    if summary.get("test_bpd") is not None:
        parts.append(f"test {bpd('test_bpd')} bits/dim (ELBO), {bpd('test_bpd_iw')} (IW, K={iw_samples})")
    return "; ".join(parts) + f"; {folder}"


def run_job(cfg: DictConfig) -> float | None:
    """One Hydra job: train (and test); a user error is one line, exit 2 (a sweep goes on)."""
    logging.captureWarnings(True)  # warnings go to the run's log file too
    quiet_boilerplate()
    try:
        return train(cfg)
    except errors.USER_ERRORS as err:
        refused = isinstance(err, RunFolderError)  # the folder holds another run, or is in use: no write
        errors.report(err, "resvae-train", Path(HydraConfig.get().runtime.output_dir), not refused)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return math.nan  # the sweep goes on; its report lists this job as failed
        raise SystemExit(2) from None
