"""benchmarks/op_profile.py on a whole zoo model: ORT's per-node medians from the runtime's
profile (every node of the lowered graph, the heaviest first), the TVM side read from a tune
folder's manifest, the JSON entry, and clear errors for bad flags."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import WHOLE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import op_profile  # noqa: E402


def test_node_medians_take_each_nodes_last_calls():
    trace = [
        {"cat": "Node", "name": "a_kernel_time", "dur": d, "args": {"op_name": "Conv"}}
        for d in (100, 1, 2, 3)
    ] + [
        {"cat": "Node", "name": "b_kernel_time", "dur": 50, "args": {"op_name": "Relu"}},
        {"cat": "Node", "name": "b_fence_before", "dur": 999, "args": {}},
        {"cat": "Session", "name": "model_run", "dur": 999},
    ]
    rows = op_profile.node_medians(trace, runs=3)
    assert rows == [
        {"node": "b", "op": "Relu", "median_us": 50.0, "calls": 1},
        {"node": "a", "op": "Conv", "median_us": 2.0, "calls": 4},  # the warm-up call dropped
    ]


def test_op_profile_of_a_whole_model(zoo_export, tmp_path, capsys):
    path = zoo_export("small_cnn" + WHOLE, "auto")
    tune_dir = tmp_path / "tuned"
    tune_dir.mkdir()
    tasks = [
        {"name": "fused_conv2d_add_relu", "valid": 40, "total": 40, "best_us": 30.0},
        {"name": "fused_reshape", "valid": 1, "total": 1, "best_us": 70.0},
        {"name": "failed_task", "valid": 0, "total": 4, "best_us": None},
    ]
    manifest = {"tuned": {"valid_records": 41, "this_run": {"tasks": tasks}}}
    (tune_dir / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "op.json"
    argv = [str(path), "--threads", "1", "--runs", "3", "--warmup", "1", "--json", str(out)]
    assert op_profile.main([*argv, "--tvm-dir", str(tune_dir)]) == 0
    printed = capsys.readouterr().out
    assert "one measurement" in printed and "fused_reshape" in printed
    (entry,) = json.loads(out.read_text()).values()
    ort = entry["ort"]
    assert ort["p50_ms"] > 0 and set(ort["modes"].values()) == {"fused"}
    assert "Conv" in {n["op"] for n in ort["nodes"]}
    medians = [n["median_us"] for n in ort["nodes"]]
    assert medians == sorted(medians, reverse=True)
    assert all(n["calls"] == 4 for n in ort["nodes"])  # warm-up + runs, each node once a call
    assert [t["task"] for t in entry["tvm"]["tasks"]] == ["fused_reshape", "fused_conv2d_add_relu"]
    assert entry["tvm"]["sum_best_ms"] == pytest.approx(0.1)


def test_op_profile_flag_errors(zoo_export, tmp_path, capsys):
    path = str(zoo_export("mlp", "fused"))
    for argv, message in (
        ([path, "--threads", "0"], "--threads must be >= 1, got 0"),
        ([path, "--runs", "0"], "--runs must be >= 1"),
        ([str(tmp_path / "missing.onnx")], "does not exist"),
        ([path, "--tvm-dir", str(tmp_path)], "--tvm-dir .* has no manifest.json"),
    ):
        with pytest.raises(SystemExit):
            op_profile.main(argv)
        err = capsys.readouterr().err
        assert re.search(message, err), (argv, err)
