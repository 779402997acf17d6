"""Tests of resvae.nn: the depth plan, residual blocks, the Residual wrapper and the networks.

Everything runs on CPU with tiny widths and images; the contracts are those of docs/design.md
("Depth") and the docstrings of resvae/nn.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resvae.nn import (
    ArchConfig,
    BlockOptions,
    DepthError,
    LatentAutoencoder,
    Residual,
    ResidualBlock,
    ResNetDecoder,
    ResNetEncoder,
    conv_layer_count,
    count_parameters,
    depth_plan,
    nearest_valid_depths,
)
from resvae.nn.plan import depth_of, proportional_split, resolve_blocks

REFERENCE = {28: (1, 1, 1, 1), 40: (1, 2, 2, 1), 70: (2, 3, 4, 2), 100: (3, 4, 6, 3)}
VALID_DEPTHS = [d for d in range(28, 201) if (d - 4) % 6 == 0]
NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm)
CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d)
WEIGHTED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)

BLOCKS = ("bottleneck", "basic")
SHORTCUTS = ("identity", "projection", "gated", "scaled", "none")
RESAMPLES = ("none", "down", "up")
NORMS = ("batch", "group", "none")
ACTS = ("relu", "silu", "gelu")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is fastest


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _out_hw(h: int, w: int, resample: str) -> tuple[int, int]:
    return {"none": (h, w), "down": (h // 2, w // 2), "up": (2 * h, 2 * w)}[resample]


def _numbers_after_nearest(msg: str) -> set[int]:
    match = re.search(r"nearest[^.]*", msg, flags=re.IGNORECASE)
    assert match, f"message does not name the nearest valid depths: {msg}"
    return {int(n) for n in re.findall(r"-?\d+", match.group(0))}


def _largest_remainder(total: int, weights=(3, 4, 6, 3)) -> tuple[int, ...]:
    """Independent statement of the documented rule, in exact arithmetic: one block per stage,
    the rest shared 3:4:6:3 by largest remainder, ties to the larger weight, then the earlier stage."""
    extra = total - len(weights)
    shares = [Fraction(extra * w, sum(weights)) for w in weights]
    plan = [1 + int(s) for s in shares]  # Fraction >= 0: int() floors
    order = sorted(range(len(weights)), key=lambda i: (-(shares[i] - int(shares[i])), -weights[i], i))
    for i in order[: total - sum(plan)]:
        plan[i] += 1
    return tuple(plan)


def _main_path_weighted_layers(model: nn.Module) -> int:
    """Weighted layers outside shortcut projections and gates: each block's branch convs plus
    every conv/linear that is not part of a ResidualBlock."""
    in_blocks: set[int] = set()
    count = 0
    for m in model.modules():
        if isinstance(m, ResidualBlock):
            in_blocks.update(id(x) for x in m.modules())
            count += sum(isinstance(x, WEIGHTED) for x in m.branch.modules())
    return count + sum(isinstance(m, WEIGHTED) and id(m) not in in_blocks for m in model.modules())


def _tiny(depth: int | None = 28, **kw) -> ArchConfig:
    kw.setdefault("width", 2)
    kw.setdefault("latent_dim", 8)
    return ArchConfig(depth=depth, **kw)


# --------------------------------------------------------------------------------------------------
# 1. depth plan


@pytest.mark.parametrize("depth,plan", sorted(REFERENCE.items()))
def test_reference_depths_map_exactly(depth, plan):
    assert depth_plan(depth) == plan
    assert depth_of(plan) == depth


@pytest.mark.parametrize("depth,plan", sorted(REFERENCE.items()))
def test_proportional_rule_agrees_with_reference_table(depth, plan):
    assert proportional_split((depth - 4) // 6) == plan


@pytest.mark.parametrize("depth", VALID_DEPTHS)
def test_every_valid_depth_has_a_four_stage_plan_of_that_depth(depth):
    plan = depth_plan(depth)
    assert len(plan) == 4
    assert all(isinstance(b, int) and b >= 1 for b in plan)
    assert depth_of(plan) == depth
    assert 6 * sum(plan) + 4 == depth


def test_non_reference_depths_follow_the_documented_largest_remainder_rule():
    for depth in VALID_DEPTHS:
        assert depth_plan(depth) == _largest_remainder((depth - 4) // 6), depth


def test_deeper_plans_never_take_blocks_away_from_a_stage():
    plans = [depth_plan(d) for d in VALID_DEPTHS]
    for shallow, deep in itertools.pairwise(plans):
        assert all(a <= b for a, b in zip(shallow, deep)), (shallow, deep)
        assert sum(deep) == sum(shallow) + 1


@pytest.mark.parametrize(
    "depth,nearest",
    [(27, {28}), (29, {28, 34}), (50, {46, 52}), (0, {28}), (-6, {28}), (22, {28}), (101, {100, 106})],
)
def test_invalid_depth_names_nearest_valid_depths(depth, nearest):
    assert set(nearest_valid_depths(depth)) == nearest
    with pytest.raises(DepthError) as info:
        depth_plan(depth)
    msg = str(info.value)
    assert str(depth) in msg
    assert _numbers_after_nearest(msg) == nearest
    # the depths it suggests are themselves accepted
    for d in nearest:
        assert depth_of(depth_plan(d)) == d


@pytest.mark.parametrize("depth", [28.0, 40.5, "40", None, True])
def test_non_integer_depth_raises_depth_error(depth):
    with pytest.raises(DepthError):
        depth_plan(depth)


def test_depth_error_is_a_value_error():
    assert issubclass(DepthError, ValueError)


@pytest.mark.parametrize("blocks", [(1, 1, 1, 1), (1, 2, 2, 1), (3, 4, 6, 3), (5, 1, 1, 2)])
def test_resolve_blocks_accepts_explicit_split_consistent_with_depth(blocks):
    depth = depth_of(blocks)
    assert resolve_blocks(depth, blocks) == tuple(blocks)
    assert resolve_blocks(depth, list(blocks)) == tuple(blocks)
    assert resolve_blocks(None, blocks) == tuple(blocks)


def test_resolve_blocks_from_depth_alone_uses_the_plan():
    assert resolve_blocks(70, None) == REFERENCE[70]
    with pytest.raises(DepthError):
        resolve_blocks(None, None)


def test_resolve_blocks_rejects_split_inconsistent_with_depth_naming_both():
    with pytest.raises(DepthError) as info:
        resolve_blocks(28, (1, 2, 2, 1))
    msg = str(info.value)
    assert re.search(r"\b28\b", msg)  # the depth asked for
    assert re.search(r"\b40\b", msg)  # the depth of the blocks given


@pytest.mark.parametrize("blocks", [(1, 1, 1), (1, 1, 1, 1, 1), (), (1, 0, 1, 1), (2, 2, -1, 2)])
def test_resolve_blocks_rejects_wrong_length_or_non_positive_entries(blocks):
    with pytest.raises(DepthError):
        resolve_blocks(None, blocks)


# --------------------------------------------------------------------------------------------------
# 2. residual block shapes


def _check_block_shape(cin, cout, resample, opts, h=8, w=12):
    block = ResidualBlock(cin, cout, resample, opts)
    x = torch.randn(2, cin, h, w)
    with torch.no_grad():
        y = block(x)
    assert y.shape == (2, cout, *_out_hw(h, w, resample))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("cin,cout", [(8, 16), (16, 16)])
@pytest.mark.parametrize("resample", RESAMPLES)
@pytest.mark.parametrize("shortcut", SHORTCUTS)
@pytest.mark.parametrize("preact", [True, False])
@pytest.mark.parametrize("block", BLOCKS)
def test_block_shape_block_preact_shortcut_resample(block, preact, shortcut, resample, cin, cout):
    _check_block_shape(cin, cout, resample, BlockOptions(block=block, preact=preact, shortcut=shortcut))


@pytest.mark.parametrize("resample", RESAMPLES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("preact", [True, False])
@pytest.mark.parametrize("block", BLOCKS)
def test_block_shape_norm_act(block, preact, norm, act, resample):
    _check_block_shape(8, 16, resample, BlockOptions(block=block, preact=preact, norm=norm, act=act))


@pytest.mark.parametrize("upsample", ["transposed", "resize"])
@pytest.mark.parametrize("shortcut", SHORTCUTS)
@pytest.mark.parametrize("preact", [True, False])
@pytest.mark.parametrize("block", BLOCKS)
def test_block_shape_upsample(block, preact, shortcut, upsample):
    opts = BlockOptions(block=block, preact=preact, shortcut=shortcut, upsample=upsample)
    _check_block_shape(16, 8, "up", opts)
    _check_block_shape(8, 8, "up", opts)


@pytest.mark.parametrize(
    "field,bad",
    [
        ("block", "resnet"),
        ("shortcut", "skip"),
        ("norm", "layer"),
        ("act", "tanh"),
        ("upsample", "pixelshuffle"),
    ],
)
def test_block_options_reject_unknown_names(field, bad):
    with pytest.raises(ValueError, match=bad):
        BlockOptions(**{field: bad})


# --------------------------------------------------------------------------------------------------
# 3. plain blocks, zero init


def _zero_branch_convs(block: ResidualBlock) -> None:
    with torch.no_grad():
        for m in block.branch.modules():
            if isinstance(m, CONV_TYPES):
                m.weight.zero_()


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("resample", RESAMPLES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("preact", [True, False])
@pytest.mark.parametrize("block", BLOCKS)
def test_plain_block_has_no_identity_path(block, preact, norm, resample, train):
    cin, cout = 16, 16
    x = torch.randn(2, cin, 8, 8)
    for shortcut in ("none", "identity"):
        b = ResidualBlock(cin, cout, resample, BlockOptions(block, preact, shortcut, norm=norm))
        _zero_branch_convs(b)
        b.train(train)
        with torch.no_grad():
            y = b(x)
        if shortcut == "none":
            assert torch.count_nonzero(y) == 0, "a plain block must have no path around its branch"
        else:
            assert torch.count_nonzero(y) > 0, "a residual block keeps its shortcut path"


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("block", BLOCKS)
def test_zero_init_last_makes_fresh_preact_identity_block_the_identity(block, norm, act, train):
    b = ResidualBlock(16, 16, "none", BlockOptions(block, True, "identity", norm=norm, act=act))
    b.train(train)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        y = b(x)
        f = b.branch(x)
    assert torch.count_nonzero(f) == 0
    torch.testing.assert_close(y, x, rtol=0, atol=0)


def test_without_zero_init_last_a_fresh_block_is_not_the_identity():
    b = ResidualBlock(16, 16, "none", BlockOptions(zero_init_last=False)).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert torch.count_nonzero(b.branch(x)) > 0
        assert not torch.allclose(b(x), x)


@pytest.mark.parametrize("block", BLOCKS)
def test_zero_init_post_act_block_starts_as_act_of_shortcut(block):
    b = ResidualBlock(16, 16, "none", BlockOptions(block, False, "identity", act="relu")).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(b(x), torch.relu(x))


@pytest.mark.parametrize("resample", RESAMPLES)
@pytest.mark.parametrize("shortcut", ["identity", "projection", "gated", "scaled"])
@pytest.mark.parametrize("block", BLOCKS)
def test_zero_init_preact_block_starts_as_its_shortcut(block, shortcut, resample):
    opts = BlockOptions(block, True, shortcut, shortcut_scale=0.3, gate_bias=0.7)
    b = ResidualBlock(8, 16, resample, opts).eval()
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        s = b.shortcut(x)
        expected = {
            "identity": s,
            "projection": s,
            "gated": torch.sigmoid(torch.tensor(0.7)) * s,
            "scaled": 0.3 * s,
        }[shortcut]
        torch.testing.assert_close(b(x), expected)


def _branch_norms_and_convs(block: ResidualBlock) -> tuple[list[nn.Module], list[nn.Module]]:
    norms = [m for m in block.branch.modules() if isinstance(m, NORM_TYPES)]
    convs = [m for m in block.branch.modules() if isinstance(m, CONV_TYPES)]
    assert len(norms) == len(convs) == (3 if block.opts.block == "bottleneck" else 2)
    return norms, convs


@pytest.mark.parametrize("zero_init", [True, False])
@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("block", BLOCKS)
def test_zero_init_last_zeroes_exactly_the_last_norm_scale_post_act(block, norm, zero_init):
    opts = BlockOptions(block, False, "identity", norm=norm, zero_init_last=zero_init)
    norms, convs = _branch_norms_and_convs(ResidualBlock(16, 16, "down", opts))
    assert torch.all(norms[-1].weight == 0) == zero_init
    assert all(torch.all(n.weight == 1) for n in norms[:-1])
    assert all(torch.count_nonzero(c.weight) > 0 for c in convs)


@pytest.mark.parametrize("zero_init", [True, False])
@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("block", BLOCKS)
def test_zero_init_last_preact_zeroes_one_last_layer_only(block, norm, zero_init):
    """Pre-activation: the branch's last norm (before the last conv) or its last conv is zeroed,
    nothing else; either makes the branch start as the zero function."""
    opts = BlockOptions(block, True, "identity", norm=norm, zero_init_last=zero_init)
    norms, convs = _branch_norms_and_convs(ResidualBlock(16, 16, "down", opts))
    assert all(torch.all(n.weight == 1) for n in norms[:-1])
    assert all(torch.count_nonzero(c.weight) > 0 for c in convs[:-1])
    zeroed = [bool(torch.all(norms[-1].weight == 0)), torch.count_nonzero(convs[-1].weight) == 0]
    assert sum(zeroed) == (1 if zero_init else 0)


@pytest.mark.parametrize("resample", RESAMPLES)
@pytest.mark.parametrize("preact", [True, False])
@pytest.mark.parametrize("block", BLOCKS)
def test_zero_init_last_without_norm_zeroes_the_last_conv(block, preact, resample):
    b = ResidualBlock(8, 16, resample, BlockOptions(block, preact, "identity", norm="none"))
    convs = [m for m in b.branch.modules() if isinstance(m, CONV_TYPES)]
    assert len(convs) == (3 if block == "bottleneck" else 2)
    assert torch.count_nonzero(convs[-1].weight) == 0
    assert all(torch.count_nonzero(c.weight) > 0 for c in convs[:-1])
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        assert torch.count_nonzero(b.branch(x)) == 0


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("preact", [True, False])
@pytest.mark.parametrize("block", BLOCKS)
def test_plain_block_ignores_zero_init_last(block, preact, norm):
    b = ResidualBlock(16, 16, "none", BlockOptions(block, preact, "none", norm=norm, zero_init_last=True))
    for m in b.branch.modules():
        if isinstance(m, NORM_TYPES):
            assert torch.all(m.weight == 1)
        if isinstance(m, CONV_TYPES):
            assert torch.count_nonzero(m.weight) > 0
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert torch.count_nonzero(b(x)) > 0
        assert torch.count_nonzero(b.branch(x)) > 0


def _branch_grad_norm(block: ResidualBlock) -> float:
    x = torch.randn(4, 16, 8, 8)
    (block(x) * torch.randn(4, 16, 8, 8)).sum().backward()
    return sum(p.grad.abs().sum().item() for p in block.branch.parameters() if p.grad is not None)


@pytest.mark.parametrize("preact,act", [(True, "silu"), (True, "gelu"), (False, "relu"), (False, "silu")])
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_zero_initialised_branch_still_receives_gradient(preact, act, norm):
    b = ResidualBlock(16, 16, "none", BlockOptions("bottleneck", preact, "identity", norm=norm, act=act))
    assert _branch_grad_norm(b) > 0


@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("block", BLOCKS)
def test_zero_init_preact_relu_branch_receives_gradient(block, norm):
    b = ResidualBlock(16, 16, "none", BlockOptions(block, True, "identity", norm=norm, act="relu"))
    assert _branch_grad_norm(b) > 0


def test_preact_relu_network_blocks_receive_gradient():
    model = LatentAutoencoder(_tiny(28, act="relu"), out_channels=3)
    x = torch.randn(2, 3, 32, 32)
    model.decode(model.encode(x)).square().mean().backward()
    for block in (m for m in model.modules() if isinstance(m, ResidualBlock)):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in block.branch.parameters())


# --------------------------------------------------------------------------------------------------
# 4. upsampling


def _transposed(module: nn.Module) -> list[nn.ConvTranspose2d]:
    return [m for m in module.modules() if isinstance(m, nn.ConvTranspose2d)]


@pytest.mark.parametrize("shortcut", ["identity", "projection"])
@pytest.mark.parametrize("preact", [True, False])
@pytest.mark.parametrize("block", BLOCKS)
def test_decoder_upsamples_with_transposed_convs_kernel_divisible_by_stride(block, preact, shortcut):
    cfg = _tiny(40, block=block, preact=preact, shortcut=shortcut)  # default upsample
    decoder = ResNetDecoder(cfg, out_channels=3)
    ups = [m for m in decoder.modules() if isinstance(m, ResidualBlock)]
    tconvs = _transposed(decoder)
    # at least one transposed conv in the branch of each of the three upsampling blocks
    up_blocks = [b for b in ups if _transposed(b.branch)]
    assert len(up_blocks) == 3
    assert len(tconvs) >= 3
    for m in tconvs:
        assert m.stride == (2, 2)
        assert all(k % s == 0 for k, s in zip(m.kernel_size, m.stride)), m
        assert m.kernel_size != (1, 1)


@pytest.mark.parametrize("block", BLOCKS)
def test_transposed_convs_give_every_interior_pixel_the_same_number_of_taps(block):
    """Kernel divisible by stride means no checkerboard: a ones kernel on a ones image is flat."""
    decoder = ResNetDecoder(_tiny(28, block=block, shortcut="projection"), out_channels=3)
    for m in _transposed(decoder):
        k, s = m.kernel_size, m.stride
        y = F.conv_transpose2d(
            torch.ones(1, 1, 8, 8),
            torch.ones(1, 1, *k),
            stride=s,
            padding=m.padding,
            output_padding=m.output_padding,
        )
        assert y.shape[-2:] == (16, 16)
        interior = y[..., k[0] : -k[0], k[1] : -k[1]]
        assert torch.all(interior == (k[0] // s[0]) * (k[1] // s[1])), m


@pytest.mark.parametrize("shortcut", SHORTCUTS)
@pytest.mark.parametrize("block", BLOCKS)
def test_resize_upsampling_has_no_transposed_conv(block, shortcut):
    model = LatentAutoencoder(_tiny(40, block=block, shortcut=shortcut, upsample="resize"), 3)
    assert _transposed(model) == []
    assert any(isinstance(m, nn.Upsample) for m in model.decoder.modules())
    with torch.no_grad():
        assert model.decode(torch.randn(2, 8)).shape == (2, 3, 32, 32)


def test_no_transposed_conv_is_a_1x1_stride_2_zero_insertion():
    for block, shortcut in itertools.product(BLOCKS, SHORTCUTS):
        model = LatentAutoencoder(_tiny(28, block=block, shortcut=shortcut), 3)
        for m in _transposed(model):
            assert not (m.kernel_size == (1, 1) and m.stride == (2, 2))


# --------------------------------------------------------------------------------------------------
# 5. Residual wrapper


def test_residual_sum_is_x_plus_f_x():
    f = nn.Conv2d(4, 4, 3, padding=1)
    r = Residual(f)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(r(x), x + f(x))


@pytest.mark.parametrize("gate_bias", [1.0, -0.4, 2.5])
def test_residual_gated_scalar_gate(gate_bias):
    f = nn.Conv2d(4, 4, 3, padding=1)
    r = Residual(f, merge="gated", gate_bias=gate_bias)
    x = torch.randn(2, 4, 5, 5)
    g = torch.sigmoid(torch.tensor(gate_bias))
    y = r(x)
    torch.testing.assert_close(y, g * x + (1 - g) * f(x))
    # the gate is learned: it is a parameter of the wrapper and receives a gradient
    gate_params = [p for name, p in r.named_parameters() if not name.startswith("module.")]
    assert len(gate_params) == 1 and gate_params[0].numel() == 1
    y.sum().backward()
    assert gate_params[0].grad is not None and gate_params[0].grad.abs() > 0


def test_residual_gated_default_starts_at_he_2016s_carry_of_0_9975():
    f = nn.Conv2d(4, 4, 1)
    x = torch.randn(2, 4, 3, 3)
    g = torch.sigmoid(torch.tensor(6.0))
    assert float(g) == pytest.approx(0.9975, abs=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(Residual(f, merge="gated")(x), g * x + (1 - g) * f(x))


@pytest.mark.parametrize("preact", [True, False])
def test_the_gated_shortcut_of_the_network_starts_at_the_documented_carry(preact):
    """He et al. 2016's exclusive gating (b_g = -6 on the transform gate): the shortcut weight at
    initialisation is sigmoid(6) = 0.9975 for every input, as conf/network/resnet.yaml says."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from resvae.run.config import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["model.arch.shortcut=gated", f"model.arch.preact={preact}"])
    opts = instantiate(cfg.model.arch).block_options
    block = ResidualBlock(16, 16, opts=opts)
    s = torch.randn(3, 16, 4, 4)
    carry = torch.sigmoid(block.gate(s))
    torch.testing.assert_close(carry, torch.full_like(carry, 0.99752737), rtol=0, atol=1e-6)


