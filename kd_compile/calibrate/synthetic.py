"""A synthetic fitting problem whose latencies follow the predictor exactly (tests of the fit)."""

from __future__ import annotations

import numpy as np

from ..profilers.roofline import Constants, DeviceTerms, KernelTable, kernel_rows, row_seconds
from ..targets.profile import get_target


def synthetic_problem(
    true: Constants, n_models: int = 80, seed: int = 0
) -> tuple[KernelTable, np.ndarray, np.ndarray]:
    """Random models on a mix of devices/runtimes whose latencies follow the model exactly.

    Kernels span compute-, memory- and host-bound regimes of every class, tensor-core and
    CUDA-core GPUs, a Jetson, eager and TensorRT, batch 1..256, so every constant is identifiable.

    Returns:
        (table, seconds per row, weights).
    """
    from ..profilers.fusion import KERNEL_CLASSES, Kernel

    rng = np.random.default_rng(seed)
    classes = [c for c in KERNEL_CLASSES if c != "view"]
    setups = [("rtx3090", "fp16", "torch"), ("1080ti", "fp32", "torch"), ("t4", "fp16", "tensorrt"),
              ("jetson-agx-xavier", "fp16", "tensorrt"), ("jetson-agx-xavier", "fp16", "torch"),
              ("2080ti", "fp32", "torch")]
    terms = [DeviceTerms.of(get_target(t), p, r) for t, p, r in setups]
    ks, batches, devs = [], [], []
    for _ in range(n_models):
        kern = []
        for _ in range(int(rng.integers(8, 40))):
            op = classes[int(rng.integers(0, len(classes)))]
            act = float(10 ** rng.uniform(3, 7))
            flops = 0.0 if op == "elementwise" else act * float(10 ** rng.uniform(-1, 3))
            n = int(rng.integers(1, 4))
            kern.append(Kernel("k", op, int(flops), int(act), int(10 ** rng.uniform(2, 6)),
                               int(2 ** rng.integers(2, 10)), n, int(rng.integers(0, n + 1))))
        rows = kernel_rows(kern)
        for d in terms:
            ks.append(rows)
            batches.append(int(2 ** rng.integers(0, 9)))
            devs.append(d)
    table = KernelTable.build(ks, batches, devs)
    return table, row_seconds(table, true), np.ones(len(ks))
