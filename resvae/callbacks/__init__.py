"""Callbacks: sample/reconstruction grids, progress lines, the run summary, preemption, RNG state."""

from resvae.callbacks.checkpoint_state import FiniteBestCheckpoint, RNGState, RunTag
from resvae.callbacks.gradient_flow import GradientFlow
from resvae.callbacks.grids import SampleGrids
from resvae.callbacks.posterior import KLHistogram
from resvae.callbacks.preemption import Preempted, Preemption
from resvae.callbacks.progress import ProgressLines
from resvae.callbacks.summary import RunSummary

__all__ = [
    "FiniteBestCheckpoint",
    "GradientFlow",
    "KLHistogram",
    "Preempted",
    "Preemption",
    "ProgressLines",
    "RNGState",
    "RunSummary",
    "RunTag",
    "SampleGrids",
]