def test_residual_gated_with_gate_module():
    f = nn.Conv2d(4, 4, 3, padding=1)
    gate = nn.Conv2d(4, 1, 1)
    r = Residual(f, merge="gated", gate=gate)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        g = torch.sigmoid(gate(x))
        torch.testing.assert_close(r(x), g * x + (1 - g) * f(x))
        assert not torch.allclose(g, g.mean().expand_as(g))  # the gate really depends on x


@pytest.mark.parametrize(
    "module,in_shape,out_shape",
    [
        (nn.Conv2d(4, 8, 1), (2, 4, 5, 5), (2, 8, 5, 5)),
        (nn.MaxPool2d(2), (2, 4, 6, 6), (2, 4, 3, 3)),
        (nn.Linear(6, 3), (2, 6), (2, 3)),
    ],
)
def test_residual_rejects_shape_changing_module_at_first_forward(module, in_shape, out_shape):
    r = Residual(module)  # construction succeeds: shapes are only known at the first forward
    with pytest.raises(ValueError) as info:
        r(torch.randn(*in_shape))
    msg = str(info.value)
    assert str(tuple(in_shape)) in msg
    assert str(tuple(out_shape)) in msg


def test_residual_gated_also_rejects_shape_change():
    with pytest.raises(ValueError, match=re.escape("(2, 8, 5, 5)")):
        Residual(nn.Conv2d(4, 8, 1), merge="gated")(torch.randn(2, 4, 5, 5))


