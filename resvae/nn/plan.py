"""Depth -> blocks per stage (docs/design.md, "Depth"; docs/experiments.md, "What depth means").

Depth counts the weighted layers on the main path, for every block type: the convolutions of
each block's branch in the encoder and in the mirrored decoder, plus four stem/head layers
(encoder stem, latent head, decoder input, output head); shortcut projections and gates are
not counted. So

    bottleneck blocks (1x1, 3x3, 1x1): depth = 6 * (total blocks) + 4   (28, 34, 40, ...)
    basic blocks (3x3, 3x3):           depth = 4 * (total blocks) + 4   (20, 24, 28, ...)

and `ArchConfig.depth == ArchConfig.layers` for both. A depth is valid for a block type when it
has that form with at least one block in each of the four stages.

The plan of a valid depth: one block per stage, then the remaining blocks shared out in
proportion 3:4:6:3 by largest remainder (ties to the stage with the larger weight, then the
earlier stage). For bottleneck blocks this gives the reference study's four plans exactly
(28: 1,1,1,1; 40: 1,2,2,1; 70: 2,3,4,2; 100: 3,4,6,3, ResNet-50's 3:4:6:3), which are also kept
as a table so that they can never drift. Basic-block depths get the same largest-remainder split
of their own block count, e.g. basic 28 = 6 blocks: 1,2,2,1; basic 40 = 9 blocks: 2,2,3,2;
basic 100 = 24 blocks: 5,6,8,5. An invalid depth is an error naming the nearest valid depths for
that block type (basic 70 -> 68 or 72).
"""

from __future__ import annotations

from collections.abc import Sequence

STAGES = 4
STAGE_WEIGHTS = (3, 4, 6, 3)
LAYERS_PER_BLOCK = {"bottleneck": 3, "basic": 2}  # weighted layers of one block's branch
REFERENCE_PLANS: dict[int, tuple[int, int, int, int]] = {  # bottleneck blocks
    28: (1, 1, 1, 1),
    40: (1, 2, 2, 1),
    70: (2, 3, 4, 2),
    100: (3, 4, 6, 3),
}


class DepthError(ValueError):
    """A depth that no plan of four stages of the given block type can have."""


def _per_block(block: str) -> int:
    """Weighted layers one block adds to the main path: its branch in the encoder and the decoder."""
    try:
        return 2 * LAYERS_PER_BLOCK[block]
    except KeyError:
        raise DepthError(f"unknown block {block!r}; choose one of {', '.join(LAYERS_PER_BLOCK)}") from None


def depth_of(blocks: Sequence[int], block: str = "bottleneck") -> int:
    """The depth of a plan: per-block layers * total blocks + 4."""
    return _per_block(block) * sum(blocks) + 4


def min_depth(block: str = "bottleneck") -> int:
    """One block per stage: 28 for bottleneck blocks, 20 for basic blocks."""
    return depth_of((1,) * STAGES, block)


def nearest_valid_depths(depth: int, block: str = "bottleneck") -> tuple[int, ...]:
    """The valid depths just below and just above `depth` (one if `depth` is below the minimum)."""
    step, lowest = _per_block(block), min_depth(block)
    below = depth - (depth - 4) % step
    above = below + step
    return tuple(d for d in (below, above) if d >= lowest) or (lowest,)


def depth_plan(depth: int, block: str = "bottleneck") -> tuple[int, ...]:
    """Blocks per stage for `depth`; raises DepthError naming the nearest valid depths."""
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise DepthError(f"depth must be an integer, got {depth!r}")
    step, lowest = _per_block(block), min_depth(block)
    if block == "bottleneck" and depth in REFERENCE_PLANS:
        return REFERENCE_PLANS[depth]
    if depth < lowest or (depth - 4) % step:
        near = " or ".join(str(d) for d in nearest_valid_depths(depth, block))
        examples = ", ".join(str(lowest + i * step) for i in range(3))
        raise DepthError(
            f"invalid depth {depth} for {block} blocks: depth must be {step} * blocks + 4 with at "
            f"least one block in each of {STAGES} stages ({examples}, ...); nearest valid: {near}. "
            f"Or set the split explicitly with model.arch.blocks=[b1,b2,b3,b4]."
        )
    return proportional_split((depth - 4) // step)


def proportional_split(total_blocks: int) -> tuple[int, ...]:
    extra = total_blocks - STAGES
    weight_sum = sum(STAGE_WEIGHTS)
    shares = [extra * w / weight_sum for w in STAGE_WEIGHTS]
    plan = [1 + int(s) for s in shares]
    leftover = total_blocks - sum(plan)
    order = sorted(range(STAGES), key=lambda i: (-(shares[i] - int(shares[i])), -STAGE_WEIGHTS[i], i))
    for i in order[:leftover]:
        plan[i] += 1
    return tuple(plan)


def resolve_blocks(
    depth: int | None, blocks: Sequence[int] | None, block: str = "bottleneck"
) -> tuple[int, ...]:
    """The plan from an explicit `blocks` split (checked against `depth` if both are given)."""
    if blocks is None:
        if depth is None:
            raise DepthError("set model.arch.depth or model.arch.blocks")
        return depth_plan(depth, block)
    plan = tuple(int(b) for b in blocks)
    if len(plan) != STAGES or any(b < 1 for b in plan):
        raise DepthError(
            f"model.arch.blocks must list {STAGES} positive block counts (one per stage), got {list(blocks)}"
        )
    check_blocks_match(depth, depth_of(plan, block), f"{list(plan)}", f"{block} blocks")
    return plan


def check_blocks_match(depth: int | None, have: int, blocks: str, per: str) -> None:
    """model.arch.blocks fixes the depth (`have`); a `depth` also given must be that one."""
    if depth is not None and depth != have:
        raise DepthError(
            f"model.arch.blocks={blocks} has depth {have} with {per} but model.arch.depth={depth}; "
            f"set model.arch.depth={have} or model.arch.depth=null"
        )
