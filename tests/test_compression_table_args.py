"""benchmarks/compression_table.py's command line: recipe names with their ``_ftN`` suffix,
errors that name the flag, the bad value and the valid ones, and the refusal to train under
bf16 autocast on a CPU that runs it far slower than float32 (no training here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compression_table as table  # noqa: E402
import dense_models  # noqa: E402


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


# --------------------------------------------------------------- bf16 on a CPU without it
def _slow_bf16(monkeypatch) -> None:
    """This CPU, as far as the scripts can tell, runs bf16 autocast 30x slower."""
    monkeypatch.setattr(dense_models, "bf16_slowdown", lambda: (0.010, 0.300))


def _tiny(n: int = 4) -> TensorDataset:
    return TensorDataset(torch.zeros(n, 3, 32, 32), torch.zeros(n, dtype=torch.long))


def test_slow_bf16_is_refused_naming_the_flags(monkeypatch, tmp_path):
    _slow_bf16(monkeypatch)
    with pytest.raises(dense_models.SlowBF16Error) as err:
        dense_models.check_bf16_speed("bf16", flag="--amp")
    msg = str(err.value)
    assert msg.startswith("--amp bf16: this CPU runs bf16 autocast 30x slower than float32")
    assert "300.0 ms vs 10.0 ms" in msg and "pass --allow-slow-bf16" in msg
    assert "--amp none is another protocol" in msg
    with pytest.raises(dense_models.SlowBF16Error, match=r"^bf16 autocast \(the protocol's\)"):
        dense_models.check_bf16_speed("bf16")  # a script without --amp names no such flag
    dense_models.check_bf16_speed("bf16", allow_slow=True)
    dense_models.check_bf16_speed("none")
    with pytest.raises(dense_models.SlowBF16Error):  # refused before any training step
        dense_models.trained_dense("alexnet32", _tiny(), seed=0, epochs=1, cache=tmp_path)
    assert not any(tmp_path.iterdir())


def test_fast_bf16_is_not_refused(monkeypatch):
    monkeypatch.setattr(dense_models, "bf16_slowdown", lambda: (0.010, 0.025))
    dense_models.check_bf16_speed("bf16")


def test_table_exits_2_before_training_where_bf16_is_slow(monkeypatch, tmp_path, capsys):
    _slow_bf16(monkeypatch)
    monkeypatch.setattr(table, "load_split", lambda split: _tiny())
    trained = []
    monkeypatch.setattr(table, "trained_dense", lambda *a, **k: trained.append(a))
    out = tmp_path / "rows.json"
    argv = ["--models", "alexnet32", "--recipes", "dense", "--seeds", "7", "--out", str(out)]
    assert table.main([*argv, "--readme", str(tmp_path / "README.md")]) == 2
    err = capsys.readouterr().err
    assert "error: --amp bf16: this CPU runs bf16 autocast 30x slower" in err
    assert "--allow-slow-bf16" in err
    assert not trained and not out.exists()


def test_bf16_probe_measures_both():
    fp32, bf16 = dense_models.bf16_slowdown.__wrapped__()  # a fresh measurement
    assert 0 < fp32 < 10 and 0 < bf16 < 60
