"""Helpers of the teacher tests: small digit-trained teachers and hostile checkpoint files."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

__all__ = [
    "evil_pickle",
    "pt2_config",
    "rewrite_zip",
    "small_net",
    "torch_zip_bytes",
    "train",
]


def small_net(in_chans: int = 1, classes: int = 10) -> nn.Module:
    """A 5K-parameter CNN (conv-BN-ReLU x2, global pool, linear), any input size."""
    return nn.Sequential(
        nn.Conv2d(in_chans, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, classes),
    )


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> nn.Module:
    """A few epochs of Adam on (x, y), batch 64, seed 0; returns the model in eval mode."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the suite shares two cores: two threads would contend
    try:
        for _ in range(epochs):
            perm = torch.randperm(len(x))
            for i in range(0, len(x), 64):
                idx = perm[i : i + 64]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


class _Payload:
    """Unpickling this writes ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def evil_pickle(marker: Path) -> bytes:
    """A pickle (protocol 2) that creates ``marker`` when loaded."""
    return pickle.dumps(_Payload(marker), protocol=2)


def rewrite_zip(src: Path, dst: Path, replace: dict[str, bytes], add: dict[str, bytes] | None = None) -> Path:
    """Copy zip ``src`` to ``dst``, replacing members whose name ends with a key of ``replace``
    (the key is matched against the name after the archive's root folder) and adding ``add``
    (names relative to the root folder)."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        root = zi.namelist()[0].split("/", 1)[0]
        for info in zi.infolist():
            rel = info.filename.split("/", 1)[1]
            zo.writestr(info, replace.get(rel, zi.read(info.filename)))
        for rel, data in (add or {}).items():
            zo.writestr(f"{root}/{rel}", data)
    return dst


def pt2_config(src: Path, name: str) -> dict:
    """The JSON payload config ``name`` (e.g. ``data/weights/model_weights_config.json``)."""
    with zipfile.ZipFile(src) as z:
        root = z.namelist()[0].split("/", 1)[0]
        return json.loads(z.read(f"{root}/{name}"))


def torch_zip_bytes(obj: object) -> bytes:
    """``torch.save(obj)`` into bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
