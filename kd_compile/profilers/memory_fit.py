"""Whether a batch can run on a device at all, before it is predicted or measured.

A prediction is a number for any batch; a batch whose tensors cannot be held in the device's memory
never runs, so its number is not a latency. ``resident_lower_bound`` is what every runtime must hold
at once: the weights, and the batch's largest tensor among the input and the convolutions' outputs
(each written to memory by eager PyTorch, ONNX Runtime and TensorRT alike; a matmul's output is left
out, since a fused attention never writes its score matrix). It is a lower bound, so a batch refused by
it cannot fit; one it lets through may still fail, and the measured path says so when it does
(``errors.out_of_memory``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from ..errors import UsageError
from .counting import OpRecord
from .roofline import BYTES_PER_ELEMENT

MATERIALISED = ("conv", "dwconv")  # op classes whose output every runtime writes to memory


def resident_lower_bound(ops: Sequence[OpRecord], input_shape: Sequence[int], weight_bytes: int, batch: int,
                         precision: str) -> int:
    """Bytes any runtime holds at once to run ``batch`` images: weights plus the largest materialised tensor.

    ``ops`` are counted at batch 1 in fp32 (:func:`.counting.trace_ops`); bytes are scaled to
    ``precision``'s element size.
    """
    largest = max([4 * math.prod(input_shape)] + [r.out_bytes for r in ops if r.op in MATERIALISED])
    return int((weight_bytes + batch * largest) * BYTES_PER_ELEMENT[precision] / 4)


def host_memory_bytes() -> int | None:
    """This machine's physical memory, bytes (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(need_bytes: int, memory_bytes: float | None, batch: int, where: str) -> None:
    """Refuse (UsageError, exit 2) a batch whose lower bound exceeds the memory ``where`` has."""
    if memory_bytes and need_bytes > memory_bytes:
        raise UsageError(
            f"batch {batch} cannot run on {where}: its weights and largest activation alone take "
            f"{need_bytes / 1e9:.3g} GB, and {where} has {memory_bytes / 1e9:.3g} GB",
            hint="use a smaller --batch",
        )
