"""Streamed ImageFolder data (``data.stream``), the top-k teacher cache and the streamed trainer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from kd_compile.data import render_glyphs
from kd_compile.data.stream import StreamAugment, open_stream, split_size, view_seed, wants_stream
from kd_compile.distill.distiller import DistillerSpec
from kd_compile.distill.features import FeatureSpec
from kd_compile.distill.topk_cache import OnlineTeacher, TopKCache, dense_from_topk, stream_knowledge, topk_of
from kd_compile.distill.trainer import TrainConfig, train_student
from kd_compile.errors import DataError

CLASSES = 4
PER_CLASS = 100


def make_folder(root: Path, per_class: int, *, splits: tuple[str, ...] = (), size: int = 24, seed: int = 0) -> Path:
    """A PNG ImageFolder of glyphs (digits 0..CLASSES-1): one tree, or one per split name."""
    parts = splits or ("",)
    for k, part in enumerate(parts):
        x, y = render_glyphs(per_class * CLASSES, size=size, seed=seed + k, classes=CLASSES)
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            d = root / part / f"c{int(label)}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0]).save(d / f"{i:05d}.png")
    return root


def tiny_cnn(channels: int = 1, width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, width * 2, 3, padding=1), nn.BatchNorm2d(width * 2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width * 2, CLASSES),
    )  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("stream") / "glyphs", PER_CLASS)


def test_split_is_stratified_disjoint_and_complete(folder: Path) -> None:
    data = open_stream(folder, image_size=24, channels=1, seed=3, workers=0)
    parts = {p: set(data.files[p].tolist()) for p in data.files}
    assert set(data.files) >= {"train", "val"}
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not parts[a] & parts[b], f"{a} and {b} overlap"
    assert sum(len(v) for v in parts.values()) == PER_CLASS * CLASSES
    for p in ("train", "val"):
        assert set(data.labels[p].tolist()) == set(range(CLASSES))  # every class in every split
    assert split_size(data, "train") == data.size("train") > split_size(data, "val") > 0
    again = open_stream(folder, image_size=24, channels=1, seed=3, workers=0)
    assert all((again.files[p] == data.files[p]).all() for p in data.files)  # seeded: the same split


def test_split_folders_train_val_test(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "split", 6, splits=("train", "val", "test"))
    data = open_stream(root, image_size=24, channels=1, workers=0)
    assert (data.size("train"), data.size("val"), data.size("test")) == (6 * CLASSES,) * 3
    assert data.class_names == [f"c{k}" for k in range(CLASSES)]


def test_augmentation_is_replayable_per_sample_and_epoch(folder: Path) -> None:
    data = open_stream(folder, image_size=24, channels=1, workers=0)
    ds = data.dataset("train", train=True)
    s0, s1 = view_seed(data.seed, 5, 0), view_seed(data.seed, 5, 1)
    a, b, c = ds[(5, s0)][0], ds[(5, s0)][0], ds[(5, s1)][0]
    assert a.dtype == torch.uint8 and tuple(a.shape) == (1, 24, 24)
    assert torch.equal(a, b)  # same (sample, epoch): same crop
    assert not torch.equal(a, c)  # another epoch: another crop
    # the same views through worker processes, in another order
    batches = [[(5, s1), (5, s0)]]
    xb, _, ib, sb = next(iter(data.loader("train", batch_size=2, batches=batches, train=True, workers=1)))
    assert torch.equal(xb[0], c) and torch.equal(xb[1], a) and ib.tolist() == [5, 5] and sb.tolist() == [s1, s0]
    plain = open_stream(folder, image_size=24, channels=1, workers=0, augment=StreamAugment.parse("none"))
    assert torch.equal(plain.dataset("train", train=True)[(5, s0)][0], plain.dataset("train")[(5, 0)][0])


def test_unreadable_images_are_skipped_and_counted(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "bad", 60)
    (root / "c0" / "broken.png").write_bytes(b"not a png")
    data = open_stream(root, image_size=24, channels=1, workers=0)
    assert data.meta["skipped_images"] == 1 and data.skipped[0].endswith("broken.png")
    assert data.size("train") + data.size("val") + data.size("test") == 60 * CLASSES
    for i in range(5):
        (root / "c1" / f"junk{i}.jpg").write_bytes(b"\x00" * 10)
    with pytest.raises(DataError, match="6 of 246 images are unreadable"):
        open_stream(root, image_size=24, channels=1, workers=0)


def test_data_mode_choice(folder: Path, tmp_path: Path) -> None:
    assert wants_stream(str(folder), "stream", (1, 24, 24))
    assert not wants_stream(str(folder), "memory", (1, 24, 24))
    assert not wants_stream(str(folder), "auto", (1, 24, 24))  # 240 small images fit in memory
    assert wants_stream(str(folder), "auto", (3, 2048, 2048))  # 240 x 12 MiB do not
    with pytest.raises(DataError, match="ImageFolder"):
        wants_stream("glyphs", "stream", (1, 24, 24))


def test_topk_soft_targets_round_trip() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 12) * 3
    top, cls_ix, rest = topk_of(logits, 4)
    dense = dense_from_topk(cls_ix, top.half().float(), rest, 12)
    p, q = torch.softmax(logits, 1), torch.softmax(dense, 1)
    assert torch.allclose(q.sum(1), torch.ones(6), atol=1e-5)
    assert torch.allclose(q.gather(1, cls_ix), p.gather(1, cls_ix), atol=3e-3)  # fp16 logits
    others = torch.ones_like(p, dtype=torch.bool).scatter_(1, cls_ix, False)
    spread = q[others].view(6, 8)
    assert torch.allclose(spread, spread[:, :1].expand_as(spread))  # the rest mass shared evenly
    assert torch.allclose(spread.sum(1), rest.float(), atol=3e-3)
    full = dense_from_topk(*reversed(topk_of(logits, 12)[:2]), torch.zeros(6), 12)  # k = K: exact
    assert torch.allclose(torch.softmax(full, 1), p, atol=1e-5)


@pytest.fixture(scope="module")
def teacher(folder: Path) -> nn.Module:
    """A small CNN trained (CE, streamed, no augmentation) on the folder."""
    data = open_stream(folder, image_size=24, channels=1, workers=0, augment=StreamAugment.parse("none"))
    model = tiny_cnn(width=32)
    res = train_student(model, data, TrainConfig(epochs=25, batch_size=32, use_kd=False, lr=1e-2))
    assert res.val_acc > 0.5
    return model.eval()


def test_topk_cache_stores_views_on_disk_and_reuses_them(folder: Path, teacher: nn.Module, tmp_path: Path) -> None:
    data = open_stream(folder, image_size=24, channels=1, workers=0)
    cache = TopKCache.build(teacher, data, views=2, k=2, cache_dir=tmp_path)
    n = data.size("train")
    assert cache.seeds.shape == (n, 2) and cache.values.shape == (n, 2, 2) and cache.values.dtype == np.float16
    assert isinstance(cache.values, np.memmap) and cache.disk_bytes() > 0
    assert cache.seeds[7, 1] == view_seed(data.seed, 7, 1)  # the view seed is stored
    # the cached soft label is the teacher's output on exactly that view
    x = data.normalize_batch(data.dataset("train", train=True)[(7, int(cache.seeds[7, 1]))][0][None])
    with torch.no_grad():
        p = torch.softmax(teacher(x), 1)[0]
    q = torch.softmax(cache.soft_logits(np.array([7]), epoch=3), 1)[0]  # epoch 3 replays view 1
    top = torch.from_numpy(cache.index[7, 1].astype(np.int64))
    assert torch.allclose(q[top], p[top], atol=5e-3)
    again = TopKCache.build(teacher, data, views=2, k=2, cache_dir=tmp_path)
    assert again.folder == cache.folder and again.meta["build_seconds"] == cache.meta["build_seconds"]
    import pickle

    clone = pickle.loads(pickle.dumps(cache))
    assert np.array_equal(clone.index, cache.index)


class _Counting(nn.Module):
    """The teacher, counting its forward passes, failing at pass ``fail_at`` (a killed build)."""

    def __init__(self, teacher: nn.Module, fail_at: int | None = None) -> None:
        super().__init__()
        self.teacher, self.fail_at, self.calls = teacher, fail_at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("killed")
        return self.teacher(x)


def _arrays(cache: TopKCache) -> list[np.ndarray]:
    return [np.asarray(a) for a in (cache.seeds, cache.index, cache.values, cache.rest)]


def test_an_interrupted_topk_build_goes_on_from_the_views_it_finished(folder, teacher, tmp_path) -> None:
    from kd_compile.distill.cache import module_fingerprint

    data = open_stream(folder, image_size=24, channels=1, workers=0)
    fp, bs = module_fingerprint(teacher), 64
    per_view = -(-data.size("train") // bs)
    ref = TopKCache.build(teacher, data, views=3, k=2, cache_dir=tmp_path / "ref", batch_size=bs, teacher_fp=fp)
    flaky = _Counting(teacher, fail_at=2 * per_view + 2)  # in the third view
    with pytest.raises(RuntimeError, match="killed"):
        TopKCache.build(flaky, data, views=3, k=2, cache_dir=tmp_path / "c", batch_size=bs, teacher_fp=fp)
    assert not [p for p in (tmp_path / "c").iterdir() if not p.name.endswith(".partial")]
    again = _Counting(teacher)
    cache = TopKCache.build(again, data, views=3, k=2, cache_dir=tmp_path / "c", batch_size=bs, teacher_fp=fp)
    assert again.calls == per_view and cache.meta["resumed_views"] == 2  # only the third view ran
    assert all(np.array_equal(a, b) for a, b in zip(_arrays(cache), _arrays(ref), strict=True))
    assert [p.name for p in (tmp_path / "c").iterdir()] == [cache.folder.name]  # nothing left behind


def test_a_topk_build_beside_another_builds_its_own_copy(folder, teacher, tmp_path) -> None:
    import fcntl

    data = open_stream(folder, image_size=24, channels=1, workers=0)
    first = TopKCache.build(teacher, data, views=1, k=2, cache_dir=tmp_path / "ref")
    partial = tmp_path / "c" / (first.folder.name + ".partial")
    partial.mkdir(parents=True)
    with open(partial / ".lock", "a") as held:  # another process's build of the same cache
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        cache = TopKCache.build(teacher, data, views=1, k=2, cache_dir=tmp_path / "c")
    assert cache.folder.name == first.folder.name and cache.folder.parent == tmp_path / "c"
    assert all(np.array_equal(a, b) for a, b in zip(_arrays(cache), _arrays(first), strict=True))
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted([first.folder.name, partial.name])


@pytest.mark.parametrize("mode", ["cache", "online"])
def test_streamed_kd_training_beats_chance(folder: Path, teacher: nn.Module, tmp_path: Path, mode: str) -> None:
    mild = StreamAugment(scale=(0.6, 1.0), hflip=False)  # glyphs: no flips, small crops only
    data = open_stream(folder, image_size=24, channels=1, workers=0, augment=mild)
    msgs: list[str] = []
    know = stream_knowledge(teacher, data, epochs_per_training=[10.0, 10.0], cache_dir=tmp_path, mode=mode,
                            k=2, message=msgs.append)  # fmt: skip
    assert isinstance(know, TopKCache if mode == "cache" else OnlineTeacher)
    assert know.teacher_val_acc > 0.5 and msgs and know.summary["choice"] == mode
    if mode == "cache":
        assert know.summary["disk_bytes"] > 0 and know.summary["speedup"] > 1
    student = tiny_cnn(width=16)
    cfg = TrainConfig(epochs=10, batch_size=32, lr=1e-2, eval_every_epoch=True)
    res = train_student(student, data, cfg, know)
    assert res.steps == 10 * (data.size("train") // 32) and len(res.history) == 10
    assert res.val_acc > 1.5 / CLASSES  # chance is 1/CLASSES


def test_auto_choice_prefers_online_for_one_short_training(folder: Path, teacher: nn.Module, tmp_path: Path) -> None:
    data = open_stream(folder, image_size=24, channels=1, workers=0)
    know = stream_knowledge(teacher, data, epochs_per_training=[1.0], cache_dir=tmp_path)
    assert isinstance(know, OnlineTeacher) and know.summary["choice"] == "online"
    know = stream_knowledge(teacher, data, epochs_per_training=[2.0] * 8 + [15.0], cache_dir=tmp_path, k=2)
    assert isinstance(know, TopKCache) and know.views == 15


def test_options_device_auto_and_data_mode() -> None:
    from kd_compile.config import CompileConfig, compile_options
    from kd_compile.errors import UsageError

    assert compile_options()["device"].default == "auto" and compile_options()["data_mode"].default == "auto"
    cfg = CompileConfig.from_options("teacher.pt")
    assert cfg.device == ("cuda" if torch.cuda.is_available() else "cpu")  # auto is resolved once
    assert CompileConfig.from_options("teacher.pt", device="cpu", data_mode="stream").data_mode == "stream"
    with pytest.raises(UsageError, match="--data-mode must be auto, memory or stream"):
        CompileConfig.from_options("teacher.pt", data_mode="disk")
    with pytest.raises(UsageError, match="--stream-augment"):
        CompileConfig.from_options("teacher.pt", stream_augment="mixup")


def digits_folder(root: Path) -> tuple[Path, object]:
    """scikit-learn's digits at 12 px written as a train/val PNG ImageFolder (and the bundle)."""
    from kd_compile.data import load_data

    bundle = load_data("digits", image_size=12)
    for split, (x, y) in {"train": (bundle.x_train, bundle.y_train), "val": (bundle.x_val, bundle.y_val)}.items():
        for i, (img, label) in enumerate(zip(x.numpy(), y.tolist(), strict=True)):
            d = root / split / str(label)
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0]).save(d / f"{i:05d}.png")
    return root, bundle


