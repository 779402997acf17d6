"""Callbacks: sample/reconstruction grids, progress lines, the run summary, RNG state."""

from resvae.callbacks.checkpoint_state import FiniteBestCheckpoint, RNGState, RunTag
from resvae.callbacks.gradient_flow import GradientFlow
from resvae.callbacks.grids import SampleGrids
from resvae.callbacks.posterior import KLHistogram
from resvae.callbacks.progress import ProgressLines
from resvae.callbacks.summary import RunSummary

__all__ = [
    "FiniteBestCheckpoint",
    "GradientFlow",
    "KLHistogram",
    "ProgressLines",
    "RNGState",
    "RunSummary",
    "RunTag",
    "SampleGrids",
]
