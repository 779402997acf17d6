"""Check a command line's overrides before Hydra starts: a mistake is one line with the fix.

Hydra creates a job's folder before the app runs, and its own messages advise the wrong fix for
a typo (`+seedd=1`) or print a page of search paths. So the entry points (resvae-train,
resvae-bench) compose the config here first, with the first value of every sweep, and check
what a user can get wrong: unknown keys and group options, values of the wrong type, a name that
is not one folder, an output root that cannot be written, a launcher this machine cannot run.
Nothing is created on disk by these checks.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

from resvae.run.config import NAME_PATTERN, config_dir
from resvae.run.numerics import CONV_PRECISIONS, MATMUL_PRECISIONS

USER_CONFIG_FLAGS = ("-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name")


class ConfigProblem(ValueError):
    """One line: what is wrong with the command line and how to fix it."""


def config_problem(argv: Sequence[str]) -> str | None:
    """The first problem of `argv` (Hydra overrides and flags) as one line, or None."""
    if any(arg in USER_CONFIG_FLAGS or arg.startswith(USER_CONFIG_FLAGS) for arg in argv):
        return None  # a user config folder: its keys are its own, Hydra checks them
    try:
        check_overrides(overrides_of(argv))
    except ConfigProblem as problem:
        return str(problem)
    return None


# Hydra's flags whose next argument is theirs (`--cfg job`, `-sc install=bash`, ...)
FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p", "--info", "-i", "--shell-completion", "-sc",
                    "--experimental-rerun")  # fmt: skip


def overrides_of(argv: Sequence[str]) -> list[str]:
    """The overrides of a command line: every argument that is neither a flag nor a flag's value
    (an override has '=', or is a deletion `~key`)."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("-"):
            skip = arg in FLAGS_WITH_VALUE and not skip
            continue
        if "=" in arg or arg.startswith("~"):
            kept.append(arg)
    return kept


def check_overrides(args: Sequence[str]) -> None:
    for arg in args:
        if any(ord(ch) < 32 for ch in arg):
            if arg.startswith("name="):
                check_name(arg[len("name=") :])
            raise ConfigProblem(f"{arg!r}: a line break or control character cannot be part of an override")
    try:
        overrides = OverridesParser.create().parse_overrides(list(args))
    except HydraException as err:
        raise ConfigProblem(" ".join(str(err).split())) from None
    own = [o for o in overrides if not _is_hydra(o)]
    groups = _groups()
    chosen = _first_values(o for o in overrides if o.key_or_group in groups)
    for variant in [chosen, *_other_group_choices(overrides, groups, chosen)]:
        defaults = OmegaConf.to_container(_compose(variant), resolve=False)  # before the values change them
        _check_keys(own, defaults, groups, variant if variant is not chosen else [])
    first = _first_values(overrides)
    _check_composed(_compose(first))
    for override in overrides:  # every value of a sweep over the network or the data
        key = override.key_or_group
        if override.is_sweep_override() and key.startswith(tuple(f"{node}." for node in BUILT_FIRST)):
            others = [item for item in first if not item.startswith(f"{key}=")]
            for value in _values(override)[1:]:
                check_built(_compose([*others, f"{key}={_as_override(value)}"]))


def _other_group_choices(
    overrides: Sequence[Override], groups: set[str], chosen: list[str]
) -> list[list[str]]:
    """For each later value of a swept group (`model=vae,keras2018`), the group choices with that
    value and the others at their first: every job's keys are checked, not just the first's."""
    variants = []
    for o in overrides:
        if o.key_or_group in groups and o.is_sweep_override():
            others = [c for c in chosen if not c.startswith(f"{o.key_or_group}=")]
            variants += [[*others, f"{o.key_or_group}={_as_override(v)}"] for v in _values(o)[1:]]
    return variants


def _check_keys(
    own: Sequence[Override], defaults: dict[str, Any], groups: set[str], variant: list[str]
) -> None:
    """Each override's key exists in `defaults` and each of its values has the default's type."""
    where = f" (in the jobs with {variant[-1].replace(chr(39), '')})" if variant else ""
    for override in own:
        if override.is_add() or override.is_delete() or override.is_force_add():
            continue  # adding or removing a key is meant; Hydra checks it
        key = override.key_or_group
        if key in groups:
            continue  # _compose checked the option
        default = _lookup(defaults, key)
        if default is _MISSING:
            raise ConfigProblem(_unknown_key(key, defaults, groups) + where)
        for value in _values(override):
            _check_type(key, value, default)
            _check_value(key, value)


