"""Where the published mobile networks (FBNet, Once-for-All) halve the resolution at small inputs.

FBNet and OFA's MobileNetV3 have five downsampling points (stem, then the first block of four of
their stages): at 224 px all five have stride 2 (224 -> 7), and HW-NAS-Bench's CIFAR setting of
FBNet keeps stride 1 at the first two (32 -> 4). ``reduction_strides`` is the rule that gives
both: with ``S`` the input side, the last ``d`` points get stride 2 where ``d`` is the most
halvings that keep the final side at least ``MIN_FINAL_SIDE`` (the TRADE rule of
``students/trade.py``), so a 16 px glyph ends at 4x4 instead of collapsing to 1x1.
"""

from __future__ import annotations

import math

from ..errors import UsageError
from .common import MIN_FINAL_SIDE

__all__ = ["reduction_strides"]


def reduction_strides(side: int, n_points: int) -> tuple[int, ...]:
    """Stride (1 or 2) of each downsampling point for an input of side ``side``.

    Args:
        side: the smaller input side in pixels.
        n_points: number of downsampling points, in network order.

    Returns:
        ``n_points`` strides; the 2s are the last ones. 32 px with 5 points gives
        (1, 1, 2, 2, 2); 224 px gives (2, 2, 2, 2, 2); 16 px gives (1, 1, 1, 2, 2).
    """
    if side < 1:
        raise UsageError(f"input side must be positive, got {side}")
    n_down = 0
    while n_down < n_points and math.ceil(side / 2 ** (n_down + 1)) >= MIN_FINAL_SIDE:
        n_down += 1
    return (1,) * (n_points - n_down) + (2,) * n_down
