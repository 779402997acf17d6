"""A run and its folder: what it is (config hash), who owns it (a lock), what it already did
(summary.json, checkpoints) and so what this attempt does (train, test only, or nothing).

A run folder has no timestamp, so the same command finds it again after a kill or a requeue.
That makes the folder's contents the truth about a run only if nothing else can write there and
nothing stale can pass for a result, hence:
- the config hash: a run is keyed by a hash of its resolved config minus what does not change
  what is trained (`run.excludes`); an attempt whose config differs from the folder's run is
  refused with the differences, before anything is written;
- the lock: one live trainer per folder (`fcntl` lock via filelock, released by the kernel when
  its process dies, so a stale lock of a killed trainer is simply taken over);
- leftovers of a killed attempt (temporary files of atomic writes, an unreadable summary.json)
  are cleaned or kept aside, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from resvae.run.checkpoints import CHECKPOINT_TAG, check_compatible, read_checkpoint
from resvae.run.io import atomic_write_json, remove_partial_writes

log = logging.getLogger("resvae.run.folder")

SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"
OWNER_FILE = ".lock.owner.json"
WANDB_ID_FILE = "wandb/run_id"


class RunFolderError(RuntimeError):
    """The run folder holds something this attempt must not overwrite, or is in use."""


def end_status(error: BaseException) -> str:
    """summary.json's status for an attempt ended by `error`: a signal (SystemExit) or Ctrl-C
    interrupts a run that can be resumed; anything else fails it."""
    return "interrupted" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "failed"


def checkpoint_callbacks(callbacks: list[Any]) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """(best: the ModelCheckpoint that monitors val/loss, latest: the one that keeps the newest state)."""
    best = [c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor]
    latest = [c for c in callbacks if isinstance(c, ModelCheckpoint) and not c.monitor]
    if len(best) != 1 or len(latest) != 1:
        raise ValueError(
            "callbacks: resvae-train needs one ModelCheckpoint with a monitor (callbacks.model_checkpoint, "
            "best.ckpt) and one without (callbacks.last_checkpoint, last.ckpt: where reruns continue)"
        )
    return best[0], latest[0]


def hashed_config(cfg: DictConfig | Mapping[str, Any], excludes: Iterable[str]) -> dict[str, Any]:
    """The resolved config without the dotted keys in `excludes` (each with all below it)."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    for key in excludes:
        *parents, leaf = key.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return data