def test_residual_unknown_merge_raises():
    with pytest.raises(ValueError, match="concat"):
        Residual(nn.Identity(), merge="concat")


def test_residual_gate_module_needs_gated_merge():
    with pytest.raises(ValueError):
        Residual(nn.Identity(), merge="sum", gate=nn.Conv2d(4, 1, 1))


# --------------------------------------------------------------------------------------------------
# 6. ArchConfig and LatentAutoencoder


@pytest.mark.parametrize("multiplier", [1, 2, 3])
def test_dense_code_width_is_multiplier_times_latent(multiplier):
    model = LatentAutoencoder(_tiny(28, latent_dim=6), out_channels=3, code_multiplier=multiplier)
    with torch.no_grad():
        assert model.encode(torch.randn(2, 3, 32, 32)).shape == (2, multiplier * 6)
        assert model.decode(torch.randn(2, 6)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("depth", sorted(REFERENCE))
def test_autoencoder_shapes_at_reference_depths(depth):
    cfg = _tiny(depth)
    assert cfg.blocks == REFERENCE[depth] and cfg.depth == depth
    model = LatentAutoencoder(cfg, out_channels=5, code_multiplier=2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        code = model.encode(x)
        assert code.shape == (2, 2 * 8)
        assert model.latent_shape == (8,)
        out = model.decode(code[:, :8])
    assert out.shape == (2, 5, 32, 32)
    assert torch.isfinite(out).all()
    enc_blocks = [m for m in model.encoder.modules() if isinstance(m, ResidualBlock)]
    dec_blocks = [m for m in model.decoder.modules() if isinstance(m, ResidualBlock)]
    assert len(enc_blocks) == sum(REFERENCE[depth])
    assert len(dec_blocks) == sum(REFERENCE[depth])


@pytest.mark.parametrize("multiplier", [1, 2, 3])
def test_spatial_latent_shapes(multiplier):
    cfg = _tiny(28, latent="spatial")
    model = LatentAutoencoder(cfg, out_channels=3, code_multiplier=multiplier)
    assert model.latent_shape == (8, 4, 4)
    with torch.no_grad():
        assert model.encode(torch.randn(2, 3, 32, 32)).shape == (2, multiplier * 8, 4, 4)
        assert model.decode(torch.randn(2, 8, 4, 4)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("image_size", [8, 16, 48])
def test_other_image_sizes(image_size):
    cfg = _tiny(28, image_size=image_size, in_channels=1)
    assert cfg.feature_size == image_size // 8
    model = LatentAutoencoder(cfg, out_channels=2, code_multiplier=2)
    with torch.no_grad():
        assert model.encode(torch.randn(2, 1, image_size, image_size)).shape == (2, 16)
        assert model.decode(torch.randn(2, 8)).shape == (2, 2, image_size, image_size)


@pytest.mark.parametrize("block", BLOCKS)
def test_stage_resolutions_and_widths_mirror(block):
    """Encoder stages at 32/16/8/4 px with stage_channels() outputs; the decoder mirrors them,
    each stage's last block upsampling into the previous stage's width."""
    cfg = _tiny(40, block=block)
    ch = cfg.stage_channels()
    res = [32, 16, 8, 4]
    model = LatentAutoencoder(cfg, out_channels=3)
    seen: dict[str, list[tuple[int, int]]] = {"enc": [], "dec": []}
    for part, module in (("enc", model.encoder), ("dec", model.decoder)):
        for m in module.modules():
            if isinstance(m, ResidualBlock):
                m.register_forward_hook(lambda _m, _i, o, part=part: seen[part].append(tuple(o.shape[1:3])))
    with torch.no_grad():
        feats = model.encoder(torch.randn(2, 3, 32, 32))
        model.decode(torch.randn(2, 8))
    assert feats.shape == (2, ch[-1], 4, 4)
    expected_enc = [(ch[i], res[i]) for i, n in enumerate(cfg.blocks) for _ in range(n)]
    assert seen["enc"] == expected_enc
    expected_dec = []
    for i in reversed(range(4)):
        n = cfg.blocks[i]
        expected_dec += [(ch[i], res[i])] * (n - 1)
        expected_dec.append((ch[i - 1], res[i - 1]) if i > 0 else (ch[0], res[0]))
    assert seen["dec"] == expected_dec


def test_stage_channels_at_reference_width():
    assert ArchConfig(width=64, block="bottleneck").stage_channels() == [256, 512, 1024, 2048]
    assert ArchConfig(width=64, block="basic").stage_channels() == [64, 128, 256, 512]


@pytest.mark.parametrize("width", [1, 2, 3])
def test_bottleneck_inner_width_is_stage_width(width):
    cfg = _tiny(28, width=width)
    enc = ResNetEncoder(cfg)
    blocks = [m for m in enc.modules() if isinstance(m, ResidualBlock)]
    for i, b in enumerate(blocks):  # depth 28: one block per stage
        convs = [m for m in b.branch.modules() if isinstance(m, nn.Conv2d)]
        assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (1, 1)]
        assert convs[1].in_channels == convs[1].out_channels == width * 2**i
        assert convs[2].out_channels == 4 * width * 2**i


@pytest.mark.parametrize("depth", sorted(REFERENCE))
def test_conv_layer_count_is_depth_and_matches_the_network(depth):
    blocks = depth_plan(depth)
    assert conv_layer_count(blocks, "bottleneck") == depth
    for shortcut in ("projection", "gated"):
        cfg = _tiny(depth, shortcut=shortcut)
        model = LatentAutoencoder(cfg, out_channels=3)
        assert _main_path_weighted_layers(model) == conv_layer_count(blocks, "bottleneck") == cfg.layers
    assert conv_layer_count(blocks, "basic") == 4 * sum(blocks) + 4


@pytest.mark.parametrize("depth", [20, 28, 40, 68, 100])
@pytest.mark.parametrize("shortcut", ["identity", "none"])
def test_basic_block_depth_counts_the_basic_network_layers(depth, shortcut):
    """Depth means weighted main-path layers for basic blocks too: 4 * blocks + 4 (was 6n + 4)."""
    cfg = _tiny(depth, block="basic", shortcut=shortcut)
    assert cfg.depth == cfg.layers == depth
    assert cfg.blocks == depth_plan(depth, "basic") == _largest_remainder((depth - 4) // 4)
    assert 4 * sum(cfg.blocks) + 4 == depth
    assert _main_path_weighted_layers(LatentAutoencoder(cfg, out_channels=3)) == depth


def test_basic_block_plans_and_depth_of():
    assert depth_plan(28, "basic") == (1, 2, 2, 1)  # 6 blocks
    assert depth_plan(40, "basic") == (2, 2, 3, 2)  # 9 blocks
    assert depth_plan(100, "basic") == (5, 6, 8, 5)  # 24 blocks
    assert depth_plan(20, "basic") == (1, 1, 1, 1)  # the smallest
    assert depth_of((1, 2, 2, 1), "basic") == 28 and depth_of((1, 2, 2, 1)) == 40
    # the same plan rule: every valid basic depth, blocks grow monotonically
    plans = [depth_plan(d, "basic") for d in range(20, 201, 4)]
    for shallow, deep in itertools.pairwise(plans):
        assert all(a <= b for a, b in zip(shallow, deep)) and sum(deep) == sum(shallow) + 1


@pytest.mark.parametrize(
    "depth,nearest",
    [(70, {68, 72}), (19, {20}), (22, {20, 24}), (34, {32, 36}), (101, {100, 104}), (0, {20})],
)
def test_invalid_basic_depth_names_nearest_valid_basic_depths(depth, nearest):
    assert set(nearest_valid_depths(depth, "basic")) == nearest
    with pytest.raises(DepthError) as info:
        ArchConfig(depth=depth, block="basic")
    msg = str(info.value)
    assert f"invalid depth {depth}" in msg and "basic" in msg
    assert _numbers_after_nearest(msg) == nearest
    for d in nearest:
        assert ArchConfig(depth=d, block="basic", width=2).layers == d


def test_explicit_blocks_give_the_depth_of_their_block_type():
    assert ArchConfig(depth=None, blocks=(1, 2, 2, 1), block="basic").depth == 28
    assert ArchConfig(depth=None, blocks=(1, 2, 2, 1)).depth == 40
    with pytest.raises(DepthError) as info:
        ArchConfig(depth=40, blocks=(1, 2, 2, 1), block="basic")
    assert "model.arch.depth=28" in str(info.value) and "basic" in str(info.value)
    with pytest.raises(DepthError, match="unknown block"):
        depth_plan(28, "wide")


def test_arch_config_from_keywords_converts_blocks():
    """Hydra instantiates ArchConfig(**model.arch): a list of blocks becomes the plan's tuple."""
    cfg = ArchConfig(depth=None, blocks=[1, 2, 2, 1], width=2, latent_dim=8)
    assert cfg.blocks == (1, 2, 2, 1) and cfg.depth == 40
    assert ArchConfig(depth=70).blocks == REFERENCE[70]


def test_arch_config_unknown_key_raises_type_error_naming_it():
    with pytest.raises(TypeError, match="latnet_dim"):
        ArchConfig(depth=28, latnet_dim=8)


def test_arch_config_network_layers_and_build():
    cfg = _tiny(40)
    assert ArchConfig.network == cfg.network == "resnet"
    assert "network" not in asdict(cfg)  # a class attribute, not a config field
    assert cfg.layers == conv_layer_count(cfg.blocks, cfg.block) == 40
    # depth and layers agree for basic blocks too: basic 40 is 9 blocks (2, 2, 3, 2)
    assert _tiny(40, block="basic").layers == conv_layer_count((2, 2, 3, 2), "basic") == 40
    torch.manual_seed(0)
    built = cfg.build(out_channels=5, code_multiplier=2)
    torch.manual_seed(0)
    direct = LatentAutoencoder(cfg, out_channels=5, code_multiplier=2)
    assert isinstance(built, LatentAutoencoder) and built.cfg is cfg
    assert built.state_dict().keys() == direct.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), direct.state_dict().values()))
    assert _main_path_weighted_layers(built) == cfg.layers
    with torch.no_grad():
        assert built.encode(torch.randn(2, 3, 32, 32)).shape == (2, 16)
        assert built.decode(torch.randn(2, 8)).shape == (2, 5, 32, 32)


