"""Where the Hydra configs live, and the resolvers they use (registered once, on import)."""

from __future__ import annotations

import hashlib
import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
from omegaconf import OmegaConf


def config_dir() -> Path:
    """`conf/` of the source tree, or the copy packed into an installed wheel."""
    package = Path(__file__).resolve().parents[1]  # resvae/
    packed = package / "conf"
    return packed if packed.is_dir() else package.parent / "conf"


def auto_precision() -> str:
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

    def key_of(item: str) -> str:
        return item.split("=", 1)[0].lstrip("+~")

    kept = sorted(
        item
        for item in overrides
        if not any(key_of(item) == ex or key_of(item).startswith(ex + ".") for ex in excluded)
    )
    leaf = ",".join(kept).replace("/", "%2F") or "default"
    if len(leaf) > MAX_LEAF:
        digest = hashlib.sha1(leaf.encode()).hexdigest()[:10]
        leaf = f"{leaf[: MAX_LEAF - 11]}~{digest}"
    return leaf


SWEEP_ENV = "RESVAE_SWEEP_FOLDER"


def sweep_leaf(
    overrides: Sequence[str], excluded: Sequence[str] = (), also_excluded: Sequence[str] = ()
) -> str:
    """A sweep folder's name: `run_leaf` of the sweep's command line. Hydra resolves the sweep
    folder again in every job, with the job's own overrides, so the sweep's callback
    (resvae.sweep.callbacks) fixes it for its jobs in the environment, where jobs in other
    processes (submitit) find it too."""
    return os.environ.get(SWEEP_ENV) or run_leaf(overrides, excluded, also_excluded)


STUDY_PROTOCOL = "keras2018"  # the 2018 study as it ran (experiment=seed_depth_sweep)


def study_sampling(protocol: str) -> bool:
    """model=keras2018's default sampling: the notebook's (exp(logvar) as the std) exactly when
    the run follows the study's protocol as it ran; the corrected study and any other protocol
    sample the posterior the KL describes."""
    return protocol == STUDY_PROTOCOL


def register_resolvers() -> None:
    for name, fn in (
        ("study_sampling", study_sampling),
        ("auto_precision", auto_precision),
        ("wandb_offline", wandb_offline),
        ("run_leaf", run_leaf),
        ("sweep_leaf", sweep_leaf),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def config_problem(argv: Sequence[str]) -> str | None:
    """A one-line message for the first problem of a command line's overrides, or None
    (resvae/run/preflight.py)."""
    from resvae.run.preflight import config_problem as check  # it composes configs: imported late

    return check(argv)


register_resolvers()
