"""A run's inputs, loaded and checked before any work: the teacher, the data (or data-free
images), the output folder, and whether the constraints can be met at all."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from .config import CompileConfig, Constraints, format_count
from .errors import ConstraintError, DataError, OutputExistsError

__all__ = ["ARTIFACTS", "RunInputs", "check_feasible", "file_id", "load_inputs", "prepare_out"]

ARTIFACTS = ("journal.jsonl", "student.pt", "student.onnx", "report.json", "report.md", "trace.png")


@dataclass
class RunInputs:
    """What a run loaded.

    Attributes:
        teacher: the loaded ``Teacher``.
        data: the bundle students train on (augmented views appended when asked).
        source: the bundle as loaded (what the report and the student's data hint name).
        data_free: the images were synthesised from the teacher.
        out: the output folder, ready for writing.
    """

    teacher: Any
    data: Any
    source: Any
    data_free: bool
    out: Path


def load_inputs(cfg: CompileConfig, reporter: Any) -> RunInputs:
    """Load the teacher and the data, prepare ``--out``; raise a ``KdCompileError`` on bad input."""
    import torch

    from .data import load_data
    from .teacher import load_teacher

    reporter.stage("loading teacher")
    tch = load_teacher(
        cfg.teacher,
        arch=cfg.arch,
        input_shape=cfg.input_shape,
        num_classes=cfg.num_classes,
        trust_checkpoint=cfg.trust_checkpoint,
    )
    out = prepare_out(cfg)
    torch.manual_seed(cfg.seed)
    reporter.stage("loading data")
    data_free = cfg.data is None and not tch.meta.get("data")
    if data_free:
        data = synthesize_data(tch, cfg, reporter)
    else:
        data = load_data(
            cfg.data,
            hint=tch.meta.get("data"),
            image_size=tch.input_shape[1],
            channels=tch.input_shape[0],
            seed=cfg.seed,
        )
    if data.num_classes != tch.num_classes:
        raise DataError(
            f"class-count mismatch: the data has {data.num_classes} classes, the teacher outputs {tch.num_classes}"
        )
    if tch.input_shape[1:] != data.input_shape[1:] or tch.input_shape[0] != data.input_shape[0]:
        raise DataError(f"data images are {data.input_shape}, the teacher expects {tch.input_shape}")
    norm = tch.meta.get("normalize")
    if norm:
        data = data.replace(mean=tuple(norm["mean"]), std=tuple(norm["std"]))
    source = data
    if cfg.augment_views:
        # seeded augmented views, replayable, so the teacher's outputs on them are cached too
        from .distill import augmented_bundle

        data = augmented_bundle(data, cfg.augment_views, seed=cfg.seed)
    return RunInputs(teacher=tch, data=data, source=source, data_free=data_free, out=out)


def prepare_out(cfg: CompileConfig) -> Path:
    """Make ``--out`` ready: refuse a non-empty folder without ``--force``/``--resume``."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path exists and is not a folder: {out}")
    if out.is_dir() and any(out.iterdir()):
        if cfg.resume:
            return out
        if not cfg.force:
            raise OutputExistsError(
                f"output folder {out} exists and is not empty",
                hint="pass --force to overwrite, --resume to continue, or choose another --out",
            )
        for name in ARTIFACTS:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


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
    return synthesize(
        tch.module,
        tuple(tch.input_shape),
        tch.num_classes,
        n_images=cfg.synthetic_images,
        steps=cfg.synthetic_steps,
        seed=cfg.seed,
        mean=norm.get("mean"),
        std=norm.get("std"),
        progress=lambda f: reporter.training("data-free synthesis", f),
    )


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
    candidates = [space.from_unit(np.zeros(space.dim))] + [space.sample(rng) for _ in range(n)]
    smallest = math.inf
    for c in candidates:
        p = space.estimate_params(c)
        smallest = min(smallest, p)
        if p <= constraints.max_params:
            return
    raise ConstraintError(
        f"no student in the '{space.name}' space meets --max-params {format_count(constraints.max_params)} "
        f"(the smallest has {format_count(smallest)} parameters)",
        hint="raise --max-params",
    )
