"""benchmarks/compression_table.py's command line: recipe names with their ``_ftN`` suffix,
errors that name the flag, the bad value and the valid ones (no training here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compression_table as table  # noqa: E402


@pytest.mark.parametrize(
    ("recipe", "split"),
    [("whole_deep_ft3", ("whole_deep", 3)), ("dense", ("dense", None)), ("ttn_ft20", ("ttn", 20))],
)
def test_split_recipe(recipe, split):
    assert table.split_recipe(recipe) == split
    assert table.valid_recipe(recipe)


@pytest.mark.parametrize("recipe", ["whole_ft0", f"ttn_ft{table.MAX_FT + 1}", "nope", "nope_ft2"])
def test_invalid_recipes(recipe):
    assert not table.valid_recipe(recipe)


def test_flags_parse_and_refuse_with_the_flag(capsys):
    args = table.parse_args(["--models", "alexnet32", "--recipes", "whole_lowrank_ft3,dense"])
    assert args.models == ["alexnet32"] and args.recipes == ["whole_lowrank_ft3", "dense"]
    with pytest.raises(SystemExit):
        table.parse_args(["--recipes", "whole_ft99"])
    err = capsys.readouterr().err
    assert "unknown --recipes value 'whole_ft99'" in err and "_ftN, 1 <= N <= 20" in err
    with pytest.raises(SystemExit):
        table.parse_args(["--models", "vgg16"])
    err = capsys.readouterr().err
    assert "unknown --models value 'vgg16'; valid: alexnet32, vgg16_32" in err
    assert "_ftN" not in err
