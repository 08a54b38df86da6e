"""Generate the tabular NAS-with-KD benchmark on glyphs: TRADE students x {CE, KD} x fidelities.

What it builds (from scratch, deterministic under ``--seed``):

1. the glyphs dataset at ``--size`` px (``--train`` / ``--val`` images, balanced over the 62
   classes, or over the first ``--classes`` of them: 10 = the digits, an easier task on which
   short trainings learn more);
2. a teacher from the ``cnn`` space (depth 4, widths 32, 32, 128, 256) trained with CE for
   ``--teacher-epochs``; its logits are cached once (``TeacherCache``) under ``--workdir``;
3. ``--archs`` students sampled from the ``trade`` space (seeded stream; a sample is kept when
   its parameters lie in ``[--min-params, --max-params]``, its FLOPs are at most
   ``--max-flops`` and it is not a duplicate). Arch ``i`` is always the ``i``-th kept sample, so
   a larger ``--archs`` extends a smaller table;
4. per student: params, FLOPs (counted, 2 x MACs, batch 1) and the predicted latency on the
   2080 Ti (roofline profiler), the config, ``describe`` and the unit-cube encoding; then for
   each loss (CE: ``use_kd=False``; KD: alpha 0.7, tau 4) and each data fraction in
   ``--fractions`` one training run of ``--epochs`` epochs, val accuracy read after every epoch
   (``eval_every_epoch``).

Fidelity levels are learning-curve readouts (as in NAS-Bench-201 / HPOBench): the level
``(fraction f, epoch e)`` costs ``f * e / epochs`` of the full run, and its accuracy is the val
accuracy after epoch ``e`` of the ``epochs``-long cosine schedule on the ``f`` subset (the
model at epoch ``e`` < ``epochs`` has not been annealed). The full fidelity is fraction 1 at the
last epoch, with KD. Every student starts from the same initial weights (seeded by its index)
for CE and KD, and every run uses training seed 0 (same subset and batch order).

Output: JSON lines, appended and flushed as each student finishes, so a killed run resumes
(``--archs``/``--workers`` may change between runs; the other settings must not: the header
line records them and a mismatch stops the run). Line 1 is the header (settings, teacher,
fidelity levels); every other line is one student.

Replicates (``--replicate-top N --replicate-seeds 1,2``): for an existing table, the top ``N``
architectures by full-fidelity KD val accuracy (ties to the lower index) are trained
again at the full fidelity (all the data, ``epochs`` epochs, KD) with each other training seed
``s``: other initial weights (seed ``1000 + index + 100000 * s``) and another batch order
(``TrainConfig.seed = s``); same data, teacher (cache) and schedule. Each training appends a line
``{"kind": "replicate", "arch": i, "seed": s, "loss": "kd", "fraction": 1.0,
"val_acc_by_epoch": [...], "val_acc": ..., "seconds": ...}`` (``error`` instead of the
accuracies when it failed), flushed as it finishes, so a killed run resumes; ``--workers`` as in
the main run. The table's settings are read from its header (the other table options are not
used in this mode). ``kd_compile.testing.tabular`` then takes an architecture's full-fidelity
value as the mean over its seeds (seed 0 included). The top ``N`` is ranked by the mean over the
seeds each arch has so far, and re-ranked after each round of replicates, until the top ``N`` by
their means are all replicated (seed 0's leaders were partly lucky: once they are averaged, an
unreplicated arch can enter). A table extended later may change its top ``N``: rerunning adds
the replicates of the new members only. Measured on the committed table
(``--replicate-top 3 --replicate-seeds 1 --workers 1``, one thread, another job running):
1.8-4.0 s per replicate training (2.9 s mean), plus about 60 s for the teacher when
``--workdir`` does not hold it; so 30 archs x 2 seeds is about 3 minutes with one worker. The
workdir keeps one teacher (keyed by the table's settings): give each table its own ``--workdir``
(the 10-class table's teacher in the same one would be retrained at every switch).

Latency refresh (``--refresh-latency --out TABLE``): the predicted latencies (every student's and
the teacher's) are recomputed from the recorded configs with the current predictor and
calibration, and the FLOPs with the current counter, without training (seconds); the header
records it (``latency_refreshed``). Run
it whenever the predictor or the 2080 Ti calibration changes; only strategies that read latency
(``mobo``'s objectives) then move.

Run (one thread per worker; the default sizing is the committed table's)::

    .venv/bin/python benchmarks/make_tabular.py --archs 300 --workers 2
    .venv/bin/python benchmarks/make_tabular.py --replicate-top 30 --replicate-seeds 1,2 --workers 2

Measured run time of the committed table on this project's 2-core machine: 3,133 s (52 min) for
the 300 students with 2 workers, plus 70 s for the teacher (20 epochs on 3,100 images at 16 px),
so about 54 minutes from scratch. Per student: 5.7 epochs of training in all (KD at 1/9, 1/3, 1
and CE at 1/9, 1/3, each 3 epochs), 5-30 s.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kd_compile.data import GLYPH_CHARS, DataBundle, load_data
from kd_compile.distill import TeacherCache, TrainConfig, train_student
from kd_compile.distill.hparams import kd_space
from kd_compile.profilers.base import InputSpec
from kd_compile.profilers.counting import count, trace_ops
from kd_compile.profilers.roofline import RooflineProfiler
from kd_compile.search.space import ComposedSpace
from kd_compile.students import StudentSpace, create_space

FORMAT_VERSION = 1
TEACHER_CONFIG: dict[str, Any] = {"depth": 4, "w1": 32, "w2": 32, "w3": 128, "w4": 256}
KD_ALPHA, KD_TAU = 0.7, 4.0
DEFAULT_OUT = ROOT / "benchmarks" / "data" / "nas_kd_glyphs.jsonl"

# worker-process state, filled by _init_worker
_W: dict[str, Any] = {}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", type=int, default=300, help="number of students in the table")
    ap.add_argument("--workers", type=int, default=1, help="worker processes (1 thread each)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("KD_COMPILE_CACHE", "~/.cache/kd_compile")).expanduser() / "tabular",
    )
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--train", type=int, default=3100, help="train images (50 per class)")
    ap.add_argument("--val", type=int, default=1240, help="val images (20 per class)")
    ap.add_argument("--classes", type=int, default=len(GLYPH_CHARS), help="glyph classes (10: the digits)")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--teacher-epochs", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=3, help="epochs of every student run")
    ap.add_argument("--fractions", default="1/9,1/3,1", help="data fractions of the KD runs")
    ap.add_argument("--ce-fractions", default="1/9,1/3", help="data fractions of the CE runs")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-2, help="peak AdamW learning rate of the student runs")
    ap.add_argument("--min-params", type=int, default=5_000)
    ap.add_argument("--max-params", type=int, default=150_000)
    ap.add_argument("--max-flops", type=float, default=2e6, help="FLOPs (2 x MACs) at batch 1")
    ap.add_argument("--seed", type=int, default=0, help="seed of the architecture stream")
    ap.add_argument(
        "--width-scale",
        type=float,
        default=0.5,
        help="TRADE space width_scale (0.5 quarters the FLOPs so more samples fit the cap)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument(
        "--replicate-top",
        type=int,
        default=0,
        help="replicate mode: retrain the table's top N archs (full-fidelity KD accuracy) with --replicate-seeds",
    )
    ap.add_argument("--replicate-seeds", default="1,2", help="training seeds of the replicates (comma list, > 0)")
    ap.add_argument(
        "--refresh-latency",
        action="store_true",
        help="rewrite --out's predicted latencies (students and teacher) with the current predictor; no training",
    )
    return ap.parse_args(argv)


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The options that define the table (everything but --archs/--workers/--out/--threads)."""
    return {
        "format": FORMAT_VERSION,
        "data": f"glyphs:size={args.size},train={args.train},val={args.val},seed={args.data_seed}"
        + (f",classes={args.classes}" if args.classes != len(GLYPH_CHARS) else ""),
        "teacher_config": TEACHER_CONFIG,
        "teacher_epochs": args.teacher_epochs,
        "epochs": args.epochs,
        "fractions": [str(Fraction(f)) for f in args.fractions.split(",") if f],
        "ce_fractions": [str(Fraction(f)) for f in args.ce_fractions.split(",") if f],
        "batch_size": args.batch_size,
        "lr": args.lr,
        "min_params": args.min_params,
        "max_params": args.max_params,
        "max_flops": args.max_flops,
        "seed": args.seed,
        "kd_alpha": KD_ALPHA,
        "kd_tau": KD_TAU,
        "space": {
            "name": "trade",
            "input_shape": [1, args.size, args.size],
            "num_classes": args.classes,
            "kwargs": {"width_scale": args.width_scale, "block_types": ["fused", "mbconv"]},
        },
        "target": "2080ti",
    }


