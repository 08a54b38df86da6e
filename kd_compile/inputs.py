"""A run's inputs, loaded and checked before any work: the teacher, the data (or data-free
images), the output folder, and whether the constraints can be met at all."""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from .config import CompileConfig, Constraints, format_count
from .errors import ConstraintError, DataError, OutputExistsError, ResumeError, UsageError

__all__ = [
    "ARTIFACTS",
    "OutputLock",
    "RunInputs",
    "check_feasible",
    "check_out",
    "claim_out",
    "file_id",
    "load_inputs",
    "check_teacher_accuracy",
    "publish",
    "teacher_knowledge",
]

ARTIFACTS = ("journal.jsonl", "student.pt", "student.onnx", "report.json", "report.md", "trace.png")


@dataclass
class RunInputs:
    """What a run loaded.

    Attributes:
        teacher: the loaded ``Teacher``.
        data: the bundle students train on (augmented views appended when asked).
        source: the bundle as loaded (what the report and the student's data hint name).
        data_free: the images were synthesised from the teacher.
        out: the output folder (nothing is written there before ``claim_out``).
    """

    teacher: Any
    data: Any
    source: Any
    data_free: bool
    out: Path


def load_inputs(cfg: CompileConfig, reporter: Any) -> RunInputs:
    """Load the teacher and the data; raise a ``KdCompileError`` on bad input. Writes nothing.

    The data is prepared the way the teacher expects (``Teacher.preprocessing``: size, channels,
    resize filter, centre crop) and normalised with the teacher's mean/std; the data's own
    statistics are used only when the teacher brings none, and the teacher's record says so.
    """
    import torch

    from .data import load_data, native_shape
    from .teacher import load_teacher

    reporter.stage("loading teacher")
    tch = load_teacher(
        cfg.teacher,
        arch=cfg.arch,
        input_shape=cfg.input_shape,
        input_size=cfg.input_size,
        num_classes=cfg.num_classes,
        mean=cfg.mean,
        std=cfg.std,
        interpolation=cfg.interpolation,
        crop_pct=cfg.crop_pct,
        # weights that do not record their input size are run at the size of the data given
        data_shape=native_shape(cfg.data),
        trust_checkpoint=cfg.trust_checkpoint,
    )
    for note in tch.meta.get("notes", ()):
        reporter.message(f"note: {note}")
    torch.manual_seed(cfg.seed)
    reporter.stage("loading data")
    pre = tch.preprocessing
    data_free = cfg.data is None and not tch.meta.get("data")
    if data_free:
        data = synthesize_data(tch, cfg, reporter)
    else:
        teacher_file = Path(cfg.teacher)
        # a path in the checkpoint's data hint may not lead outside the checkpoint's folder
        hint_root = teacher_file.resolve().parent if teacher_file.is_file() else None
        data = _open_streamed(cfg, tch, hint_root)
        if data is None:
            data = load_data(
                cfg.data,
                hint=tch.meta.get("data"),
                hint_root=hint_root,
                image_size=(int(tch.input_shape[1]), int(tch.input_shape[2])),
                channels=tch.input_shape[0],
                interpolation=pre.interpolation if pre is not None else None,
                crop_pct=pre.crop_pct if pre is not None else None,
                seed=cfg.seed,
            )
    skipped = int((getattr(data, "meta", None) or {}).get("skipped_images") or 0)
    if skipped:
        examples = ", ".join(data.meta.get("skipped_examples") or [])
        reporter.message(f"note: {skipped} unreadable image(s) left out of {data.name}: {examples}")
    if data.num_classes != tch.num_classes:
        raise DataError(
            f"class-count mismatch: the data has {data.num_classes} classes, the teacher outputs {tch.num_classes}"
        )
    if tch.input_shape[1:] != data.input_shape[1:] or tch.input_shape[0] != data.input_shape[0]:
        raise DataError(f"data images are {data.input_shape}, the teacher expects {tch.input_shape}")
    if pre is not None and (pre.mean is None or pre.std is None) and not data_free:
        reporter.message(
            "note: the teacher records no normalisation: using the data's own mean/std "
            f"{tuple(round(m, 3) for m in data.mean)}/{tuple(round(v, 3) for v in data.std)} "
            "(pass --mean/--std if it was trained with others)"
        )
    # the teacher is normalised the way it was trained; the data's statistics fill only a gap
    tch = tch.with_stats(data.mean, data.std, "data")
    assert tch.preprocessing is not None and tch.preprocessing.mean is not None and tch.preprocessing.std is not None
    data = data.replace(mean=tuple(tch.preprocessing.mean), std=tuple(tch.preprocessing.std))
    source = data
    if cfg.augment_views:
        # seeded augmented views, replayable, so the teacher's outputs on them are cached too
        from .distill import augmented_bundle

        data = augmented_bundle(data, cfg.augment_views, seed=cfg.seed)
    return RunInputs(teacher=tch, data=data, source=source, data_free=data_free, out=Path(cfg.out))


