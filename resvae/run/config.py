"""Where the Hydra configs live, and the resolvers they use (registered once, on import)."""

from __future__ import annotations

import hashlib
import netrc
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import OmegaConf


def config_dir() -> Path:
    """`conf/` of the source tree, or the copy packed into an installed wheel."""
    package = Path(__file__).resolve().parents[1]  # resvae/
    packed = package / "conf"
    return packed if packed.is_dir() else package.parent / "conf"


def auto_precision() -> str:
    import torch  # here, not at the top: resvae-train --help composes configs without torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def wandb_logged_in() -> bool:
    """An API key in the environment, or a netrc entry for the W&B server in use (api.wandb.ai,
    or a self-hosted one named by WANDB_BASE_URL), as `wandb login` writes it."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        auth = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def wandb_offline() -> bool:
    """Offline unless logged in; WANDB_MODE=online/offline decides when set."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("online", "run"):
        return False
    if mode in ("offline", "dryrun"):
        return True
    return not wandb_logged_in()


# a run name or an output's file stem: one folder or file name, never a path (no /, no ..)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_LEAF = 120  # characters of a run folder's name before the rest is replaced by a hash


def run_leaf(
    overrides: Sequence[str], excluded: Sequence[str] = (), also_excluded: Sequence[str] = ()
) -> str:
    """A run folder's last part: the command line's overrides that change what is trained.

    ["model.depth=40", "logger=csv", "data.root=/x"] -> "model.depth=40" (with `excluded`
    holding "logger" and "data.root"; a key is excluded with everything below it). Sorted, so
    the order on the command line does not matter; "/" in values becomes "%2F" so that a value
    never nests folders; names longer than MAX_LEAF end in a hash of the whole; "default"
    when nothing is left.
    """

    excluded = [*excluded, *also_excluded]
    kept = sorted(item for item in overrides if not is_excluded(key_of(item), excluded))
    return cut_leaf(",".join(kept).replace("/", "%2F") or "default", MAX_LEAF)


def key_of(override: str) -> str:
    """`+model.arch.depth=40` -> `model.arch.depth`."""
    return override.split("=", 1)[0].lstrip("+~")


def is_excluded(key: str, excluded: Sequence[str]) -> bool:
    """Whether `key` is one of `excluded` or below one of them."""
    return any(key == ex or key.startswith(ex + ".") for ex in excluded)


def cut_leaf(leaf: str, limit: int) -> str:
    """`leaf`, or where longer than `limit` its start and a hash of the whole (still unique)."""
    if len(leaf) <= limit:
        return leaf
    return f"{leaf[: limit - 11]}~{hashlib.sha1(leaf.encode()).hexdigest()[:10]}"


SWEEP_ENV = "RESVAE_SWEEP_FOLDER"


def sweep_leaf(
    overrides: Sequence[str], excluded: Sequence[str] = (), also_excluded: Sequence[str] = ()
) -> str:
    """A sweep folder's name: `run_leaf` of the sweep's command line. Hydra resolves the sweep
    folder again in every job, with the job's own overrides, so the sweep's callback
    (resvae.sweep.callbacks) fixes it for its jobs in the environment, where jobs in other
    processes (submitit) find it too."""
    return os.environ.get(SWEEP_ENV) or run_leaf(overrides, excluded, also_excluded)


SWEEP_KEYS_ENV = "RESVAE_SWEEP_KEYS"  # the keys a sweep varies, set by its callback for the jobs
SHORT_NAMES = {"latent_dim": "latent", "train_size": "images"}  # readable job names (job_leaf)


def varied_keys(task_overrides: Sequence[str], sweeper_params: Mapping[str, Any] | None) -> list[str]:
    """The keys a sweep varies: its command line's sweeps (`model.arch.depth=28,40`) and the
    sweeper's `params` (an experiment's grid, an Optuna search space), in that order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = [
        o.key_or_group
        for o in OverridesParser.create().parse_overrides(list(task_overrides))
        if o.is_sweep_override()
    ]
    return list(dict.fromkeys([*keys, *(sweeper_params or {})]))


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key by its last part (`model.arch.depth` -> `depth`, latent_dim -> latent), or
    whole where two keys would read the same (`data.seed` and `seed`)."""
    last = {key: SHORT_NAMES.get(key.rsplit(".", 1)[-1], key.rsplit(".", 1)[-1]) for key in keys}
    clash = {name for name in last.values() if list(last.values()).count(name) > 1}
    return {key: key if name in clash else name for key, name in last.items()}


def job_leaf(
    overrides: Sequence[str],
    excluded: Sequence[str] = (),
    also_excluded: Sequence[str] = (),
    sweep_dir: str | None = None,
) -> str:
    """A sweep job's folder: what the sweep varies, `depth=40` or `lr=0.0003,latent=128`, never
    cut (the full overrides stay in .hydra/, summary.json and W&B). Without a sweep's keys (a job
    started otherwise), `run_leaf`. A job folder named by a version of resvae before this rule
    (its full overrides, `run_leaf`) is used where it exists and the new one does not, so a rerun
    of an older sweep's command still finds its runs."""
    full = run_leaf(overrides, excluded, also_excluded)
    swept = [k for k in os.environ.get(SWEEP_KEYS_ENV, "").split(",") if k]
    swept = [k for k in swept if not is_excluded(k, [*excluded, "hydra"])]
    values = {key_of(o): o.split("=", 1)[1] for o in overrides if "=" in o}
    names = short_names(swept)
    parts = [f"{names[k]}={values[k]}" for k in swept if k in values]
    if not parts:
        return full
    # a folder name must stay under the filesystem's 255 bytes
    leaf = cut_leaf(",".join(parts).replace("/", "%2F"), 2 * MAX_LEAF)
    if sweep_dir and not (Path(sweep_dir) / leaf).exists() and (Path(sweep_dir) / full).is_dir():
        return full
    return leaf


STUDY_PROTOCOL = "keras2018"  # the 2018 study as it ran (experiment=seed_depth_sweep)


def study_sampling(protocol: str) -> bool:
    """model=keras2018's default sampling: the notebook's (exp(logvar) as the std) exactly when
    the run follows the study's protocol as it ran; the corrected study and any other protocol
    sample the posterior the KL describes."""
    return protocol == STUDY_PROTOCOL


def is_terminal() -> bool:
    """Whether stdout is a terminal (a live progress bar there; plain lines in logs)."""
    return sys.stdout.isatty()


def register_resolvers() -> None:
    for name, fn in (
        ("is_terminal", is_terminal),
        ("study_sampling", study_sampling),
        ("auto_precision", auto_precision),
        ("wandb_offline", wandb_offline),
        ("run_leaf", run_leaf),
        ("sweep_leaf", sweep_leaf),
        ("job_leaf", job_leaf),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