def _is_hydra(override: Override) -> bool:
    key = override.key_or_group
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def _values(override: Override) -> list[Any]:
    if not override.is_sweep_override():
        return [override.value()]
    try:
        return list(override.sweep_iterator())
    except HydraException:  # e.g. a glob(): only Hydra can expand it
        return []


def _first_values(overrides: Iterable[Override]) -> list[str]:
    """Each override as `key=value` with a sweep replaced by its first value."""
    first = []
    for o in overrides:
        if o.is_delete() or (o.key_or_group.startswith("hydra.")):
            continue
        values = _values(o)
        if not values:
            continue
        prefix = "++" if o.is_force_add() else "+" if o.is_add() else ""
        key = f"{o.key_or_group}@{o.package}" if o.package else o.key_or_group
        first.append(f"{prefix}{key}={_as_override(values[0])}")
    return first


def _as_override(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_as_override(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_as_override(v)}" for k, v in value.items()) + "}"
    return str(value)


def _compose(overrides: list[str]) -> DictConfig:
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            return compose("train", overrides=overrides, return_hydra_config=True)
    except MissingConfigException as err:
        raise ConfigProblem(_missing_option(str(err))) from None
    except HydraException as err:
        raise ConfigProblem(" ".join(str(err).split())) from None


def _missing_option(message: str) -> str:
    """Hydra's 'Could not find model/vaee ... Available options in model: ...' on one line."""
    found = re.search(r"Could not find '([^']+)'", message)
    options = re.search(r"Available options in '([^']+)':\n((?:\t.*\n?)*)", message)
    if not found or not options:
        return " ".join(message.split())
    group, _, choice = found.group(1).rpartition("/")
    names = ", ".join(line.strip() for line in options.group(2).splitlines() if line.strip())
    return f"{group}={choice}: no such option; choose one of {names}"


def _groups() -> set[str]:
    root = config_dir()
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()}


_MISSING = object()


def _lookup(tree: Any, dotted: str) -> Any:
    node = tree
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _dotted_keys(node: Any, prefix: str = "") -> set[str]:
    if not isinstance(node, dict):
        return set()
    keys = set()
    for k, v in node.items():
        keys.add(f"{prefix}{k}")
        keys |= _dotted_keys(v, f"{prefix}{k}.")
    return keys


def _unknown_key(key: str, defaults: dict[str, Any], groups: set[str]) -> str:
    keys = _dotted_keys({k: v for k, v in defaults.items() if k != "hydra"})
    leaf = key.rsplit(".", 1)[-1]
    guess = [k for k in keys if "." in key and k.endswith("." + leaf)]
    guess = guess or difflib.get_close_matches(key, sorted(keys | groups), n=1)
    hint = f"; did you mean {guess[0]}?" if guess else "; `resvae-train --cfg job` lists the keys"
    return f"{key} is not a key of this config{hint} (to add a new key on purpose, write +{key}=...)"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    return "a text"


def _check_type(key: str, value: Any, default: Any) -> None:
    """A value of the default's type: an int for an int, a number for a float, a bool for a
    bool. Keys whose default is null, a text or an interpolation take any value."""
    if default is None or value is None or (isinstance(value, str) and "${" in value):
        return
    if isinstance(default, (str, dict)):
        return
    fits = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        list: isinstance(value, (list, tuple)),
    }.get(type(default), True)
    if not fits:
        raise ConfigProblem(
            f"{key}={_shown(value)}: expected {_kind(default)} (the default is {_shown(default)})"
        )


def _shown(value: Any) -> str:
    return _as_override(value).strip("'") if not isinstance(value, (list, dict)) else _as_override(value)


def _check_value(key: str, value: Any) -> None:
    if key == "name":
        check_name(value)
    elif key == "matmul_precision" and value not in MATMUL_PRECISIONS:
        raise ConfigProblem(f"matmul_precision={value}: choose one of {', '.join(MATMUL_PRECISIONS)}")
    elif key == "conv_precision" and value is not None and value not in CONV_PRECISIONS:
        raise ConfigProblem(f"conv_precision={value}: choose one of {', '.join(CONV_PRECISIONS)} or null")
    elif key == "test_weights" and value not in ("best", "last"):
        raise ConfigProblem(
            f"test_weights={value}: choose best (best.ckpt) or last (the final epoch's weights)"
        )
    elif key == "run.signals":
        check_signals(value)
    elif key in RUN_VALUE_CHECKS and not (isinstance(value, str) and "${" in value):
        RUN_VALUE_CHECKS[key](value)


