"""resvae-train: the Hydra app that trains one VAE/AE run (or each job of a multirun).

    resvae-train experiment=smoke                     # a CPU run of a minute or two
    resvae-train data.root=/data/cifar10 model.depth=40
    resvae-train -m model.depth=28,40,70,100          # a depth sweep, one job per depth
    resvae-train experiment=depth_sweep               # the recommended GPU sweep

A run's folder (Hydra's output dir) has no timestamp, so the same command finds it again:
with resume=auto a rerun or a requeued job continues from checkpoints/last.ckpt, and a run
that already finished is not trained twice.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from resvae.callbacks import RunSummary, read_summary
from resvae.callbacks.resume import MetricsLedger, PreemptionCheckpoint, RNGState
from resvae.callbacks.summary import end_status
from resvae.checkpointing import (
    CHECKPOINT_TAG,
    AtomicCheckpointIO,
    check_compatible,
    epoch_end_pending,
    ledger_rows,
    logged_step,
    read_checkpoint,
)
from resvae.config import config_dir
from resvae.io import atomic_write_json
from resvae.loggers import restore_metrics_csv
from resvae.runinfo import git_commit

log = logging.getLogger("resvae.train")


class RunFolderError(RuntimeError):
    """The run folder holds an earlier run that this command must not overwrite."""


def resume_checkpoint(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint to continue from, per `resume` (auto | never | a path)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume == "auto":
        if last.is_file():
            return last
        others = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
        if others:  # e.g. save_last was off: starting afresh would write over this run
            raise RunFolderError(
                f"{run_dir} holds {', '.join(others)} but no last.ckpt, so it cannot be continued "
                "exactly: nothing was changed. Continue from one of them with resume='<path>', or "
                "start a new run with name=<new name>."
            )
        return None
    if resume == "never":
        if any((run_dir / "checkpoints").glob("*.ckpt")):
            raise RunFolderError(
                f"{run_dir} already holds checkpoints of an earlier run and resume=never: nothing "
                "was changed. Use resume=auto to continue it, or name=<new name> for a new run."
            )
        return None
    path = Path(resume).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint file")
    return path


def work_left(summary: dict[str, Any] | None, cfg: DictConfig) -> str:
    """What a run with this summary still needs: "train" (and test), "test" only, or "nothing"."""
    if not summary or summary.get("status") != "finished":
        return "train"
    trained_out = summary.get("stopped_early") or summary.get("epochs", 0) >= cfg.trainer.max_epochs
    if not trained_out:
        return "train"  # e.g. max_epochs was raised since
    return "test" if cfg.test and not summary.get("tested") else "nothing"


def best_checkpoint(trainer: L.Trainer, run_dir: Path) -> str | None:
    """The checkpoint to test: the best one by val/loss, else the last, else the current weights."""
    best = getattr(trainer.checkpoint_callback, "best_model_path", "")
    if best:
        return best
    for name in ("best.ckpt", "last.ckpt"):
        if (run_dir / "checkpoints" / name).is_file():
            return str(run_dir / "checkpoints" / name)
    return None


def wandb_run_id(run_dir: Path) -> str:
    """A W&B run id kept in the run folder, so a resumed job continues the same W&B run."""
    path = run_dir / "wandb" / "run_id"
    if path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)  # W&B ids are short lowercase alphanumerics
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def make_loggers(cfg: DictConfig, run_dir: Path, label: str) -> list[Any]:
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if not str(node.get("_target_", "")).endswith("WandbLogger"):
            loggers.append(instantiate(node))
            continue
        wandb_logger = instantiate(
            node, id=wandb_run_id(run_dir), resume="allow", name=node.get("name") or label
        )
        wandb_logger.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True)})
        loggers.append(wandb_logger)
    return loggers


def finish_wandb(exit_code: int) -> None:
    """Close the W&B run (if any) with the job's exit code, so failures show as failed."""
    import sys

    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def mark_failed(run_dir: Path, error: BaseException) -> None:
    """Record a failure in summary.json, keeping whatever an earlier write put there."""
    summary = read_summary(run_dir) or {}
    if summary.get("status") in ("failed", "interrupted"):
        return  # RunSummary already wrote it with full detail
    if summary.get("status") == "finished":
        return  # a finished run in this folder stays as it was: this attempt never got to train
    cause = error.__cause__ or error  # Hydra wraps errors raised while instantiating configs
    summary.update(status=end_status(error), error=f"{type(cause).__name__}: {cause}")
    atomic_write_json(run_dir / "summary.json", summary)


