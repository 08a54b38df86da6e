"""FBNet networks (HW-NAS-Bench CIFAR-100 setting) and the ``fbnet`` space (kd_compile/students/fbnet.py).

No parameter counts are published for these networks, so the checks are structural: the layout
equals ``help-fbnet-layer-positions.csv``, both encodings of every HELP row parse to the same
ops, models run end to end, and the closed-form count equals the built model's.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from kd_compile.errors import UsageError
from kd_compile.students import create_space
from kd_compile.students.fbnet import (
    CIFAR_STRIDES,
    FBNET_LAYOUT,
    FBNET_OPS,
    ChannelShuffle,
    FBNetBlock,
    FBNetSkip,
    build_fbnet,
    fbnet_params,
    parse_fbnet,
)
from kd_compile.testing.spaces import param_count, single_thread

LATENCY = Path(__file__).parents[2].parent / "shared" / "data" / "latency"
needs_data = pytest.mark.skipif(not LATENCY.is_dir(), reason=f"published latency data not found at {LATENCY}")
ROW0_STR = (
    "k5_e6|skip|k3_e1_g2|skip|k5_e1|skip|skip|skip|k5_e6|k5_e1|k3_e1_g2|k5_e1|k5_e6|k3_e6|k3_e3|k5_e6|k3_e6|"
    "k3_e3|k5_e1|k3_e3|k5_e1|k5_e1_g2"
)
ROW0_IDX = "7-8-1-8-4-8-8-8-7-4-1-4-7-3-2-7-3-2-4-2-4-5"


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


def _rows() -> list[dict[str, str]]:
    with open(LATENCY / "help-fbnet-latency.csv", newline="") as f:
        return list(csv.DictReader(f))


@needs_data
def test_layout_matches_published_positions() -> None:
    with open(LATENCY / "help-fbnet-layer-positions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["stage"]), int(r["C_in"]), int(r["C_out"]), int(r["stride"])) for r in rows] == list(FBNET_LAYOUT)
    # the spatial sizes follow from the CIFAR strides (stem stride 1, 32 px)
    side = 32
    model = build_fbnet(ROW0_STR)
    for r, block, op in zip(rows, model.blocks, parse_fbnet(ROW0_STR), strict=True):
        assert (int(r["H_in"]), int(r["W_in"])) == (side, side)
        side = -(-side // int(r["stride"]))
        assert isinstance(block, FBNetSkip) == (op == "skip")


@needs_data
def test_every_help_row_parses_and_samples_build() -> None:
    rows = _rows()
    assert len(rows) == 5_000
    for r in rows:
        assert parse_fbnet(r["arch_str"]) == parse_fbnet(r["op_idx_list"])
    for r in rows[::1_250]:
        ops = parse_fbnet(r["arch_str"])
        model = build_fbnet(r["op_idx_list"]).eval()
        assert param_count(model) == fbnet_params(ops)
        with torch.no_grad():
            assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_two_encodings_and_blocks() -> None:
    ops = parse_fbnet(ROW0_STR)
    assert ops == parse_fbnet(ROW0_IDX) == parse_fbnet(ROW0_STR.replace("|", ","))
    assert [FBNET_OPS.index(o) for o in ops] == [int(i) for i in ROW0_IDX.split("-")]
    model = build_fbnet(ops)
    # position 1 changes 16 -> 24 channels: its skip is a 1x1 conv; position 3 is the identity
    assert isinstance(model.blocks[1], FBNetSkip) and param_count(model.blocks[1]) == 16 * 24 + 2 * 24
    assert param_count(model.blocks[3]) == 0
    g2 = model.blocks[2]
    assert isinstance(g2, FBNetBlock) and g2.conv1.groups == 2 and g2.conv3.groups == 2 and g2.has_skip
    assert model.fc.out_features == 100 and model.head.conv.out_channels == 1504


def test_channel_shuffle_interleaves() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert ChannelShuffle(2)(x).flatten().tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "k3_e1",
        "|".join(["k3_e1"] * 21),
        "|".join(["k3_e1"] * 23),
        "|".join(["k7_e1"] * 22),
        "9-" * 21 + "9",
        "-".join(["1"] * 21),
        "a-b",
    ],
)
def test_malformed(bad: str) -> None:
    with pytest.raises(UsageError, match="expected"):
        parse_fbnet(bad)


def test_space_strides_follow_the_input() -> None:
    assert create_space("fbnet", input_shape=(3, 32, 32), num_classes=100).strides == CIFAR_STRIDES
    assert create_space("fbnet", input_shape=(1, 16, 16), num_classes=10).strides == (1, 1, 1, 2, 2)
    assert create_space("fbnet", input_shape=(3, 224, 224), num_classes=10).strides == (2, 2, 2, 2, 2)


def test_space_builds_and_counts() -> None:
    space = create_space("fbnet", input_shape=(1, 16, 16), num_classes=10)
    assert len(space.params) == 22 and all(p.choices == FBNET_OPS for p in space.params)
    rng = np.random.default_rng(3)
    for cfg in [space.default()] + [space.sample(rng) for _ in range(3)]:
        model = space.build(cfg).eval()
        assert space.estimate_params(cfg) == param_count(model)
        with torch.no_grad():
            assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
        assert parse_fbnet(space.describe(cfg)) == space.ops(cfg)
    stage_ends = [0, 4, 8, 12, 16, 20, 21]
    assert space.feature_layers(model) == [f"blocks.{i}" for i in stage_ends]
