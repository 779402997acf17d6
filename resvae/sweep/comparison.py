"""The Hydra callback that compares a sweep's jobs when the multirun ends.

Experiments (conf/experiment/degradation.yaml, identity_mappings.yaml) add `SweepComparison`:
when the multirun ends it writes `analysis/<name>.{csv,md,json,png}` into the sweep folder, the
final losses of each job side by side (resvae/cli/analyze/compare.py), and logs them to W&B
when the config has a W&B logger.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from resvae.cli.analyze.compare import compare_sweep
from resvae.cli.analyze.output import log_to_wandb


class SweepComparison(Callback):
    """Hydra callback: `compare_sweep` into the sweep folder when the multirun ends (also at
    exit, if a job's exception ends the sweep early), and to W&B when the config has a W&B logger.

    Add it in an experiment:  hydra.callbacks.<name>: {_target_: resvae.sweep.comparison.SweepComparison,
    name: <name>, x: <dotted key or null>, series: <dotted key>}
    """

    def __init__(self, name: str = "compare", x: str | None = None, series: str | None = None) -> None:
        self.name, self.x, self.series = name, x, series
        self._pending: Callable[[], None] | None = None

    def _finish(self, config: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            written = compare_sweep(sweep_dir, self.name, self.x, self.series)
            print(f"{self.name}: {written[-1]}", flush=True)
            logger = (config.get("logger") or {}).get("wandb")
            if logger is not None and os.environ.get("WANDB_MODE", "").lower() != "disabled":
                log_to_wandb(
                    written, project=logger.get("project"), group=config.get("name"),
                    entity=logger.get("entity"), name=f"{self.name}-{config.get('name')}",
                )  # fmt: skip
        except Exception as err:  # an analysis must never hide the sweep's own report and exit code
            print(f"{self.name}: analysis not written ({type(err).__name__}: {err})", flush=True)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._pending = lambda: self._finish(config)
        atexit.register(self._pending)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if self._pending is not None:
            atexit.unregister(self._pending)
            self._pending = None
        self._finish(config)