@pytest.mark.parametrize(
    "field,bad,choices",
    [
        ("block", "resnet", BLOCKS),
        ("shortcut", "skip", SHORTCUTS),
        ("norm", "layer", NORMS),
        ("act", "tanh", ACTS),
        ("latent", "conv", ("dense", "spatial")),
        ("upsample", "pixelshuffle", ("transposed", "resize")),
    ],
)
def test_arch_config_rejects_bad_names_listing_choices(field, bad, choices):
    with pytest.raises(ValueError) as info:
        ArchConfig(**{field: bad})
    msg = str(info.value)
    assert bad in msg
    for choice in choices:
        assert choice in msg


@pytest.mark.parametrize("image_size", [30, 12, 4, 0, -8])
def test_image_size_must_be_positive_multiple_of_8(image_size):
    with pytest.raises(ValueError, match="8") as info:
        ArchConfig(image_size=image_size)
    msg = str(info.value)
    assert "model.arch.image_size must be a positive multiple of 8" in msg
    assert f"got {image_size}" in msg


@pytest.mark.parametrize("value", [0, -3])
@pytest.mark.parametrize("field", ["width", "latent_dim", "in_channels"])
def test_non_positive_sizes_rejected(field, value):
    with pytest.raises(ValueError, match=field) as info:
        ArchConfig(**{field: value})
    assert f"model.arch.{field} must be a positive integer, got {value}" in str(info.value)


