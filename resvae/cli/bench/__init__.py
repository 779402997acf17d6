"""resvae-bench: training speed of the network resvae-train builds, from a minimal loop to the real one.

    resvae-bench experiment=depth_sweep --depth 28 100 --batch 1024            # on a GPU
    resvae-bench --acceptance --json out.json                                   # issue 17's targets
    resvae-bench experiment=smoke model.arch.width=2 model.arch.image_size=8 data.image_size=8 \\
        --device cpu --batch 2 --steps 200 --loops bare step lightning           # host overhead

Rows, each timed over the same window (--steps after --warmup), the device synchronised at
the window's start and end:
  bare                 a minimal independent loop: the network's forward, MSE + KL, backward,
                       optimizer.step, zero_grad (resvae.cli.bench.loops)
  step                 the project's TrainStep (clipping, the non-finite guard, metric sums,
                       flips, the model's own loss), eager
  step-captured        the same with its closure replayed as a CUDA graph (GPU only)
  lightning            resvae-train itself in a subprocess (Lightning's loop, validation,
                       checkpoints, logging), timed inside it by resvae.cli.bench.timer.WindowTimer
  lightning-captured   the same with model.train_step.capture=cuda_graph (GPU only)
MFU is against the dense spec peak of the precision that ran (bf16, tf32 or fp32;
resvae.cli.bench.peaks); an unknown GPU gets none. Prints a table and JSON lines (--json FILE).
"""

from resvae.cli.bench.cli import main, parse_args
from resvae.cli.bench.common import build_model, compose_config, train_gflop_per_image
from resvae.cli.bench.table import format_table

__all__ = ["build_model", "compose_config", "format_table", "main", "parse_args", "train_gflop_per_image"]
