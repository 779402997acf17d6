"""torch.compile with a safety net: on the first failure, one warning and eager from then on.

Compilation can fail for reasons outside the model (no C++ compiler on the machine, an
unsupported backend, a Triton or driver mismatch); a run should then train, slower, rather
than stop. The wall time of the first call (tracing and compiling included) is kept so that
runs and benchmarks can report compile time apart from steady-state speed.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class CompiledOrEager:
    def __init__(self, fn: Callable[..., Any], mode: str = "none") -> None:
        if mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
        self.eager = fn
        self.mode = mode
        self.compiled = None if mode == "none" else torch.compile(fn, mode=mode)
        self.first_call_seconds: float | None = None
        self.fell_back = False

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None:
            return self.eager(*args)
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
        return out