def test_arch_config_depth_errors():
    with pytest.raises(DepthError, match="model.arch.blocks"):  # the way out of an invalid depth
        ArchConfig(depth=50)
    with pytest.raises(DepthError) as info:
        ArchConfig(depth=28, blocks=(1, 2, 2, 1))
    assert "model.arch.blocks=[1, 2, 2, 1]" in str(info.value)
    assert "model.arch.depth=28" in str(info.value)
    assert "model.arch.depth=40" in str(info.value)  # the fix it suggests
    with pytest.raises(DepthError, match=re.escape("model.arch.blocks must list 4")):
        ArchConfig(depth=None, blocks=(1, 1, 1))
    with pytest.raises(DepthError, match="model.arch.depth or model.arch.blocks"):
        ArchConfig(depth=None, blocks=None)
    assert ArchConfig(depth=None, blocks=(2, 2, 2, 2)).depth == 52


# --------------------------------------------------------------------------------------------------
# 6b. named stages


def test_encoder_and_decoder_stage_names():
    """timm-style names: encoder stem, layer1..layer4, final; decoder layer4..layer1 (the order
    they run), final and the 3x3 output head."""
    cfg = _tiny(40)
    enc, dec = ResNetEncoder(cfg), ResNetDecoder(cfg, out_channels=3)
    assert [name for name, _ in enc.named_children()] == [
        "stem",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "final",
    ]
    assert [name for name, _ in dec.named_children()] == [
        "layer4",
        "layer3",
        "layer2",
        "layer1",
        "final",
        "head",
    ]
    assert enc.stages == [enc.layer1, enc.layer2, enc.layer3, enc.layer4]
    assert dec.stages == [dec.layer4, dec.layer3, dec.layer2, dec.layer1]
    for stages in (enc.stages, dec.stages):
        assert all(isinstance(s, nn.Sequential) for s in stages)
        assert all(isinstance(b, ResidualBlock) for s in stages for b in s)
    # each stage holds its plan's blocks, mirrored: layerN of both networks has blocks[N - 1]
    assert [len(s) for s in enc.stages] == list(cfg.blocks)
    assert [len(getattr(dec, f"layer{i + 1}")) for i in range(4)] == list(cfg.blocks)
    assert isinstance(dec.head, nn.Conv2d) and dec.head.kernel_size == (3, 3) and dec.head.out_channels == 3
    assert dec.head.in_channels == cfg.stage_channels()[0]
    # pre-activation networks still owe their output a norm and an activation; post-activation don't
    assert isinstance(enc.final, nn.Sequential) and isinstance(enc.final[0], nn.BatchNorm2d)
    assert isinstance(ResNetEncoder(_tiny(28, preact=False)).final, nn.Identity)
    assert isinstance(ResNetDecoder(_tiny(28, preact=False), 3).final, nn.Identity)


