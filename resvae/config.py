"""Where the Hydra configs live, and the resolvers they use (registered once, on import)."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

import torch
from omegaconf import OmegaConf


def config_dir() -> Path:
    """`conf/` of the source tree, or the copy packed into an installed wheel."""
    packed = Path(__file__).parent / "conf"
    return packed if packed.is_dir() else Path(__file__).resolve().parent.parent / "conf"


def auto_precision() -> str:
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc(os.environ.get("NETRC")).authenticators("api.wandb.ai")
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


def run_leaf(override_dirname: str) -> str:
    """A run folder's last part: its override string, or "default" when it has none."""
    return override_dirname or "default"


def register_resolvers() -> None:
    for name, fn in (
        ("auto_precision", auto_precision),
        ("wandb_offline", wandb_offline),
        ("run_leaf", run_leaf),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
