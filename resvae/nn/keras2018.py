"""A pure-PyTorch replica of the 2018 Keras ResNet-VAE network of the reference study ("keras2018").

Source: the study's public code, GitHub repository bjlkeng/sandbox, folder notebooks/vae-resnet/:
`resnet.py` (Keras' ResNet50 `conv_block` / `identity_block`, with a `transpose` switch added to
`conv_block`) and `vae-cifar10.ipynb` (`resnet_layers`, `make_encoder`, `make_decoder`). The
executed notebooks `vae-cifar10-depth{0,1,2,3}.nbconvert.ipynb` print the Keras summaries whose
parameter totals `keras_parameter_count` reproduces exactly (26,815,683 / 29,624,003 / 43,762,627 /
57,901,251 for depths 28 / 40 / 70 / 100; see tests/nn/test_keras2018.py).

Shapes at the study's settings (width 64, head_units 1024, latent 256, depth 28 = one block per
stage; Keras is channels-last, this module is channels-first):
  encoder  x [B, 3, 32, 32] in [0, 1] (no stem)
           layer1 [B, 256, 32, 32] -> layer2 [B, 512, 16, 16] -> layer3 [B, 1024, 8, 8]
           -> layer4 [B, 2048, 4, 4]
           Dense(1024) at each of the 16 positions [B, 4, 4, 1024] -> BatchNorm -> sigmoid
           -> flatten (H, W, C order, as Keras) [B, 16384]
  heads    z_mean = Dense(256), z_log_var = Dense(256) on that vector; encode() -> [B, 512]
  decoder  z [B, 256] -> Dense(1024) -> BatchNorm -> sigmoid -> reshape (H, W, C) [B, 64, 4, 4]
           layer1 [B, 256, 4, 4] -> layer2 [B, 512, 8, 8] -> layer3 [B, 1024, 16, 16]
           -> layer4 [B, 2048, 32, 32] -> 1x1 transposed conv -> logits [B, 3, 32, 32]
  The Keras decoder ends in a sigmoid: sigmoid(decode(z)) is the Keras output. decode() returns
  the logits so that a loss can use binary_cross_entropy_with_logits.

How it differs from a modern (timm / torchvision) ResNet, all faithfully kept here:
  - post-activation bottlenecks (conv -> BN -> ReLU; the ReLU after the residual add), and every
    conv has a bias although a BN follows it;
  - the stride of a stage's first block (a Keras `conv_block`) sits on its first 1x1 conv (and
    on the 1x1 projection shortcut), not on the 3x3; every stage starts with a projection
    shortcut, the first one too (stride 1);
  - no stem (no 7x7 conv, no max-pool): stage 1 runs on the 3-channel image at 32x32;
  - BatchNorm with Keras' eps 1e-3 and moving-average momentum 0.99 (torch momentum 0.01);
  - Keras init: glorot-uniform kernels, zero biases (torch's default is kaiming-uniform);
  - sigmoid (not ReLU) after the dense BatchNorms of both heads, and a position-wise Dense
    head instead of global pooling, so the latent heads see a 16,384-vector;
  - the decoder is not a mirror of the encoder: it runs the same four stages in the same
    order, so it widens (256 -> 2048 channels) while it upsamples, ending with 2048 channels at
    32x32 (the most expensive part of the network);
  - upsampling is a 1x1 transposed conv with stride 2 (on the first 1x1 conv and on the
    shortcut of each decoder `conv_block`): it writes each input pixel to the even positions
    of the 2x grid and only the bias to the odd ones; the 3x3 and the other 1x1 convs of the
    decoder are ordinary convs, its identity blocks too;
  - a Bernoulli (binary cross-entropy) output on pixels in [0, 1], 1x1 output conv.

Keras details reproduced exactly: a Conv2DTranspose(kernel 1, stride 2, padding "valid") maps
n -> 2n; torch's ConvTranspose2d(kernel 1, stride 2) gives 2n - 1, so output_padding=1 restores
2n with the same placement (input pixel i at output 2i). Keras' Dense on a 4-D tensor acts on the
last (channel) axis, i.e. a position-wise linear layer, and its BatchNorm then normalises each
of the 1024 units over batch and positions, as BatchNorm1d over [B*16, 1024] does here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

KERAS2018_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    28: (1, 1, 1, 1),
    40: (1, 2, 2, 1),
    70: (2, 3, 4, 2),
    100: (3, 4, 6, 3),
}
STAGE_STRIDES = (1, 2, 2, 2)  # the stride of each stage's first block (encoder and decoder)
L2_Z_MEAN = 0.01  # Keras l2(0.01) on z_mean's kernel and bias
L2_Z_LOG_VAR = 0.1  # Keras l2(0.1) on z_log_var's kernel and bias


def _depth_of(blocks: tuple[int, ...]) -> int:
    return 6 * sum(blocks) + 4


@dataclass(frozen=True)
class Keras2018Config:
    """Shape of the network; the defaults are the study's depth-28 network.

    Stage i (0-based) has filters (w, w, 4w) with w = width * 2**i. `blocks` (4 positive ints)
    overrides the study's depth table; `depth` must then be None or 6 * sum(blocks) + 4.
    """

    network: ClassVar[str] = "keras2018"  # summary.json's `network`

    depth: int | None = 28
    blocks: tuple[int, int, int, int] | None = None
    width: int = 64
    latent_dim: int = 256
    head_units: int = 1024  # the Dense(1024) of both heads ("intermediate_dim" in the notebook)
    image_size: int = 32
    in_channels: int = 3
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01  # torch convention: Keras' momentum 0.99 is torch's 0.01

    def __post_init__(self) -> None:
        errors: list[str] = []
        if self.blocks is None:
            if self.depth not in KERAS2018_BLOCKS:
                valid = ", ".join(str(d) for d in KERAS2018_BLOCKS)
                errors.append(
                    f"depth {self.depth!r} is not one of the study's depths {valid} "
                    f"(or give blocks=(b1, b2, b3, b4) and depth=None)"
                )
            else:
                object.__setattr__(self, "blocks", KERAS2018_BLOCKS[self.depth])
        else:
            plan = tuple(self.blocks)
            if len(plan) != 4 or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in plan):
                errors.append(f"blocks must be 4 positive integers (one per stage), got {self.blocks!r}")
            elif self.depth is not None and self.depth != _depth_of(plan):
                errors.append(
                    f"blocks={plan} has depth {_depth_of(plan)} but depth={self.depth}; "
                    f"pass depth=None or depth={_depth_of(plan)}"
                )
            else:
                object.__setattr__(self, "blocks", plan)
                object.__setattr__(self, "depth", _depth_of(plan))
        for name in ("width", "latent_dim", "head_units", "in_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                errors.append(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.image_size, int) or self.image_size < 8 or self.image_size % 8:
            errors.append(f"image_size must be a positive multiple of 8, got {self.image_size!r}")
        elif isinstance(self.head_units, int) and self.head_units % self.positions:
            errors.append(
                f"head_units must be a multiple of {self.positions} (the decoder reshapes it to "
                f"{self.bottleneck_size}x{self.bottleneck_size}xC), got {self.head_units}"
            )
        if not self.bn_eps > 0:
            errors.append(f"bn_eps must be > 0, got {self.bn_eps!r}")
        if not 0 < self.bn_momentum <= 1:
            errors.append(f"bn_momentum must be in (0, 1] (torch convention), got {self.bn_momentum!r}")
        if errors:
            raise ValueError("invalid Keras2018Config:\n  " + "\n  ".join(errors))

    @property
    def layers(self) -> int:
        """Weighted layers on the main path: three per block in encoder and decoder, plus four."""
        return _depth_of(self.blocks)

    def build(self, out_channels: int, code_multiplier: int) -> Keras2018Net:
        """The study's network; it outputs Bernoulli logits of the image and a VAE's code only."""
        if out_channels != self.in_channels or code_multiplier != 2:
            raise ValueError(
                "model=keras2018 is the study's VAE with a Bernoulli output: it predicts "
                f"{self.in_channels} logits per pixel and a mean and log-variance per latent"
            )
        return Keras2018Net(self)

    @property
    def bottleneck_size(self) -> int:
        """Side of the smallest feature map: image_size / 8 (4 at 32 px)."""
        return self.image_size // 8

    @property
    def positions(self) -> int:
        return self.bottleneck_size**2

    def stage_filters(self, i: int) -> tuple[int, int, int]:
        w = self.width * 2**i
        return (w, w, 4 * w)


def _keras_init(module: nn.Module) -> None:
    """Keras defaults: glorot_uniform kernels, zero biases (BN: gamma 1, beta 0 is torch's too).

    xavier_uniform_ uses fan_in + fan_out = k*k*(cin + cout) for Conv2d and ConvTranspose2d
    alike, which is Keras' glorot limit for Conv2D and Conv2DTranspose kernels.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _conv1x1(cin: int, cout: int, stride: int, transpose: bool) -> nn.Module:
    """A Keras 1x1 Conv2D / Conv2DTranspose (padding "valid"): n -> n/stride or n -> n*stride."""
    if transpose:
        return nn.ConvTranspose2d(cin, cout, 1, stride=stride, output_padding=stride - 1)
    return nn.Conv2d(cin, cout, 1, stride=stride)


class KerasBottleneck(nn.Module):
    """Keras ResNet50 `conv_block` (projection=True) or `identity_block` (projection=False).

    x [B, cin, H, W] -> [B, f3, H', W'] with H' = H/stride (H*stride if transpose):
      relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))
    conv1: 1x1 with the stride (transposed in the decoder's conv_block), conv2: 3x3 "same",
    conv3: 1x1; shortcut: 1x1 conv with the stride (transposed likewise) + BN, or identity.
    """

    def __init__(
        self,
        cin: int,
        filters: tuple[int, int, int],
        cfg: Keras2018Config,
        projection: bool,
        stride: int = 1,
        transpose: bool = False,
    ) -> None:
        super().__init__()
        f1, f2, f3 = filters
        if not projection and (stride != 1 or cin != f3):
            raise ValueError("an identity block needs stride 1 and cin == filters[2]")

        def bn(c: int) -> nn.BatchNorm2d:
            return nn.BatchNorm2d(c, eps=cfg.bn_eps, momentum=cfg.bn_momentum)

        self.conv1 = _conv1x1(cin, f1, stride, transpose) if projection else nn.Conv2d(cin, f1, 1)
        self.bn1 = bn(f1)
        self.conv2 = nn.Conv2d(f1, f2, 3, padding=1)
        self.bn2 = bn(f2)
        self.conv3 = nn.Conv2d(f2, f3, 1)
        self.bn3 = bn(f3)
        self.shortcut = (
            nn.Sequential(_conv1x1(cin, f3, stride, transpose), bn(f3)) if projection else nn.Identity()
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.act(y + self.shortcut(x))


def _make_stages(cfg: Keras2018Config, cin: int, transpose: bool) -> list[nn.Sequential]:
    """The notebook's `resnet_layers`: 4 stages, each a conv_block then identity blocks."""
    assert cfg.blocks is not None
    stages = []
    for i, (n, stride) in enumerate(zip(cfg.blocks, STAGE_STRIDES)):
        filters = cfg.stage_filters(i)
        blocks = [KerasBottleneck(cin, filters, cfg, projection=True, stride=stride, transpose=transpose)]
        blocks += [KerasBottleneck(filters[2], filters, cfg, projection=False) for _ in range(n - 1)]
        stages.append(nn.Sequential(*blocks))
        cin = filters[2]
    return stages


class Keras2018Encoder(nn.Module):
    """x [B, C, S, S] -> stages -> [B, 32*width, S/8, S/8] -> dense head -> [B, (S/8)**2 * head_units]."""

    def __init__(self, cfg: Keras2018Config) -> None:
        super().__init__()
        self.layer1, self.layer2, self.layer3, self.layer4 = _make_stages(cfg, cfg.in_channels, False)
        self.fc = nn.Linear(cfg.stage_filters(3)[2], cfg.head_units)  # Keras "enc_conv_9"
        self.fc_bn = nn.BatchNorm1d(cfg.head_units, eps=cfg.bn_eps, momentum=cfg.bn_momentum)

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def head(self, h: torch.Tensor) -> torch.Tensor:
        b, _, s, _ = h.shape
        h = self.fc(h.permute(0, 2, 3, 1))  # channels-last, Dense per position: [B, s, s, head_units]
        h = self.fc_bn(h.reshape(b * s * s, -1))  # BN per unit over batch and positions
        return torch.sigmoid(h).reshape(b, -1)  # flatten in Keras' (H, W, C) order: [B, s*s*units]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages():
            x = stage(x)
        return self.head(x)


class Keras2018Decoder(nn.Module):
    """z [B, latent] -> dense head -> [B, head_units/(S/8)**2, S/8, S/8] -> stages -> logits [B, C, S, S]."""

    def __init__(self, cfg: Keras2018Config) -> None:
        super().__init__()
        self.size = cfg.bottleneck_size
        self.fc = nn.Linear(cfg.latent_dim, cfg.head_units)  # Keras "enc_conv_10"
        self.fc_bn = nn.BatchNorm1d(cfg.head_units, eps=cfg.bn_eps, momentum=cfg.bn_momentum)
        cin = cfg.head_units // cfg.positions  # 64 at the study's settings
        self.layer1, self.layer2, self.layer3, self.layer4 = _make_stages(cfg, cin, True)
        self.out = nn.ConvTranspose2d(cfg.stage_filters(3)[2], cfg.in_channels, 1)  # Keras "x_decoded"

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.fc_bn(self.fc(z)))  # [B, head_units]
        h = h.reshape(z.shape[0], self.size, self.size, -1).permute(0, 3, 1, 2)  # Keras Reshape (H, W, C)
        for stage in self.stages():
            h = stage(h)
        return self.out(h)  # logits; the Keras layer applies a sigmoid here


class Keras2018Net(nn.Module):
    """The study's encoder, latent heads and decoder (no sampling: that belongs to the loss).

    encode(x) -> [B, 2*latent_dim] = cat(mu, logvar); decode(z) -> logits [B, C, S, S] with
    sigmoid(logits) the Keras output. l2_penalty() is the Keras regularisation loss.
    """

    def __init__(self, cfg: Keras2018Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or Keras2018Config()
        self.latent_shape: tuple[int, ...] = (cfg.latent_dim,)
        self.encoder = Keras2018Encoder(cfg)
        features = cfg.positions * cfg.head_units  # 16,384 at the study's settings
        self.z_mean = nn.Linear(features, cfg.latent_dim)
        self.z_log_var = nn.Linear(features, cfg.latent_dim)
        self.decoder = Keras2018Decoder(cfg)
        _keras_init(self)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] [B, C, S, S] -> cat(mu, logvar) [B, 2*latent_dim]."""
        h = self.encoder(x)
        return torch.cat([self.z_mean(h), self.z_log_var(h)], dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, latent_dim] -> logits [B, C, S, S]; sigmoid(logits) is the Keras output."""
        return self.decoder(z)

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four encoder stage outputs (at 32 px: [B, 4w, 32, 32] ... [B, 32w, 4, 4])."""
        feats = []
        for stage in self.encoder.stages():
            x = stage(x)
            feats.append(x)
        return feats

    def l2_penalty(self) -> torch.Tensor:
        """Keras' regularisation loss: l2(c) adds c * sum(w**2) for kernel and bias alike."""

        def sq(m: nn.Linear) -> torch.Tensor:
            return m.weight.square().sum() + m.bias.square().sum()

        return L2_Z_MEAN * sq(self.z_mean) + L2_Z_LOG_VAR * sq(self.z_log_var)


def keras_parameter_count(module: nn.Module) -> int:
    """Parameters as a Keras summary counts them: weights, biases, BN gamma and beta, and BN
    moving mean and variance (torch's running_mean / running_var buffers; not num_batches_tracked).
    """
    n = sum(p.numel() for p in module.parameters())
    for name, buf in module.named_buffers():
        if name.rsplit(".", 1)[-1] in ("running_mean", "running_var"):
            n += buf.numel()
    return n