@pytest.mark.parametrize("block", BLOCKS)
def test_stage_features_shapes(block):
    cfg = _tiny(40, block=block)
    enc = ResNetEncoder(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = enc.stage_features(x)
        out = enc(x)
    ch = cfg.stage_channels()
    assert [tuple(f.shape) for f in feats] == [(2, ch[i], r, r) for i, r in enumerate([32, 16, 8, 4])]
    # forward is the last stage's features through `final`
    with torch.no_grad():
        torch.testing.assert_close(out, enc.final(feats[-1]))
        # and the stages compose: running them by hand gives the same features
        h = enc.stem(x)
        for stage, f in zip(enc.stages, feats):
            h = stage(h)
            torch.testing.assert_close(h, f)


def test_decoder_runs_its_stages_in_order():
    cfg = _tiny(28)
    dec = ResNetDecoder(cfg, out_channels=4).eval()
    h = torch.randn(2, cfg.stage_channels()[-1], 4, 4)
    with torch.no_grad():
        out = dec(h)
        by_hand = h
        shapes = []
        for stage in dec.stages:
            by_hand = stage(by_hand)
            shapes.append(tuple(by_hand.shape[1:]))
        torch.testing.assert_close(out, dec.head(dec.final(by_hand)))
    ch = cfg.stage_channels()
    assert shapes == [(ch[2], 8, 8), (ch[1], 16, 16), (ch[0], 32, 32), (ch[0], 32, 32)]
    assert out.shape == (2, 4, 32, 32)


# --------------------------------------------------------------------------------------------------
# 7. parameter count


def test_parameter_count_grows_with_depth_at_fixed_width():
    counts = [count_parameters(LatentAutoencoder(_tiny(d), out_channels=3)) for d in sorted(REFERENCE)]
    assert all(a < b for a, b in itertools.pairwise(counts)), counts
    enc = [count_parameters(ResNetEncoder(_tiny(d))) for d in sorted(REFERENCE)]
    assert all(a < b for a, b in itertools.pairwise(enc)), enc


def test_count_parameters_counts_every_parameter_once():
    shared = nn.Linear(3, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Conv2d(1, 2, 3, bias=False))
    assert count_parameters(model) == 3 * 4 + 4 + 2 * 9


# --------------------------------------------------------------------------------------------------
# 8. shortcut dropout, the shortcut path (lesions) and changes_shape


def test_shortcut_dropout_is_classic_dropout_on_the_shortcut():
    """Training: each shortcut element kept (unscaled) with probability 1 - p; evaluation: the
    shortcut times 1 - p, its expected scale (He et al. 2016's dropout shortcut)."""
    opts = BlockOptions(block="basic", shortcut_dropout=0.5, norm="none", zero_init_last=True)
    block = ResidualBlock(8, 8, "none", opts)  # zero branch: the output is the shortcut alone
    x = torch.randn(4, 8, 6, 6).abs() + 0.1
    block.train()
    kept = block(x) / x
    assert set(kept.unique().tolist()) <= {0.0, 1.0}
    assert 0.35 < kept.mean().item() < 0.65
    block.eval()
    torch.testing.assert_close(block(x), 0.5 * x)
    assert BlockOptions().shortcut_dropout == 0.0
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="shortcut_dropout"):
            BlockOptions(shortcut_dropout=bad)