def config_hash(config: Mapping[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def without_new_nulls(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """`new` less the keys that `old` lacks and whose value is null: a key a later version of the
    suite added at a null default, so a run trained before it existed is still the same run."""
    kept = {}
    for key, value in new.items():
        if key not in old and value is None:
            continue
        if isinstance(value, Mapping) and isinstance(old.get(key), Mapping):
            value = without_new_nulls(old[key], value)
        kept[key] = value
    return kept


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """'key: old -> new' for every dotted key whose value differs (missing shows as <unset>)."""
    diffs = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += config_differences(a, b, name + ".")
        elif a != b:
            diffs.append(f"{name}: {a!r} -> {b!r}")
    return diffs


def read_summary(folder: str | Path) -> dict[str, Any] | None:
    """A run folder's summary.json, or None when there is none; an unreadable one is an error
    that names the file (see Run for how a run deals with it)."""
    path = Path(folder) / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is unreadable ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


class Run:
    """The folder of one training run (Hydra's output dir) and the decision of this attempt.

    `todo` is "train" (fit, then test if asked), "test" (training finished earlier, the test
    has not run) or "nothing"; `resume_from` the checkpoint fit continues from.

    `owner=False` is for the other processes of one job (DDP ranks above 0, which Lightning
    starts with the same command and folder): they read the folder to reach rank 0's decision,
    and take no lock and write nothing there; rank 0 owns the folder and its records.
    """

    def __init__(
        self,
        folder: Path,
        config: Mapping[str, Any],
        *,
        last_checkpoint: Path,
        resume: str = "auto",
        test: bool = True,
        max_epochs: int | None = None,
        owner: bool = True,
    ) -> None:
        """last_checkpoint: the path of the checkpoint callback that keeps the newest state."""
        self.folder = folder
        self.config = dict(config)
        self.config_hash = config_hash(self.config)
        self.checkpoint_dir = last_checkpoint.parent
        self.last_checkpoint = last_checkpoint
        self.resume, self.test, self.max_epochs = resume, test, max_epochs
        self.owner = owner
        self._lock = FileLock(folder / LOCK_FILE, timeout=0)
        self.summary: dict[str, Any] = {}
        self.previous: dict[str, Any] | None = None
        self.todo = "train"
        self.resume_from: Path | None = None
        self.data_fingerprint: str | None = None

    # ----------------------------------------------------------------- opening
    def open(self) -> Run:
        """Take the folder, clean what a killed attempt left, and decide what to do. Raises
        RunFolderError (nothing written) when the folder is in use or holds another run."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.owner:
            self._take_lock()
        try:
            removed = remove_partial_writes(self.folder) if self.owner else []
            if removed:
                log.warning(
                    "removed %d unfinished file(s) of a killed attempt: %s", len(removed), removed[:3]
                )
            self.previous = self._read_previous_summary()
            self.resume_from = self._checkpoint_to_resume()
            self._check_same_run()
            self.todo = self._work_left()
            if self.todo == "train":
                self._check_epochs()
        except BaseException:
            self.close()
            raise
        self.summary = dict(self.previous or {})
        self.summary.update(config_hash=self.config_hash, config=self.config)
        return self

    def _take_lock(self) -> None:
        owner_path = self.folder / OWNER_FILE
        try:
            self._lock.acquire()
        except Timeout:
            owner = _read_json(owner_path)
            raise RunFolderError(
                f"{self.folder} is in use by another trainer (pid {owner.get('pid', '?')} on host "
                f"{owner.get('host', '?')}, since {owner.get('since', '?')}): nothing was changed. "
                "Wait for it to finish or stop it; for a second run use name=<other name>."
            ) from None
        stale = _read_json(owner_path)
        if stale:
            log.warning(
                "took over the run folder from pid %s on host %s, which stopped without releasing it",
                stale.get("pid"),
                stale.get("host"),
            )
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": local_time()}
        atomic_write_json(owner_path, owner)

    def _read_previous_summary(self) -> dict[str, Any] | None:
        try:
            return read_summary(self.folder)
        except ValueError as err:
            if not self.owner:  # rank 0 keeps it aside
                return None
            aside = self.folder / f"{SUMMARY_FILE}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(self.folder / SUMMARY_FILE, aside)
            log.warning("%s; kept it as %s and continue from the checkpoints", err, aside.name)
            return None

    def _checkpoint_to_resume(self) -> Path | None:
        existing = (
            sorted(p.name for p in self.checkpoint_dir.glob("*.ckpt")) if self.checkpoint_dir.is_dir() else []
        )
        if self.resume == "auto":
            if self.last_checkpoint.is_file():
                return self.last_checkpoint
            if existing:  # e.g. save_last was off: starting afresh would write over this run
                raise RunFolderError(
                    f"{self.folder} holds {', '.join(existing)} but no {self.last_checkpoint.name}, so "
                    "it cannot be continued exactly: nothing was changed. Continue from one of them "
                    "with resume='<path>', or start a new run with name=<new name>."
                )
            return None
        if self.resume == "never":
            if existing:
                raise RunFolderError(
                    f"{self.folder} already holds checkpoints of an earlier run and resume=never: "
                    "nothing was changed. Use resume=auto to continue it, or name=<new name> for a new run."
                )
            return None
        path = Path(self.resume).expanduser()
        if not path.is_file():
            raise RunFolderError(f"resume={self.resume}: no such checkpoint file")
        return path

    def _stored_configs(self) -> list[tuple[str, dict[str, Any] | None, str]]:
        """(config hash, config, where) of the run in this folder, as summary.json and the
        checkpoint to resume from record it (a checkpoint copied in from elsewhere shows here)."""
        stored = []
        if self.previous and self.previous.get("config_hash"):
            stored.append((self.previous["config_hash"], self.previous.get("config"), SUMMARY_FILE))
        for path in {self.last_checkpoint, self.resume_from} - {None}:
            if path is not None and path.is_file() and path.resolve().is_relative_to(self.folder.resolve()):
                info = read_checkpoint(path).get(CHECKPOINT_TAG, {}).get("run", {})
                if info.get("config_hash"):
                    where = str(path.resolve().relative_to(self.folder.resolve()))
                    stored.append((info["config_hash"], info.get("config"), where))
        return stored

    def _check_same_run(self) -> None:
        """Refuse a folder that holds a run of another config (resume=never refuses any run)."""
        if self.resume == "never":
            return
        for stored_hash, stored, where in self._stored_configs():
            if stored_hash == self.config_hash:
                continue
            if stored is not None and config_hash(without_new_nulls(stored, self.config)) == stored_hash:
                continue  # the same run, trained before a key this version added at null
            diffs = config_differences(stored or {}, self.config) or ["(the stored config is not available)"]
            shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
            raise RunFolderError(
                f"{self.folder} holds a run trained with another configuration (its {where}: {shown}): "
                "nothing was changed. To train this configuration give it its own folder with "
                "name=<new name>; to continue the run in this folder, go back to its settings."
            )

    def _check_epochs(self) -> None:
        """A checkpoint beyond trainer.max_epochs cannot be continued (Lightning refuses it)."""
        if self.resume_from is None or self.max_epochs in (None, -1):
            return
        epoch = int(read_checkpoint(self.resume_from).get("epoch", 0))
        if epoch > self.max_epochs:
            raise RunFolderError(
                f"{self.resume_from} is at epoch {epoch} but trainer.max_epochs={self.max_epochs}: "
                f"nothing was changed. Set trainer.max_epochs={epoch} or more to continue it, or give a "
                "new run its own folder with name=<new name>."
            )

    def _work_left(self) -> str:
        summary = self.previous if self.resume == "auto" else None
        if not summary or summary.get("status") != "finished":
            return "train"
        max_epochs = self.max_epochs if self.max_epochs not in (None, -1) else float("inf")
        trained_out = summary.get("stopped_early") or summary.get("epochs", 0) >= max_epochs
        if not trained_out:
            return "train"  # e.g. max_epochs was raised since
        return "test" if self.test and not summary.get("tested") else "nothing"

    # ----------------------------------------------------------------- while it runs
    def wandb_id(self) -> str:
        """A W&B run id kept in the folder, so a resumed job continues the same W&B run."""
        path = self.folder / WANDB_ID_FILE
        if path.is_file():
            return path.read_text().strip()
        if not self.owner:  # rank 0 writes it before it starts the other ranks, which never log
            return ""
        run_id = secrets.token_hex(4)  # W&B ids are short lowercase alphanumerics
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
        return run_id

    def check_data(self, fingerprint: str) -> None:
        """Refuse data other than the run's (a hash of its images, wherever they lie)."""
        stored = (self.previous or {}).get("data_fingerprint")
        if stored is None and self.last_checkpoint.is_file():
            stored = read_checkpoint(self.last_checkpoint).get(CHECKPOINT_TAG, {}).get("run", {}).get("data")
        if stored is not None and self.resume != "never" and stored != fingerprint:
            raise RunFolderError(
                f"{self.folder} holds a run trained on other images than those data.root now gives "
                f"(data fingerprint {stored} vs {fingerprint}): nothing was changed. Point data.root at "
                "the run's data, or give this data its own folder with name=<new name>."
            )
        self.data_fingerprint = fingerprint
        self.summary["data_fingerprint"] = fingerprint

    def check_checkpoint(self, model_class: str, shape: Mapping[str, Any]) -> None:
        """Refuse a checkpoint to resume from (or to test) of another model or architecture."""
        if self.resume_from is None:
            return
        info = read_checkpoint(self.resume_from)[CHECKPOINT_TAG]
        check_compatible(info, model_class, dict(shape), self.resume_from)
        if self.todo == "test":
            log.info("%s: training finished earlier; running the test only", self.folder)
        else:
            log.info("resuming from %s", self.resume_from)

    def fail(self, error: BaseException, message: str) -> None:
        """Record an attempt's end by `error` (failed, or interrupted by a signal); a finished
        run's record stays as it was unless this attempt began to train it again."""
        if self.owner and self.todo == "train" and self.summary.get("status") != "finished":
            try:
                self.write_summary(status=end_status(error), error=f"{type(error).__name__}: {message}")
            except OSError as err:  # e.g. the disk is full: the original error matters more
                log.warning("could not record the failure in %s: %s", SUMMARY_FILE, err)

    def tested_checkpoint(self, best: ModelCheckpoint, weights: str = "best") -> str | None:
        """The checkpoint the test split evaluates: `best` (the lowest finite val/loss) or `last`
        (the final epoch's weights, as the 2018 study evaluated); None when there is none."""
        if weights == "last":
            return str(self.last_checkpoint) if self.last_checkpoint.is_file() else None
        return self.best_checkpoint(best)

    def best_checkpoint(self, best: ModelCheckpoint) -> str | None:
        """The best checkpoint by val/loss to test, or None when no epoch had a finite val/loss."""
        if best.best_model_path:  # this attempt trained (or restored the callback's state)
            score = best.best_model_score
            finite = score is not None and math.isfinite(float(score))
            return best.best_model_path if finite else None
        path = Path(best.dirpath) / f"{best.filename}{best.FILE_EXTENSION}"  # a test-only attempt
        return str(path) if path.is_file() and self.summary.get("best_val_loss") is not None else None

    def write_summary(self, **fields: Any) -> None:
        self.summary.update(fields)  # every rank knows the record; the owner writes it
        if self.owner:
            atomic_write_json(self.folder / SUMMARY_FILE, self.summary)

    def result(self) -> float | None:
        """What a sweeper optimises: the best validation loss (None when there is none)."""
        value = self.summary.get("best_val_loss")
        return float(value) if isinstance(value, (int, float)) else None

    def close(self) -> None:
        if self._lock.is_locked:
            (self.folder / OWNER_FILE).unlink(missing_ok=True)
            self._lock.release()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def local_time() -> str:
    """Now, as summary.json and the lock's owner file record it: 2026-12-04T16:44:23+0000."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
