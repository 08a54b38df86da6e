"""The ``kd-compile`` command: a thin Typer layer over ``kd_compile.api``.

``kd-compile TEACHER ...`` is short for ``kd-compile compile TEACHER ...``. Every command turns
bad input into one line on stderr and the exit code of its ``KdCompileError``; a Ctrl-C leaves a
resumable journal and exits 130.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .errors import KdCompileError, UsageError

# timm still calls torch.jit.script at import; the deprecation is not the user's business
warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_show_warning = warnings.showwarning


def _one_line_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None):  # noqa: ANN202
    """kd-compile's own warnings (a rebuilt cache entry, a skipped engine) as one line on
    stderr, not Python's file:line and source-line pair; other libraries' as Python shows them."""
    if str(filename).startswith(_PACKAGE_DIR):
        typer.echo(f"kd-compile: warning: {' '.join(str(message).split())}", err=True)
        return
    _show_warning(message, category, filename, lineno, file, line)


warnings.showwarning = _one_line_warning


class _DefaultCompileGroup(TyperGroup):
    """Route ``kd-compile TEACHER ...`` to the ``compile`` command."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["compile", *args]
        return super().parse_args(ctx, args)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:  # type: ignore[override]
        """Click's usage errors as one line on stderr (exit 2), not Typer's boxed panel."""
        try:  # typer >= 0.20 vendors click
            from typer._click.exceptions import ClickException, NoArgsIsHelpError
        except ImportError:  # pragma: no cover
            from click.exceptions import ClickException, NoArgsIsHelpError

        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as exc:  # rich help prints itself as the error is built; plain help is the message
            if exc.format_message():
                typer.echo(exc.format_message())
            sys.exit(exc.exit_code)
        except ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            msg = " ".join(exc.format_message().split())
            typer.echo(f"kd-compile: error: {msg}{hint}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("kd-compile: aborted", err=True)
            sys.exit(130)
        except KdCompileError as exc:  # raised while parsing shared option types
            _err(exc)
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_DefaultCompileGroup,
    add_completion=False,
    no_args_is_help=True,
    help="Hardware-aware deployment compiler: search and distil a student of a teacher for a target device.\n\n"
    "kd-compile TEACHER --target 2080ti --max-params 4M [OPTIONS] is short for "
    "kd-compile compile TEACHER ... (see kd-compile compile --help for every option).",
    pretty_exceptions_enable=False,
)
targets_app = typer.Typer(help="List and show target device profiles.", no_args_is_help=True)
app.add_typer(targets_app, name="targets")

