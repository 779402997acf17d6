"""Depth -> blocks per stage (docs/design.md, "Depth").

depth = 6 * (total blocks) + 4: three convolutions per bottleneck block in the encoder and three
in the mirrored decoder, plus four stem/head layers (encoder stem, latent head, decoder input,
output head); shortcut projections are not counted.

The reference study's four depths map exactly (ResNet-50's 3:4:6:3 at depth 100). Any other
depth with (depth - 4) % 6 == 0 and depth >= 28 gets this documented split: one block per stage,
then the remaining blocks shared out in proportion 3:4:6:3 by largest remainder (ties to the
stage with the larger weight, then the earlier stage). The rule reproduces the four reference
plans, which are also kept as a table so that they can never drift.
"""

from __future__ import annotations

from collections.abc import Sequence

STAGES = 4
STAGE_WEIGHTS = (3, 4, 6, 3)
MIN_DEPTH = 6 * STAGES + 4  # one block per stage
REFERENCE_PLANS: dict[int, tuple[int, int, int, int]] = {
    28: (1, 1, 1, 1),
    40: (1, 2, 2, 1),
    70: (2, 3, 4, 2),
    100: (3, 4, 6, 3),
}


class DepthError(ValueError):
    """A depth that no plan of four bottleneck stages can have."""


def depth_of(blocks: Sequence[int]) -> int:
    return 6 * sum(blocks) + 4


def nearest_valid_depths(depth: int) -> tuple[int, ...]:
    """The valid depths just below and just above `depth` (one if `depth` is below the minimum)."""
    below = depth - (depth - 4) % 6
    above = below + 6
    return tuple(d for d in (below, above) if d >= MIN_DEPTH) or (MIN_DEPTH,)


def depth_plan(depth: int) -> tuple[int, ...]:
    """Blocks per stage for `depth`; raises DepthError naming the nearest valid depths."""
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise DepthError(f"depth must be an integer, got {depth!r}")
    if depth in REFERENCE_PLANS:
        return REFERENCE_PLANS[depth]
    if depth < MIN_DEPTH or (depth - 4) % 6:
        near = " or ".join(str(d) for d in nearest_valid_depths(depth))
        raise DepthError(
            f"invalid depth {depth}: depth must be 6 * blocks + 4 with at least one block in each of "
            f"{STAGES} stages (28, 34, 40, ...); nearest valid: {near}. "
            f"Or set the split explicitly with model.arch.blocks=[b1,b2,b3,b4]."
        )
    return proportional_split((depth - 4) // 6)


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


def resolve_blocks(depth: int | None, blocks: Sequence[int] | None) -> tuple[int, ...]:
    """The plan from an explicit `blocks` split (checked against `depth` if both are given)."""
    if blocks is None:
        if depth is None:
            raise DepthError("set model.arch.depth or model.arch.blocks")
        return depth_plan(depth)
    plan = tuple(int(b) for b in blocks)
    if len(plan) != STAGES or any(b < 1 for b in plan):
        raise DepthError(
            f"model.arch.blocks must list {STAGES} positive block counts (one per stage), got {list(blocks)}"
        )
    if depth is not None and depth != depth_of(plan):
        raise DepthError(
            f"model.arch.blocks={list(plan)} has depth {depth_of(plan)} but model.arch.depth={depth}; "
            f"set model.arch.depth={depth_of(plan)} or model.arch.depth=null"
        )
    return plan
