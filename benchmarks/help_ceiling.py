"""How well can any per-layer additive predictor rank HELP's GPU columns? An oracle's ceiling.

The issue's eager bar is a Spearman rho >= 0.95 per device at batch 32/64 with the device left
out of the fit. This measures how much of the ranking each HELP column allows at all: an *oracle*
fitted on that very column, one cost per (layer position, op) (FBNet: 22 positions x 9 ops;
NAS-Bench-201: 6 cell edges x 5 ops, the cell being repeated in all 15 cells), by least squares on
all but 1,000 of the column's architectures (4,000 of FBNet's 5,000, 14,625 of NAS-Bench-201's
15,625), ranks those 1,000. Its held-out rho is what a predictor
that adds up per-layer costs could reach with perfect knowledge of the device; the rest is
measurement noise and interactions between layers. Five random splits give the spread.

It also decomposes the FBNet columns (5,000 architectures each) into what one block costs:

* ``block_us``: a ``k3_e1`` block against the identity ``skip`` (positions 6-20 that keep their
  shape, where both are host-bound): the host's dispatch cost of nine ATen ops;
* ``proj_us``: the shape-changing ``skip`` (1x1 conv + BN + ReLU), against the same identity;
* ``shuffle_over_block``: what the ``_g2`` variant (grouped 1x1 convs and a channel shuffle:
  ``view``, ``permute``, ``contiguous``, ``view``) adds, as a share of ``block_us``. The
  predictor's share is printed beside it (computed from the counted ops with the shipped
  calibration of each device), which shows the dispatch cost of the shuffle's views that the
  predictor does not count.

Run (about 10 s; reads only ``../shared/data/latency/``)::

    python benchmarks/help_ceiling.py [--splits 5] [--results benchmarks/results/help_ceiling.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kd_compile.calibrate.tables import DEFAULT_DATA_DIR  # noqa: E402

DEVICES = {"1080ti": "1080ti", "2080ti": "2080ti", "titan_rtx": "titan-rtx", "titanx": "titan-x", "titanxp": "titan-xp"}
FBNET_OPS = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# FBNet positions whose block keeps its shape (identity skip) beyond the 32x32 stage; positions
# 9, 13, 17 and 21 change shape (the skip there is a 1x1 conv + BN + ReLU)
SAME_SHAPE = (6, 7, 8, 10, 11, 12, 14, 15, 16, 18, 19, 20)
PROJ = (9, 13, 17, 21)
TEST = 1000


def _fbnet_design(rows: list[dict[str, str]]) -> np.ndarray:
    x = np.zeros((len(rows), 22 * len(FBNET_OPS)))
    for i, r in enumerate(rows):
        for p, op in enumerate(r["arch_str"].split("|")):
            x[i, p * len(FBNET_OPS) + FBNET_OPS.index(op)] = 1.0
    return x


def _nb201_design(rows: list[dict[str, str]]) -> np.ndarray:
    x = np.zeros((len(rows), 6 * len(NB201_OPS)))
    for i, r in enumerate(rows):
        edges = [tok.split("~")[0] for tok in r["arch_str"].replace("+", "").split("|") if tok]
        for e, op in enumerate(edges):
            x[i, e * len(NB201_OPS) + NB201_OPS.index(op)] = 1.0
    return x


def ceiling(x: np.ndarray, y: np.ndarray, splits: int) -> list[float]:
    """Held-out Spearman rho of a least-squares additive fit, one per random split."""
    from scipy.stats import spearmanr

    a = np.c_[x, np.ones(len(x))]
    out = []
    for seed in range(splits):
        perm = np.random.default_rng(seed).permutation(len(y))
        test, train = perm[:TEST], perm[TEST:]
        coef, *_ = np.linalg.lstsq(a[train], y[train], rcond=None)
        out.append(float(spearmanr(a[test] @ coef, y[test]).statistic))
    return out


def block_costs(x: np.ndarray, y_ms: np.ndarray) -> dict[str, float]:
    """FBNet per-block costs (microseconds) from the additive fit on every architecture."""
    coef, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y_ms, rcond=None)
    m = coef[:-1].reshape(22, len(FBNET_OPS)) * 1e3
    m = m - m[:, [FBNET_OPS.index("skip")]]
    k3, g2 = FBNET_OPS.index("k3_e1"), FBNET_OPS.index("k3_e1_g2")
    block = float(np.mean(m[list(SAME_SHAPE), k3]))
    proj = block - float(np.mean(m[list(PROJ), k3]))
    shuffle = float(np.mean(m[list(SAME_SHAPE), g2] - m[list(SAME_SHAPE), k3]))
    return {"block_us": round(block, 1), "proj_us": round(proj, 1), "shuffle_us": round(shuffle, 1),
            "shuffle_over_block": round(shuffle / block, 3)}


def predicted_shuffle_share(device: str, batch: int) -> float:
    """The predictor's share: (k3_e1_g2 - k3_e1) / (k3_e1 - skip) over the same positions."""
    import torch

    from kd_compile.calibrate.counts import _build
    from kd_compile.profilers.counting import trace_ops
    from kd_compile.profilers.roofline import RooflineProfiler

    torch.set_num_threads(1)
    prof = RooflineProfiler(device, precision="fp32", runtime="torch")
    per_pos = {}
    for op in ("k3_e1", "k3_e1_g2", "skip"):
        model, shape = _build("fbnet:" + "|".join([op] * 22))
        m = prof.predict_ops(trace_ops(model, shape).ops, batch)
        cost = np.zeros(22)
        for layer in m.layers:
            if layer.name.startswith("blocks."):
                cost[int(layer.name.split(".")[1])] += layer.latency_ms
        per_pos[op] = cost[list(SAME_SHAPE)]
    block = per_pos["k3_e1"] - per_pos["skip"]
    return round(float(np.mean(per_pos["k3_e1_g2"] - per_pos["k3_e1"]) / np.mean(block)), 3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "help_ceiling.json")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    doc: dict = {"ceiling": [], "fbnet_blocks": [], "about": __doc__.split("\n\n")[0],
                 "settings": {"splits": args.splits, "held_out": TEST}}
    for table, design, batches in (("help-fbnet-latency.csv", _fbnet_design, (1, 32, 64)),
                                   ("help-nb201-latency.csv", _nb201_design, (1, 32, 256))):
        path = args.data_dir / table
        if not path.is_file():
            print(f"error: {path} not found (the shared latency data)", file=sys.stderr)
            return 2
        rows = list(csv.DictReader(path.open(encoding="utf-8")))
        x = design(rows)
        for col, dev in DEVICES.items():
            for b in batches:
                y = np.array([float(r[f"{col}_{b}_ms"]) for r in rows])
                rho = ceiling(x, y, args.splits)
                doc["ceiling"].append({"table": table, "device": dev, "batch": b, "n": len(y),
                                       "rho_mean": round(float(np.mean(rho)), 4),
                                       "rho_sd": round(float(np.std(rho)), 4)})
                if table.startswith("help-fbnet"):
                    doc["fbnet_blocks"].append({"device": dev, "batch": b, **block_costs(x, y),
                                                "predicted_shuffle_over_block": predicted_shuffle_share(dev, b)})
    print(f"oracle ceiling: additive per-layer fit on all but {TEST} of a column's own architectures, "
          f"Spearman rho on those {TEST} over {args.splits} random splits (mean +- sd)")
    for r in doc["ceiling"]:
        print(f"  {r['table'][:10]:10} {r['device']:9} batch {r['batch']:3}  "
              f"rho {r['rho_mean']:.3f} +- {r['rho_sd']:.3f}")
    print("FBNet blocks (us): k3_e1 block, shape-changing skip, and the channel shuffle's extra cost "
          "as a share of a block, measured vs predicted")
    for r in doc["fbnet_blocks"]:
        print(f"  {r['device']:9} batch {r['batch']:2}  block {r['block_us']:5.0f}  proj {r['proj_us']:4.0f}  "
              f"shuffle {r['shuffle_us']:4.0f} = {r['shuffle_over_block']:.2f} of a block "
              f"(predicted {r['predicted_shuffle_over_block']:.2f})")
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.results} ({doc['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
