"""How the compiler builds its strategy: TuRBO's batch mode follows the executor's workers, and
the proposal screen is there exactly when a constraint is known without training."""

from __future__ import annotations

from types import SimpleNamespace

from kd_compile.api import _strategy
from kd_compile.config import CompileConfig, Constraints
from kd_compile.evaluate import proposal_screen
from kd_compile.testing.strategies import ToySpace


def _run(method: str, **limits):
    return SimpleNamespace(
        constraints=Constraints(**limits),
        latency=SimpleNamespace(method=method),
        space="trade",
        space_kwargs={"input_shape": (1, 16, 16), "num_classes": 10},
    )


def test_turbo_proposes_a_batch_per_round_of_parallel_workers() -> None:
    cfg = CompileConfig.from_options("teacher.pt", strategy="turbo", budget=30)
    family = SimpleNamespace()  # no analytic params count: no feasibility predicate
    one = _strategy(cfg, ToySpace(), family, _run("measure"), workers=1)
    two = _strategy(cfg, ToySpace(), family, _run("measure"), workers=2)
    assert one.batch_size == 1 and two.batch_size == 2
    assert len(two.ask(2)) == 2
    # a strategy without the option is built as before
    rnd = _strategy(CompileConfig.from_options("teacher.pt", strategy="random"), ToySpace(), family, _run("measure"), 2)
    assert not hasattr(rnd, "batch_size") and rnd.screen is None


def test_a_screen_only_for_constraints_known_without_training() -> None:
    # the default "faster than the teacher" limit is known when latency is predicted...
    assert Constraints().max_latency is not None
    assert proposal_screen(_run("predict")) is not None
    # ... but must be measured on this machine: nothing to screen then, unless FLOPs are limited
    assert proposal_screen(_run("measure")) is None
    assert proposal_screen(_run("measure", max_flops=10_000_000)) is not None
    assert proposal_screen(_run("predict", max_latency=None)) is None


def test_the_screen_gives_the_evaluators_verdict_and_leaves_the_model_to_train_unfolded() -> None:
    """The screen folds the model it builds in place (no copy); the evaluator's check folds a copy,
    so the student it then trains keeps its RepVGG branches. Both reach the same verdict."""
    import numpy as np
    import torch
    from timm.models.byobnet import RepVggBlock

    from kd_compile.config import LatencyLimit
    from kd_compile.evaluate import checked_costs, student_family
    from kd_compile.latency import plan_latency
    from kd_compile.targets import get_target

    target = get_target("2080ti")
    run = _run("predict", max_latency=None)
    run.target, run.latency, run.reference = target, plan_latency(target, "predict"), SimpleNamespace(latency_ms=None)
    family = student_family(run)
    rng = np.random.default_rng(0)
    configs = [family.canonical({**family.sample(rng), "s1_type": "repvgg"}) for _ in range(10)]
    lat = [float(checked_costs(run, family.build(c))[1].latency_ms) for c in configs]
    run.constraints = Constraints(max_latency=LatencyLimit(float(np.median(lat))))
    screen = proposal_screen(run)
    verdicts = [screen(c) for c in configs]
    assert 0 < sum(verdicts) < len(configs)
    for c, seen in zip(configs, verdicts, strict=True):
        torch.manual_seed(0)
        model = family.build(c)
        assert seen == (not checked_costs(run, model)[2])
        assert any(isinstance(m, RepVggBlock) and m.reparam_conv is None for m in model.modules())
