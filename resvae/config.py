"""Where the Hydra configs live, and the resolvers they use (registered once, on import)."""

from __future__ import annotations

import difflib
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
    packed = Path(__file__).parent / "conf"
    return packed if packed.is_dir() else Path(__file__).resolve().parent.parent / "conf"


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
    (resvae.hydra_callbacks) fixes it for its jobs in the environment, where jobs in other
    processes (submitit) find it too."""
    return os.environ.get(SWEEP_ENV) or run_leaf(overrides, excluded, also_excluded)


USER_CONFIG_FLAGS = ("-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name")


def _first_value(value: str) -> str:
    """The first value of a sweep ("a,b,c" -> "a"), a bracketed list left whole."""
    return value if value.startswith("[") else value.split(",", 1)[0]


def unknown_override(argv: Sequence[str]) -> str | None:
    """A message for the first dotted override whose key the config does not have (naming the key
    it probably meant), or None. Keys added with + or removed with ~, Hydra's own keys and runs
    with a user config folder are left to Hydra."""
    from hydra import compose, initialize_config_dir

    if any(arg in USER_CONFIG_FLAGS or arg.startswith(USER_CONFIG_FLAGS) for arg in argv):
        return None
    overrides = [a for a in argv if "=" in a and not a.startswith(("-", "+", "~", "hydra.", "hydra/"))]
    groups = [f"{k}={_first_value(v)}" for k, v in (o.split("=", 1) for o in overrides) if "." not in k]
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = compose("train", overrides=groups)
    except Exception:  # a bad group choice: Hydra's own message says which
        return None
    keys = _dotted_keys(OmegaConf.to_container(cfg, resolve=False))
    for key in (o.split("=", 1)[0] for o in overrides if "." in o.split("=", 1)[0]):
        if key in keys or any(k.startswith(key + ".") for k in keys):
            continue
        leaf = key.rsplit(".", 1)[-1]
        guess = [k for k in keys if k.endswith("." + leaf)] or difflib.get_close_matches(key, keys, n=1)
        hint = f"; did you mean {guess[0]}?" if guess else "; `resvae-train --cfg job` lists the keys"
        return f"{key} is not a key of this config{hint} (to add a new key on purpose, write +{key}=...)"
    return None


def _dotted_keys(node: object, prefix: str = "") -> set[str]:
    if not isinstance(node, dict):
        return set()
    keys = set()
    for k, v in node.items():
        keys.add(f"{prefix}{k}")
        keys |= _dotted_keys(v, f"{prefix}{k}.")
    return keys


def register_resolvers() -> None:
    for name, fn in (
        ("auto_precision", auto_precision),
        ("wandb_offline", wandb_offline),
        ("run_leaf", run_leaf),
        ("sweep_leaf", sweep_leaf),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