def _open_streamed(cfg: CompileConfig, tch: Any, hint_root: Path | None) -> Any:
    """The ImageFolder or tar shards as ``StreamedData`` when ``--data-mode`` (auto: the decoded
    size) says to stream them; tar shards that stay in memory are read through the same source
    into a ``DataBundle``; else ``None`` (the in-memory ``load_data`` path)."""
    from .data.shards import is_shard_spec
    from .data.stream import StreamAugment, open_stream, stream_spec, wants_stream

    spec, confine = stream_spec(cfg.data, tch.meta.get("data"), hint_root)
    shape = tuple(int(v) for v in tch.input_shape)
    stream = spec is not None and wants_stream(spec, cfg.data_mode, shape)  # type: ignore[arg-type]
    if spec is None or not (stream or is_shard_spec(spec)):
        return None
    if stream and cfg.augment_views:
        # views of a streamed folder are drawn per epoch by the loader: --stream-augment sets them
        raise UsageError(
            "--augment N builds in-memory augmented views and does not apply to streamed data; "
            "use --stream-augment (views drawn per epoch) or --data-mode memory"
        )
    pre = tch.preprocessing
    data = open_stream(
        spec,
        image_size=(shape[1], shape[2]),
        channels=shape[0],
        interpolation=pre.interpolation if pre is not None else "bilinear",
        crop_pct=pre.crop_pct if pre is not None else 1.0,
        seed=cfg.seed,
        augment=StreamAugment.parse(cfg.stream_augment),
        mean=pre.mean if pre is not None else None,
        std=pre.std if pre is not None else None,
        confine=confine,
        workers=None if stream else 0,
    )
    return data if stream else data.in_memory()


