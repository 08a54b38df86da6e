"""Dynamic sparse training (kd_compile.distill.sparse): masks, prune-and-regrow, training at constant density."""

from __future__ import annotations

import pytest
import torch
from distill_support import SmallCNN, make_cnn

from kd_compile.data import DataBundle
from kd_compile.distill import TeacherCache, TrainConfig, train_student
from kd_compile.distill.sparse import DynamicSparsity

torch.set_num_threads(1)


def test_dynamic_sparsity_masks_and_regrows() -> None:
    model = make_cnn(16)
    sp = DynamicSparsity(model, 0.5, total_steps=100, seed=0, update_every=10, drop_frac=0.3)
    names = [n for n, _ in sp.params]
    assert "stem.0.weight" not in names and "block.0.weight" in names  # the stem stays dense
    assert sp.density() == pytest.approx(0.5, abs=0.01)
    w = dict(model.named_parameters())["block.0.weight"]
    assert torch.equal(w == 0, ~sp.masks["block.0.weight"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = sp.masks["block.0.weight"].clone()
    x = torch.randn(8, 1, 8, 8)
    for step in range(1, 11):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        sp.after_step(step, opt)
    after = sp.masks["block.0.weight"]
    assert sp.updates == 1 and not torch.equal(before, after)  # prune-and-regrow moved the mask
    assert int(after.sum()) == int(before.sum())  # ... at constant density
    assert bool((w[~after] == 0).all())
    with pytest.raises(ValueError):
        DynamicSparsity(model, 1.0, total_steps=10)


def test_sparse_training_keeps_density_and_learns(digits: DataBundle, teacher: SmallCNN) -> None:
    cache = TeacherCache.build(teacher, digits)
    cfg = TrainConfig(epochs=3, batch_size=64, seed=2, lr=1e-2, sparsity=0.5, sparse_update_every=5)
    m1, m2 = make_cnn(16), make_cnn(16)
    r1 = train_student(m1, digits, cfg, cache)
    r2 = train_student(m2, digits, cfg, cache)
    assert r1.val_acc == r2.val_acc  # deterministic on the CPU
    assert all(h["density"] == pytest.approx(0.5, abs=0.01) for h in r1.history)
    zeros = (m1.block[0].weight == 0).float().mean().item()
    assert zeros == pytest.approx(0.5, abs=0.02) and (m1.stem[0].weight != 0).all()
    assert r1.val_acc > 0.25  # chance is 0.1
