"""The typed configuration of a compile run, its options declared once, and the parsers for
human-written values (``parsing.py``).

Every option of ``kd-compile compile`` is a field of ``CompileConfig`` (or of its ``Constraints``
and ``Budget``) declared with ``option(...)``: its default, help text, option name and parser
live there and nowhere else. The CLI builds its options from these declarations
(``compile_options()``), the Python API takes the same names as keyword arguments, and both go
through ``CompileConfig.from_options``, which parses, type-checks and validates.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .parsing import (  # noqa: F401  (the public parsers are re-exported: callers import them from here)
    LatencyLimit,
    format_count,
    optional,
    parse_bytes,
    parse_channel_values,
    parse_crop_pct,
    parse_input_size,
    parse_interpolation,
    parse_kv_options,
    parse_latency_limit,
    parse_latency_ms,
    parse_shape,
    parse_size,
)


def option(
    default: Any = None,
    help: str = "",  # noqa: A002
    *,
    name: str | None = None,
    parse: Callable[[Any, str], Any] | None = None,
    cli_type: Any = None,
    short: str | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """Declare a config field that is also an option of ``kd-compile compile`` and ``compile()``.

    Args:
        default: the default value (the one place it is declared).
        help: the option's help text.
        name: the option's name when it differs from the field's (snake case; the CLI flag is
            it with dashes: ``proxy_fraction`` -> ``--proxy-fraction``).
        parse: ``parse(value, flag) -> field value`` for options given as text ("4M", "2ms").
        cli_type: the type the CLI reads when it differs from the field's (e.g. ``str``).
        short: a one-letter CLI alias, e.g. ``-t``.
        default_factory: for mutable defaults.
    """
    meta = {"help": help, "name": name, "parse": parse, "cli_type": cli_type, "short": short, "option": True}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Constraints:
    """Hard limits checked on the built, untrained student. ``None`` means no limit."""

    max_params: int | None = option(
        None, "Max student parameters, e.g. 4M, 600K.", parse=optional(parse_size), cli_type=str
    )
    max_flops: int | None = option(
        None, "Max student FLOPs per image, e.g. 600M, 1.2G.", parse=optional(parse_size), cli_type=str
    )
    max_latency: LatencyLimit | None = option(
        LatencyLimit(1.0, relative=True),
        "Max latency on the target: 2ms, 500us, or relative to the teacher's (1x = no slower, "
        "0.5x = twice as fast); none lifts it.",
        parse=parse_latency_limit,
        cli_type=str,
    )
    max_memory_bytes: int | None = option(
        None,
        "Max peak activation memory, e.g. 64MB.",
        name="max_memory",
        parse=optional(parse_bytes),
        cli_type=str,
    )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["max_latency"] = None if self.max_latency is None else str(self.max_latency)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Constraints:
        kw = {f.name: d.get(f.name) for f in dataclasses.fields(cls)}
        kw["max_latency"] = parse_latency_limit(kw["max_latency"]) if kw["max_latency"] is not None else None
        return cls(**kw)

    def latency_limit_ms(self, teacher_ms: float | None) -> float | None:
        """The latency limit in ms on the target, given the teacher's latency there."""
        return None if self.max_latency is None else self.max_latency.limit_ms(teacher_ms)

    def violations(
        self,
        params: int,
        flops: int,
        latency_ms: float | None,
        memory_bytes: int | None,
        *,
        teacher_latency_ms: float | None = None,
    ) -> list[str]:
        """Return human-readable violations (empty when feasible).

        Args:
            params, flops, latency_ms, memory_bytes: the candidate's figures (None: unknown).
            teacher_latency_ms: the teacher's latency, for a relative latency limit.
        """
        out: list[str] = []
        if self.max_params is not None and params > self.max_params:
            out.append(f"params {format_count(params)} > {format_count(self.max_params)}")
        if self.max_flops is not None and flops > self.max_flops:
            out.append(f"FLOPs {format_count(flops)} > {format_count(self.max_flops)}")
        limit = self.latency_limit_ms(teacher_latency_ms)
        if limit is not None and latency_ms is not None and latency_ms > limit:
            lim = self.max_latency
            what = f" ({lim} the teacher's)" if lim is not None and lim.relative else ""
            out.append(f"latency {latency_ms:.3g}ms > {limit:.3g}ms{what}")
        if self.max_memory_bytes is not None and memory_bytes is not None and memory_bytes > self.max_memory_bytes:
            out.append(f"memory {format_count(memory_bytes)}B > {format_count(self.max_memory_bytes)}B")
        return out