def fidelity_levels(settings: dict[str, Any]) -> list[dict[str, float]]:
    """Every recorded (fraction, epoch) readout with its fidelity ``fraction * epoch / epochs``."""
    e_max = int(settings["epochs"])
    out = []
    for f in settings["fractions"]:
        for e in range(1, e_max + 1):
            out.append(
                {
                    "fraction": float(Fraction(f)),
                    "epoch": e,
                    "fidelity": float(Fraction(f)) * e / e_max,
                }
            )
    return sorted(out, key=lambda d: (d["fidelity"], d["fraction"]))


def profile_arch(space: StudentSpace, config: dict[str, Any], roofline: RooflineProfiler) -> dict[str, Any]:
    """Params, FLOPs and predicted 2080 Ti latency (batch 1) of ``config``, built untrained."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = space.build(config).eval()
    spec = InputSpec(tuple(space.input_shape))
    tr = trace_ops(model, spec.shape)
    m = count(model, spec, trace=tr)
    lat = roofline.predict_ops(tr.ops, 1).latency_ms
    return {"params": int(m.params), "flops": int(m.flops), "latency_ms": float(lat)}


def iter_archs(family: StudentSpace, settings: dict[str, Any], n: int) -> Iterator[dict[str, Any]]:
    """The first ``n`` kept samples of the seeded stream (see module docstring), profiled,
    yielded as they are found (profiling a sample takes ~0.2 s and most are rejected)."""
    # the stream samples the family followed by kd_tau/kd_alpha (the space the compiler
    # searches), so the table's architectures and recorded configs stay those of the committed
    # table, which was sampled when the TRADE family itself carried the KD parameters
    space = ComposedSpace([family, kd_space()])
    rng = np.random.default_rng(int(settings["seed"]))
    roofline = RooflineProfiler(target=settings["target"])
    seen: set[str] = set()
    kept = 0
    while kept < n:
        c = space.sample(rng)
        c["kd_tau"], c["kd_alpha"] = KD_TAU, KD_ALPHA  # fixed in the table, not searched
        c = space.canonical(c)
        key = space.key(c)
        if key in seen:
            continue
        p = family.estimate_params(c)
        if not settings["min_params"] <= p <= settings["max_params"]:
            continue
        prof = profile_arch(family, c, roofline)
        if prof["flops"] > settings["max_flops"]:
            continue
        seen.add(key)
        yield {
            "index": kept,
            "config": c,
            "key": key,
            "describe": family.describe(c),
            "unit": [round(float(u), 6) for u in space.to_unit(c)],
            **prof,
        }
        kept += 1


def make_space(settings: dict[str, Any]) -> StudentSpace:
    """The student family of the table's settings (architecture parameters only)."""
    s = settings["space"]
    kwargs = dict(s.get("kwargs", {}))
    if s["name"] == "trade":
        # the committed table's header predates the recorded block types: its students are
        # Fused-MBConv/MBConv ones (as kd_compile.testing.tabular reads it)
        kwargs.setdefault("block_types", ["fused", "mbconv"])
    return create_space(
        s["name"],
        input_shape=tuple(s["input_shape"]),
        num_classes=int(s["num_classes"]),
        **kwargs,
    )