# shared option types
TargetOpt = Annotated[str, typer.Option("--target", "-t", help="Target device name or path to a device .toml.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
TrustOpt = Annotated[
    bool, typer.Option("--trust-checkpoint", help="Allow unpickling a whole torch.save'd module (runs code).")
]


def _err(exc: BaseException) -> None:
    typer.echo(f"kd-compile: error: {exc.line() if isinstance(exc, KdCompileError) else exc}", err=True)


def _json_error(kind: str, message: str, code: int) -> None:
    typer.echo(json.dumps({"error": {"type": kind, "message": message, "exit_code": code}}, indent=2))


def _run(fn, *args: Any, json_errors: bool = False, **kwargs: Any) -> Any:
    """Call an api function, mapping errors to one line on stderr and an exit code (and, with
    ``json_errors``, a JSON error object on stdout for CI)."""
    try:
        return fn(*args, **kwargs)
    except KdCompileError as exc:
        _err(exc)
        if json_errors:
            _json_error(type(exc).__name__, exc.line(), exc.exit_code)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        msg = "interrupted; finished candidates are in the journal (rerun with --resume)"
        typer.echo(f"kd-compile: {msg}", err=True)
        if json_errors:
            _json_error("Interrupted", msg, 130)
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as exc:
        if os.environ.get("KD_COMPILE_DEBUG"):
            raise
        msg = f"internal error: {type(exc).__name__}: {exc}".splitlines()[0]
        typer.echo(f"kd-compile: {msg} (set KD_COMPILE_DEBUG=1 for a traceback)", err=True)
        if json_errors:
            _json_error("InternalError", msg, 1)
        raise typer.Exit(1) from None


class _RichReporter:
    """Rich progress bars on stderr for a compile run."""

    def __init__(self, quiet: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        # soft_wrap: a CI log keeps whole lines (architecture strings are long), never cut at 80
        self.console = Console(stderr=True, quiet=quiet, log_path=False, soft_wrap=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.search_task = None
        self.train_task = None
        self.best: float | None = None

    def stage(self, name: str) -> None:
        self.console.log(name)

    def search_started(self, total: int) -> None:
        self.progress.start()
        self.search_task = self.progress.add_task("search", total=total)

    def trial(self, t) -> None:  # type: ignore[no-untyped-def]
        from .search.trial import TrialStatus

        if t.ok and (self.best is None or t.score < self.best):
            self.best = t.score
        if self.search_task is not None and t.status != TrialStatus.INFEASIBLE:
            self.progress.advance(self.search_task, t.fidelity)  # the budget is training cost
        acc = t.metrics.get("accuracy")
        what = f"acc {acc:.1%}" if acc is not None else (t.error or "")
        self.console.log(f"#{t.number} {str(t.status):<10} {what:<20} {t.metrics.get('arch', '')}")

    def search_done(self) -> None:
        if self.train_task is not None:
            self.progress.remove_task(self.train_task)
            self.train_task = None
        self.progress.stop()

    def training(self, what: str, fraction: float) -> None:
        if not what.startswith("final"):
            return
        if self.train_task is None or self.progress.tasks[-1].description != what:
            if not self.progress.live.is_started:
                self.progress.start()
            self.train_task = self.progress.add_task(what, total=100)
        self.progress.update(self.train_task, completed=100 * fraction)
        if fraction >= 1.0:
            self.progress.stop()

    def message(self, text: str) -> None:
        self.console.log(text)


def _compile(teacher: str, json_out: bool, **options: Any) -> None:
    """Search, distil and export a student of TEACHER for the target device."""
    from . import api
    from .config import CompileConfig

    def go() -> Any:
        cfg = CompileConfig.from_options(teacher, **options)
        return api.compile(cfg, reporter=_RichReporter(quiet=json_out))

    result = _run(go, json_errors=json_out)
    r = result.report
    if json_out:
        summary = {k: r[k] for k in ("schema_version", "target", "teacher", "student")}
        summary["artifacts"] = {k: str(v) for k, v in result.artifacts.items()}
        summary["search"] = {k: v for k, v in r["search"].items() if k not in ("candidates", "trace")}
        typer.echo(json.dumps(summary, indent=2, default=str))
    else:
        from .report.render import band_phrase, speed_phrase

        s, t, sp = r["student"], r["teacher"], r.get("speedup") or {}
        kd = "" if s["accuracy_without_kd"] is None else f" (without KD {s['accuracy_without_kd']:.2%})"
        if s.get("trained_with") == "ce":  # the CE-only twin beat the KD student on validation: it ships
            kd = f" (trained without KD, which scored higher on validation; with KD {s['accuracy_with_kd']:.2%})"
        how = s["latency"]["method"]
        if how == "predicted":
            how += f"; {band_phrase(sp.get('error_band'))}"
        local = sp.get("local_cpu")
        here = f"; {speed_phrase(local['speedup'])} on this CPU (measured)" if local else ""
        typer.echo(
            f"student {s['arch']}\n"
            f"  {_accuracy_line(r)}{kd}; teacher {t['accuracy']:.2%}\n"
            f"  {speed_phrase(sp.get('target'))} than the teacher on {r['target']['name']} ({how}){here}\n"
            f"  params {s['params']:,} ({s['params_ratio']:.1%} of teacher), "
            f"latency {s['latency']['latency_ms']:.4g} ms vs {t['latency']['latency_ms']:.4g} ms\n"
            f"  wrote {', '.join(str(p) for p in result.artifacts.values())}"
        )


def _accuracy_line(r: dict[str, Any]) -> str:
    """``test accuracy 85.10% (4,000 held-out images; validation 85.60%)``, or validation alone."""
    s, d = r["student"], r["run"]["data"]
    if d.get("accuracy_split") == "test":
        return f"test accuracy {s['accuracy']:.2%} ({d['test']:,} held-out images; validation {s['val_accuracy']:.2%})"
    return f"validation accuracy {s['accuracy']:.2%} (no test split)"


def _compile_command() -> Any:
    """``_compile`` with one Typer option per declared config option (``config.compile_options``):
    the options, their defaults and help are declared once, in ``config.py``."""
    import inspect

    from .config import compile_options

    params = [
        inspect.Parameter(
            "teacher",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Annotated[
                str, typer.Argument(help="Teacher checkpoint (.pt, .pt2, .safetensors) or timm:<name>.")
            ],
        )
    ]
    for spec in compile_options().values():
        flag = f"{spec.flag}/--no-{spec.flag[2:]}" if spec.cli_type is bool else spec.flag
        flags = [flag] + ([spec.short] if spec.short else [])
        default = str(spec.default) if spec.cli_type is str and spec.default is not None else spec.default
        params.append(
            inspect.Parameter(
                spec.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[spec.cli_type, typer.Option(*flags, help=spec.help)],
            )
        )
    params.append(
        inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=JsonOpt)
    )

    def compile_cmd(**kwargs: Any) -> None:
        _compile(kwargs.pop("teacher"), kwargs.pop("json_out"), **kwargs)

    compile_cmd.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    compile_cmd.__annotations__ = {p.name: p.annotation for p in params}
    compile_cmd.__doc__ = _compile.__doc__
    return compile_cmd


app.command("compile")(_compile_command())


def _teacher_opt(name: str) -> Any:
    """The Typer option of ``compile``'s teacher option ``name`` (same flag and help), as text:
    ``api.profile`` parses it with the same parser ``compile`` uses."""
    from .config import compile_options

    spec = compile_options()[name]
    return Annotated[str | None, typer.Option(spec.flag, help=spec.help)]


@app.command("profile")
def profile_cmd(
    model: Annotated[str, typer.Argument(
        help="Checkpoint kd-compile can load, an .onnx file (measured as it is on this CPU), or a model spec: "
        "timm:<name>, torchvision:<name>, nb201:<arch>, fbnet:<ops>, ofa:<res>/<depths>/<blocks>, anb:<stages>.")],
    target: TargetOpt = "cpu",
    runtime: Annotated[str | None, typer.Option(help="tensorrt | torch | onnxruntime | inductor")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32 | fp16 | bf16 | int8")] = None,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
    image_size: Annotated[int | None, typer.Option(help="Square input resolution.")] = None,
    method: Annotated[str | None, typer.Option(help="predict | measure (default: measure on this machine).")] = None,
    layers: Annotated[bool, typer.Option(help="Include the per-layer breakdown.")] = False,
    json_out: JsonOpt = False,
    trust_checkpoint: TrustOpt = False,
    arch: _teacher_opt("arch") = None,
    input_shape: _teacher_opt("input_shape") = None,
    input_size: _teacher_opt("input_size") = None,
    mean: _teacher_opt("mean") = None,
    std: _teacher_opt("std") = None,
    interpolation: _teacher_opt("interpolation") = None,
    crop_pct: _teacher_opt("crop_pct") = None,
) -> None:
    """Latency, throughput, params and FLOPs of MODEL on a target (MODEL loaded with compile's teacher options)."""
    from . import api

    d = _run(
        api.profile,
        model,
        json_errors=json_out,
        target=target,
        runtime=runtime,
        precision=precision,
        batch=batch,
        image_size=image_size,
        method=method,
        layers=layers,
        trust_checkpoint=trust_checkpoint,
        arch=arch,
        input_shape=input_shape,
        input_size=input_size,
        mean=mean,
        std=std,
        interpolation=interpolation,
        crop_pct=crop_pct,
    )
    if json_out:
        typer.echo(json.dumps(d, indent=2, default=str))
        return
    flops = "FLOPs not counted (an ONNX file)" if d["flops"] is None else f"FLOPs {d['flops']:,}/image"
    typer.echo(
        f"{d['model']} on {d['target']}: {d['latency_ms']:.4g} ms/batch of {d['batch']} "
        f"({d['latency_per_image_ms']:.4g} ms/image, {d['throughput']:.4g} img/s), {d['method']} with "
        f"{d['runtime']} {d['precision']}; params {d['params']:,}, {flops}"
    )
    if d.get("deploy_form"):
        typer.echo(f"  deploy form: {d['deploy_form']}")
    if d["method"] == "predicted":
        from .report.render import band_phrase

        typer.echo(f"  error band: {band_phrase((d.get('extra') or {}).get('error_band'))}")
    if layers and d.get("layers_note"):
        typer.echo(f"  layers: {d['layers_note']}")
    if layers:
        for layer in d["layers"]:
            lat = layer.get("latency_ms")
            typer.echo(
                f"  {layer['name']:<40} {layer['op']:<16} {layer['flops']:>14,} FLOPs"
                + ("" if lat is None else f" {lat:.4g} ms")
            )


@app.command("calibrate")
def calibrate_cmd(
    target: TargetOpt,
    table: Annotated[list[Path], typer.Option(
        help="Measured latency table (CSV: model, img_size, batch, latency_ms per batch; or timm's benchmark "
        "columns); repeatable.")],
    runtime: Annotated[str, typer.Option(help="Runtime the table was measured with (timm tables: torch).")] = "torch",
    precision: Annotated[
        str, typer.Option(help="Precision the table was measured with (timm AMP tables: fp16).")
    ] = "fp16",
    models: Annotated[int | None, typer.Option(help="Use at most N models of the table.")] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write the fitted constants (JSON).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Fit the roofline predictor's efficiency factors for TARGET from measured tables."""
    from . import api

    _run(_tables_exist, table, json_errors=json_out)
    d = _run(
        api.calibrate, target=target, tables=list(table), runtime=runtime, precision=precision, models=models, out=out,
        json_errors=json_out,
    )
    typer.echo(json.dumps(d, indent=2, default=str) if json_out else _fmt_calibration(d))


def _tables_exist(tables: list[Path]) -> None:
    for t in tables:
        if not t.is_file():
            raise UsageError(f"table {'is not a regular file' if t.exists() else 'not found'}: {t}")


def _fmt_calibration(d: dict[str, Any]) -> str:
    q = d.get("quality", {})
    consts = ", ".join(f"{k}={v:.3g}" for k, v in d.get("constants", {}).items() if isinstance(v, (int, float)))
    px = (d.get("error_band") or {}).get("input_px")
    at = f" at {px[0]}-{px[1]} px" if isinstance(px, list) and len(px) == 2 else ""
    return (
        f"calibrated {d.get('target')} {d.get('runtime')}/{d.get('precision')} on "
        f"{', '.join(map(str, d.get('fitted_on', [])))}: {q.get('n')} models{at}, "
        f"Spearman {q.get('spearman', float('nan')):.3f}, "
        f"median error {100 * q.get('median_ape', float('nan')):.1f}%\n  {consts}"
        + (f"\n  written to {d['written']}" if d.get("written") else "")
    )


@targets_app.command("list")
def targets_list(json_out: JsonOpt = False) -> None:
    """List the built-in target device profiles."""
    from . import api

    profs = [_run(api.get_target, n, json_errors=json_out) for n in _run(api.list_targets, json_errors=json_out)]
    if json_out:
        typer.echo(json.dumps([p.to_dict() for p in profs], indent=2))
        return
    rows = [("NAME", "KIND", "RUNTIME", "PREC", "LATENCY", "DEVICE")]
    rows += [
        (p.name, p.kind, p.default_runtime, p.default_precision, _latency_status(p), p.display_name) for p in profs
    ]
    typer.echo(_table(rows))


def _latency_status(p: Any) -> str:
    """How latencies on a target are obtained: measured here, or predicted with its error band."""
    if p.local:
        return "measured here"
    band = _default_band(p)
    if band is not None:
        return f"predicted ±{100 * band:.0f}%"
    # the default runtime has no band: say which have one (a GPU profile of yours defaulting to ONNX Runtime)
    from . import api
    from .profilers.roofline import RUNTIME_NAMES

    others = [(rt, api.prediction_band(p, rt, p.default_precision, 1).get("median_ape"))
              for rt in RUNTIME_NAMES if rt != p.default_runtime]
    found = [f"{rt} ±{100 * ape:.0f}%" for rt, ape in others if isinstance(ape, (int, float))]
    return f"predicted, uncalibrated in {p.default_runtime}" + (f" ({', '.join(found)})" if found else "")


def _bands(p: Any) -> dict[str, Any]:
    """The target's held-out error bands by ``runtime/precision/batch1|large`` (empty: none)."""
    from . import api

    return (api.target_calibration(p.name) or {}).get("error_bands") or {}


def _default_band(p: Any) -> float | None:
    """The held-out median error of predictions in the target's default regime (batch 1), as
    every prediction there carries it (a borrowed band where the regime has no data)."""
    from . import api

    ape = api.prediction_band(p, p.default_runtime, p.default_precision, 1).get("median_ape")
    return float(ape) if isinstance(ape, (int, float)) else None


def _table(rows: list[tuple[str, ...]]) -> str:
    """Plain aligned columns (no width limit, so CI logs keep whole lines)."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


@targets_app.command("show")
def targets_show(
    name: Annotated[str, typer.Argument(help="Target name or .toml path; 'local' is this machine.")],
    json_out: JsonOpt = False,
) -> None:
    """Show one target device profile with its sources."""
    from . import api

    p = _run(api.resolve_target, name, json_errors=json_out)  # 'local', as --target takes it
    d = p.to_dict()
    if json_out:
        typer.echo(json.dumps(d, indent=2))
        return
    peaks = ", ".join(f"{k} {v:g}" for k, v in d["peak_tflops"].items())
    # a power limit without a node: the cap takes a 12-nm board's work per joule (pessimistic on newer ones)
    node = (f"{d['process_nm']:g} nm" if d.get("process_nm") else
            "not given: the power cap assumes a 12-nm board (set process_nm)" if d.get("tdp_w") else "")
    rows = [
        ("name", d["name"]),
        ("device", d["display_name"]),
        ("kind", d["kind"]),
        ("runtime / precision", f"{d['default_runtime']} / {d['default_precision']}"),
        ("peak TFLOP/s", peaks),
        ("memory", f"{d['memory_gb']:g} GB at {d['memory_bandwidth_gbs']:g} GB/s"),
        ("compute units", str(d["compute_units"])),
        *([("power limit", f"{d['tdp_w']:g} W")] if d.get("tdp_w") else []),
        *([("process node", node)] if node else []),
        ("latency", _latency_status(p)),
    ]
    typer.echo(_table(rows))
    bands = _bands(p)
    if bands:
        from .report.render import band_phrase

        typer.echo("predictor error, held out (median / 80th percentile of |predicted - measured| / measured):")
        typer.echo(_table([("  " + regime, band_phrase(b)) for regime, b in sorted(bands.items())]))
    oos = api.target_out_of_sample(p)
    if oos:
        from .report.render import out_of_sample_phrase

        typer.echo("for ImageNet-size models (64 px or more), from tables no fit reads:")
        typer.echo(_table([("  " + k, out_of_sample_phrase(v)) for k, v in sorted(oos.items())]))
    typer.echo("sources:")
    for src in d.get("sources", []):
        typer.echo(f"  - {src}")


@app.command("strategies")
def strategies_cmd(
    options: Annotated[
        bool, typer.Option("--options", help="Also list each strategy's options (--strategy-options KEY=VALUE).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """List the registered search strategies."""
    from . import api
    from .config import compile_options
    from .search import AUTO, GP_MIN_BUDGET, GP_STRATEGY

    default = compile_options()["strategy"].default
    if json_out:  # every strategy with its description, options and each option's rule
        from .search.options import OPTION_RULES

        names = _run(api.strategy_option_names, json_errors=True)
        docs = _run(api.strategy_summaries, json_errors=True)
        typer.echo(json.dumps([
            {"name": n, "default": n == default, "description": d,
             "options": {o: ({"type": OPTION_RULES[o].kind, "range": OPTION_RULES[o].range_text()}
                             if o in OPTION_RULES else {}) for o in names.get(n, [])}}
            for n, d in docs.items()], indent=2))
        return
    rows = [("STRATEGY", "DESCRIPTION")]
    if default == AUTO:
        why = f"sobol below {GP_MIN_BUDGET} candidates (too few points for a GP), else {GP_STRATEGY}."
        rows.append((f"{AUTO} (default)", why))
    rows += [(f"{n} (default)" if n == default else n, d) for n, d in _run(api.strategy_summaries).items()]
    if options:
        names = _run(api.strategy_option_names)
        rows = [(*r, "OPTIONS" if i == 0 else ", ".join(names.get(r[0].split()[0], [])) or "-")
                for i, r in enumerate(rows)]  # fmt: skip
    typer.echo(_table(rows))


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        from . import __version__

        typer.echo(f"kd-compile {__version__}")
        raise typer.Exit(0)


def main() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="kd-compile")
    except KdCompileError as exc:  # raised while parsing shared option types
        _err(exc)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