@dataclass(frozen=True)
class Budget:
    """How much work the search and the final training may do.

    ``candidates`` (``--budget``) is the search's training budget in full proxy trainings: a
    candidate trained at fidelity f (multi-fidelity strategies) uses f of it.
    """

    candidates: int = option(
        8,
        "Search budget in candidate trainings (a multi-fidelity strategy trains more, cheaper ones).",
        name="budget",
    )
    proxy_epochs: float = option(2.0, "KD epochs per candidate.")
    proxy_data_fraction: float = option(1.0, "Share of the training set per candidate.", name="proxy_fraction")
    final_epochs: float = option(15.0, "KD epochs for the chosen student.")
    time_limit_s: float | None = option(None, "Stop proposing candidates after N seconds.", name="time_limit")
    lr: float = option(1e-2, "Peak learning rate of every training (AdamW, warm-up then cosine).")
    proxy_sparsity: float = option(0.0, "Train candidates with this share of weights zero (dynamic sparsity).")
    proxy_patience: int | None = option(None, "Stop a candidate after N epochs without val gain.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CompileConfig:
    """Everything ``kd_compile.compile`` needs; build one with ``from_options``."""

    teacher: str
    target: str = option(
        "2080ti", "Target device name, path to a device .toml, or local (this machine's GPU or CPU).", short="-t"
    )
    constraints: Constraints = field(default_factory=Constraints)
    data: str | None = option(None, "glyphs | digits | path/to/data.npz | ImageFolder dir | tar shards.")
    data_mode: str = option(
        "auto",
        "memory | stream | auto: stream an ImageFolder from disk through DataLoader workers (auto: when its "
        "decoded images would exceed 1 GiB) instead of decoding it into memory.",
    )
    stream_augment: str = option(
        "crop+flip", "Train recipe of streamed data: crop+flip | crop | flip | none (random resized crop, flip)."
    )
    strategy: str = option(
        "auto", "Search strategy (see 'kd-compile strategies'); auto: sobol below 20 candidates, else turbo-m."
    )
    strategy_options: str = option(
        "",
        "Options of the strategy as KEY=VALUE[,KEY=VALUE] (e.g. n_init=12; gamma=0.25 for mfkd; "
        "learn_constraints=false for turbo/turbo-m); 'kd-compile strategies --options' lists them, and "
        "an unknown one is an error.",
        parse=parse_kv_options,
    )
    space: str = option(
        "trade", "Student search space (family); teacher-family: a timm ResNet/EfficientNet teacher's own family."
    )
    budget: Budget = field(default_factory=Budget)
    latency: str = option(
        "auto", "measure | predict | auto: measure on the target when it is this machine (auto), else predict."
    )
    runtime: str | None = option(
        None, "Runtime the student is costed in on the target: tensorrt | onnxruntime | torch (eager) | inductor "
        "(torch.compile); default: the target's ('kd-compile targets show T'), or the best one here when "
        "measuring a GPU.",
    )
    precision: str | None = option(None, "Precision it is costed in: fp32 | fp16 | bf16 | int8; default: the target's.")
    target_acc: float | None = option(
        None, "Accuracy the search score and TRADE's bracket aim at (0-1); default: the teacher's."
    )
    out: Path = option(Path("kd-out"), "Output folder.", parse=lambda v, flag: _path(v, flag))
    seed: int = option(0, "Seed for every random choice.")
    device: str = option("auto", "Training device: auto (cuda when available, else cpu), cpu or cuda[:N].")
    resume: bool = option(False, "Continue an interrupted run in --out from its journal.")
    force: bool = option(False, "Overwrite kd-compile artifacts in an existing --out.")
    trust_checkpoint: bool = option(False, "Allow unpickling a whole torch.save'd module (runs code).")
    arch: str | None = option(None, "timm architecture for a state_dict/safetensors teacher.")
    input_shape: tuple[int, int, int] | None = option(
        None, "Teacher input C,H,W when the checkpoint lacks it.", parse=parse_shape, cli_type=str
    )
    input_size: tuple[int, int] | None = option(
        None,
        "Teacher input resolution H or HxW (channels from the checkpoint, or --input-shape C,H,W); "
        "default: the checkpoint's, else the data's.",
        parse=parse_input_size,
        cli_type=str,
    )
    mean: tuple[float, ...] | None = option(
        None,
        "Teacher normalisation mean of x/255, three comma-separated values or one; default: the "
        "checkpoint's, else timm's pretrained_cfg, else the data's own.",
        parse=parse_channel_values(positive=False),
        cli_type=str,
    )
    std: tuple[float, ...] | None = option(
        None,
        "Teacher normalisation std of x/255, three comma-separated values or one; default as --mean.",
        parse=parse_channel_values(positive=True),
        cli_type=str,
    )
    interpolation: str | None = option(
        None,
        "Resize filter for the teacher's input: bilinear | bicubic | nearest; default: the checkpoint's, "
        "else bilinear.",
        parse=parse_interpolation,
    )
    crop_pct: float | None = option(
        None,
        "Centre-crop fraction in (0, 1]: resize to size/crop-pct and keep the centre (timm's evaluation "
        "crop); default: the checkpoint's, else 1 (no crop).",
        parse=parse_crop_pct,
    )
    num_classes: int | None = option(None, "Teacher class count (checked against the checkpoint).")
    compare_ce: bool = option(
        True, "Also train the chosen student without KD (same seed): the one better on validation ships; both reported."
    )
    batch_size: int = option(128, "Batch size of every training.")
    workers: int = option(0, "Processes for independent trainings (0 = one per core, at most 2).")
    executor: str = option(
        "local", "Where candidates are evaluated: local (here, one after the other) or ray (Ray tasks, side by side)."
    )
    ray_address: str | None = option(
        None, "Ray cluster for --executor ray: auto (the one this machine joined) or HOST:PORT; default: a local one."
    )
    cpus_per_trial: float = option(1.0, "CPUs each candidate reserves with --executor ray.")
    gpus_per_trial: float | None = option(
        None, "GPUs each candidate reserves with --executor ray (default: 1 with a cuda --device, else 0)."
    )
    parallel_trials: int = option(
        0, "Candidates evaluated at once with --executor ray (0 = as many as the cluster's CPUs and GPUs hold)."
    )
    distiller: str = option("kd", "kd (logit KD) or auto (Auto-KD: MCTS over distiller designs).")
    distiller_iterations: int = option(8, "MCTS iterations of the distiller search (--distiller auto).")
    synthetic_images: int = option(2048, "Images to synthesise for data-free runs (no data, no hint).")
    synthetic_steps: int = option(200, "Optimisation steps of the data-free synthesis.")
    min_accuracy: float | None = option(
        None, "Quality gate: fail (exit 13, after writing the report) if the student's test accuracy "
        "is below this (0-1)."
    )
    max_accuracy_drop: float | None = option(
        None, "Quality gate: fail (exit 13) if the student's test accuracy is more than this many points "
        "below the teacher's."
    )
    min_speedup: float | None = option(
        None, "Quality gate: fail (exit 13) unless the student is at least this many times faster on the target."
    )
    augment_views: int = option(
        0,
        "Seeded augmented views of the training set (shifts); the teacher's outputs on them are "
        "cached once. Same optimiser steps per training.",
        name="augment",
    )

    def __post_init__(self) -> None:
        # --device auto (the default) is resolved once, here: every consumer sees cpu or cuda
        if self.device == "auto":
            object.__setattr__(self, "device", resolve_device("auto"))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        return d

    def costed_in(self, target: Any) -> tuple[str, str]:
        """(runtime, precision) teacher and student are costed in on ``target`` (a ``TargetProfile``):
        ``--runtime`` / ``--precision`` where given, else the target's defaults."""
        return self.runtime or target.default_runtime, self.precision or target.default_precision

    @classmethod
    def from_options(cls, teacher: str | Path, **options: Any) -> CompileConfig:
        """Build a validated config from option values (the CLI's names, in snake case).

        Args:
            teacher: a checkpoint path or ``timm:<name>``.
            **options: any of ``compile_options()``'s names, e.g. ``target="t4"``,
                ``max_params="4M"``, ``budget=12``, ``proxy_fraction=0.5``. ``None`` keeps the
                default.

        Raises:
            UsageError: an unknown option, a value of the wrong type, or a bad value.
        """
        if not isinstance(teacher, (str, Path)) or not str(teacher):
            raise UsageError(f"teacher must be a checkpoint path or timm:<name>, got {teacher!r}")
        specs = compile_options()
        unknown = sorted(set(options) - set(specs))
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], list(specs), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UsageError(f"unknown option '{unknown[0]}'{hint}")
        parts: dict[str, dict[str, Any]] = {"": {}, "constraints": {}, "budget": {}}
        for name, value in options.items():
            spec = specs[name]
            if value is None:
                continue  # None is "not given": the declared default stays
            parts[spec.group][spec.field] = spec.convert(value)
        cfg = cls(
            teacher=str(teacher),
            constraints=Constraints(**parts["constraints"]),
            budget=Budget(**parts["budget"]),
            **parts[""],
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check values that parse but make no sense together or alone.

        Raises:
            UsageError: with the option's name.
        """
        b = self.budget
        if b.candidates < 1:
            raise UsageError("--budget must be at least 1 candidate")
        if not (0 < b.proxy_data_fraction <= 1):
            raise UsageError("proxy data fraction must be in (0, 1]")
        if not (b.proxy_epochs > 0 and b.final_epochs > 0) or not math.isfinite(b.proxy_epochs + b.final_epochs):
            raise UsageError("epochs must be positive")
        if not (math.isfinite(b.lr) and b.lr > 0):
            raise UsageError(f"--lr must be a positive number, got {b.lr}")
        if b.time_limit_s is not None and not (b.time_limit_s > 0):
            raise UsageError(f"--time-limit must be a positive number of seconds, got {b.time_limit_s}")
        if not 0 <= b.proxy_sparsity < 1:
            raise UsageError(f"--proxy-sparsity must be in [0, 1), got {b.proxy_sparsity}")
        if b.proxy_patience is not None and b.proxy_patience < 1:
            raise UsageError(f"--proxy-patience must be at least 1 epoch, got {b.proxy_patience}")
        if self.target_acc is not None and not (0 < self.target_acc <= 1):
            raise UsageError("--target-acc must be a fraction in (0, 1], e.g. 0.85")
        if self.distiller not in ("kd", "auto"):
            raise UsageError(f"--distiller must be kd or auto, got '{self.distiller}'")
        if not 0 <= self.augment_views <= 16:
            raise UsageError(f"--augment must be 0..16 augmented views, got {self.augment_views}")
        if self.latency not in ("auto", "measure", "predict"):
            raise UsageError(f"--latency must be auto, measure or predict, got '{self.latency}'")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise UsageError(f"--device must be auto, cpu or cuda[:N], got '{self.device}'")
        if self.data_mode not in ("auto", "memory", "stream"):
            raise UsageError(f"--data-mode must be auto, memory or stream, got '{self.data_mode}'")
        if self.stream_augment.strip().lower() not in ("crop+flip", "flip+crop", "crop", "flip", "none"):
            raise UsageError(f"--stream-augment must be crop+flip, crop, flip or none, got '{self.stream_augment}'")
        if self.seed < 0:
            raise UsageError(f"--seed must be >= 0, got {self.seed}")
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0, got {self.workers}")
        if self.executor not in ("local", "ray"):
            raise UsageError(f"--executor must be local or ray, got '{self.executor}'")
        if self.executor != "ray" and self.ray_address is not None:
            raise UsageError("--ray-address needs --executor ray")
        if not (math.isfinite(self.cpus_per_trial) and self.cpus_per_trial > 0):
            raise UsageError(f"--cpus-per-trial must be a positive number, got {self.cpus_per_trial}")
        if self.gpus_per_trial is not None and not (math.isfinite(self.gpus_per_trial) and self.gpus_per_trial >= 0):
            raise UsageError(f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial}")
        if self.parallel_trials < 0:
            raise UsageError(f"--parallel-trials must be >= 0, got {self.parallel_trials}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.num_classes is not None and self.num_classes < 1:
            raise UsageError(f"--num-classes must be at least 1, got {self.num_classes}")
        if self.min_accuracy is not None and not 0 < self.min_accuracy <= 1:
            raise UsageError(f"--min-accuracy must be a fraction in (0, 1], e.g. 0.85, got {self.min_accuracy}")
        if self.max_accuracy_drop is not None and not 0 <= self.max_accuracy_drop <= 100:
            raise UsageError(f"--max-accuracy-drop is in points (0-100), e.g. 3, got {self.max_accuracy_drop}")
        if self.min_speedup is not None and not (math.isfinite(self.min_speedup) and self.min_speedup > 0):
            raise UsageError(f"--min-speedup must be a positive factor, e.g. 1.5, got {self.min_speedup}")
        if self.distiller_iterations < 1 or self.synthetic_images < 1 or self.synthetic_steps < 1:
            raise UsageError("--distiller-iterations, --synthetic-images and --synthetic-steps must be at least 1")
        if self.force and self.resume:
            raise UsageError("--force and --resume contradict each other (overwrite or continue): pass one")
        # upper bounds far above any real use: an absurd number is a typo, not a week-long run
        for flag, value, most in (
            ("--budget", b.candidates, 100_000),
            ("--proxy-epochs", b.proxy_epochs, 10_000),
            ("--final-epochs", b.final_epochs, 10_000),
            ("--seed", self.seed, 2**32 - 1),
            ("--batch-size", self.batch_size, 65_536),
            ("--workers", self.workers, 1_024),
            ("--num-classes", self.num_classes or 1, 100_000),
            ("--distiller-iterations", self.distiller_iterations, 10_000),
            ("--synthetic-images", self.synthetic_images, 10_000_000),
            ("--synthetic-steps", self.synthetic_steps, 1_000_000),
        ):
            if value > most:
                raise UsageError(f"{flag} is at most {most}, got {value:g}")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a CUDA device, else ``cpu``; other values unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _path(value: Any, flag: str) -> Path:
    if not isinstance(value, (str, Path)) or not str(value):
        raise UsageError(f"{flag} must be a folder path, got {value!r}")
    return Path(value)


@dataclass(frozen=True)
class OptionSpec:
    """One option of ``compile``, read from its field declaration.

    Attributes:
        name: the option's name (snake case; the flag is ``--`` + dashes).
        group: "" for ``CompileConfig`` fields, else "constraints" or "budget".
        field: the dataclass field it sets.
        type: the field's type; ``cli_type`` what the command line reads.
        default, help, short: as declared.
        parse: the declared parser, if any.
    """

    name: str
    group: str
    field: str
    type: Any
    cli_type: Any
    default: Any
    help: str
    short: str | None
    parse: Callable[[Any, str], Any] | None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def convert(self, value: Any) -> Any:
        """Parse or type-check an option value (CLI text or a Python value)."""
        if self.parse is not None:
            return self.parse(value, self.flag)
        return _check_type(value, self.type, self.flag)


def _check_type(value: Any, tp: Any, flag: str) -> Any:
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise UsageError(f"{flag} needs a value")
    base = next((a for a in args if a is not type(None)), tp) if args else tp
    if base is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{flag} must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UsageError(f"{flag} must be an integer, got {value!r}")
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if math.isnan(value):
                raise UsageError(f"{flag} must be a number, got nan")
            return value
        raise UsageError(f"{flag} must be a number, got {value!r}")
    if base is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"{flag} must be a string, got {value!r}")
    return value


def compile_options() -> dict[str, OptionSpec]:
    """Every option of ``compile`` by name, in declaration order (the CLI's order); the options
    of ``Constraints`` and ``Budget`` stand where those fields stand in ``CompileConfig``."""
    out: dict[str, OptionSpec] = {}

    def add(group: str, cls: type) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in _GROUPS:
                add(f.name, _GROUPS[f.name])
                continue
            m = f.metadata
            if not m.get("option"):
                continue
            name = m["name"] or f.name
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            out[name] = OptionSpec(
                name=name,
                group=group,
                field=f.name,
                type=hints[f.name],
                cli_type=m["cli_type"] if m["cli_type"] is not None else hints[f.name],
                default=default,
                help=m["help"],
                short=m["short"],
                parse=m["parse"],
            )

    add("", CompileConfig)
    return out


_GROUPS: dict[str, type] = {"constraints": Constraints, "budget": Budget}