def load_bundle(settings: dict[str, Any]) -> DataBundle:
    return load_data(settings["data"])


def train_teacher(settings: dict[str, Any], data: DataBundle, workdir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train (or reload from ``workdir``) the CE teacher; returns it and its summary."""
    space = create_space("cnn", input_shape=data.input_shape, num_classes=data.num_classes)
    torch.manual_seed(0)
    teacher = space.build(TEACHER_CONFIG)
    path = workdir / "teacher.pt"
    meta_path = workdir / "teacher.json"
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("settings_key") == _teacher_key(settings):
            teacher.load_state_dict(torch.load(path, map_location="cpu"))
            return teacher.eval(), meta["summary"]
    t0 = time.perf_counter()
    res = train_student(
        teacher,
        data,
        TrainConfig(
            epochs=settings["teacher_epochs"],
            use_kd=False,
            batch_size=settings["batch_size"],
            seed=0,
        ),
    )
    secs = time.perf_counter() - t0
    summary = {
        "config": TEACHER_CONFIG,
        "describe": space.describe(TEACHER_CONFIG),
        "val_acc": res.val_acc,
        "train_acc": res.train_acc,
        # params, FLOPs and latency do not depend on the weights: the same path as every student's
        **profile_arch(space, TEACHER_CONFIG, RooflineProfiler(target=settings["target"])),
        "train_seconds": round(secs, 1),
    }
    workdir.mkdir(parents=True, exist_ok=True)
    torch.save(teacher.state_dict(), path)
    meta_path.write_text(json.dumps({"settings_key": _teacher_key(settings), "summary": summary}))
    return teacher.eval(), summary


def _teacher_key(settings: dict[str, Any]) -> str:
    return json.dumps(
        [
            settings["data"],
            settings["teacher_config"],
            settings["teacher_epochs"],
            settings["batch_size"],
        ],
        sort_keys=True,
    )


def _init_worker(settings: dict[str, Any], workdir: str, threads: int) -> None:
    torch.set_num_threads(threads)
    data = load_bundle(settings)
    teacher, _ = train_teacher(settings, data, Path(workdir))
    cache = TeacherCache.build(teacher, data, cache_dir=Path(workdir) / "cache")
    _W.update(settings=settings, data=data, cache=cache, space=make_space(settings))


def init_seed(index: int, seed: int) -> int:
    """Torch seed of the initial weights of arch ``index`` under training seed ``seed``: the
    committed table's ``1000 + index`` for seed 0 (the same for CE and KD), shifted by 100,000 per
    replicate seed so no two (arch, seed) pairs of a table under 100,000 archs share weights."""
    return 1000 + int(index) + 100_000 * int(seed)


def train_run(index: int, config: dict[str, Any], loss: str, fraction: float, seed: int) -> list[float]:
    """One training of arch ``index`` in a worker: val accuracy after each epoch (the last one
    the final evaluation). Raises what the training raises."""
    s, data, cache, space = _W["settings"], _W["data"], _W["cache"], _W["space"]
    torch.manual_seed(init_seed(index, seed))
    model = space.build(config)
    cfg = TrainConfig(
        epochs=s["epochs"],
        data_fraction=fraction,
        batch_size=s["batch_size"],
        lr=s.get("lr", 3e-3),
        use_kd=(loss == "kd"),
        alpha=KD_ALPHA,
        tau=KD_TAU,
        seed=seed,
        eval_every_epoch=True,
    )
    res = train_student(model, data, cfg, cache if loss == "kd" else None)
    accs = [float(h["val_acc"]) for h in res.history if "val_acc" in h]
    accs[-1] = float(res.val_acc)
    return accs


def run_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """Train one student under every (loss, fraction) with training seed 0; returns the table line."""
    s = _W["settings"]
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for loss, fractions in (("ce", s["ce_fractions"]), ("kd", s["fractions"])):
        for f in fractions:
            frac = float(Fraction(f))
            try:
                accs = train_run(int(arch["index"]), arch["config"], loss, frac, seed=0)
            except Exception as exc:  # noqa: BLE001 -- a failed run is recorded, never dropped
                runs.append({"loss": loss, "fraction": frac, "error": f"{type(exc).__name__}: {exc}"})
                continue
            for e, acc in enumerate(accs, start=1):
                runs.append(
                    {
                        "loss": loss,
                        "fraction": frac,
                        "epoch": e,
                        "fidelity": frac * e / s["epochs"],
                        "val_acc": round(float(acc), 5),
                    }
                )
    return {**arch, "runs": runs, "seconds": round(time.perf_counter() - t0, 2)}


def run_replicate(job: dict[str, Any]) -> dict[str, Any]:
    """One replicate training (full data, KD, training seed ``job["seed"]``); returns its line."""
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"arch": int(job["index"]), "seed": int(job["seed"]), "loss": "kd", "fraction": 1.0}
    try:
        accs = train_run(int(job["index"]), job["config"], "kd", 1.0, seed=int(job["seed"]))
        rec.update(val_acc_by_epoch=[round(a, 5) for a in accs], val_acc=round(accs[-1], 5))
    except Exception as exc:  # noqa: BLE001 -- a failed run is recorded, never dropped
        rec["error"] = f"{type(exc).__name__}: {exc}"
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """The parsed lines of a (possibly partial) table file; a line cut by a kill is skipped
    (its training is redone)."""
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


def read_existing(path: Path) -> tuple[dict[str, Any] | None, dict[int, dict[str, Any]]]:
    """Header and finished students of a (possibly partial) table file."""
    header, done = None, {}
    for rec in _records(path):
        if rec.get("kind") == "header":
            header = rec
        elif rec.get("kind") == "arch":
            done[int(rec["index"])] = rec
    return header, done


def read_replicates(path: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """Finished replicate lines of a table file, by (arch, seed)."""
    return {(int(r["arch"]), int(r["seed"])): r for r in _records(path) if r.get("kind") == "replicate"}


def full_accuracy(rec: dict[str, Any], settings: dict[str, Any]) -> float | None:
    """Seed-0 KD val accuracy of a table line at the full fidelity (all the data, last epoch)."""
    top = max(float(Fraction(f)) for f in settings["fractions"])
    for r in rec["runs"]:
        if r.get("loss") == "kd" and "val_acc" in r and math.isclose(r["fraction"], top):
            if int(r["epoch"]) == int(settings["epochs"]):
                return float(r["val_acc"])
    return None


def mean_accuracy(
    rec: dict[str, Any], settings: dict[str, Any], reps: dict[tuple[int, int], dict[str, Any]]
) -> float | None:
    """Full-fidelity KD val accuracy of a table line, averaged over seed 0 and its finished replicates."""
    acc = full_accuracy(rec, settings)
    if acc is None:
        return None
    i = int(rec["index"])
    vals = [acc] + [float(r["val_acc"]) for (a, _), r in reps.items() if a == i and "val_acc" in r]
    return float(np.mean(vals))


def top_archs(
    done: dict[int, dict[str, Any]],
    settings: dict[str, Any],
    n: int,
    reps: dict[tuple[int, int], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The ``n`` table lines with the highest full-fidelity KD accuracy, each the mean over the
    seeds it has so far (``reps``: its replicate lines; seed 0 alone without); ties: lower index."""
    reps = reps or {}
    scored = [(acc, i) for i, rec in done.items() if (acc := mean_accuracy(rec, settings, reps)) is not None]
    return [done[i] for _, i in sorted(scored, key=lambda t: (-t[0], t[1]))[:n]]


REPLICATE_ROUNDS = 10  # rounds of re-ranking by the means so far (see ``replicate``)


def parse_seeds(text: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``; raises ValueError unless every seed is an integer > 0, once."""
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--replicate-seeds must be a comma list of integers, got {text!r}") from None
    if not seeds or min(seeds) < 1 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--replicate-seeds must be distinct integers > 0 (seed 0 is the table's run), got {text!r}")
    return seeds


def replicate(args: argparse.Namespace) -> int:
    """The replicate mode (module docstring): append the missing replicate trainings."""
    t_start = time.perf_counter()
    try:
        seeds = parse_seeds(args.replicate_seeds)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    header, done = read_existing(args.out)
    if header is None or not done:
        print(f"error: {args.out} holds no table to replicate (run the main mode first)", file=sys.stderr)
        return 2
    settings = header["settings"]

    def missing() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        top = top_archs(done, settings, args.replicate_top, read_replicates(args.out))
        have = read_replicates(args.out)
        jobs = [
            {"index": int(rec["index"]), "config": rec["config"], "seed": s}
            for rec in top
            for s in seeds
            if (int(rec["index"]), s) not in have
        ]
        return top, jobs

    top, jobs = missing()
    print(
        f"# {' '.join(sys.argv)}\n# {platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.workers} worker(s) x {args.threads} thread(s)\n"
        f"top {len(top)} of {len(done)} archs (full-fidelity KD acc "
        f"{full_accuracy(top[-1], settings):.4f}..{full_accuracy(top[0], settings):.4f}), seeds {seeds}: "
        f"{len(jobs)} trainings to do, {len(top) * len(seeds) - len(jobs)} already in {args.out}",
        flush=True,
    )
    if not jobs:
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = load_bundle(settings)
    teacher, _ = train_teacher(settings, data, args.workdir)  # once here, not in every worker
    TeacherCache.build(teacher, data, cache_dir=args.workdir / "cache")
    secs: list[float] = []

    def write(rec: dict[str, Any]) -> None:
        with args.out.open("a") as fh:
            fh.write(json.dumps({"kind": "replicate", **rec}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        secs.append(rec["seconds"])
        acc = f"{rec['val_acc']:.3f}" if "val_acc" in rec else f"failed ({rec['error']})"
        print(
            f"arch {rec['arch']:4d} seed {rec['seed']:2d} kd@1 {acc} {rec['seconds']:6.1f} s  "
            f"[{time.perf_counter() - t_start:.0f} s elapsed]",
            flush=True,
        )

    # winner's curse: the seed-0 leaders were partly lucky, so once their means are known an
    # unreplicated arch can enter the top N; rank again by the means so far and replicate the
    # newcomers, until the top N are all replicated (bounded rounds)
    for _ in range(REPLICATE_ROUNDS):
        if not jobs:
            break
        _map_jobs(run_replicate, jobs, settings, args, write)
        top, jobs = missing()
        if jobs:
            print(f"{len(jobs)} trainings for archs that entered the top {len(top)} by their means", flush=True)
    print(
        f"done: {len(read_replicates(args.out))} replicate lines in {args.out}; {len(secs)} trainings here, "
        f"{np.mean(secs):.1f} s each on average; elapsed {time.perf_counter() - t_start:.0f} s"
    )
    return 0


def _map_jobs(fn: Any, jobs: Any, settings: dict[str, Any], args: argparse.Namespace, write: Any) -> None:
    """Run ``fn`` over ``jobs`` in this process (``--workers 1``) or in a pool of spawned
    workers, handing each result to ``write`` as it finishes."""
    if args.workers <= 1:
        _init_worker(settings, str(args.workdir), args.threads)
        for job in jobs:
            write(fn(job))
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers, initializer=_init_worker, initargs=(settings, str(args.workdir), args.threads)) as pool:
        for rec in pool.imap_unordered(fn, jobs):
            write(rec)


def refresh_latency(args: argparse.Namespace) -> int:
    """Rewrite the predicted latency of every student and of the teacher in ``args.out`` with the
    current predictor and calibration (no training: each model is rebuilt untrained from its
    recorded config), and their FLOPs with the current counter. The recorded params must equal
    the rebuilt ones (else the builder changed and the table no longer describes its students:
    exit 2, file untouched). The header records when and with what; the file is replaced
    atomically (a line cut by a kill is dropped, as a resumed run would redo it)."""
    lines = list(_records(args.out))
    header = next((r for r in lines if r.get("kind") == "header"), None)
    if header is None:
        print(f"{args.out} has no header line", file=sys.stderr)
        return 2
    settings = header["settings"]
    space = make_space(settings)
    roofline = RooflineProfiler(target=settings["target"])
    teacher_space = create_space("cnn", input_shape=tuple(settings["space"]["input_shape"]),
                                 num_classes=int(settings["space"]["num_classes"]))
    wrong, moved, flops = [], [], 0
    for rec, of in [(header["teacher"], teacher_space), *((r, space) for r in lines if r.get("kind") == "arch")]:
        prof = profile_arch(of, rec["config"], roofline)
        if prof["params"] != rec["params"]:
            wrong.append(f"{rec.get('index', 'teacher')}: {rec['params']} -> {prof['params']}")
        flops += prof["flops"] != rec["flops"]
        moved.append(prof["latency_ms"] / rec["latency_ms"])
        rec.update(flops=prof["flops"], latency_ms=prof["latency_ms"])
    if wrong:
        print(f"params no longer match for {len(wrong)} models (first: {wrong[0]}); not rewritten", file=sys.stderr)
        return 2
    header["latency_refreshed"] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "predictor": f"roofline, target {settings['target']}, {roofline.runtime} {roofline.precision}, batch 1, "
                     f"calibration {roofline.source.get('calibration', '?')}",
        "flops_recounted": int(flops),
    }
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in lines))
    os.replace(tmp, args.out)
    r = np.array(moved)
    print(f"{args.out}: {len(r)} latencies rewritten (teacher {header['teacher']['latency_ms']:.4f} ms); "
          f"new / old: median {np.median(r):.3f}, range {r.min():.3f}-{r.max():.3f}; FLOPs changed for {flops}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.refresh_latency:
        return refresh_latency(args)
    if args.replicate_top > 0:
        return replicate(args)
    t_start = time.perf_counter()
    settings = settings_of(args)
    header, done = read_existing(args.out)
    if header is not None and header["settings"] != settings:
        print(
            f"{args.out} was made with other settings; use another --out or delete it",
            file=sys.stderr,
        )
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"# {' '.join(sys.argv)}\n# {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.workers} worker(s) x {args.threads} thread(s)"
    )

    data = load_bundle(settings)
    teacher, tsum = train_teacher(settings, data, args.workdir)
    TeacherCache.build(teacher, data, cache_dir=args.workdir / "cache")
    print(
        f"teacher {tsum['describe']}: val acc {tsum['val_acc']:.4f}, {tsum['params']} params, "
        f"{tsum['flops'] / 1e6:.2f} MFLOPs, {tsum['latency_ms']:.4f} ms on 2080ti "
        f"(trained in {tsum['train_seconds']} s)  [{time.perf_counter() - t_start:.0f} s]"
    )

    space = make_space(settings)
    todo = (a for a in iter_archs(space, settings, args.archs) if a["index"] not in done)
    print(
        f"{args.archs} archs asked, {len(done)} already in {args.out}  [{time.perf_counter() - t_start:.0f} s]",
        flush=True,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if header is None:
        with args.out.open("w") as fh:
            fh.write(
                json.dumps(
                    {
                        "kind": "header",
                        "settings": settings,
                        "teacher": tsum,
                        "levels": fidelity_levels(settings),
                        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "machine": f"{platform.node()}, {os.cpu_count()} CPUs",
                    }
                )
                + "\n"
            )

    def write(rec: dict[str, Any]) -> None:
        with args.out.open("a") as fh:
            fh.write(json.dumps({"kind": "arch", **rec}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        full = [r for r in rec["runs"] if r.get("loss") == "kd" and math.isclose(r.get("fidelity", 0), 1.0)]
        acc = f"{full[0]['val_acc']:.3f}" if full else "failed"
        print(
            f"arch {rec['index']:4d} {rec['params']:7d} p {rec['flops'] / 1e6:5.2f} MF kd@1 {acc} "
            f"{rec['seconds']:6.1f} s  [{time.perf_counter() - t_start:.0f} s elapsed]",
            flush=True,
        )

    _map_jobs(run_arch, todo, settings, args, write)
    _, done = read_existing(args.out)
    print(f"done: {len(done)} archs in {args.out}; elapsed {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
