"""The whole compile pipeline on real (digits) data with a tiny budget, and resume after a kill."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import kd_compile
from kd_compile.api import Reporter
from kd_compile.errors import ResumeError, UsageError
from kd_compile.report import validate_report
from kd_compile.teacher import load_teacher

SMALL = dict(
    target="2080ti",
    max_params="12K",
    budget=3,
    proxy_epochs=0.5,
    proxy_fraction=0.5,
    final_epochs=1,
    strategy="random",
    seed=0,
    max_latency="none",  # the digits teacher is a 3-layer CNN: these tests are not about speed
)


def test_compile_end_to_end(digits_teacher, tmp_path):
    out = tmp_path / "run"
    res = kd_compile.compile(str(digits_teacher), out=out, **SMALL)
    for name in ("student.pt", "student.onnx", "report.json", "report.md", "journal.jsonl"):
        assert (out / name).is_file(), name
    r = json.loads((out / "report.json").read_text())
    validate_report(r)
    s = r["student"]
    assert s["params"] <= 12_000
    from kd_compile.students.common import deployed

    # the report counts what ships: the student with re-parameterisable blocks folded
    assert sum(p.numel() for p in deployed(res.student).parameters()) == s["params"]
    assert 0.0 <= s["accuracy"] <= 1.0 and s["accuracy_without_kd"] is not None
    assert r["teacher"]["latency"]["method"] == "predicted" and r["target"]["name"] == "2080ti"
    assert r["search"]["statuses"]["ok"] >= 1
    # the params limit is analytic: the strategy never proposes a student that breaks it
    assert r["search"]["statuses"]["infeasible"] == 0
    # so the search trains as many candidates as its budget
    assert r["search"]["statuses"]["ok"] + r["search"]["statuses"]["failed"] == SMALL["budget"]
    # random's result is its best trial, and the report says which
    best = min((c for c in r["search"]["candidates"] if c["status"] == "ok"), key=lambda c: c["score"])
    assert r["search"]["chosen"] == {"by": "the best trial at the highest fidelity", "number": best["number"],
                                     "trained_at_fidelity": 1.0}  # fmt: skip
    assert r["search"]["best_number"] == best["number"] and r["student"]["config"] == best["config"]
    # every trained candidate respected the constraint; infeasible ones were never trained
    for c in r["search"]["candidates"]:
        if c["status"] == "ok":
            assert c["metrics"]["params"] <= 12_000
        if c["status"] == "infeasible":
            assert "accuracy" not in c["metrics"] and "params" in c["error"]
    # student.pt reloads without pickled code and computes the same function
    payload = torch.load(out / "student.pt", weights_only=True)
    assert payload["format"] == "kd-compile-model"
    loaded = load_teacher(out / "student.pt")
    x = torch.randn(4, *loaded.input_shape)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), res.student(x))
    md = (out / "report.md").read_text()
    assert "without KD" in md and "predicted" in md
    # the report leads with the speed-up on the target and on this CPU, never hiding "slower"
    sp = r["speedup"]
    assert sp["method"] == "predicted" and sp["target"] == pytest.approx(
        r["teacher"]["latency"]["latency_ms"] / s["latency"]["latency_ms"]
    )
    lead = md.splitlines()[2]
    assert lead.startswith("**On NVIDIA GeForce RTX 2080 Ti: the student is ")
    assert ("faster" in lead) == (sp["target"] >= 1) and ("slower" in lead) == (sp["target"] < 1)
    assert sp["local_cpu"]["speedup"] > 0 and "this machine's CPU" in md


def test_lf_gpr_ships_its_gp_argmax_and_the_report_says_it_was_not_trained_in_full(digits_teacher, tmp_path):
    """lf-gpr (Trofimov et al.'s Algorithm 1) spends the budget at low fidelity and ships the GP's
    argmax: the report must not present it as a candidate measured at full fidelity."""
    out = tmp_path / "run"
    res = kd_compile.compile(str(digits_teacher), out=out, **{**SMALL, "strategy": "lf-gpr", "budget": 2})
    r = json.loads((out / "report.json").read_text())
    validate_report(r)
    fids = {c["fidelity"] for c in r["search"]["candidates"]}
    assert max(fids) < 1.0  # nothing trained at full fidelity during the search
    chosen = r["search"]["chosen"]
    assert chosen["by"].startswith("lf-gpr: the argmax of a GP on")
    assert chosen["trained_at_fidelity"] is None or chosen["trained_at_fidelity"] < 1.0
    assert r["student"]["config"] == res.config
    md = (out / "report.md").read_text()
    assert "Student chosen by lf-gpr: the argmax of a GP" in md
    assert ("never trained during the search" in md) == (chosen["number"] is None)


class _KillAfter(Reporter):
    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0

    def trial(self, trial):  # noqa: ANN001
        self.seen += 1
        if self.seen == self.n:
            raise KeyboardInterrupt


def test_resume_after_kill_matches_uninterrupted(digits_teacher, tmp_path):
    opts = {**SMALL, "strategy": "turbo", "budget": 4, "compare_ce": False}
    full = kd_compile.compile(str(digits_teacher), out=tmp_path / "full", **opts)
    with pytest.raises(KeyboardInterrupt):
        kd_compile.compile(str(digits_teacher), out=tmp_path / "cut", reporter=_KillAfter(2), **opts)
    lines = (tmp_path / "cut" / "journal.jsonl").read_text().splitlines()
    assert sum('"type": "trial"' in line for line in lines) == 2
    resumed = kd_compile.compile(str(digits_teacher), out=tmp_path / "cut", resume=True, **opts)
    assert resumed.report["search"]["resumed"] == 2
    assert resumed.config == full.config
    assert [t.config for t in resumed.trials] == [t.config for t in full.trials]
    assert resumed.report["student"]["accuracy"] == full.report["student"]["accuracy"]


def test_resume_with_other_settings_is_refused(digits_teacher, tmp_path):
    from kd_compile.errors import ResumeError

    with pytest.raises(KeyboardInterrupt):
        kd_compile.compile(str(digits_teacher), out=tmp_path / "r", reporter=_KillAfter(1), **SMALL)
    with pytest.raises(ResumeError, match="different settings"):
        kd_compile.compile(str(digits_teacher), out=tmp_path / "r", resume=True, **{**SMALL, "seed": 1})


def _teacher_without_hint(digits_teacher, tmp_path, batchnorm: bool = True):
    """The digits teacher re-saved without its data hint, or a BN-free pickled CNN."""
    import torch.nn as nn

    from kd_compile.teacher import save_checkpoint

    payload = torch.load(digits_teacher, weights_only=True)
    p = tmp_path / "nohint.pt"
    if batchnorm:
        meta = {k: v for k, v in payload["meta"].items() if k != "data"}
        save_checkpoint(
            p,
            space=payload["space"],
            space_kwargs=payload["space_kwargs"],
            config=payload["config"],
            state_dict=payload["state_dict"],
            meta=meta,
        )
    else:
        net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
        ).eval()
        torch.save(net, p)
    return p


def test_data_free_run_is_recorded(digits_teacher, tmp_path):
    p = _teacher_without_hint(digits_teacher, tmp_path)
    res = kd_compile.compile(
        str(p),
        out=tmp_path / "df",
        synthetic_images=96,
        synthetic_steps=4,
        **{**SMALL, "budget": 2, "compare_ce": False},
    )
    assert res.report["run"]["data_free"] is True
    assert res.report["run"]["data"]["name"] == "data-free"
    assert "Data-free run" in (tmp_path / "df" / "report.md").read_text()


def test_data_free_without_batchnorm_is_a_clear_error(digits_teacher, tmp_path):
    from kd_compile.errors import DataError

    p = _teacher_without_hint(digits_teacher, tmp_path, batchnorm=False)
    with pytest.raises(DataError, match="BatchNorm"):
        kd_compile.compile(str(p), out=tmp_path / "df2", trust_checkpoint=True, input_shape=(1, 12, 12), **SMALL)


def test_distiller_auto_is_searched_and_reported(digits_teacher, tmp_path):
    res = kd_compile.compile(
        str(digits_teacher),
        out=tmp_path / "auto",
        distiller="auto",
        distiller_iterations=2,
        **{**SMALL, "budget": 2, "compare_ce": False},
    )
    d = res.report["distiller"]
    assert d["iterations"] == 2 and d["best_describe"]
    assert "Auto-KD" in (tmp_path / "auto" / "report.md").read_text()


def test_augmented_views_are_cached_once_and_replayed(digits_teacher, tmp_path, _isolated_cache):
    """--augment N: the training set gains N seeded views, the teacher's outputs on them are stored
    in the cache folder once, and a second run replays the same views (same cache entry, same
    student)."""
    opts = {**SMALL, "budget": 2, "compare_ce": False, "augment": 1}
    teacher_dir = _isolated_cache / "teacher"
    a = kd_compile.compile(str(digits_teacher), out=tmp_path / "a", **opts)
    entries = sorted(p.name for p in teacher_dir.iterdir())
    meta = [json.loads((teacher_dir / e / "meta.json").read_text()) for e in entries]
    assert any(m.get("augment_seed") == 0 for m in meta)
    d = a.report["run"]["data"]
    plain = kd_compile.compile(str(digits_teacher), out=tmp_path / "p", **{**opts, "augment": 0})
    assert d["train"] == 2 * plain.report["run"]["data"]["train"]
    assert "+aug1@0" in d["name"] and "+aug" not in plain.report["run"]["data"]["name"]
    entries_before = set(p.name for p in teacher_dir.iterdir())
    b = kd_compile.compile(str(digits_teacher), out=tmp_path / "b", **opts)
    assert set(p.name for p in teacher_dir.iterdir()) == entries_before  # reused, nothing new
    assert b.report["student"]["accuracy"] == a.report["student"]["accuracy"]
    with pytest.raises(UsageError, match="augment"):
        kd_compile.compile(str(digits_teacher), out=tmp_path / "x", **{**opts, "augment": -1})


def test_a_run_whose_every_candidate_is_slower_ends_with_a_clear_error(digits_teacher, tmp_path):
    """By default a student may not be slower than the teacher on the target (--max-latency 1x);
    when no candidate is fast enough the run says so (exit 6) instead of shipping a slower one."""
    from kd_compile.errors import ConstraintError

    opts = {**SMALL, "max_latency": "0.01x", "budget": 1}
    with pytest.raises(ConstraintError, match=r"every candidate was slower than --max-latency 0.01x on 2080ti") as e:
        kd_compile.compile(str(digits_teacher), out=tmp_path / "slow", **opts)
    assert e.value.exit_code == 6 and "the teacher's" in str(e.value)
    assert not (tmp_path / "slow" / "student.pt").exists()


def test_a_teacher_at_chance_stops_before_the_search(digits_teacher, tmp_path):
    """A teacher scoring near chance is not being run the way it was trained: stop (exit 4)
    with what it was fed, instead of distilling noise for the whole budget."""
    import numpy as np

    from kd_compile.data import load_data
    from kd_compile.errors import DataError

    d = load_data("digits", image_size=12)
    rng = np.random.default_rng(0)
    p = tmp_path / "shuffled.npz"
    x = np.concatenate([d.x_train.numpy(), d.x_val.numpy()])
    y = rng.permutation(np.concatenate([d.y_train.numpy(), d.y_val.numpy()]))  # labels unrelated to images
    np.savez(p, x=x, y=y)
    with pytest.raises(DataError, match="near chance") as e:
        kd_compile.compile(str(digits_teacher), out=tmp_path / "chance", data=str(p), **SMALL)
    assert e.value.exit_code == 4 and not (tmp_path / "chance" / "journal.jsonl").exists()


def test_a_repvgg_teacher_is_costed_folded_as_it_deploys(tmp_path):
    """A student is costed as it ships (RepVGG folded); the teacher it must beat is too, else the
    student would be held to a slower teacher than the one it replaces."""
    from kd_compile.data import load_data
    from kd_compile.distill import TrainConfig, train_student
    from kd_compile.export import space_kwargs
    from kd_compile.profilers import InputSpec
    from kd_compile.profilers.counting import count
    from kd_compile.students import create_space
    from kd_compile.students.common import deployed
    from kd_compile.teacher import save_checkpoint

    data = load_data("digits", image_size=12)
    space = create_space("trade", input_shape=data.input_shape, num_classes=data.num_classes)
    cfg = {**space.sample(np.random.default_rng(0)), "s1_depth": 1, "s2_depth": 1, "s3_depth": 1, "tf_depth": 0}
    cfg = space.canonical({**cfg, **{f"s{i}_type": "repvgg" for i in range(1, space.max_stages + 1)}})
    torch.manual_seed(0)
    model = space.build(cfg)
    res = train_student(model, data, TrainConfig(epochs=2, use_kd=False, seed=0))
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, space="trade", space_kwargs=space_kwargs(space), config=cfg, state_dict=model.state_dict(),
                    meta={"data": data.hint(), "normalize": {"mean": list(data.mean), "std": list(data.std)},
                          "accuracy": res.val_acc})  # fmt: skip
    out = tmp_path / "run"
    kd_compile.compile(str(path), out=out, **{**SMALL, "budget": 1, "max_params": "40K"})
    r = json.loads((out / "report.json").read_text())
    folded = count(deployed(model), InputSpec(tuple(space.input_shape))).params
    assert r["teacher"]["params"] == folded == space.deployed_params(cfg) < space.estimate_params(cfg)
    assert any("folded" in n for n in r["teacher"]["notes"]) and "folded" in (out / "report.md").read_text()


def test_a_predicted_cpu_target_reports_the_band_of_its_own_table(digits_teacher, tmp_path):
    """``--target cpu --latency predict``: the speed-up on the target is predicted, and its band is
    the one measured on kd-compile's own CPU table (``benchmarks/cpu_table.py``), not "unvalidated"."""
    from kd_compile.profilers.error_bands import error_band
    from kd_compile.targets import get_target

    out = tmp_path / "run"
    kd_compile.compile(str(digits_teacher), out=out, latency="predict", **{**SMALL, "target": "cpu", "budget": 1})
    r = json.loads((out / "report.json").read_text())
    band = r["speedup"]["error_band"]
    assert r["speedup"]["method"] == "predicted"
    assert band["median_ape"] == error_band(get_target("cpu"), "onnxruntime", "fp32", 1)["median_ape"] is not None
    assert band["files"] == ["cpu-onnxruntime-fp32-b1-devvm.csv"]
    md = (out / "report.md").read_text()
    assert f"±{100 * band['median_ape']:.0f}% median" in md and "unvalidated" not in md


def test_runtime_and_precision_cost_teacher_and_student_in_the_runtime_asked(digits_teacher, tmp_path):
    """``--runtime torch`` on a TensorRT target: teacher and student are costed in eager PyTorch (the
    predictor's ``torch`` rules, its band's regime), the report says which runtime; a pair the target
    cannot run is refused before anything is written; a resume must ask for the same runtime."""
    from kd_compile.evaluate import costs
    from kd_compile.latency import plan_latency
    from kd_compile.profilers import InputSpec
    from kd_compile.targets import get_target

    out = tmp_path / "run"
    kd_compile.compile(str(digits_teacher), out=out, runtime="torch", **{**SMALL, "budget": 1})
    r = json.loads((out / "report.json").read_text())
    assert r["target"]["runtime"] == "torch" and r["target"]["precision"] == "fp16"
    assert r["teacher"]["latency"]["runtime"] == r["student"]["latency"]["runtime"] == "torch"
    assert r["speedup"]["error_band"]["regime"] == "torch/fp16/batch1"
    tch = load_teacher(str(digits_teacher))
    t2080, spec = get_target("2080ti"), InputSpec(tuple(tch.input_shape))
    reported = r["teacher"]["latency"]["latency_ms"]
    for runtime in ("torch", "tensorrt"):
        t_lat = costs(tch.module, spec, t2080, plan=plan_latency(t2080, "predict", runtime))[1]
        assert (t_lat.latency_ms == pytest.approx(reported, rel=1e-6)) == (runtime == "torch")
    with pytest.raises(ResumeError, match="different settings: runtime 'torch' -> not given"):  # resumed without it
        kd_compile.compile(str(digits_teacher), out=out, resume=True, **{**SMALL, "budget": 1})
    with pytest.raises(UsageError, match="runs no int8 network on a GPU"):
        kd_compile.compile(str(digits_teacher), out=tmp_path / "int8", runtime="torch", precision="int8", **SMALL)
    assert not (tmp_path / "int8").exists()
    # int8 in TensorRT is costed, and the report says what it assumes that kd-compile does not ship
    from kd_compile.report.schema import INT8_NOTE

    kd_compile.compile(str(digits_teacher), out=tmp_path / "int8", precision="int8", **{**SMALL, "budget": 1})
    r8 = json.loads((tmp_path / "int8" / "report.json").read_text())
    assert r8["target"]["precision"] == r8["student"]["latency"]["precision"] == "int8"
    assert INT8_NOTE in r8["warnings"] and INT8_NOTE not in r["warnings"]
    assert "quantize it with calibration images" in (tmp_path / "int8" / "report.md").read_text()


def test_the_final_student_that_ships_is_the_better_one_on_validation():
    """The KD student and its CE-only twin are the same architecture from the same seed: the one
    with the higher validation accuracy ships (the KD student on a tie); the test split plays no part."""
    from kd_compile.distill.train_config import TrainResult
    from kd_compile.final import FinalResult

    def res(val: float) -> TrainResult:
        return TrainResult(val_acc=val, train_acc=0.0, epochs_run=1.0, steps=1, seconds=0.0)

    kd_net, ce_net = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    better_ce = FinalResult(kd_net, res(0.80), res(0.81), 0.0, test_acc=0.9, test_acc_ce=0.7, twin=ce_net)
    assert better_ce.shipped == "ce" and better_ce.shipped_student is ce_net
    for kd_val, ce_val in ((0.81, 0.80), (0.80, 0.80)):  # better, or tied: KD ships
        r = FinalResult(kd_net, res(kd_val), res(ce_val), 0.0, test_acc=0.5, test_acc_ce=0.9, twin=ce_net)
        assert r.shipped == "kd" and r.shipped_student is kd_net
    assert FinalResult(kd_net, res(0.1), None, 0.0).shipped == "kd"  # no twin trained (--no-compare-ce)


def test_a_run_whose_ce_twin_wins_on_validation_ships_it_and_says_so(tmp_path):
    """A teacher that mislabels 7 of its 10 classes (its classifier rows rotated): on seed 0 the
    student trained without it scores higher on validation (95.5% against 93.3% with torch 2.14) than
    the one distilled from it, so the CE-only twin ships. Whatever ships, the report, student.pt and
    the rendered reports agree; the test is skipped, saying so, if no seed of three ships the twin."""
    from kd_compile.data import load_data
    from kd_compile.distill import TrainConfig, train_student
    from kd_compile.export import space_kwargs
    from kd_compile.final import held_out_accuracy
    from kd_compile.students import create_space
    from kd_compile.teacher import save_checkpoint

    data = load_data("digits", image_size=12)
    space = create_space("cnn", input_shape=data.input_shape, num_classes=data.num_classes, max_depth=3)
    config = space.validate({**space.default(), "depth": 3, "w1": 32, "w2": 64, "w3": 64})
    torch.manual_seed(0)
    model = space.build(config)
    train_student(model, data, TrainConfig(epochs=3, use_kd=False, seed=0))
    sd = model.state_dict()
    rotate = torch.tensor([1, 2, 3, 4, 5, 6, 0, 7, 8, 9])
    sd["fc.weight"], sd["fc.bias"] = sd["fc.weight"][rotate], sd["fc.bias"][rotate]
    path = tmp_path / "mislabelling.pt"
    save_checkpoint(path, space="cnn", space_kwargs=space_kwargs(space), config=config, state_dict=sd,
                    meta={"data": data.hint(), "normalize": {"mean": list(data.mean), "std": list(data.std)}})
    for seed in range(3):  # seed 0's twin wins with today's torch; others are tried if the arithmetic moved
        out = tmp_path / f"run{seed}"
        res = kd_compile.compile(str(path), out=out, **{**SMALL, "final_epochs": 6, "seed": seed})
        r = json.loads((out / "report.json").read_text())
        if r["student"]["trained_with"] == "ce":
            break
    validate_report(r)
    s = r["student"]
    with_kd, without = s["val_accuracy_with_kd"], s["val_accuracy_without_kd"]
    assert s["trained_with"] == ("ce" if without > with_kd else "kd")
    shipped_acc = s["accuracy_without_kd"] if s["trained_with"] == "ce" else s["accuracy_with_kd"]
    assert s["accuracy"] == shipped_acc and s["val_accuracy"] == max(with_kd, without)
    assert s["kd_gain"] == pytest.approx(s["accuracy_with_kd"] - s["accuracy_without_kd"])
    # the student written is the one the report scores
    written = load_teacher(str(out / "student.pt")).module
    assert held_out_accuracy(written, data) == pytest.approx(s["accuracy"], abs=1e-6)
    assert held_out_accuracy(res.student, data) == pytest.approx(s["accuracy"], abs=1e-6)
    md = (out / "report.md").read_text()
    if s["trained_with"] == "ce":
        assert "accuracy with KD (same architecture; not shipped: lower on validation)" in md
        assert "accuracy with KD (same architecture; not shipped" in (out / "report.html").read_text()
    else:
        assert "accuracy without KD (same architecture, CE only)" in md
    if s["trained_with"] != "ce":
        pytest.skip("the KD student won on validation in all three seeds: the CE branch was not exercised")
