"""Rebuild a trained model from a checkpoint alone (for evaluation, sampling and analysis)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from resvae.models.base import LatentModel
from resvae.nn import ARCHS
from resvae.run.checkpoints import CHECKPOINT_TAG, CheckpointError, read_checkpoint


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LatentModel:
    """The model of a resvae checkpoint, weights loaded, in eval mode, on `device`.

    The checkpoint is read with weights_only=True and the classes are looked up by name in
    resvae's own tables (resvae.models.MODELS, resvae.nn.ARCHS): nothing in the file picks code.
    """
    from resvae.models import MODELS

    checkpoint = read_checkpoint(path)
    info: dict[str, Any] = checkpoint[CHECKPOINT_TAG]
    model_cls = MODELS.get(str(info.get("model_class")))
    arch_cls = ARCHS.get(str(info.get("arch_class", "ArchConfig")))
    if model_cls is None or arch_cls is None:
        raise CheckpointError(
            f"{path} holds a {info.get('model_class')} / {info.get('arch_class')}, which this version "
            f"of resvae does not know (models: {', '.join(MODELS)}; networks: {', '.join(ARCHS)})"
        )
    accepted = inspect.signature(model_cls).parameters
    try:
        hparams = {k: v for k, v in info["hparams"].items() if k in accepted and k != "arch"}
        model = model_cls(arch=arch_cls(**info["arch"]), **hparams)
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path} does not fit its own model description ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:400]}): it was edited or written by another version of resvae"
        ) from err
    return model.to(device).eval()