def test_arch_config_takes_shortcut_dropout():
    cfg = _tiny(28, shortcut_dropout=0.5)
    model = LatentAutoencoder(cfg, out_channels=3)
    assert all(b.shortcut_dropout == 0.5 for b in model.modules() if isinstance(b, ResidualBlock))


@pytest.mark.parametrize("preact", [True, False])
@pytest.mark.parametrize("shortcut", ["identity", "projection", "gated", "scaled"])
def test_shortcut_path_is_the_merge_with_a_zero_branch(shortcut, preact):
    opts = BlockOptions(block="basic", preact=preact, shortcut=shortcut, norm="none", zero_init_last=False)
    block = ResidualBlock(8, 8, "none", opts).eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        s = block.shortcut(x)
        expected = {
            "identity": x,
            "projection": s,
            "scaled": 0.5 * x,
            "gated": s * torch.sigmoid(block.gate(s)) if block.gate is not None else None,
        }[shortcut]
        torch.testing.assert_close(block.shortcut_path(x), expected)
        # and it is what the block computes when its branch outputs zero (before any post-act)
        block.out_act = None
        for p in block.branch.parameters():
            p.zero_()
        torch.testing.assert_close(block(x), block.shortcut_path(x))


def test_changes_shape_and_plain_shortcut_path():
    plain = BlockOptions(shortcut="none")
    assert not ResidualBlock(16, 16, "none", plain).changes_shape
    assert ResidualBlock(16, 32, "none", plain).changes_shape
    assert ResidualBlock(16, 16, "down", plain).changes_shape
    assert ResidualBlock(16, 16, "up", BlockOptions()).changes_shape
    x = torch.randn(2, 16, 4, 4)
    assert torch.equal(ResidualBlock(16, 16, "none", plain).shortcut_path(x), x)  # deleted: identity
    with pytest.raises(ValueError, match="changes the shape"):
        ResidualBlock(16, 16, "down", plain).shortcut_path(x)


