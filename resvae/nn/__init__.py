"""Pure-PyTorch residual networks: blocks, the Residual wrapper, encoder, decoder, depth plan."""

from resvae.nn.blocks import BlockOptions, ResidualBlock
from resvae.nn.network import (
    ArchConfig,
    LatentAutoencoder,
    ResNetDecoder,
    ResNetEncoder,
    conv_layer_count,
    count_parameters,
)
from resvae.nn.plan import DepthError, depth_plan, nearest_valid_depths
from resvae.nn.residual import Residual

ARCHS = {"ArchConfig": ArchConfig}  # network configs by name: checkpoints name theirs

__all__ = [
    "ARCHS",
    "ArchConfig",
    "BlockOptions",
    "DepthError",
    "LatentAutoencoder",
    "ResNetDecoder",
    "ResNetEncoder",
    "Residual",
    "ResidualBlock",
    "conv_layer_count",
    "count_parameters",
    "depth_plan",
    "nearest_valid_depths",
]
