"""torch.compile with a safety net: on the first failure, one warning and eager from then on.

Compilation can fail for reasons outside the model (no C++ compiler on the machine, an
unsupported backend, a Triton or driver mismatch); a run should then train, slower, rather
than stop. The wall time of the first call (tracing and compiling included) is kept so that
runs and benchmarks can report compile time apart from steady-state speed. A compile says so in
one log line before its first call (it can take minutes, e.g. reduce-overhead on a CPU).

Compiled code serves the tensor shapes of its first call; a call with other shapes (validation's
last, smaller batch) runs eagerly: torch.compile would recompile for it (as a dynamic shape) and
reduce-overhead would record another CUDA graph, each a cost of the order of the first compile
for one small batch. (A depth-100 network's first validation on an H200 took 79.7 s, 32.5 s of
it the logged compile, with a last batch of another size; the next took 1.7 s.)

`auto` (for validation's forward) is reduce-overhead on CUDA and none elsewhere: a CUDA graph of
the forward pays off on a GPU, while on a CPU the compile costs minutes and gains little.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # modes that record CUDA graphs themselves
AUTO = "auto"

log = logging.getLogger(__name__)


def resolve_mode(mode: str, device: torch.device) -> str:
    """`auto` -> reduce-overhead on CUDA, none elsewhere; any other mode as given."""
    if mode != AUTO:
        return mode
    return "reduce-overhead" if device.type == "cuda" else "none"


class CompiledOrEager:
    def __init__(self, fn: Callable[..., Any], mode: str = "none", name: str = "forward") -> None:
        """`name` says what is compiled in the log line, e.g. "validation forward"."""
        if mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
        self.eager = fn
        self.mode = mode
        self.name = name
        self.compiled = None if mode == "none" else torch.compile(fn, mode=mode)
        self.first_call_seconds: float | None = None
        self.fell_back = False
        self.shapes: list[tuple[int, ...]] | None = None  # the first call's tensor shapes

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None:
            return self.eager(*args)
        shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
        if self.shapes is not None and shapes != self.shapes:
            return self.eager(*args)
        self.shapes = shapes
        if self.first_call_seconds is None:
            log.info("compiling %s (mode=%s) on its first call; this can take minutes", self.name, self.mode)
        start = time.perf_counter()
        try:
            out = self.compiled(*args)
        except Exception as err:  # any compile-stack failure: fall back, once, loudly
            warnings.warn(
                f"torch.compile(mode={self.mode!r}) failed ({type(err).__name__}: {err}); "
                "training continues in eager mode (set model.train_step.compile=none to skip compiling)",
                RuntimeWarning,
                stacklevel=2,
            )
            self.compiled, self.fell_back = None, True
            return self.eager(*args)
        if self.first_call_seconds is None:
            self.first_call_seconds = time.perf_counter() - start
            log.info("compiled %s (mode=%s) in %.1f s", self.name, self.mode, self.first_call_seconds)
        return out
