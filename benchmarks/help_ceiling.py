"""How well can any per-layer additive predictor rank HELP's GPU columns? An oracle's ceiling.

The issue's eager bar is a Spearman rho >= 0.95 per device at batch 32/64 with the device left
out of the fit. This measures how much of the ranking each HELP column allows at all: an *oracle*
fitted on that very column, one cost per (layer position, op) (FBNet: 22 positions x 9 ops;
NAS-Bench-201: 6 cell edges x 5 ops, the cell being repeated in all 15 cells), by least squares on
all but 1,000 of the column's architectures (4,000 of FBNet's 5,000, 14,625 of NAS-Bench-201's
15,625), ranks those 1,000. Its held-out rho is what a predictor
that adds up per-layer costs could reach with perfect knowledge of the device; the rest is
measurement noise and interactions between layers. Five random splits give the spread.

HELP's Once-for-All table (``kd_compile/calibrate/data/help-ofa-latency.csv``: 500 MobileNetV3 subnets at
128-224 px on four GPUs) gets the same oracle, on all but 100 of its subnets: one cost per (block slot,
kernel x expansion) (5 stages x 4 slots x 9), each scaled by the subnet's (resolution / 224)^2, with
that scale and a constant beside them. Every column also gets its **agreement**: the highest
Spearman rho between it and another GPU's column of the same table at the same batch (the same
networks), which a clean column of a GPU shares with a sibling GPU (Titan RTX and RTX 2080 Ti are
both TU102) and a noisy one does not.

It also decomposes the FBNet columns (5,000 architectures each) into what one block costs:

* ``block_us``: a ``k3_e1`` block against the identity ``skip`` (positions 6-20 that keep their
  shape, where both are host-bound): the host's dispatch cost of nine ATen ops;
* ``proj_us``: the shape-changing ``skip`` (1x1 conv + BN + ReLU), against the same identity;
* ``shuffle_over_block``: what the ``_g2`` variant (grouped 1x1 convs and a channel shuffle:
  ``view``, ``permute``, ``contiguous``, ``view``) adds, as a share of ``block_us``. The
  predictor's share is printed beside it (computed from the counted ops with the shipped
  calibration of each device): it checks that the predictor charges the host dispatch of the
  shuffle's three view calls (it charged the copy alone, half the measured share, until the op
  tracer counted view calls).

Run (a few seconds; reads ``../shared/data/latency/`` and the package's OFA table)::

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

from kd_compile.calibrate.tables import BUNDLED_DIR, DEFAULT_DATA_DIR, HELP_OFA  # noqa: E402
from kd_compile.students.fbnet import DOWN_POSITIONS, FBNET_LAYOUT, FBNET_OPS, parse_fbnet  # noqa: E402
from kd_compile.students.nb201 import NB201_OPS, parse_nb201  # noqa: E402
from kd_compile.students.ofa import EXPANDS, KERNELS, parse_ofa  # noqa: E402

DEVICES = {"1080ti": "1080ti", "2080ti": "2080ti", "titan_rtx": "titan-rtx", "titanx": "titan-x", "titanxp": "titan-xp"}
# FBNet positions beyond the 32x32 stage (5 on): those whose block keeps its shape (identity skip),
# and those that change it (9, 13, 17, 21: the skip there is a 1x1 conv + BN + ReLU)
SAME_SHAPE = [p for p, (_, c_in, c_out, _) in enumerate(FBNET_LAYOUT)
              if p > 5 and c_in == c_out and p not in DOWN_POSITIONS]
PROJ = [p for p in range(6, len(FBNET_LAYOUT)) if p not in SAME_SHAPE]
TEST = 1000
TEST_OFA = 100  # of the OFA table's 500 subnets
OFA_DEVICES = ("2080ti", "titan-rtx", "titan-xp", "v100")
OFA_OPS = tuple((k, e) for k in KERNELS for e in EXPANDS)
OFA_SLOTS = 4  # blocks per stage at most


def _design(archs: list[tuple[str, ...]], ops: tuple[str, ...]) -> np.ndarray:
    """One-hot (position, op) rows of architectures given as op sequences."""
    x = np.zeros((len(archs), len(archs[0]) * len(ops)))
    for i, arch in enumerate(archs):
        for p, op in enumerate(arch):
            x[i, p * len(ops) + ops.index(op)] = 1.0
    return x


def _fbnet_design(rows: list[dict[str, str]]) -> np.ndarray:
    return _design([parse_fbnet(r["arch_str"]) for r in rows], FBNET_OPS)


def _nb201_design(rows: list[dict[str, str]]) -> np.ndarray:
    return _design([parse_nb201(r["arch_str"]) for r in rows], NB201_OPS)


def _ofa_design(rows: list[dict[str, str]]) -> np.ndarray:
    """One (block slot, kernel x expansion) column per stage slot, scaled by (resolution / 224)^2, and
    that scale (the stem and head) as the last column."""
    x = np.zeros((len(rows), 5 * OFA_SLOTS * len(OFA_OPS) + 1))
    for i, r in enumerate(rows):
        arch = parse_ofa(r["spec"].removeprefix("ofa:"))
        scale = (arch.resolution / 224) ** 2
        for stage, blocks in enumerate(arch.blocks):
            for slot, block in enumerate(blocks):
                x[i, (stage * OFA_SLOTS + slot) * len(OFA_OPS) + OFA_OPS.index(block)] = scale
        x[i, -1] = scale
    return x


def agreement(columns: dict[str, np.ndarray]) -> dict[str, tuple[float, str]]:
    """Per column, the highest Spearman rho with another of the ``columns`` (the same networks on
    other GPUs) and that GPU."""
    from scipy.stats import spearmanr

    out = {}
    for dev, y in columns.items():
        rho = {o: float(spearmanr(y, z).statistic) for o, z in columns.items() if o != dev}
        best = max(rho, key=lambda o: rho[o])
        out[dev] = (round(rho[best], 4), best)
    return out


def ceiling(x: np.ndarray, y: np.ndarray, splits: int, held_out: int = TEST) -> list[float]:
    """Held-out Spearman rho of a least-squares additive fit, one per random split."""
    from scipy.stats import spearmanr

    a = np.c_[x, np.ones(len(x))]
    out = []
    for seed in range(splits):
        perm = np.random.default_rng(seed).permutation(len(y))
        test, train = perm[:held_out], perm[held_out:]
        coef, *_ = np.linalg.lstsq(a[train], y[train], rcond=None)
        out.append(float(spearmanr(a[test] @ coef, y[test]).statistic))
    return out


def block_costs(x: np.ndarray, y_ms: np.ndarray) -> dict[str, float]:
    """FBNet per-block costs (microseconds) from the additive fit on every architecture."""
    coef, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y_ms, rcond=None)
    m = coef[:-1].reshape(len(FBNET_LAYOUT), len(FBNET_OPS)) * 1e3
    m = m - m[:, [FBNET_OPS.index("skip")]]
    k3, g2 = FBNET_OPS.index("k3_e1"), FBNET_OPS.index("k3_e1_g2")
    block = float(np.mean(m[SAME_SHAPE, k3]))
    proj = block - float(np.mean(m[PROJ, k3]))
    shuffle = float(np.mean(m[SAME_SHAPE, g2] - m[SAME_SHAPE, k3]))
    return {"block_us": round(block, 1), "proj_us": round(proj, 1), "shuffle_us": round(shuffle, 1),
            "shuffle_over_block": round(shuffle / block, 3)}


def uniform_fbnet_ops() -> dict[str, tuple]:
    """Counted ops (``OpRecord`` s) of the FBNets with ``k3_e1``, ``k3_e1_g2`` or ``skip`` at every
    position, built on the meta device."""
    import torch

    from kd_compile.profilers.counting import trace_ops
    from kd_compile.students.specs import build_spec

    out = {}
    for op in ("k3_e1", "k3_e1_g2", "skip"):
        with torch.device("meta"):
            model, shape = build_spec("fbnet:" + "|".join([op] * len(FBNET_LAYOUT)))
        out[op] = trace_ops(model, shape).ops
    return out


def predicted_shuffle_share(ops: dict[str, tuple], device: str, batch: int) -> float:
    """The predictor's share: (k3_e1_g2 - k3_e1) / (k3_e1 - skip) over the same positions, from
    the ``uniform_fbnet_ops`` with the shipped calibration of ``device``."""
    from kd_compile.profilers.roofline import RooflineProfiler

    prof = RooflineProfiler(device, precision="fp32", runtime="torch")
    per_pos = {}
    for op, records in ops.items():
        m = prof.predict_ops(records, batch)
        cost = np.zeros(len(FBNET_LAYOUT))
        for layer in m.layers:
            if layer.name.startswith("blocks."):
                cost[int(layer.name.split(".")[1])] += layer.latency_ms
        per_pos[op] = cost[SAME_SHAPE]
    block = per_pos["k3_e1"] - per_pos["skip"]
    return round(float(np.mean(per_pos["k3_e1_g2"] - per_pos["k3_e1"]) / np.mean(block)), 3)


def ofa_ceiling(path: Path, splits: int) -> list[dict[str, object]]:
    """The oracle's held-out rho and the agreement of each GPU column of HELP's OFA table."""
    rows = list(csv.DictReader(line for line in path.open(encoding="utf-8") if not line.startswith("#")))
    x = _ofa_design(rows)
    out = []
    for b in (1, 32, 64):
        cols = {dev: np.array([float(r[f"{dev}_b{b}_ms"]) for r in rows]) for dev in OFA_DEVICES}
        agree = agreement(cols)
        for dev, y in cols.items():
            rho = ceiling(x, y, splits, TEST_OFA)
            out.append({"device": dev, "batch": b, "n": len(y), "rho_mean": round(float(np.mean(rho)), 4),
                        "rho_sd": round(float(np.std(rho)), 4), "agreement": agree[dev][0],
                        "agrees_most_with": agree[dev][1]})
    return sorted(out, key=lambda r: (OFA_DEVICES.index(r["device"]), r["batch"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "help_ceiling.json")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    uniform = uniform_fbnet_ops()
    doc: dict = {"ceiling": [], "fbnet_blocks": [], "about": __doc__.split("\n\n")[0],
                 "settings": {"splits": args.splits, "held_out": TEST, "held_out_ofa": TEST_OFA}}
    for table, design, batches in (("help-fbnet-latency.csv", _fbnet_design, (1, 32, 64)),
                                   ("help-nb201-latency.csv", _nb201_design, (1, 32, 256))):
        path = args.data_dir / table
        if not path.is_file():
            print(f"error: {path} not found (the shared latency data)", file=sys.stderr)
            return 2
        rows = list(csv.DictReader(path.open(encoding="utf-8")))
        x = design(rows)
        for b in batches:
            cols = {dev: np.array([float(r[f"{col}_{b}_ms"]) for r in rows]) for col, dev in DEVICES.items()}
            agree = agreement(cols)
            for dev, y in cols.items():
                rho = ceiling(x, y, args.splits)
                doc["ceiling"].append({"table": table, "device": dev, "batch": b, "n": len(y),
                                       "rho_mean": round(float(np.mean(rho)), 4),
                                       "rho_sd": round(float(np.std(rho)), 4),
                                       "agreement": agree[dev][0], "agrees_most_with": agree[dev][1]})
                if table.startswith("help-fbnet"):
                    share = predicted_shuffle_share(uniform, dev, b)
                    doc["fbnet_blocks"].append({"device": dev, "batch": b, **block_costs(x, y),
                                                "predicted_shuffle_over_block": share})
    order = list(DEVICES.values())
    doc["ceiling"].sort(key=lambda r: (r["table"] != "help-fbnet-latency.csv", order.index(r["device"]), r["batch"]))
    doc["fbnet_blocks"].sort(key=lambda r: (order.index(r["device"]), r["batch"]))
    doc["ofa_ceiling"] = ofa_ceiling(BUNDLED_DIR / HELP_OFA, args.splits)
    print(f"oracle ceiling: additive per-layer fit on all but {TEST} of a column's own architectures, "
          f"Spearman rho on those {TEST} over {args.splits} random splits (mean +- sd); agreement: the highest rho "
          "with another GPU's column of the same networks")
    for r in doc["ceiling"]:
        print(f"  {r['table'][:10]:10} {r['device']:9} batch {r['batch']:3}  "
              f"rho {r['rho_mean']:.3f} +- {r['rho_sd']:.3f}  agreement {r['agreement']:.3f} ({r['agrees_most_with']})")
    print(f"HELP's OFA table: the same oracle on all but {TEST_OFA} of its {doc['ofa_ceiling'][0]['n']} subnets, "
          "and each column's agreement with another GPU's")
    for r in doc["ofa_ceiling"]:
        print(f"  {r['device']:9} batch {r['batch']:2}  rho {r['rho_mean']:.3f} +- {r['rho_sd']:.3f}  "
              f"agreement {r['agreement']:.3f} ({r['agrees_most_with']})")
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
