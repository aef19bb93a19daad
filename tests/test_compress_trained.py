"""``adntn compress --weights``: a trained model compressed without its task's labels."""

from __future__ import annotations

import json

import pytest
import torch

from adntn_export.cli import main
from adntn_models import get_model


def test_compress_weights_reports_fit_beside_svd(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save({"state_dict": get_model("small_cnn").state_dict()}, weights)
    out = tmp_path / "c.json"
    argv = ["compress", "small_cnn", "--weights", str(weights), "--bond-dim", "4"]
    assert main([*argv, "--fit-steps", "5", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    layers = data["fit_vs_svd"]["layers"]
    assert layers and all(0 <= v["svd_relative_error"] <= 1 for v in layers.values())
    assert all(v["fit_relative_error"] is not None for v in layers.values())
    assert "truncated SVD at the same stored numbers" in capsys.readouterr().out


def test_compress_weights_names_the_flag_on_a_bad_file(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"a": 1}, bad)
    with pytest.raises(ValueError, match="--weights .* does not fit the model"):
        from adntn_export.commands.compress import load_weights

        load_weights(get_model("small_cnn"), str(bad))
    with pytest.raises(ValueError, match="--weights .* is not a file"):
        load_weights(get_model("small_cnn"), str(tmp_path / "missing.pt"))


@pytest.mark.needs("fashion-mnist")
def test_compress_weights_select_output(tmp_path, capsys) -> None:
    """--select output: each layer keeps the candidate whose predictions stay closest."""
    from adntn_models.datasets import DEFAULT_ROOT

    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save(get_model("small_cnn").state_dict(), weights)
    out = tmp_path / "c.json"
    argv = ["compress", "small_cnn", "--weights", str(weights), "--bond-dim", "2"]
    argv += ["--root", str(DEFAULT_ROOT), "--calibration", "32", "--test-limit", "64"]
    assert main([*argv, "--fit-steps", "5", "--select", "output", "--out", str(out)]) == 0
    layers = json.loads(out.read_text())["fit_vs_svd"]["layers"]
    for v in layers.values():
        errors = v["fit_output_errors"]
        assert set(errors) == {"fit", "start", "fresh"}
        assert v["fit_selected"] == min(errors, key=errors.__getitem__)


def test_compress_select_output_needs_root(tmp_path, capsys) -> None:
    argv = ["compress", "small_cnn", "--fit", "--select", "output", "--out", str(tmp_path / "c")]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "--select output needs calibration images: give --root" in err
