"""Pure-PyTorch residual networks: blocks, the Residual wrapper, encoder, decoder, depth plan."""

from resvae.nn.blocks import BlockOptions, ResidualBlock
from resvae.nn.hvae import HVAEArchConfig
from resvae.nn.keras2018 import Keras2018Config, Keras2018Net
from resvae.nn.mlp import MLPArchConfig
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

# network configs by name: checkpoints name theirs, and loading looks them up here
ARCHS = {
    "ArchConfig": ArchConfig,
    "Keras2018Config": Keras2018Config,
    "MLPArchConfig": MLPArchConfig,
    "HVAEArchConfig": HVAEArchConfig,
}

__all__ = [
    "ARCHS",
    "HVAEArchConfig",
    "ArchConfig",
    "BlockOptions",
    "DepthError",
    "Keras2018Config",
    "Keras2018Net",
    "LatentAutoencoder",
    "MLPArchConfig",
    "ResNetDecoder",
    "ResNetEncoder",
    "Residual",
    "ResidualBlock",
    "conv_layer_count",
    "count_parameters",
    "depth_plan",
    "nearest_valid_depths",
]