def test_compile_streams_an_imagefolder_end_to_end(digits_teacher: Path, tmp_path: Path) -> None:
    """The whole run on a streamed folder: KD from the top-k cache, test accuracy, report."""
    import json

    import kd_compile
    from kd_compile.report import validate_report

    root, bundle = digits_folder(tmp_path / "digits")
    out = tmp_path / "run"
    kd_compile.compile(
        str(digits_teacher), data=str(root), data_mode="stream", stream_augment="none", out=out, target="2080ti",
        max_params="12K", budget=2, proxy_epochs=1, final_epochs=2, strategy="random", seed=0, max_latency="none",
        compare_ce=False, device="cpu",
    )  # fmt: skip
    r = json.loads((out / "report.json").read_text())
    validate_report(r)
    d = r["run"]["data"]
    assert d["mode"] == "stream" and d["accuracy_split"] == "test" and d["test"] > 0
    assert d["train"] + d["test"] == len(bundle.x_train) and d["val"] == len(bundle.x_val)
    assert d["teacher_knowledge"]["choice"] == "cache" and d["teacher_knowledge"]["disk_bytes"] > 0
    assert r["student"]["accuracy"] > 0.3 and r["teacher"]["accuracy"] > 0.5


# --- feature distillation and Auto-KD on streamed data ---------------------------------------


