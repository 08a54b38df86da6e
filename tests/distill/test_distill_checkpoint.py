"""Epoch checkpoints (``TrainConfig.checkpoint``): a training stopped mid-way and started again
resumes at its last epoch's end and ends with the weights of a training never stopped, on data
in memory and streamed; a checkpoint of another training is ignored."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from distill_support import make_cnn

from kd_compile.distill import TeacherCache, TrainConfig, train_student

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))


class _Stop(Exception):
    pass


def _stop_after(fraction: float):
    def progress(f: float) -> None:
        if f >= fraction:
            raise _Stop

    return progress


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("early_stop", [None, 10])
def test_a_stopped_training_resumes_where_it_stopped_with_the_same_result(digits, teacher, tmp_path, early_stop):
    cache = TeacherCache.build(teacher, digits)
    cfg = TrainConfig(epochs=5, batch_size=64, lr=1e-2, seed=3, early_stop_patience=early_stop, eval_every_epoch=True)
    whole = make_cnn(16, seed=2, dropout=0.2)
    ref = train_student(whole, digits, cfg, cache)

    kept = dataclasses.replace(cfg, checkpoint=str(tmp_path / "final.ckpt"))
    part = make_cnn(16, seed=2, dropout=0.2)
    with pytest.raises(_Stop):
        train_student(part, digits, kept, cache, progress=_stop_after(0.7))  # in epoch 4 of 5
    assert (tmp_path / "final.ckpt").is_file()
    again = make_cnn(16, seed=2, dropout=0.2)  # a new process would build it afresh
    res = train_student(again, digits, kept, cache)
    assert res.resumed_at == 3.0 and ref.resumed_at == 0.0
    assert res.steps == ref.steps and len(res.history) == len(ref.history) == 5
    assert [h["loss"] for h in res.history] == [h["loss"] for h in ref.history]
    assert res.val_acc == ref.val_acc
    assert _same_weights(again, whole)


def test_a_checkpoint_of_another_training_is_ignored(digits, teacher, tmp_path):
    cache = TeacherCache.build(teacher, digits)
    path = str(tmp_path / "final.ckpt")
    cfg = TrainConfig(epochs=3, batch_size=64, lr=1e-2, checkpoint=path)
    with pytest.raises(_Stop):
        train_student(make_cnn(16), digits, cfg, cache, progress=_stop_after(0.5))
    other = dataclasses.replace(cfg, lr=5e-3)  # another training: it starts afresh
    res = train_student(make_cnn(16), digits, other, cache)
    assert res.resumed_at == 0.0
    wider = train_student(make_cnn(24), digits, cfg, cache)  # another architecture
    assert wider.resumed_at == 0.0
    Path(path).write_bytes(b"torn")  # a damaged file is not a state
    assert train_student(make_cnn(16), digits, cfg, cache).resumed_at == 0.0


def test_a_stopped_streamed_training_resumes_with_the_same_result(tmp_path):
    from test_stream import make_folder, tiny_cnn

    from kd_compile.data.stream import StreamAugment, open_stream

    folder = make_folder(tmp_path / "glyphs", 40)
    mild = StreamAugment(scale=(0.6, 1.0), hflip=False)
    data = open_stream(folder, image_size=24, channels=1, workers=0, augment=mild)
    cfg = TrainConfig(epochs=4, batch_size=16, lr=1e-2, use_kd=False, eval_every_epoch=True)
    whole = tiny_cnn(width=8)
    ref = train_student(whole, data, cfg)

    kept = dataclasses.replace(cfg, checkpoint=str(tmp_path / "final.ckpt"))
    with pytest.raises(_Stop):
        train_student(tiny_cnn(width=8), data, kept, progress=_stop_after(0.6))
    again = tiny_cnn(width=8)
    res = train_student(again, data, kept)
    assert res.resumed_at == 2.0
    assert res.steps == ref.steps and [h["loss"] for h in res.history] == [h["loss"] for h in ref.history]
    assert _same_weights(again, whole)


def test_a_checkpoint_that_cannot_be_written_never_stops_the_training(digits, teacher, tmp_path):
    cache = TeacherCache.build(teacher, digits)
    (tmp_path / "a-file").write_text("")
    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-2)
    whole = make_cnn(16)
    train_student(whole, digits, cfg, cache)
    blocked = make_cnn(16)
    unwritable = dataclasses.replace(cfg, checkpoint=str(tmp_path / "a-file" / "x.ckpt"))
    res = train_student(blocked, digits, unwritable, cache)
    assert res.checkpoint_error and res.steps > 0
    assert _same_weights(blocked, whole)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_a_stopped_cuda_training_resumes_with_its_scaler_and_rng(digits, teacher, tmp_path, amp):
    # CUDA kernels need not be deterministic: the resumed training is checked to go on from its
    # epoch (same steps, same history length) and to reach the uninterrupted one's accuracy
    cache = TeacherCache.build(teacher, digits)
    cfg = TrainConfig(epochs=4, batch_size=64, lr=1e-2, device="cuda", amp=amp, eval_every_epoch=True)
    ref = train_student(make_cnn(16, dropout=0.2), digits, cfg, cache)
    kept = dataclasses.replace(cfg, checkpoint=str(tmp_path / "final.ckpt"))
    with pytest.raises(_Stop):
        train_student(make_cnn(16, dropout=0.2), digits, kept, cache, progress=_stop_after(0.6))
    res = train_student(make_cnn(16, dropout=0.2), digits, kept, cache)
    assert res.resumed_at == 2.0 and res.steps == ref.steps and len(res.history) == 4
    assert abs(res.val_acc - ref.val_acc) < 0.1


def test_a_stopped_training_with_a_searched_distiller_resumes_with_its_adapters(digits, teacher, tmp_path):
    from kd_compile.distill.autokd import DistillerChoice, TeacherKnowledge, train_with_distiller

    cache = TeacherCache.build(teacher, digits)
    know = TeacherKnowledge.build(teacher, digits, cache=cache)
    choice = DistillerChoice("none", "l2", 1.0, 4.0)  # student 16 wide, teacher 32: an adapter is trained
    cfg = TrainConfig(epochs=4, batch_size=64, lr=1e-2, seed=1)
    whole = make_cnn(16, seed=4)
    ref = train_with_distiller(whole, digits, cfg, cache, teacher, choice, knowledge=know)
    kept = dataclasses.replace(cfg, checkpoint=str(tmp_path / "final.ckpt"))
    with pytest.raises(_Stop):
        train_with_distiller(make_cnn(16, seed=4), digits, kept, cache, teacher, choice, knowledge=know,
                             progress=_stop_after(0.6))  # fmt: skip
    again = make_cnn(16, seed=4)
    res = train_with_distiller(again, digits, kept, cache, teacher, choice, knowledge=know)
    assert res.resumed_at == 2.0 and res.steps == ref.steps
    assert _same_weights(again, whole)
    other = DistillerChoice("none", "l2", 2.0, 4.0)  # another term: its checkpoint is not this one's
    fresh = train_with_distiller(make_cnn(16, seed=4), digits, kept, cache, teacher, other, knowledge=know)
    assert fresh.resumed_at == 0
