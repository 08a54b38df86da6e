"""Seeded augmentation and its replay against the offline teacher cache."""

from __future__ import annotations

import pytest
import torch

from kd_compile.data import DataBundle
from kd_compile.distill import TeacherCache, augment_images, augmented_bundle, predict_logits
from kd_compile.students import create_space


def _images(n: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 10, 10), generator=g, dtype=torch.uint8)


def test_same_seed_same_view_other_seed_other_view() -> None:
    x = _images()
    a = augment_images(x, 7, max_shift=2, erase_p=0.5)
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, augment_images(x, 7, max_shift=2, erase_p=0.5))
    assert not torch.equal(a, augment_images(x, 8, max_shift=2, erase_p=0.5))
    assert not torch.equal(a, x)
    assert torch.equal(augment_images(x, 7, max_shift=0), x)  # no-op options: identity


def test_shift_moves_pixels_by_whole_pixels() -> None:
    x = torch.zeros(64, 1, 9, 9, dtype=torch.uint8)
    x[:, 0, 4, 4] = 255  # one bright pixel in the centre
    out = augment_images(x, 3, max_shift=2)
    for img in out:
        ys, xs = torch.nonzero(img[0], as_tuple=True)
        assert len(ys) == 1  # still one pixel, moved by at most 2 in each direction
        assert abs(int(ys[0]) - 4) <= 2 and abs(int(xs[0]) - 4) <= 2
    moved = {(int(torch.nonzero(i[0])[0, 0]), int(torch.nonzero(i[0])[0, 1])) for i in out}
    assert len(moved) > 5  # the shifts vary across images


def test_erase_fills_a_rectangle_with_the_mean() -> None:
    x = torch.full((8, 1, 12, 12), 200, dtype=torch.uint8)
    x[:, :, :6] = 0  # mean 100
    out = augment_images(x, 1, max_shift=0, erase_p=1.0, erase_frac=0.5)
    changed = out != x
    assert changed.any(dim=(1, 2, 3)).all()  # every image got a box
    assert set(out[changed].tolist()) <= {100}


def test_bad_input_is_refused() -> None:
    with pytest.raises(TypeError):
        augment_images(torch.zeros(2, 1, 4, 4), 0)
    with pytest.raises(ValueError):
        augment_images(_images(), 0, max_shift=-1)
    with pytest.raises(ValueError):
        augmented_bundle(_bundle(), -1, 0)


def _bundle() -> DataBundle:
    x, y = _images(40, 1), torch.arange(40) % 4
    return DataBundle("t", x[:32], y[:32], x[32:], y[32:], 4, list("abcd"), (0.5,), (0.25,))


def test_bundle_appends_views_and_replays_bit_for_bit() -> None:
    data = _bundle()
    aug = augmented_bundle(data, 2, seed=5)
    assert aug.x_train.shape[0] == 3 * 32 and torch.equal(aug.y_train, data.y_train.repeat(3))
    assert torch.equal(aug.x_train[:32], data.x_train) and torch.equal(aug.x_val, data.x_val)
    assert not torch.equal(aug.x_train[32:64], aug.x_train[64:])  # two different views
    again = augmented_bundle(data, 2, seed=5)
    assert torch.equal(again.x_train, aug.x_train)
    assert augmented_bundle(data, 0, seed=5) is data


def test_cache_matches_the_online_teacher_on_replayed_views() -> None:
    """The offline cache, built once on the augmented bundle, gives bit-identical logits to the
    teacher run online on the views regenerated from the same seed."""
    data = _bundle()
    space = create_space("cnn", input_shape=(1, 10, 10), num_classes=4, max_depth=2)
    torch.manual_seed(0)
    teacher = space.build(space.validate({**space.default(), "depth": 2, "w1": 8, "w2": 16})).eval()
    cache = TeacherCache.build(teacher, augmented_bundle(data, 2, seed=11), augment_seed=11, batch_size=64)
    replay = augmented_bundle(data, 2, seed=11)
    online = predict_logits(teacher, replay.normalize(replay.x_train), batch_size=64)
    assert torch.equal(cache.train_logits, online)
    other = augmented_bundle(data, 2, seed=12)
    assert not torch.equal(cache.train_logits, predict_logits(teacher, other.normalize(other.x_train), batch_size=64))