MILD = StreamAugment(scale=(0.6, 1.0), hflip=False)  # glyphs: no flips, small crops only


def _hint_spec() -> DistillerSpec:
    """FitNets: the student's second conv (32 channels at width 16) hints the teacher's (64 at
    width 32) through a learned 1x1 adapter."""
    return DistillerSpec("kl", (FeatureSpec.named("hint", student="4", teacher="4", weight=1.0),))


def test_streamed_feature_distiller_uses_the_online_teacher(folder: Path, teacher: nn.Module, tmp_path: Path) -> None:
    data = open_stream(folder, image_size=24, channels=1, workers=0, augment=MILD)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2, data_fraction=0.5, distiller=_hint_spec())
    online = OnlineTeacher(teacher, teacher_val_acc=1.0)
    r1 = train_student(s1 := tiny_cnn(width=16), data, cfg, online)
    r2 = train_student(s2 := tiny_cnn(width=16), data, cfg, online)
    assert r1.steps == 2 * (data.size("train") // 2 // 32) and r1.val_acc == r2.val_acc
    assert all(torch.equal(a, b) for a, b in zip(s1.state_dict().values(), s2.state_dict().values(), strict=True))
    assert not s1[4]._forward_hooks and not teacher[4]._forward_hooks  # capture hooks removed
    # the hint term changes training (against logit KD alone, same seed and batches)
    r_kd = train_student(s_kd := tiny_cnn(width=16), data, dataclasses.replace(cfg, distiller=None), online)
    assert not torch.equal(s_kd[-1].weight, s1[-1].weight) and r_kd.history[0]["loss"] != r1.history[0]["loss"]
    # a top-k cache holds logits only: with teacher= the features (and logits) come from the online teacher,
    # the very run above; without a teacher module it is a clear error
    cache = TopKCache.build(teacher, data, views=2, k=2, cache_dir=tmp_path)
    train_student(s3 := tiny_cnn(width=16), data, cfg, cache, teacher=teacher)
    assert torch.equal(s3[-1].weight, s1[-1].weight)
    with pytest.raises(ValueError, match="holds logits only"):
        train_student(tiny_cnn(width=16), data, cfg, cache)


class _IndexProbe:
    """An ``ExtraLoss`` with a trainable 1x1 head on the student's second conv that records the
    sample indices it is given."""

    student_layers = ("4",)

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []
        self.shapes: dict[str, tuple[int, ...]] = {}

    def setup(self, shapes: dict[str, tuple[int, ...]], device: torch.device) -> nn.Module:
        self.shapes = shapes
        torch.manual_seed(1)
        self.head = nn.Conv2d(shapes["4"][0], 1, 1)
        self.start = self.head.weight.detach().clone()
        return self.head

    def __call__(self, features: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        self.seen.append(index.cpu())
        return (self.head(features["4"]) - 1.0).pow(2).mean()


def test_streamed_extra_loss_gets_train_indices_and_is_trained(folder: Path, teacher: nn.Module) -> None:
    from kd_compile.distill.trainer import stratified_subset

    data = open_stream(folder, image_size=24, channels=1, workers=0)
    cfg = TrainConfig(epochs=1, batch_size=32, data_fraction=0.5, seed=2)
    probe = _IndexProbe()
    res = train_student(tiny_cnn(width=16), data, cfg, OnlineTeacher(teacher, 1.0), extra_loss=probe)
    assert probe.shapes == {"4": (32, 12, 12)}  # probed on the first batch, without the batch dim
    seen = torch.cat(probe.seen)
    assert len(probe.seen) == res.steps and seen.numel() == res.steps * 32
    subset = set(stratified_subset(data.y_train, 0.5, 2).tolist())
    assert set(seen.tolist()) <= subset and len(set(seen.tolist())) == seen.numel()  # one epoch: no repeats
    assert not torch.equal(probe.head.weight, probe.start)  # optimised with the student


def test_autokd_search_and_training_run_on_streamed_data(folder: Path, teacher: nn.Module) -> None:
    import math

    from kd_compile.distill.autokd import DistillerChoice, TeacherKnowledge, search_distiller, train_with_distiller

    data = open_stream(folder, image_size=24, channels=1, workers=0, augment=MILD)
    know = TeacherKnowledge.build(teacher, data, layer="4", gap_samples=20)
    # streamed: no train features are stored; the teacher runs online, the gap subset is computed once
    assert know.online and know.train_features is None and know.teacher is teacher
    assert know.gap_features.shape == (know.gap_index.numel(), 64, 4, 4)  # pooled to 4x4
    base = TrainConfig(batch_size=32, lr=1e-2)
    best, report = search_distiller(
        lambda: tiny_cnn(width=16), data, teacher, None, iterations=2, epochs=0.5, data_fraction=0.3, train_cfg=base,
        knowledge=know, student_layer="4",
    )  # fmt: skip
    rows = [r for r in report["rewards"] if not r["cached"]]
    assert rows and all(math.isfinite(r["reward"]) and 0.0 <= r["gap"] <= 1.0 for r in rows)
    assert report["teacher_layer"] == "4" and DistillerChoice.from_dict(report["best"]) == best
    cfg = dataclasses.replace(base, epochs=1)
    r1 = train_with_distiller(s1 := tiny_cnn(width=16), data, cfg, None, None, best, knowledge=know, student_layer="4")
    # the same as a plain streamed training with the choice as a one-pair distiller from the online teacher
    spec = DistillerSpec("kl", (best.spec(student="4", teacher="4"),))
    r2 = train_student(s2 := tiny_cnn(width=16), data, dataclasses.replace(cfg, tau=best.temperature, distiller=spec),
                       teacher=teacher)  # fmt: skip
    assert r1.val_acc == r2.val_acc and torch.equal(s1[-1].weight, s2[-1].weight)


def test_augment_on_streamed_data_is_a_usage_error(digits_teacher: Path, tmp_path: Path) -> None:
    import kd_compile
    from kd_compile.errors import UsageError

    root, _ = digits_folder(tmp_path / "digits")
    with pytest.raises(UsageError, match="does not apply to streamed data; use --stream-augment"):
        kd_compile.compile(str(digits_teacher), data=str(root), data_mode="stream", augment=2,
                           out=tmp_path / "run", device="cpu")  # fmt: skip


@pytest.mark.slow
def test_compile_distiller_auto_on_streamed_data(digits_teacher: Path, tmp_path: Path) -> None:
    """``--distiller auto`` on a streamed folder: the MCTS search and the final training with the
    chosen distiller, the teacher running online for its features."""
    import json

    import kd_compile
    from kd_compile.report import validate_report

    root, _ = digits_folder(tmp_path / "digits")
    out = tmp_path / "run"
    kd_compile.compile(
        str(digits_teacher), data=str(root), data_mode="stream", stream_augment="none", out=out, target="2080ti",
        max_params="12K", budget=2, proxy_epochs=1, final_epochs=2, strategy="random", seed=0, max_latency="none",
        compare_ce=False, device="cpu", distiller="auto", distiller_iterations=2,
    )  # fmt: skip
    r = json.loads((out / "report.json").read_text())
    validate_report(r)
    assert r["run"]["data"]["mode"] == "stream"
    assert r["distiller"]["iterations"] == 2 and len(r["distiller"]["rewards"]) == 2  # the search ran
    assert r["student"]["accuracy"] > 0.3
