"""Plugins come in through entry points; a broken one is reported and skipped."""

from __future__ import annotations

import sys
import textwrap

import pytest

from kd_compile.errors import UsageError
from kd_compile.registry import Registry


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """An installed-looking distribution with one good and one broken strategy plugin."""
    (tmp_path / "kdc_fake_plugin.py").write_text(
        textwrap.dedent(
            """
            from kd_compile.search.random import RandomSearch

            class Fancy(RandomSearch):
                name = "fancy"
            """
        )
    )
    info = tmp_path / "kdc_fake_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdc-fake-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[kd_compile.strategies]\nfancy = kdc_fake_plugin:Fancy\nbroken = kdc_no_such_module:Thing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("kdc_fake_plugin", None)


def test_entry_point_plugins_load_and_broken_ones_are_skipped(plugin_dist):
    reg = Registry("strategies", UsageError)
    reg.register("builtin", object)
    with pytest.warns(UserWarning, match="skipped strategies plugin 'broken'"):
        names = reg.names()
    assert "fancy" in names and "builtin" in names and "broken" not in names
    assert reg.get("fancy").__name__ == "Fancy"


def test_duplicate_names_raise_and_unknown_names_suggest():
    reg = Registry("spaces", UsageError)
    reg.register("trade", object)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("trade", object)
    with pytest.raises(UsageError, match="did you mean 'trade'"):
        reg.get("trad")
