"""Conformance suite for student spaces (the families registered with ``register_space``).

Every registered space must pass every check in :data:`CHECKS`;
``tests/students/test_space_conformance.py`` parametrizes them over ``list_spaces()``, as
:mod:`kd_compile.testing.strategies` does for strategies. A plugin author runs the same suite::

    import pytest
    from kd_compile.testing.spaces import CHECKS

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    def test_my_space(check):
        check("my-space")

Each check takes a registered name, creates the space with only the required arguments
(``create_space(name, input_shape=shape, num_classes=NUM_CLASSES)``) for every shape in
:data:`SHAPES`, and looks at the default config plus :data:`N_RANDOM` seeded samples
(:func:`conformance_configs`). The models are tiny, so the checks run torch on one thread
(:func:`single_thread`). A check raises ``AssertionError`` naming the space, the shape and the
config; one that cannot apply (no ``estimate_params``, ONNX not installed) skips under pytest.

The checks:

* ``check_construction``: a ``StudentSpace`` holding the given shape and class count; its
  ``to_dict`` is JSON-serialisable; its default config validates.
* ``check_forward_shape``: every config builds a model mapping (N, C, H, W) float32 to finite
  (N, num_classes) float32 logits.
* ``check_estimate_params``: ``estimate_params(config)`` (when the space has it) equals the
  built model's parameter count, so ``--max-params`` rejects exactly the right candidates.
* ``check_unit_round_trip``: ``to_unit`` gives ``dim`` coordinates in [0, 1];
  ``from_unit(to_unit(c)) == canonical(c)``; samples are canonical and seeded; ``key`` is stable
  (order of keys, canonicalisation, the round trip) and tells distinct canonical configs apart.
* ``check_validate``: ``validate`` accepts every config (returning its canonical form) and
  rejects a missing key and an out-of-range value of every parameter with ``UsageError``.
* ``check_onnx_export``: every built student exports with the project's exporter
  (``kd_compile.profilers.onnx_export.export_onnx``: dynamic batch, ONNX Runtime checked against
  PyTorch at two batch sizes).
* ``check_build_deterministic``: under the same ``torch.manual_seed`` ``build`` gives the same
  parameter names, shapes, dtypes and initial values.
* ``check_build_ignores_foreign_keys``: keys outside the space (e.g. the ``kd_tau``/``kd_alpha``
  of ``ComposedSpace([family, kd_space()])`` that journals and ``student.pt`` carry) do not
  change the built student.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import BackendUnavailableError, UsageError
from ..search.space import Config, Param
from ..students import StudentSpace, create_space

__all__ = [
    "BATCH",
    "CHECKS",
    "N_RANDOM",
    "NUM_CLASSES",
    "SHAPES",
    "cases",
    "check_build_deterministic",
    "check_build_ignores_foreign_keys",
    "check_construction",
    "check_estimate_params",
    "check_forward_shape",
    "check_onnx_export",
    "check_unit_round_trip",
    "check_validate",
    "conformance_configs",
    "make_space",
    "param_count",
    "single_thread",
]

# A 16 px grey glyph and a 32 px colour image: small enough for a CPU test, large enough that a
# family's downsampling rule has work to do.
SHAPES: tuple[tuple[int, int, int], ...] = ((1, 16, 16), (3, 32, 32))
NUM_CLASSES = 10
N_RANDOM = 3
BATCH = 2
# Keys no family may read; ``kd_*`` are the ones a composed config really carries.
FOREIGN_KEYS: dict[str, Any] = {"kd_tau": 2.5, "kd_alpha": 0.3, "__not_a_parameter__": "x"}


# -- helpers ----------------------------------------------------------------------------------
@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread inside the block.

    The students here are tiny: with several OpenMP threads on a loaded machine every small conv
    waits for busy-spinning workers (measured 20x slower forwards on 2 shared cores).
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def make_space(
    name: str, input_shape: tuple[int, int, int], num_classes: int = NUM_CLASSES
) -> StudentSpace:
    """``create_space(name, ...)`` with only the required arguments."""
    return create_space(name, input_shape=input_shape, num_classes=num_classes)


def conformance_configs(space: StudentSpace, n_random: int = N_RANDOM, seed: int = 0) -> list[Config]:
    """The default config, then ``space.sample(np.random.default_rng(seed + i))`` for each i."""
    return [space.default()] + [space.sample(np.random.default_rng(seed + i)) for i in range(n_random)]


def cases(name: str) -> Iterator[tuple[StudentSpace, Config, str]]:
    """``(space, config, label)`` for every shape of ``SHAPES`` and every conformance config.

    The label (e.g. ``"trade (3, 32, 32) seed 1"``) names the case in assertion messages.
    """
    for shape in SHAPES:
        space = make_space(name, shape)
        for i, cfg in enumerate(conformance_configs(space)):
            yield space, cfg, f"{name} {shape} " + ("default" if i == 0 else f"seed {i - 1}")


def param_count(model: nn.Module) -> int:
    """Number of parameter elements of ``model``."""
    return sum(p.numel() for p in model.parameters())


def _skip(reason: str) -> None:
    # under pytest a check that cannot apply shows as a skip with its reason; outside pytest
    # the check simply passes
    try:
        import pytest
    except ImportError:
        return
    pytest.skip(reason)


def _same(a: Any, b: Any) -> bool:
    # floats may move by an ulp through the unit-cube encoding (lo + u * (hi - lo))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return bool(a == b)


def _out_of_range(p: Param) -> list[Any]:
    """Values outside ``p`` (just past each bound, or not among the choices)."""
    if p.kind in ("choice", "cat"):
        return ["<not-a-choice>", None]
    assert p.low is not None and p.high is not None
    if p.kind == "int":
        return [int(p.high) + 1, int(p.low) - 1]
    span = float(p.high) - float(p.low)
    return [float(p.high) + span + 1.0, float(p.low) - span - 1.0]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert list(a) == list(b), f"{what}: parameter names differ"
    for k in a:
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, f"{what}: {k} shape/dtype differ"
        assert torch.equal(a[k], b[k]), f"{what}: initial values of {k} differ"


# -- checks -----------------------------------------------------------------------------------
def check_construction(name: str) -> None:
    """A ``StudentSpace`` with the given shape and classes; ``to_dict`` is JSON; default validates."""
    for shape in SHAPES:
        space = make_space(name, shape)
        assert isinstance(space, StudentSpace), f"{name} creates a {type(space).__name__}, not a StudentSpace"
        assert space.input_shape == shape, f"{name}: input_shape {space.input_shape} != {shape}"
        assert space.num_classes == NUM_CLASSES, f"{name}: num_classes {space.num_classes}"
        assert space.dim == sum(p.width for p in space.params) and space.dim >= 1, f"{name}: dim"
        d = json.loads(json.dumps(space.to_dict()))
        assert d["input_shape"] == list(shape) and d["num_classes"] == NUM_CLASSES, f"{name}: to_dict"
        default = space.default()
        assert space.validate(default) == default, f"{name} {shape}: the default config is not canonical"


def check_forward_shape(name: str) -> None:
    """(N, C, H, W) float32 -> finite (N, num_classes) float32 logits for every config."""
    with single_thread():
        for space, cfg, label in cases(name):
            x = torch.randn(BATCH, *space.input_shape)
            model = space.build(cfg).eval()
            assert isinstance(model, nn.Module), f"{label}: build returned {type(model).__name__}"
            with torch.no_grad():
                y = model(x)
            assert isinstance(y, torch.Tensor), f"{label}: output is {type(y).__name__}, not a tensor"
            assert tuple(y.shape) == (BATCH, NUM_CLASSES), f"{label}: output shape {tuple(y.shape)}"
            assert y.dtype == torch.float32, f"{label}: output dtype {y.dtype}"
            assert bool(torch.isfinite(y).all()), f"{label}: non-finite logits"


def check_estimate_params(name: str) -> None:
    """``estimate_params(config)`` equals the built model's parameter count."""
    if not callable(getattr(make_space(name, SHAPES[0]), "estimate_params", None)):
        _skip(f"{name} has no estimate_params")
        return
    with single_thread():
        for space, cfg, label in cases(name):
            est = space.estimate_params(cfg)  # type: ignore[attr-defined]
            got = param_count(space.build(cfg))
            assert isinstance(est, int) and est == got, f"{label}: estimate_params {est} != built {got}"


