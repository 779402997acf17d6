"""Callbacks: sample/reconstruction grids, plain progress lines, the run summary."""

from resvae.callbacks.grids import SampleGrids
from resvae.callbacks.progress import ProgressLines
from resvae.callbacks.summary import RunSummary, read_summary

__all__ = ["ProgressLines", "RunSummary", "SampleGrids", "read_summary"]
