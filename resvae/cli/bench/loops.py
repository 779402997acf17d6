"""The in-process rows: a minimal independent loop (bare) and the project's TrainStep (step,
step-captured), each timed over the same window after the same warm-up.

bare: the network's forward, a minimal loss, backward, optimizer.step, zero_grad; nothing
else. The loss is MSE + KL of the same network: encode -> (mu, logvar), one reparameterised
sample, decode, the squared error of the decoder's first `in_channels` outputs against the
input (summed per image), plus the Gaussian KL, averaged over the batch. No clipping, no
non-finite guard, no metric sums, no flips, no mixture likelihood; float batches made once on
the device (a pool of a few, cycled). The same configured optimizer (fused where torch has it).

step: `resvae.models.step.TrainStep` as the training app runs it (clipping, the guard, metric
sums, flips when the data has them, the model's own loss), on uint8 batches gathered from a
device-resident set; step-captured: the same with its closure replayed as a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from omegaconf import DictConfig

from resvae.cli.bench.common import EPOCH_IMAGES, Clock, Numerics, build_model, peak_memory_gib, release
from resvae.data.device_batches import DeviceBatches
from resvae.models.base import AUTOCAST, build_optimizer
from resvae.models.capture import capture_step
from resvae.models.objectives import gaussian_kl

BARE_POOL = 4  # distinct input batches of the bare loop (memory: 4 float batches)


def autocast_for(device: torch.device, numerics: Numerics) -> AbstractContextManager[Any]:
    dtype = AUTOCAST.get(numerics.precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def minimal_loss(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MSE + KL of a VAE network (see the module docstring)."""
    mu, logvar = net.encode(x).float().chunk(2, dim=1)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    out = net.decode(z)[:, : x.shape[1]].float()
    return ((out - x).pow(2).flatten(1).sum(1) + gaussian_kl(mu, logvar).flatten(1).sum(1)).mean()


def timed_window(
    step: Callable[[int], None], device: torch.device, warmup: int, steps: int,
    prepare: Callable[[], bool] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """`prepare()` (a capture), `warmup` steps, then `steps` timed ones; the device is synchronised
    at each boundary, so no queued work crosses into or out of the window."""
    release(device)
    clock = Clock(device)
    clock.start()
    if prepare is not None and not prepare():
        return {"skipped": "capture failed"}
    step(0)
    warm = clock.seconds()  # capture and the first step, as the real loop reports its warm-up
    for i in range(1, warmup):
        step(i)
    clock.start()
    for i in range(warmup, warmup + steps):
        step(i)
    seconds = clock.seconds()
    return {"seconds": seconds, "warmup_s": warm, "peak_mem_gib": peak_memory_gib(device)}


def bare_loop(
    cfg: DictConfig, device: torch.device, numerics: Numerics, batch: int, warmup: int, steps: int
) -> dict[str, Any]:
    model = build_model(cfg, device)
    net = model.net
    optimizer = build_optimizer(model.optimizer_factory, [p for p in net.parameters() if p.requires_grad])
    size, channels = model.arch.image_size, model.arch.in_channels
    memory = torch.channels_last if model.channels_last else torch.contiguous_format
    pool = [
        (torch.rand(batch, channels, size, size, device=device) * 2 - 1).contiguous(memory_format=memory)
        for _ in range(BARE_POOL)
    ]
    autocast = autocast_for(device, numerics)

    def step(i: int) -> None:
        with autocast:
            loss = minimal_loss(net, pool[i % BARE_POOL])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed_window(step, device, warmup, steps)


def step_loop(
    cfg: DictConfig, device: torch.device, numerics: Numerics, batch: int, warmup: int, steps: int,
    capture: bool,
) -> dict[str, Any]:  # fmt: skip
    model = build_model(cfg, device)
    optimizer = build_optimizer(model.optimizer_factory, [p for p in model.parameters() if p.requires_grad])
    objective = model.objective
    model.step.bind(
        objective.objective_and_metrics, optimizer, model.channels_last, buffers=list(objective.buffers())
    )
    model.step.flip = bool(cfg.data.get("flip", False))  # as the training app sets it from the data
    size = model.arch.image_size
    images = torch.randint(
        0, 256, (batch * (warmup + steps), 3, size, size), dtype=torch.uint8, device=device
    )
    batches = iter(DeviceBatches(images, batch, shuffle=True, drop_last=True))  # gathered as used
    autocast = autocast_for(device, numerics)
    dtype = AUTOCAST.get(numerics.precision)

    def prepare() -> bool:
        with autocast:
            return capture_step(model.step, images[:batch], [objective], dtype)

    def step(i: int) -> None:
        with autocast:
            model.step(next(batches))

    return timed_window(step, device, warmup, steps, prepare if capture else None)


def in_process_row(
    loop: str, cfg: DictConfig, device: torch.device, numerics: Numerics, batch: int, warmup: int,
    steps: int,
) -> dict[str, Any]:  # fmt: skip
    """One of bare / step / step-captured: images/s and ms per step of the window."""
    if loop == "bare":
        result = bare_loop(cfg, device, numerics, batch, warmup, steps)
    else:
        result = step_loop(cfg, device, numerics, batch, warmup, steps, capture=loop == "step-captured")
    if "skipped" in result:
        return result
    seconds = result.pop("seconds")
    return {
        "img_s": batch * steps / seconds,
        "ms_step": 1e3 * seconds / steps,
        **result,
        "epoch_50k_s": EPOCH_IMAGES * seconds / (batch * steps),  # training only
    }
