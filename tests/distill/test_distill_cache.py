"""The offline teacher cache (kd_compile.distill.cache): bit-identity with the online teacher, reuse, keys."""

from __future__ import annotations

import pytest
import torch
from distill_support import SmallCNN, make_cnn

from kd_compile.data import DataBundle
from kd_compile.distill import TeacherCache, evaluate

torch.set_num_threads(1)


def test_cache_is_bit_identical_to_online_teacher(digits: DataBundle, teacher: SmallCNN) -> None:
    cache = TeacherCache.build(teacher, digits, batch_size=200)
    x, _ = digits.train_tensors()
    teacher.eval()
    with torch.inference_mode():
        for start in range(0, x.shape[0], 200):
            online = teacher(x[start : start + 200])
            assert torch.equal(cache.train_logits[start : start + 200], online)
        # a different batching still gives the same numbers up to rounding
        torch.testing.assert_close(cache.train_logits[:37], teacher(x[:37]), rtol=1e-5, atol=1e-5)
    assert cache.train_logits.dtype == torch.float32
    assert cache.train_logits.shape == (1400, 10) and cache.val_logits.shape == (397, 10)
    xv, yv = digits.val_tensors()
    assert cache.teacher_val_acc == pytest.approx(evaluate(teacher, xv, yv))
    assert cache.teacher_val_acc > 0.8
    assert teacher.training is False  # mode restored (it was eval after training)


def test_cache_dir_reuse_and_keys(tmp_path, digits: DataBundle, teacher: SmallCNN) -> None:
    calls = {"n": 0}

    def count(*_a: object) -> None:
        calls["n"] += 1

    h = teacher.register_forward_hook(count)
    try:
        first = TeacherCache.build(teacher, digits, cache_dir=tmp_path, feature_layers=["block"])
        n_first = calls["n"]
        assert n_first > 0 and first.meta["reused"] is False
        second = TeacherCache.build(teacher, digits, cache_dir=tmp_path, feature_layers=["block"])
        assert calls["n"] == n_first  # the teacher did not run again
    finally:
        h.remove()
    assert second.meta["reused"] is True and second.key == first.key
    assert second.path is not None and (second.path / "train_logits.npy").exists()
    assert torch.equal(second.train_logits, TeacherCache.build(teacher, digits).train_logits)
    assert second.train_features["block"].shape == (1400, 32, 4, 4)
    assert second.teacher_val_acc == first.teacher_val_acc
    # another teacher, other data, or an augmentation seed give another entry
    other = make_cnn(32, seed=5)
    assert TeacherCache.make_key(other, digits) != first.key
    assert TeacherCache.make_key(teacher, digits, augment_seed=3) != first.key
    shifted = digits.replace(y_train=torch.roll(digits.y_train, 1))
    assert TeacherCache.make_key(teacher, shifted) != first.key