def prepare_resume(ckpt_path: Path, model: Any, run_dir: Path) -> None:
    """Check that the checkpoint fits the model; for the run's own checkpoint, bring metrics.csv
    back to what that checkpoint had seen (the resumed run logs the rest again)."""
    checkpoint = read_checkpoint(ckpt_path)
    check_compatible(checkpoint[CHECKPOINT_TAG], model.shape_signature(), type(model).__name__, ckpt_path)
    if ckpt_path.resolve().is_relative_to(run_dir.resolve()):
        restore_metrics_csv(
            run_dir / "metrics.csv",
            checkpoint["epoch"],
            logged_step(checkpoint),
            ledger_rows(checkpoint),
            epoch_end_pending(checkpoint),
        )
    log.info("resuming from %s", ckpt_path)


def make_callbacks(cfg: DictConfig, run_dir: Path, summary: RunSummary, with_loggers: bool) -> list[Any]:
    """The configured callbacks plus those the run-folder contract needs (summary, resume)."""
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()]
    if not with_loggers:  # logger=none: Lightning refuses a LearningRateMonitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return [*callbacks, summary, RNGState(), MetricsLedger(), PreemptionCheckpoint(run_dir / "checkpoints")]


def train(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    label = run_dir.name  # the run's override string (or "default"): its W&B run name

    ckpt_path = resume_checkpoint(cfg.resume, run_dir)
    previous = read_summary(run_dir)
    todo = work_left(previous, cfg) if cfg.resume == "auto" else "train"
    if todo == "nothing":
        log.info("%s: this run already finished (%s epochs); nothing to do", run_dir, previous.get("epochs"))
        return previous.get("best_val_loss", previous.get("val_loss"))

    exit_code = 1
    try:
        L.seed_everything(cfg.seed, workers=True)
        torch.set_float32_matmul_precision(cfg.matmul_precision)
        loggers = make_loggers(cfg, run_dir, label)  # first, so that a failing job shows in W&B
        datamodule = instantiate(cfg.data)
        model = instantiate(cfg.model, _convert_="all")
        if ckpt_path is not None and todo == "train":
            prepare_resume(ckpt_path, model, run_dir)
        summary = RunSummary(
            extra={
                "name": cfg.name,
                "run": label,
                "run_dir": str(run_dir),
                "seed": cfg.seed,
                "overrides": list(hydra_cfg.overrides.task),
                "git_commit": git_commit(),
                "resumed_from": str(ckpt_path) if ckpt_path else None,
            },
            previous=previous if cfg.resume == "auto" else None,
        )
        callbacks = make_callbacks(cfg, run_dir, summary, with_loggers=bool(loggers))
        plugins: list[Any] = [AtomicCheckpointIO()]
        if SLURMEnvironment.detect():  # submitit requeues; Lightning must not requeue as well
            plugins.append(SLURMEnvironment(auto_requeue=False))
        trainer: L.Trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins
        )
        if todo == "train":
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        else:
            log.info("%s: training finished earlier; running the test only", run_dir)
        if cfg.test:
            trainer.test(model, datamodule=datamodule, ckpt_path=best_checkpoint(trainer, run_dir))
        exit_code = 0
    except SIGTERMException as err:
        mark_failed(run_dir, err)
        log.warning("stopped by SIGTERM; the same command resumes from checkpoints/last.ckpt")
        raise SystemExit(143) from err  # 128 + SIGTERM, as if the signal had ended the process
    except BaseException as err:
        mark_failed(run_dir, err)
        raise
    finally:
        finish_wandb(exit_code)
    final = read_summary(run_dir) or {}
    return final.get("best_val_loss", final.get("val_loss"))


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
