"""TRADE's orthogonality penalty (kd_compile.distill.regularizers): values and layer selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kd_compile.distill import orthogonal_modules, orthogonality_penalty

torch.set_num_threads(1)


def test_orthogonality_penalty_hand_computed() -> None:
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]).view(2, 3, 1, 1))
    model = nn.Sequential(conv)
    # W W^T = [[1, 1], [1, 2]] -> minus I = [[0, 1], [1, 1]] -> squared Frobenius norm 3
    assert orthogonality_penalty(model).item() == pytest.approx(3.0)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).view(2, 3, 1, 1))
    assert orthogonality_penalty(model).item() == pytest.approx(0.0)
    # a tall matrix uses W^T W (2x2) instead of the rank-deficient 3x3 W W^T
    tall = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False))
    with torch.no_grad():
        tall[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]).view(3, 2, 1, 1))
    assert orthogonality_penalty(tall).item() == pytest.approx(0.0)


def test_orthogonal_modules_selection() -> None:
    class Mlp(nn.Module):  # the layout of timm.layers.Mlp (importing timm costs seconds)
        def __init__(self, dim: int, hidden: int) -> None:
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv3 = nn.Conv2d(4, 4, 3)
            self.dw1 = nn.Conv2d(4, 4, 1, groups=4)
            self.pw = nn.Conv2d(4, 8, 1)
            self.mlp = Mlp(8, 16)
            self.enc = nn.TransformerEncoderLayer(8, 2, 16)
            self.head = nn.Linear(8, 10)

    names = {n for n, _ in orthogonal_modules(Block())}
    assert names == {"pw", "mlp.fc1", "mlp.fc2", "enc.linear1", "enc.linear2"}
    assert orthogonality_penalty(nn.Sequential(nn.Linear(3, 3))).item() == 0.0