def check_unit_round_trip(name: str) -> None:
    """``from_unit(to_unit(c)) == canonical(c)``; samples are canonical and seeded; keys stable."""
    for shape in SHAPES:
        space = make_space(name, shape)
        cfgs = conformance_configs(space)
        exact = all(p.kind != "float" for p in space.params)
        for i, cfg in enumerate(cfgs):
            label = f"{name} {shape} config {i}"
            canon = space.canonical(cfg)
            assert space.canonical(canon) == canon, f"{label}: canonical is not idempotent"
            u = space.to_unit(cfg)
            assert u.shape == (space.dim,), f"{label}: to_unit shape {u.shape} != ({space.dim},)"
            assert np.all(np.isfinite(u)) and np.all((u >= 0) & (u <= 1)), f"{label}: to_unit outside [0, 1]"
            back = space.from_unit(u)
            assert back.keys() == canon.keys(), f"{label}: round trip keys {sorted(back)} != {sorted(canon)}"
            bad = [k for k in canon if not _same(back[k], canon[k])]
            changes = ", ".join(f"{k}: {canon[k]!r} -> {back[k]!r}" for k in bad)
            assert not bad, f"{label}: round trip changed {changes}"
            key = space.key(cfg)
            assert key == space.key(canon) == space.key(dict(reversed(list(cfg.items())))), f"{label}: key unstable"
            if exact:  # with float parameters the round trip may move a value by an ulp
                assert space.key(back) == key, f"{label}: key changed through the unit cube"
        for i in range(N_RANDOM):
            a = space.sample(np.random.default_rng(i))
            assert a == space.sample(np.random.default_rng(i)), f"{name} {shape}: sample ignores its rng"
            assert space.canonical(a) == a, f"{name} {shape}: sample {i} is not canonical"
        canon_cfgs = {json.dumps(space.canonical(c), sort_keys=True, default=str) for c in cfgs}
        keys = {space.key(c) for c in cfgs}
        assert len(keys) == len(canon_cfgs), f"{name} {shape}: distinct canonical configs share a key"


