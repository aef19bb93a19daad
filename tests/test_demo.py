"""``adntn demo --quick`` through the CLI entry point, on the shipped data."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json

import pytest

from adntn_export.cli import build_parser, main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["demo", "--quick", "--out", str(out), "--no-progress"])
    assert code == 0
    return out, buf.getvalue()


def test_demo_quick(demo):
    out, text = demo
    assert "Wrote" in text and str(out) in text.replace("\n", "")
    assert "dense small CNN" in text and "ADNTN small CNN" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_images"] == 600 and summary["test_images"] == 300
    assert summary["dense_accuracy"] > 0.3  # chance is 0.1; one short epoch
    assert summary["adntn_accuracy"] > 0.2
    assert summary["compressed_layer_ratio"] >= 100
    for name in ("dense.pt", "adntn.pt", "compression.json"):
        assert (out / name).is_file()
    onnx = summary["onnx"]
    if importlib.util.find_spec("onnxruntime") is None:
        assert "skipped" in onnx, onnx  # the only case where the check may not run
    else:
        assert onnx["ok"] and onnx["max_abs_diff"] < 1e-3, onnx
        assert (out / "adntn.onnx").is_file() and onnx["path"] == str(out / "adntn.onnx")


def test_demo_adntn_model_reloads(demo):
    import torch

    from adntn_export.checkpoint import load_model
    from adntn_export.layers import ADNTNLinear

    out, _ = demo
    model = load_model(out / "adntn.pt")
    assert isinstance(model.classifier[0], ADNTNLinear)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_verbs_have_help(capsys):
    parser = build_parser()
    for verb in ("demo", "train", "compress"):
        try:
            parser.parse_args([verb, "--help"])
        except SystemExit as exc:
            assert exc.code == 0
        assert "usage: adntn " + verb in capsys.readouterr().out


def test_compress_verb_errors_name_candidates(tmp_path, capsys):
    code = main(["compress", "mlp", "--layers", "nope", "--out", str(tmp_path / "r.json")])
    assert code == 2
    assert "unknown layer 'nope'; candidates: layers.0" in capsys.readouterr().err


def test_compress_verb_writes_report(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert main(["compress", "alexnet32", "--recipe", "alexnet32_ttn", "--out", str(path)]) == 0
    report = json.loads(path.read_text())
    # the recipe compresses conv5 (294x) and fc6-fc8 (165x-78,053x): 9,946x over the four
    assert report["total_ratio"] > 9_000 and len(report["layers"]) == 4


def test_train_verb_dense_then_adntn(tmp_path, capsys):
    out, ck = tmp_path / "out", tmp_path / "ck"
    args = ["train", "mlp", "--limit", "256", "--test-limit", "128", "--epochs", "1"]
    args += ["--layers", "fc1", "--bond-dim", "2", "--fit-steps", "5", "--distill", "0.5"]
    args += ["--out", str(out), "--checkpoint-dir", str(ck), "--no-progress"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["adntn"]["completed"] and summary["adntn"]["compression"]["total_ratio"] > 100
    assert (ck / "dense" / "last.pt").is_file() and (ck / "adntn" / "last.pt").is_file()
    # resuming a finished run does no more steps and gives the same accuracy
    assert main([*args, "--resume"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["adntn"]["test_accuracy"] == summary["adntn"]["test_accuracy"]
    assert again["adntn"]["resumed_from_step"] == summary["adntn"]["global_step"]
    assert "ADNTN mlp: test accuracy" in capsys.readouterr().out
