"""The plain CNN family ``"cnn"``: conv3x3-bn-relu stacks, for teachers, baselines and tests.

``CnnSpace`` searches the depth and the width of every layer; ``CnnNet`` is the network it
builds. The stride rule is TRADE's without a stem (``students/trade.py``).
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from typing import Any

import torch
from timm.layers import ConvNormAct, SelectAdaptivePool2d
from torch import nn

from ..errors import UsageError
from ..search.space import Config, Param
from .base import StudentSpace, register_space
from .common import (
    MIN_FINAL_SIDE,
    channel_choices,
    conv_bn_params,
    feature_layers,
    init_weights,
    meta_param_count,
)

__all__ = ["FULL_RES_FIRST_LAYER_SIDE", "CnnNet", "CnnSpace"]

# Inputs up to this side keep the first layer at full resolution (glyphs, CIFAR, 64 px folders).
FULL_RES_FIRST_LAYER_SIDE = 64


class CnnNet(nn.Module):
    """conv3x3-bn-relu layers -> global average pool -> linear.

    Attributes:
        feature_names: module names of the layer outputs.
    """

    def __init__(
        self, layers: nn.Sequential, num_features: int, num_classes: int, drop_rate: float
    ) -> None:
        super().__init__()
        self.layers = layers
        self.pool = SelectAdaptivePool2d(pool_type="avg", flatten=True)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes)
        self.feature_names = [f"layers.{name}" for name, _ in layers.named_children()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, C, H, W) float. Returns logits (N, num_classes)."""
        return self.fc(self.drop(self.pool(self.layers(x))))


@register_space("cnn")
class CnnSpace(StudentSpace):
    """Plain conv-bn-relu stacks: ``depth`` layers of widths ``w1..w{depth}``.

    Layer ``i`` is conv3x3 (stride 1 or 2) -> BatchNorm -> ReLU. The stride rule is the TRADE
    one without a stem: the last ``n_down`` layers have stride 2, ``n_down`` being the most
    halvings that keep the final side >= ``MIN_FINAL_SIDE``, at most ``depth - 1`` so the first
    layer sees full resolution. Above ``FULL_RES_FIRST_LAYER_SIDE`` (64 px) the first layer may
    downsample too, as a stem would: at 224 px five layers end at 7x7 instead of 14x14, and the
    second layer no longer runs a wide 3x3 conv over 224x224 (tens of GFLOPs at width 256).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        max_depth: int = 5,
        width_scale: float = 1.0,
        drop_rate: float = 0.0,
    ) -> None:
        """Create the space.

        Args:
            input_shape: (C, H, W) of the input.
            num_classes: number of logits.
            max_depth: most conv layers (1..8).
            width_scale: multiplies every width choice (rounded to multiples of 8).
            drop_rate: dropout before the classifier.
        """
        if not 1 <= max_depth <= 8:
            raise UsageError(f"max_depth must be in 1..8, got {max_depth}")
        if width_scale <= 0:
            raise UsageError(f"width_scale must be > 0, got {width_scale}")
        self.max_depth = int(max_depth)
        self.width_scale = float(width_scale)
        self.drop_rate = float(drop_rate)
        widths = channel_choices((8, 16, 32, 64, 128, 256), width_scale)
        params = [Param("depth", "int", low=1, high=self.max_depth, default=min(3, self.max_depth))]
        params += [
            Param(f"w{i}", "choice", choices=widths, default=widths[min(len(widths) - 1, i)])
            for i in range(1, self.max_depth + 1)
        ]
        super().__init__(input_shape, num_classes, params, name="cnn")

    def canonical(self, config: Config) -> Config:
        """Widths of layers beyond ``depth`` take their defaults; unknown keys are dropped."""
        c = {p.name: config[p.name] for p in self.params if p.name in config}
        depth = int(c.get("depth", self.max_depth))
        for i in range(depth + 1, self.max_depth + 1):
            if f"w{i}" in c:
                c[f"w{i}"] = self.param(f"w{i}").default
        return c


    def strides(self, config: Config) -> list[int]:
        """Stride of each layer of ``config`` (the last ``n_down`` layers; the first one only
        above ``FULL_RES_FIRST_LAYER_SIDE``)."""
        depth = int(self.complete(config)["depth"])
        side = min(self.input_shape[1], self.input_shape[2])
        most = depth - 1 if side <= FULL_RES_FIRST_LAYER_SIDE else depth
        n_down = 0
        while n_down < most and math.ceil(side / 2 ** (n_down + 1)) >= MIN_FINAL_SIDE:
            n_down += 1
        return [2 if i >= depth - n_down else 1 for i in range(depth)]

    def build(self, config: Config, init: bool = True) -> CnnNet:
        """Build the CNN of ``config``: (N, C, H, W) float -> (N, num_classes) logits.

        Args:
            config: a config of this space (keys outside the space are ignored).
            init: apply the explicit weight init (False keeps the layers' own defaults).
        """
        c = self.complete(config)
        in_chs = self.input_shape[0]
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, stride in enumerate(self.strides(c), start=1):
            out = int(c[f"w{i}"])
            layers[f"l{i}"] = ConvNormAct(in_chs, out, 3, stride=stride, act_layer=nn.ReLU)
            in_chs = out
        model = CnnNet(nn.Sequential(layers), in_chs, self.num_classes, self.drop_rate)
        if init:
            init_weights(model)
        return model

    def estimate_params(self, config: Config) -> int:
        """Exact parameter count of ``build(config)``, computed without building."""
        c = self.complete(config)
        widths = [self.input_shape[0]] + [int(c[f"w{i}"]) for i in range(1, int(c["depth"]) + 1)]
        n = sum(conv_bn_params(a, b, 3) for a, b in itertools.pairwise(widths))
        return n + widths[-1] * self.num_classes + self.num_classes

    def count_params_meta(self, config: Config) -> int:
        """Parameter count by building ``config`` on the meta device (no weights allocated)."""
        return meta_param_count(self.build, config)

    def feature_layers(self, model: nn.Module) -> list[str]:
        """Module names of the layer outputs of a built CNN."""
        return feature_layers(model)

    def describe(self, config: Config) -> str:
        """E.g. ``conv16 | conv32 /2 | conv64 /2``."""
        c = self.complete(config)
        return " | ".join(
            f"conv{c[f'w{i}']}" + (" /2" if s == 2 else "")
            for i, s in enumerate(self.strides(c), start=1)
        )

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update(max_depth=self.max_depth, width_scale=self.width_scale, drop_rate=self.drop_rate)
        return d