# --------------------------------------------------------------------------------------------------
# 9. the MLP network of Residual blocks (resvae/nn/mlp.py)


def _mlp(**kw):
    from resvae.nn.mlp import MLPArchConfig

    kw.setdefault("width", 8)
    kw.setdefault("latent_dim", 4)
    kw.setdefault("image_size", 8)
    return MLPArchConfig(**kw)


def _mlp_main_path_linears(net: nn.Module) -> int:
    gates = {id(m.gate) for m in net.modules() if isinstance(m, Residual) and m.gate is not None}
    return sum(isinstance(m, nn.Linear) and id(m) not in gates for m in net.modules())


@pytest.mark.parametrize("merge", ["sum", "gated", "none"])
@pytest.mark.parametrize("depth,block_layers,blocks", [(28, 2, 6), (40, 2, 9), (100, 2, 24), (70, 1, 33)])
def test_mlp_depth_blocks_and_layers_agree(depth, block_layers, blocks, merge):
    from resvae.nn import ARCHS, MLPArchConfig
    from resvae.nn.mlp import MLPBlock

    cfg = _mlp(depth=depth, block_layers=block_layers, merge=merge)
    assert cfg.blocks == blocks and cfg.depth == cfg.layers == depth
    assert MLPArchConfig.network == "mlp" and ARCHS["MLPArchConfig"] is MLPArchConfig
    net = cfg.build(out_channels=5, code_multiplier=2)
    assert _mlp_main_path_linears(net) == depth
    units = [m for m in net.encoder.blocks] + [m for m in net.decoder.blocks]
    assert len(units) == 2 * blocks
    if merge == "none":
        assert all(isinstance(u, MLPBlock) for u in units)
    else:
        assert all(isinstance(u, Residual) and u.merge == merge for u in units)
    with torch.no_grad():
        assert net.encode(torch.randn(3, 3, 8, 8)).shape == (3, 8)
        assert net.decode(torch.randn(3, 4)).shape == (3, 5, 8, 8)
    assert net.latent_shape == (4,)


def test_mlp_zero_init_blocks_start_as_the_identity():
    cfg = _mlp(depth=16, merge="sum")
    net = cfg.build(out_channels=3, code_multiplier=1)
    h = torch.randn(4, 8)
    with torch.no_grad():
        torch.testing.assert_close(net.encoder.blocks(h), h)
    gated = _mlp(depth=16, merge="gated", gate_bias=2.0).build(3, 1)
    with torch.no_grad():  # zero branch: g * x with g = sigmoid(2) everywhere
        torch.testing.assert_close(gated.encoder.blocks[0](h), torch.sigmoid(torch.tensor(2.0)) * h)


@pytest.mark.parametrize("depth,nearest", [(70, {68, 72}), (6, {8}), (30, {28, 32})])
def test_mlp_invalid_depth_names_nearest(depth, nearest):
    with pytest.raises(DepthError) as info:
        _mlp(depth=depth)
    msg = str(info.value)
    assert f"invalid depth {depth}" in msg
    assert _numbers_after_nearest(msg.split("(or")[0]) == nearest


def test_mlp_config_errors():
    from resvae.nn.mlp import mlp_arch

    with pytest.raises(ValueError, match="merge"):
        _mlp(merge="concat")
    with pytest.raises(ValueError, match="model.arch.width"):
        _mlp(width=0)
    with pytest.raises(DepthError, match="model.arch.depth=40"):
        _mlp(depth=28, blocks=9)
    assert _mlp(depth=None, blocks=9).depth == 40
    with pytest.raises(ValueError, match="options of the ResNet"):
        mlp_arch(width=8, shortcut="none", preact=False)
    assert mlp_arch(width=8).width == 8
