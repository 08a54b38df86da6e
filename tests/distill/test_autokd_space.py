"""Auto-KD's distiller space (kd_compile.distill.autokd.space): choices, the tree, and their place
in the feature-distillation vocabulary."""

from __future__ import annotations

import pytest

from kd_compile.distill.autokd import DistillerChoice, DistillerTree
from kd_compile.distill.features import ROW_DISTANCES, TRANSFORMS, FeatureSpec


def test_choice_round_trip_and_validation() -> None:
    ch = DistillerChoice("attention", "kl", 5, 2)
    assert DistillerChoice.from_dict(ch.to_dict()) == ch
    assert ch.to_dict() == {
        "transform": "attention",
        "distance": "kl",
        "weight": 5.0,
        "temperature": 2.0,
    }
    assert ch.describe() == "attention+kl w5 t2"
    with pytest.raises(ValueError, match="transform"):
        DistillerChoice(transform="fourier")
    with pytest.raises(ValueError, match="distance"):
        DistillerChoice(distance="l1")
    with pytest.raises(ValueError, match="temperature"):
        DistillerChoice(temperature=0.0)


def test_tree_enumerates_every_path() -> None:
    tree = DistillerTree(
        transforms=("none", "sample"),
        distances=("l2", "kl", "cka"),
        weights=(1.0,),
        temperatures=(1.0, 4.0),
    )
    assert tree.size == 12
    leaves = tree.leaves()
    assert len(set(leaves)) == 12
    assert tree.leaves(("sample", "kl")) == [("sample", "kl", 1.0, 1.0), ("sample", "kl", 1.0, 4.0)]
    assert tree.choice(("sample", "kl", 1.0, 4.0)) == DistillerChoice("sample", "kl", 1.0, 4.0)
    assert DistillerTree().size == len(TRANSFORMS) * len(ROW_DISTANCES) * 3 * 4
    with pytest.raises(ValueError, match="no options"):
        DistillerTree(weights=())
    with pytest.raises(ValueError):
        DistillerTree(transforms=("none", "bogus"))


def test_choice_is_a_term_of_the_feature_vocabulary() -> None:
    ch = DistillerChoice("attention", "kl", 5, 2)
    spec = ch.spec(student="s", teacher="t")
    assert spec == FeatureSpec("attention", "kl", weight=5.0, tau=2.0, align="full", student="s", teacher="t")
    assert DistillerChoice("none", "l2").spec().preset == "hint"
    # the map distance "nst" only pairs with the "none" transform
    assert DistillerChoice("none", "nst").spec().distance == "nst"
    with pytest.raises(ValueError, match="whole maps"):
        DistillerChoice("attention", "nst")
    with pytest.raises(ValueError, match="whole maps"):
        DistillerTree(distances=("l2", "nst"))
    assert DistillerTree(transforms=("none",), distances=("l2", "nst")).size == 2 * 3 * 4
    assert DistillerTree().distances == ROW_DISTANCES