def check_name(name: Any) -> None:
    """A run name is one folder: letters, digits and . _ -, starting with a letter or digit."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigProblem(
            f"name={name!r}: a run name is one folder name of letters, digits and . _ - (starting "
            "with a letter or digit), e.g. name=depth_study; set output_root= to write elsewhere"
        )


def check_signals(signals: Any) -> None:
    names = signals if isinstance(signals, (list, tuple)) else [signals]
    valid = {s.name for s in signal.Signals}
    for sig in names:
        if sig not in valid or sig in ("SIGKILL", "SIGSTOP"):
            options = "SIGTERM, SIGUSR1, SIGUSR2, SIGINT, ..."
            raise ConfigProblem(
                f"run.signals: {sig!r} is not a signal that can be caught here; use names such as {options}"
            )


def check_seed(seed: Any) -> None:
    if isinstance(seed, int) and not 0 <= seed < 2**32:
        raise ConfigProblem(f"seed={seed}: a seed is a whole number from 0 to {2**32 - 1}")


def check_max_epochs(epochs: Any) -> None:
    if isinstance(epochs, int) and (epochs == 0 or epochs < -1):
        raise ConfigProblem(
            f"trainer.max_epochs={epochs}: set the number of epochs to train, 1 or more (-1: no limit)"
        )


def check_resume(resume: Any) -> None:
    """auto, never, or a checkpoint file that exists (a run folder is not one)."""
    path = Path(str(resume)).expanduser()
    if resume in ("auto", "never") or path.is_file():
        return
    last = path / "checkpoints" / "last.ckpt"
    hint = f"; this folder's latest state is resume={last}" if last.is_file() else ""
    raise ConfigProblem(
        f"resume={resume}: no such checkpoint file; choose auto (continue the run folder's "
        f"checkpoints/last.ckpt), never (refuse a folder that holds checkpoints) or a .ckpt file{hint}"
    )


RUN_VALUE_CHECKS = {"seed": check_seed, "trainer.max_epochs": check_max_epochs, "resume": check_resume}


def _check_composed(cfg: DictConfig) -> None:
    """What experiment files set as well as the command line: the name, the output root, the
    launcher, the run's seed, epochs and resume choice."""
    check_name(cfg.get("name"))
    check_signals(list(cfg.run.signals))
    check_output_root(str(cfg.output_root))
    for key, check in RUN_VALUE_CHECKS.items():
        check(OmegaConf.select(cfg, key))
    check_built(cfg)
    launcher = str(OmegaConf.select(cfg, "hydra.launcher._target_", default="") or "")
    if "SlurmLauncher" in launcher and shutil.which("sbatch") is None:
        raise ConfigProblem(
            "hydra/launcher=slurm submits jobs with SLURM's sbatch, which this machine does not have: "
            "run the sweep on a SLURM login node, or use hydra/launcher=submitit_local here"
        )


BUILT_FIRST = ("model.arch", "data")  # cheap to build, and building checks their values


def check_built(cfg: DictConfig) -> None:
    """Build the network's config (a dataclass of resvae.nn: no weights) and the data module (its
    images are read later), so an impossible depth or block split and a batch size of 0 are
    refused before a run folder exists."""
    from hydra.utils import instantiate

    for key in BUILT_FIRST:
        node = OmegaConf.select(cfg, key)
        if not isinstance(node, DictConfig) or not str(node.get("_target_", "")).startswith("resvae."):
            continue
        try:
            instantiate(node)
        except Exception as err:  # Hydra wraps the constructor's own error
            text = " ".join(str(err.__cause__ or err).split())
            raise ConfigProblem(text if text.startswith(key.split(".")[0]) else f"{key}: {text}") from None


def check_output_root(root: str) -> Path:
    """The output root, resolved; refused when no folder can be created there, or when empty (the
    configs join it to the run's folder as text: an empty root would put runs under `/`)."""
    if not root.strip():
        raise ConfigProblem("output_root is empty: set output_root= to a folder (default: outputs)")
    path = Path(os.path.abspath(Path(root).expanduser()))
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        with tempfile.TemporaryDirectory(dir=existing, prefix=".resvae-write-test-"):
            pass
    except OSError as err:
        raise ConfigProblem(
            f"output_root={root}: cannot create folders in {existing} ({type(err).__name__}: "
            f"{err.strerror or err}); set output_root= to a writable folder"
        ) from None
    return path
