"""Where the tools that read a trained run's images (resvae-analyze, resvae-eval, resvae-sample)
find them: one rule for all of them, so that no tool silently reads other images than another.

In order:

1. `--data-root DIR`, when given;
2. else `data.root` of the run's own config: `--config FILE` when given, else
   `RUN/.hydra/config.yaml` (the run folder of a checkpoint is the parent of its `checkpoints/`
   folder). A relative root is taken from the folder the run was trained in (its
   `.hydra/hydra.yaml` `hydra.runtime.cwd`) when it exists there. A root that is an interpolation
   (`${oc.env:RESVAE_DATA,data}`, the default of conf/data/cifar10.yaml) is resolved now;
3. else the default of conf/data/cifar10.yaml: `$RESVAE_DATA`, or `./data`.

The checkpoint's own copy of the config cannot say: `data.root` is left out of it on purpose (a
run's data may move; the run checks a hash of its images instead, `data_fingerprint`), which is
why `check_fingerprint` compares the images found with the ones the run was trained on.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from resvae.data import DatasetError
from resvae.run.errors import one_line
from resvae.run.layout import run_folder

SPLITS = ("test", "val", "train")

ENV = "RESVAE_DATA"
DEFAULT = "data"  # conf/data/cifar10.yaml: root: ${oc.env:RESVAE_DATA,data}
RUN_CONFIG = Path(".hydra") / "config.yaml"


@dataclass(frozen=True)
class DataRoot:
    """The folder a tool reads images from, and why that one."""

    path: Path
    source: str  # "option" (--data-root), "run" (the run's config) or "default"
    why: str

    def line(self) -> str:
        """What the tools print, e.g. `data: /x (from the run's .hydra/config.yaml)`."""
        return f"data: {self.path} ({self.why})"


def default_root() -> DataRoot:
    env = os.environ.get(ENV)
    if env:
        return DataRoot(_absolute(Path(env)), "default", f"the default: ${ENV}")
    return DataRoot(_absolute(Path(DEFAULT)), "default", f"the default ./{DEFAULT}; ${ENV} is not set")


def resolve_data_root(
    option: str | Path | None,
    checkpoint_or_run: Path | None,
    config_file: Path | None = None,
    composed_root: str | None = None,
) -> DataRoot:
    """The data root to read (see the module's docstring): `option` (--data-root), else the
    run's config's data.root (`config_file`, else the run folder's .hydra/config.yaml; for a
    model with no run, `composed_root`: data.root of the training config composed for it), else
    the default. Raises ValueError when the run's config exists but cannot be read."""
    if option is not None and str(option) != "":
        return DataRoot(_absolute(Path(option).expanduser()), "option", "from --data-root")
    if checkpoint_or_run is None and composed_root is not None:
        path = _absolute(Path(composed_root).expanduser())
        return DataRoot(path, "run", "from the composed training config")
    run = run_folder(checkpoint_or_run)
    config = config_file if config_file is not None else (run / RUN_CONFIG if run else None)
    where = "--config" if config_file is not None else "the run's .hydra/config.yaml"
    if config is not None and config.is_file():
        stored, resolved = _stored_root(config)
        if resolved is not None:
            root = Path(resolved).expanduser()
            note = f"from {where}"
            if stored != resolved:  # e.g. ${oc.env:RESVAE_DATA,data}: what it gives today
                note += f": {stored}, resolved now"
            cwd = training_cwd(run)
            if not root.is_absolute() and cwd is not None and (cwd / root).is_dir():
                root, note = cwd / root, note + ", relative to the folder the run was trained in"
            return DataRoot(_absolute(root), "run", note)
    found = default_root()
    if run is None:
        reason = "no run folder"
    elif config is None or not config.is_file():
        reason = f"no {run / RUN_CONFIG}"
    else:
        reason = f"{config} has no data.root"
    return DataRoot(found.path, found.source, f"{found.why} ({reason})")


def _stored_root(config: Path) -> tuple[str | None, str | None]:
    """(data.root as the file writes it, resolved) of a composed config; (None, None) without one."""
    import yaml
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    import resvae.run.config  # noqa: F401  (registers the resolvers the configs use)

    try:
        cfg = OmegaConf.load(config)
        data = cfg.get("data") if isinstance(cfg, DictConfig) else None
        if not isinstance(data, DictConfig) or "root" not in data:
            return None, None
        raw = OmegaConf.to_container(data, resolve=False)["root"]  # type: ignore[index]
        value = OmegaConf.select(cfg, "data.root", throw_on_missing=True)
    except (OmegaConfBaseException, yaml.YAMLError, UnicodeDecodeError) as err:  # not a YAML config
        raise ValueError(f"cannot read data.root of {config}: {' '.join(str(err).split())[:200]}") from err
    if value is None:
        return None, None
    return str(raw), str(value)


def training_cwd(run: Path | None) -> Path | None:
    """The folder resvae-train ran in (Hydra's runtime.cwd, in RUN/.hydra/hydra.yaml)."""
    from omegaconf import OmegaConf

    path = run / ".hydra" / "hydra.yaml" if run is not None else None
    if path is None or not path.is_file():
        return None
    try:
        cwd = OmegaConf.select(OmegaConf.load(path), "hydra.runtime.cwd")
    except Exception:  # an unreadable record only loses this hint
        return None
    return Path(str(cwd)) if cwd else None


def reads_files(data: dict[str, Any]) -> bool:
    """Whether a data config reads images from a root (CIFAR-10), not generates them. The
    checkpoint's copy has no `root` key (it is not hashed), so the target decides too."""
    return "root" in data or str(data.get("_target_", "")).endswith("CIFAR10DataModule")


def with_root(data: dict[str, Any], root: DataRoot) -> dict[str, Any]:
    """A copy of a data config that reads from `root`, never downloading; a config that reads no
    files is returned as it is."""
    if not reads_files(data):
        return dict(data)
    return {**data, "root": str(root.path), "download": False}


def describe(data: dict[str, Any], root: DataRoot) -> str:
    """The line a tool prints: where the images come from, and why there."""
    if reads_files(data):
        return root.line()
    target = str(data.get("_target_", "?")).rsplit(".", 1)[-1]
    return f"data: generated images ({target}, from the run's config: it reads no files)"


def check_fingerprint(module: Any, checkpoint_info: dict[str, Any]) -> str | None:
    """A warning when the data module's images are not the ones the checkpoint's run was trained
    on (its `data_fingerprint`, a hash of every split), else None. Nothing to compare: None."""
    stored = ((checkpoint_info or {}).get("run") or {}).get("data")
    if not stored or not hasattr(module, "fingerprint"):
        return None
    found = module.fingerprint
    if found == stored:
        return None
    return (
        f"warning: these are not the images the run was trained on (data fingerprint {found}, the "
        f"checkpoint's {stored}): point --data-root at the run's data"
    )


def _absolute(path: Path) -> Path:
    return path if path.is_absolute() else Path.cwd() / path


@dataclass
class SplitImages:
    images: torch.Tensor  # uint8 [N, C, H, W] on the CPU
    held_out: bool
    note: str | None  # why the split is not held out
    val_source: str | None
    data_line: str = ""  # where the images come from and why (resvae.cli.data_root.describe)
    warning: str | None = None  # they are not the images the run was trained on


def load_split(
    cfg: DictConfig,
    split: str,
    root: DataRoot | None = None,
    checkpoint_info: dict[str, Any] | None = None,
) -> SplitImages:
    """The images of `split` as the run's `data` config defines them (same sizes, same
    validation hold-out, same seed), read from `root` (resvae.cli.data_root.resolve_data_root; None:
    the config's own data.root). Never downloads: missing data is a DatasetError. With the
    checkpoint's resvae entry, images other than the run's give a warning (SplitImages.warning)."""
    from hydra.utils import instantiate

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if "data" not in cfg or not isinstance(cfg.data, DictConfig):
        raise ValueError("the run config has no data node")
    data: dict[str, Any] = OmegaConf.to_container(cfg.data, resolve=True)  # type: ignore[assignment]
    target = str(data.get("_target_", ""))
    if not target.startswith("resvae.data."):
        raise ValueError(
            f"the run's data config targets {target or 'nothing'!r}, not one of resvae's data modules "
            "(resvae.data.*): refusing to import it"
        )
    if root is None:
        root = DataRoot(Path(str(data.get("root", "."))), "run", "from the run's config")
    elif root.source == "option" and not reads_files(data):
        print(f"note: --data-root ignored: the run's data ({target}) reads no files", file=sys.stderr)
    data = with_root(data, root)
    module = instantiate(data)
    try:
        warning = check_fingerprint(module, checkpoint_info or {})  # reads the images
        module.setup()
    except DatasetError as err:
        raise DatasetError(f"{one_line(err)} (data.root {root.why}; pass --data-root DIR)") from err
    val_source = data.get("val_source")
    if split == "test" and val_source != "test":
        held_out, note = True, None
    elif split == "test":
        held_out = False
        note = (
            "data.val_source=test: the run validated on the test split (it chose best.ckpt and "
            "stopped training)"
        )
    elif split == "val":
        held_out = False
        note = "the validation split chose best.ckpt and stopped training" + (
            " (data.val_source=test: it is the test split)" if val_source == "test" else ""
        )
    else:
        held_out, note = False, "the training split fitted the weights"
    return SplitImages(module.splits[split].cpu(), held_out, note, val_source, describe(data, root), warning)


def report_data(data: SplitImages, prefix: str = "") -> None:
    """The tools' line on stderr saying where the images came from (stdout keeps the results),
    and the warning when they are not the run's."""
    print(f"{prefix}{data.data_line}", file=sys.stderr, flush=True)
    if data.warning:
        print(f"{prefix}{data.warning}", file=sys.stderr, flush=True)