def check_validate(name: str) -> None:
    """``validate`` returns the canonical form; a missing key or out-of-range value: UsageError."""
    for shape in SHAPES:
        space = make_space(name, shape)
        for i, cfg in enumerate(conformance_configs(space)):
            label = f"{name} {shape} config {i}"
            assert space.validate(cfg) == space.canonical(cfg), f"{label}: validate != canonical"
            first = space.params[0].name
            try:
                space.validate({k: v for k, v in cfg.items() if k != first})
            except UsageError:
                pass
            else:
                raise AssertionError(f"{label}: validate accepted a config without {first}")
            for p in space.params:
                for bad in _out_of_range(p):
                    try:
                        space.validate(dict(cfg, **{p.name: bad}))
                    except UsageError:
                        continue
                    raise AssertionError(f"{label}: validate accepted {p.name}={bad!r}")


def check_onnx_export(name: str) -> None:
    """Every built student exports to ONNX and ONNX Runtime agrees with PyTorch."""
    # imported here so that the other checks run while the profilers package is unavailable
    from ..profilers.base import InputSpec
    from ..profilers.onnx_export import export_onnx

    with single_thread(), tempfile.TemporaryDirectory(prefix="kd-space-onnx-") as tmp:
        for n, (space, cfg, label) in enumerate(cases(name)):
            torch.manual_seed(n)
            model = space.build(cfg).eval()
            try:
                # raises ExportError when ONNX Runtime and PyTorch differ beyond its tolerance
                info = export_onnx(model, InputSpec(space.input_shape, batch=BATCH), Path(tmp) / f"{n}.onnx")
            except BackendUnavailableError as exc:
                _skip(f"ONNX export unavailable: {exc}")
                return
            assert info.max_abs_diff is not None and math.isfinite(info.max_abs_diff), (
                f"{label}: ONNX check gave {info.max_abs_diff}"
            )


def check_build_deterministic(name: str) -> None:
    """Same ``torch.manual_seed``: same parameter names, shapes, dtypes and initial values."""
    with single_thread():
        for space, cfg, label in cases(name):
            torch.manual_seed(1234)
            a = _state(space.build(cfg))
            torch.manual_seed(1234)
            b = _state(space.build(dict(cfg)))
            _assert_same_state(a, b, label)


def check_build_ignores_foreign_keys(name: str) -> None:
    """Keys outside the space (a composed config's ``kd_*``) do not change the built student."""
    with single_thread():
        for space, cfg, label in cases(name):
            extra = {k: v for k, v in FOREIGN_KEYS.items() if k not in space.param_names}
            wider = {**cfg, **extra}
            torch.manual_seed(99)
            a = _state(space.build(cfg))
            torch.manual_seed(99)
            b = _state(space.build(wider))
            _assert_same_state(a, b, f"{label} with {sorted(extra)}")


CHECKS: list[Callable[[str], None]] = [
    check_construction,
    check_forward_shape,
    check_estimate_params,
    check_unit_round_trip,
    check_validate,
    check_onnx_export,
    check_build_deterministic,
    check_build_ignores_foreign_keys,
]