def check_out(cfg: CompileConfig) -> None:
    """Check ``--out`` before any work, touching nothing: a non-empty folder needs ``--force`` or
    ``--resume``; ``--resume`` needs a journal there."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path exists and is not a folder: {out}")
    busy = out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir())
    if cfg.resume:
        journal = out / "journal.jsonl"
        if not (journal.is_file() and journal.stat().st_size > 0):
            raise ResumeError(
                f"nothing to resume: {out} has no journal.jsonl", hint="run without --resume to start afresh"
            )
        return
    if busy and not cfg.force:
        raise OutputExistsError(
            f"output folder {out} exists and is not empty",
            hint="pass --force to overwrite, --resume to continue, or choose another --out",
        )


LOCK_NAME = ".kd-compile.lock"


class OutputLock:
    """An exclusive lock on an output folder for the duration of a run (``flock`` on a lock
    file, released by the OS when the process dies, its forked workers holding no copy:
    ``locks``): a second run into the folder exits 7.

    Args:
        out: the output folder (created if missing).
    """

    def __init__(self, out: Path) -> None:
        from .locks import try_lock

        self.out = out
        try:
            out.mkdir(parents=True, exist_ok=True)
            fh = try_lock(out / LOCK_NAME)  # held by this process only, not by its forked workers
        except OSError as exc:
            raise OutputExistsError(f"cannot write to output folder {out}: {exc.strerror or exc}") from None
        if fh is None:
            raise OutputExistsError(
                f"another kd-compile run is writing to {out}", hint="wait for it, or choose another --out"
            )
        self._fh = fh
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"{os.getpid()}\n")
        self._fh.flush()

    def release(self) -> None:
        from .locks import release

        if not self._fh.closed:
            release(self._fh)  # closing drops the flock
            (self.out / LOCK_NAME).unlink(missing_ok=True)

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_out(cfg: CompileConfig) -> OutputLock:
    """Lock ``--out`` once every input is validated; with ``--force``, only then drop the old
    journal, kept final students and epoch checkpoints, final and candidates' (the old student and
    reports stay until the new ones replace them)."""
    from .evaluate import clear_candidate_checkpoints
    from .final import clear_epoch_checkpoints

    lock = OutputLock(Path(cfg.out))
    if cfg.force and not cfg.resume:  # a fresh run's journal and trainings, never the old one's
        (Path(cfg.out) / "journal.jsonl").unlink(missing_ok=True)
        clear_epoch_checkpoints(Path(cfg.out), kept_students=True)
        clear_candidate_checkpoints(Path(cfg.out))
    return lock


def staging_dir(out: Path) -> Path:
    """A fresh folder inside ``out`` where the artifacts are written before they are published.

    The caller holds ``out`` 's lock, so any other staging folder there is the leftover of a
    killed run: it is removed."""
    for old in out.glob(".staging-*"):
        shutil.rmtree(old, ignore_errors=True)
    d = out / f".staging-{os.getpid()}"
    d.mkdir(parents=True)
    return d


def publish(staging: Path, out: Path) -> dict[str, Path]:
    """Move every file of ``staging`` into ``out`` (each an atomic rename on one filesystem),
    remove ``staging``, and return the published paths by name."""
    done: dict[str, Path] = {}
    for f in sorted(staging.iterdir()):
        dest = out / f.name
        os.replace(f, dest)
        done[f.name] = dest
    shutil.rmtree(staging, ignore_errors=True)
    return done


def synthesize_data(tch: Any, cfg: CompileConfig, reporter: Any) -> Any:
    """No data and no data hint: synthesise images from the teacher (DeepInversion style)."""
    from .distill import synthesize

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in tch.module.modules()):
        raise DataError(
            "no data given and the checkpoint carries no data hint; data-free distillation needs a teacher "
            "with (eager PyTorch) BatchNorm layers, and this one has none",
            hint="pass --data glyphs|digits|path/to/data.npz|ImageFolder dir",
        )
    reporter.message(
        "warning: no data given and the checkpoint carries no data hint: synthesising training images from "
        "the teacher's BatchNorm statistics (data-free KD); expect a weaker student than with real data"
    )
    norm = tch.meta.get("normalize") or {}
    settings = dict(shape=tuple(tch.input_shape), num_classes=tch.num_classes, n_images=cfg.synthetic_images,
                    steps=cfg.synthetic_steps, seed=cfg.seed, mean=norm.get("mean"), std=norm.get("std"))  # fmt: skip
    kept = synthetic_cache_file(tch.module, settings)
    data = read_synthetic(kept) if kept is not None else None
    if data is not None:
        reporter.message(f"data-free: the {cfg.synthetic_images} images synthesised before are reused ({kept})")
        return data
    data = synthesize(
        tch.module,
        settings["shape"],
        tch.num_classes,
        n_images=cfg.synthetic_images,
        steps=cfg.synthetic_steps,
        seed=cfg.seed,
        mean=settings["mean"],
        std=settings["std"],
        progress=lambda f: reporter.training("data-free synthesis", f),
    )
    if kept is not None:
        keep_synthetic(data, kept)
    return data


def synthetic_cache_file(teacher: nn.Module, settings: dict[str, Any]) -> Path | None:
    """Where the images synthesised from ``teacher`` with ``settings`` are kept between runs (a
    resumed or repeated data-free run does not synthesise them again): under the cache folder,
    keyed by the teacher's weights, the settings and kd-compile's version; None without a
    writable cache folder."""
    import hashlib

    from . import __version__
    from .distill.cache import module_fingerprint
    from .paths import cache_dir

    try:
        folder = cache_dir("synthetic", create=True)
    except OSError:
        return None
    body = repr((module_fingerprint(teacher), sorted(settings.items()), __version__))
    return folder / f"synthetic-{hashlib.sha256(body.encode()).hexdigest()[:24]}.pt"


def keep_synthetic(data: Any, path: Path) -> None:
    """Write a synthesised bundle to ``path`` (atomically; a failed write only costs the reuse)."""
    import json

    from .distill.checkpoint import save_atomically

    blob = {k: getattr(data, k) for k in ("x_train", "y_train", "x_val", "y_val")}
    about = {"name": data.name, "num_classes": data.num_classes, "class_names": data.class_names,
             "mean": list(data.mean), "std": list(data.std), "meta": data.meta}  # fmt: skip
    blob["about"] = json.dumps(about, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    save_atomically(blob, path)


def read_synthetic(path: Path) -> Any:
    """The bundle ``keep_synthetic`` wrote to ``path``, or None (missing, damaged, not one)."""
    import json

    import torch

    from .data import DataBundle

    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        about = json.loads(blob["about"])
        return DataBundle(
            name=about["name"], x_train=blob["x_train"], y_train=blob["y_train"], x_val=blob["x_val"],
            y_val=blob["y_val"], num_classes=int(about["num_classes"]), class_names=list(about["class_names"]),
            mean=tuple(about["mean"]), std=tuple(about["std"]), meta=dict(about["meta"]),
        )  # fmt: skip
    except Exception:  # noqa: BLE001 (a damaged or foreign file: synthesise again)
        return None


def file_id(path: str) -> str:
    """A cheap identity of a checkpoint file (resolved path and size) for the journal header."""
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return f"{p.resolve()}:{st.st_size}"
    return str(path)


def check_feasible(space: Any, constraints: Constraints, rng: np.random.Generator, n: int = 40) -> None:
    """Fail fast when no student of the family can meet the params limit.

    The all-lowest corner of the unit cube (smallest depths, widths and expansions in the
    built-in families) is tried first, then ``n`` random samples.
    """
    if constraints.max_params is None or not hasattr(space, "estimate_params"):
        return
    count = getattr(space, "deployed_params", space.estimate_params)  # the limit is on what ships
    candidates = [space.from_unit(np.zeros(space.dim))] + [space.sample(rng) for _ in range(n)]
    smallest = math.inf
    for c in candidates:
        p = count(c)
        smallest = min(smallest, p)
        if p <= constraints.max_params:
            return
    raise ConstraintError(
        f"no student in the '{space.name}' space meets --max-params {format_count(constraints.max_params)} "
        f"(the smallest has {format_count(smallest)} parameters)",
        hint="raise --max-params",
    )


def teacher_knowledge(cfg: CompileConfig, teacher: nn.Module, data: Any) -> Any:
    """The teacher's outputs, computed once and stored under the cache folder (reused by any run
    with the same teacher weights and data, augmented views included)."""
    from .data.stream import is_streamed
    from .distill import TeacherCache
    from .paths import cache_dir

    try:
        folder: Path | None = cache_dir("teacher", create=True)
    except OSError:  # a read-only home: the cache still works, in memory
        folder = None
    if is_streamed(data):
        return _streamed_knowledge(cfg, teacher, data, folder)
    cache = TeacherCache.build(
        teacher.to(cfg.device),
        data,
        device=cfg.device,
        cache_dir=folder,
        augment_seed=cfg.seed if cfg.augment_views else None,
    )
    teacher.cpu()
    return cache


def _streamed_knowledge(cfg: CompileConfig, teacher: nn.Module, data: Any, folder: Path | None) -> Any:
    """Top-k soft-label cache or online teacher for streamed data (``distill.topk_cache``): the
    cache when the run's KD epochs (search budget x proxy epochs x fraction, plus the final
    training) make its build pay. The choice, its size on disk and speed-up are printed."""
    import sys
    import tempfile

    from .distill.topk_cache import stream_knowledge

    b = cfg.budget
    epochs = [b.proxy_epochs * b.proxy_data_fraction] * b.candidates + [b.final_epochs]
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="kd-topk-"))
    knowledge = stream_knowledge(
        teacher, data, epochs_per_training=epochs, device=cfg.device, cache_dir=folder,
        message=lambda m: print(m, file=sys.stderr),
    )  # fmt: skip
    data.knowledge = dict(knowledge.summary)  # for the report
    if knowledge.summary.get("choice") == "cache":
        teacher.cpu()  # the cache replaces it; an online teacher stays on the device
    return knowledge


def near_chance(acc: float, num_classes: int) -> bool:
    """Whether ``acc`` is within a tenth of the way from chance to perfect: the teacher's check
    below, and what the report says of a student (``report.schema.near_chance_note``)."""
    chance = 1.0 / max(1, num_classes)
    return acc < chance + 0.1 * (1 - chance)


def check_teacher_accuracy(acc: float, tch: Any, data: Any, rep: Any) -> None:
    """Say the teacher's accuracy before the search, and stop when it is near chance: then the
    teacher is not being run the way it was trained (input size, normalisation), and every
    figure after it would be meaningless."""
    from .errors import DataError

    chance = 1.0 / max(1, tch.num_classes)
    from .data.stream import split_size

    n_val = split_size(data, "val")
    rep.message(f"teacher: {acc:.2%} validation accuracy on {n_val:,} images of {data.name} (chance {chance:.1%})")
    if near_chance(acc, tch.num_classes):
        raise DataError(
            f"the teacher scores {acc:.1%} on the validation data, near chance ({chance:.1%}): it is probably "
            f"fed another input size or normalisation than it was trained with (here {tuple(tch.input_shape)}, "
            f"mean {tuple(round(m, 3) for m in data.mean)})",
            hint="pass --input-shape and the teacher's --mean/--std, or the data it was trained on",
        )
