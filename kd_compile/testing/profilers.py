"""Conformance suite every registered profiler must pass (like optuna's ``testing`` package).

Usage in a test module::

    from kd_compile.testing.profilers import available_profilers, profiler_contract

    @pytest.mark.parametrize("name", available_profilers())
    def test_contract(name):
        profiler_contract(lambda: make_profiler(name), tiny_cnn(), InputSpec((3, 16, 16), batch=2))

``available_profilers``/``make_profiler`` are ``list_profilers``/``create_profiler`` of
``kd_compile.profilers``, which registers every built-in profiler on import.

``profiler_contract`` runs every check in ``CHECKS`` and returns the Measurement. A profiler
whose backend is missing here raises ``BackendUnavailableError``; under pytest the contract
turns that into a skip carrying the error's line, so the reason shows in the report.

The checks (each a plain function raising ``AssertionError``, usable on its own):

* ``check_context_manager``: ``with factory() as p`` yields the profiler; ``close`` is
  idempotent.
* ``check_rejects_bad_input``: ``profile`` of a non-Module, or of a non-InputSpec, raises
  ``UsageError`` before any work.
* ``check_measurement``: method in the allowed set; latency finite and positive for
  ``measured``/``predicted``; ``p50 <= p90 <= p99``; ``latency_ms == p50_ms`` when both are
  given; ``batch`` equals the spec's; a measured result ran at least one iteration and names
  a real device; ``to_dict``/``from_dict`` round-trips.
* ``check_model_untouched``: profiling leaves the model's weights, buffers, training flags and
  device exactly as they were.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ..errors import BackendUnavailableError, UsageError
from ..profilers import InputSpec, Measurement, Profiler, create_profiler, list_profilers

ProfilerFactory = Callable[[], Profiler]

ALLOWED_METHODS = ("measured", "predicted", "counted")


def available_profilers() -> list[str]:
    """Names of every registered profiler (built-ins and plugins): ``list_profilers()``."""
    return list_profilers()


def make_profiler(name: str, **kwargs: Any) -> Profiler:
    """A profiler by name: ``create_profiler(name, **kwargs)``."""
    return create_profiler(name, **kwargs)


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    """A small deterministic CNN (conv-bn-relu, depthwise conv, pooling, linear) in train mode.

    Train mode on purpose: a profiler must put its own copy in eval mode without changing the
    caller's flag.
    """
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        m[1].running_mean.copy_(torch.randn(8, generator=g) * 0.1)
        m[1].running_var.copy_(torch.rand(8, generator=g) + 0.5)
    return m.train()


def check_context_manager(factory: ProfilerFactory) -> None:
    p = factory()
    with p as entered:
        assert entered is p, f"{type(p).__name__}.__enter__ must return the profiler itself"
    p.close()  # a second close after __exit__ must be harmless


def check_rejects_bad_input(factory: ProfilerFactory, spec: InputSpec) -> None:
    with factory() as p:
        for bad_model in ("resnet18", None, torch.zeros(1)):
            try:
                p.profile(bad_model, spec)  # type: ignore[arg-type]
            except UsageError:
                pass
            else:
                raise AssertionError(f"{p.name}: profile({bad_model!r}) must raise UsageError")
        try:
            p.profile(nn.Identity(), (3, 16, 16))  # type: ignore[arg-type]
        except UsageError:
            pass
        else:
            raise AssertionError(f"{p.name}: profile(model, tuple) must raise UsageError")


def check_measurement(m: Measurement, spec: InputSpec) -> None:
    assert isinstance(m, Measurement), f"profile must return a Measurement, got {type(m).__name__}"
    assert m.method in ALLOWED_METHODS, f"method {m.method!r} not in {ALLOWED_METHODS}"
    assert m.batch == spec.batch, f"batch {m.batch} != spec batch {spec.batch}"
    assert isinstance(m.device, str) and m.device, "device must be a non-empty string"
    assert isinstance(m.runtime, str) and m.runtime, "runtime must be a non-empty string"
    if m.method in ("measured", "predicted"):
        assert m.latency_ms is not None, f"{m.method} measurement without latency_ms"
        assert math.isfinite(m.latency_ms) and m.latency_ms > 0, (
            f"latency_ms {m.latency_ms} not > 0"
        )
    ps = [m.p50_ms, m.p90_ms, m.p99_ms]
    given = [p for p in ps if p is not None]
    assert all(math.isfinite(p) and p > 0 for p in given), f"percentiles must be > 0: {ps}"
    if len(given) == 3:
        assert ps[0] <= ps[1] <= ps[2], f"need p50 <= p90 <= p99, got {ps}"  # type: ignore[operator]
    if m.latency_ms is not None and m.p50_ms is not None and m.method == "measured":
        assert m.latency_ms == m.p50_ms, "a measured latency_ms is the median (p50_ms)"
    if m.method == "measured":
        assert m.iterations >= 1, "a measured result must have run at least one iteration"
        assert m.cv is None or (math.isfinite(m.cv) and m.cv >= 0), f"cv {m.cv} must be >= 0"
        assert ":" in m.device, (
            f"measured device must name the hardware ('cpu:<name>'), got {m.device!r}"
        )
    if m.threads is not None:
        assert m.threads >= 1, f"threads {m.threads} must be >= 1"
    back = Measurement.from_dict(m.to_dict())
    assert back.to_dict() == m.to_dict(), "to_dict/from_dict must round-trip"


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, bool], set[str]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modes = {name: mod.training for name, mod in model.named_modules()}
    devices = {str(t.device) for t in list(model.parameters()) + list(model.buffers())}
    return state, modes, devices


def check_model_untouched(model: nn.Module, before: tuple[Any, Any, Any]) -> None:
    state, modes, devices = before
    now_state, now_modes, now_devices = _snapshot(model)
    assert now_state.keys() == state.keys(), "profiling changed the model's state_dict keys"
    for k, v in state.items():
        w = now_state[k]
        assert w.dtype == v.dtype and w.shape == v.shape, f"profiling changed {k}'s dtype or shape"
        assert torch.equal(w, v), f"profiling changed the values of {k}"
    assert now_modes == modes, "profiling changed training/eval flags of the model"
    assert now_devices == devices, f"profiling moved the model from {devices} to {now_devices}"


CHECKS = (
    "check_context_manager",
    "check_rejects_bad_input",
    "check_measurement",
    "check_model_untouched",
)


def profiler_contract(factory: ProfilerFactory, model: nn.Module, spec: InputSpec) -> Measurement:
    """Run every contract check on the profiler ``factory()`` builds; return its Measurement.

    Args:
        factory: builds a fresh profiler (called several times).
        model: the model to profile (left untouched, which is checked).
        spec: the input spec.

    Returns:
        The Measurement of ``profile(model, spec)``.

    Raises:
        AssertionError: a check failed (the message names it).
        BackendUnavailableError: outside pytest, when the backend is missing here; under
            pytest this becomes ``pytest.skip`` with the error's line as the reason.
    """
    try:
        check_context_manager(factory)
        check_rejects_bad_input(factory, spec)
        before = _snapshot(model)
        with factory() as p:
            m = p.profile(model, spec)
        check_measurement(m, spec)
        check_model_untouched(model, before)
        return m
    except BackendUnavailableError as exc:
        try:
            import pytest
        except ImportError:  # outside a test run the caller decides what "unavailable" means
            raise exc from None
        pytest.skip(f"backend unavailable: {exc.line()}")
        raise  # unreachable: pytest.skip raises


__all__ = [
    "ALLOWED_METHODS",
    "CHECKS",
    "available_profilers",
    "check_context_manager",
    "check_measurement",
    "check_model_untouched",
    "check_rejects_bad_input",
    "make_profiler",
    "profiler_contract",
    "tiny_cnn",
]
