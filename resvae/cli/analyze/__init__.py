"""resvae-analyze (`main`, the console script): the residual-network analyses of the literature,
on trained or fresh models, one module per analysis.

- cli.py: the command line (argparse, `main`, one `cmd_*` per command)
- common.py: the subjects (checkpoints, run folders, fresh inits), their data, AnalysisError
- output.py: CSV, text and figure writers, the legends, logging to W&B
- lesion.py, footing.py: the lesion study (Veit et al. 2016) and its check against the run
- gradients.py: gradient-flow tables and plots (resvae/models/gradients.py measures)
- activations.py: the encoder's stage outputs as feature-map grids and statistics
- compare.py: a sweep's final losses side by side (resvae/sweep/comparison.py: at a sweep's end)
"""

from resvae.cli.analyze.cli import main

__all__ = ["main"]
