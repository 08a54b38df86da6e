"""Op counts of the measured models, cached in ``calibration/layer_costs.json``.

Each model is built on the ``meta`` device (no weights, no real compute) and counted once at
batch 1 in fp32; the cache is committed data, so fitting and benchmarks build no model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..profilers.counting import OpRecord
from ..profilers.roofline import CALIBRATION_DIR
from .tables import timm_spec_parts

LAYER_COSTS = CALIBRATION_DIR / "layer_costs.json"
# 3: op records carry ``moved_bytes`` (a concat's inputs a graph runtime must copy); 4: Python-level
# view calls are recorded (op ``view``); 5: a view of a weight (``linear`` 's transposed weight on a
# 3-D input) counts as weight bytes, not activation bytes; 6: scaled dot-product attention on meta is
# counted as the op the CPU picks (its fused kernel), not PyTorch's math path; an older cache is recounted
_FORMAT = 6


def _build(spec: str) -> tuple[Any, tuple[int, int, int]]:
    """Model (on the meta device) and input shape of a spec; ``timm:<name>@<size>`` sets the size,
    and a ``+folded`` one (``tables.FOLDED``) is folded as ``profile`` deploys it."""
    import torch

    with torch.device("meta"):
        if spec.startswith("timm:") and "@" in spec:
            import timm
            from timm.utils.model import reparameterize_model

            name, size, folded = timm_spec_parts(spec)
            last: Exception | None = None
            for kw in ({}, {"img_size": size}):
                try:
                    model = timm.create_model(name, pretrained=False, **kw)
                except Exception as exc:  # noqa: BLE001 - some timm models need img_size at build
                    last = exc
                    continue
                return (reparameterize_model(model) if folded else model), (3, size, size)
            raise RuntimeError(f"cannot build {spec}: {last}")
        from ..students.specs import build_spec

        return build_spec(spec)


def _count(spec: str) -> dict[str, Any]:
    from ..profilers.counting import trace_ops

    model, shape = _build(spec)
    tr = trace_ops(model, shape)
    return {"params": tr.params, "flops": tr.total_flops, "ops": [r.to_list()[1:] for r in tr.ops]}


def _read(path: Path | None) -> tuple[list[list[Any]], dict[str, Any]]:
    """(ops, entries) of a count cache; empty when there is none, it has another format or it cannot
    be read."""
    if path is None or not path.is_file():
        return [], {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") == _FORMAT and isinstance(doc.get("ops"), list) and isinstance(doc.get("entries"), dict):
            return doc["ops"], doc["entries"]
    except (OSError, ValueError):  # unreadable or damaged: counted again, and rewritten
        pass
    return [], {}


def layer_costs(
    specs: Iterable[str], cache: Path | None = LAYER_COSTS, verbose: bool = False, seed: Path | None = None
) -> dict[str, tuple[list[OpRecord], int]]:
    """(op records at batch 1 in fp32, parameter count) per spec, from the cache or counted.

    The cache stores each distinct op record once (``ops``) and each model as indices into it
    (``seq``); module names are not kept. Models that cannot be built are left out (and
    reported when ``verbose``). ``seed``: a cache read beside ``cache`` and written to none (the
    shipped one beside a user's own: ``kd-compile calibrate`` writes no file of the package).
    """
    specs = list(specs)
    ops_table, entries = _read(seed)
    index = {tuple(o): i for i, o in enumerate(ops_table)}
    own_ops, own = _read(cache)
    remap = []  # the cache's own op indices -> the merged table's
    for o in own_ops:
        k = tuple(o)
        if k not in index:
            index[k] = len(ops_table)
            ops_table.append(list(o))
        remap.append(index[k])
    for spec, e in own.items():
        if spec not in entries:
            entries[spec] = {**e, "seq": [remap[i] for i in e["seq"]]} if "seq" in e else e
    changed = False
    for spec in dict.fromkeys(specs):
        if spec in entries:
            continue
        t0 = time.perf_counter()
        try:
            c = _count(spec)
        except Exception as exc:  # noqa: BLE001 - one unbuildable model must not stop calibration
            if verbose:
                print(f"  skip {spec}: {str(exc)[:120]}")
            entries[spec] = {"error": str(exc)[:200]}  # remembered: not tried again
            changed = True
            continue
        seq = []
        for o in c["ops"]:
            k = tuple(o)
            if k not in index:
                index[k] = len(ops_table)
                ops_table.append(list(o))
            seq.append(index[k])
        entries[spec] = {"params": c["params"], "flops": c["flops"], "seq": seq}
        changed = True
        if verbose:
            print(f"  counted {spec[:70]} in {time.perf_counter() - t0:.1f}s", flush=True)
    if changed and cache is not None:
        doc = {
            "about": "Per-op costs at batch 1, fp32, of the models in the measured latency tables, counted by "
            "kd_compile.profilers.counting on the meta device. 'ops': distinct records [op class, flops, "
            "weight_bytes, in_bytes, out_bytes, ch, moved_bytes]; 'entries': spec -> params, total flops, "
            "'seq' (indices into 'ops' in execution order), or 'error' for a model that could not be built. Written by "
            "kd_compile.calibrate.layer_costs.",
            "format": _FORMAT,
            "ops": ops_table,
            "entries": {k: entries[k] for k in sorted(entries)},
        }
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
        except OSError:  # a cache that cannot be written costs a recount next time, nothing else
            pass
    recs = [OpRecord.from_list(["", *o]) for o in ops_table]
    wanted = set(specs)
    return {k: ([recs[i] for i in e["seq"]], int(e["params"])) for k, e in entries.items()
            if k in wanted and "seq" in e}
