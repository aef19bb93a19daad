"""The device half of the TVM backend (``adntn_runtime.tvm``) and what guards it: no host
toolchain under ``runtimes/``, artefacts checked against their manifest before loading, every
tracker call under a timeout, failed bench rows and failed tuning trials never reported as
success. Fast: host artefacts and local sockets only (the emulated Pi is in
``test_tvm_rpc_emulated.py``).
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_runtimes_never_import_the_host_toolchain():
    offenders = {
        str(p.relative_to(ROOT)): sorted(
            n for n in _imports(p) if n.split(".")[0] == "adntn_export"
        )
        for p in (ROOT / "runtimes").rglob("*.py")
        if "build" not in p.parts
    }
    assert not {k: v for k, v in offenders.items() if v}
    script = textwrap.dedent(
        """
        import sys
        class Forbid:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("adntn_export", "torch"):
                    raise ImportError(f"{name} is forbidden under runtimes/")
        sys.meta_path.insert(0, Forbid())
        import adntn_runtime.bench, adntn_runtime.tvm, adntn_runtime.tvm.rpc, adntn_runtime.tvm.run
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtimes")}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def test_host_backend_reexports_the_device_half():
    from adntn_export.tvm_backend import rpc, run
    from adntn_runtime.tvm import rpc as drpc
    from adntn_runtime.tvm import run as drun

    assert run.load is drun.load and run.load_rpc is drun.load_rpc
    assert run.LoadedModel is drun.LoadedModel and rpc.check_tracker is drpc.check_tracker


# ------------------------------------------------------------------ measurement bookkeeping


def test_trial_stats_and_refusal(tmp_path):
    from adntn_export.tvm_backend.measure import TrialStats
    from adntn_export.tvm_backend.tune import _check_measured

    err = 'Traceback...\nValueError: Unable to find function "tvm.contrib.random.x"\n'
    stats = TrialStats()
    stats.record(0, "fused_matmul", [(None, err)] * 5 + [(2e-4, None), (1e-4, None), (1e10, None)])
    assert (stats.valid, stats.total) == (2, 8)
    assert stats.tasks[0].best_s == pytest.approx(1e-4)
    assert "2/8" in stats.table() and "100.0" in stats.table()
    with pytest.raises(RuntimeError, match=r"only 2 of 8 trials.*tvm\.contrib\.random"):
        _check_measured(stats, tmp_path, "rpi4")


def test_database_without_valid_measurement_is_refused(tmp_path):
    from adntn_export.tvm_backend.measure import TrialStats, database_measurements
    from adntn_export.tvm_backend.tune import _check_measured

    record = [0, [[], [1e10], {}, []]]
    (tmp_path / "database_tuning_record.json").write_text(json.dumps(record) + "\n")
    assert database_measurements(tmp_path) == (0, 1)
    with pytest.raises(RuntimeError, match="no valid measurement"):
        _check_measured(TrialStats(), tmp_path, "rpi4")
    record[1][1] = [1.5e-4, 1.4e-4]
    with (tmp_path / "database_tuning_record.json").open("a") as f:
        f.write(json.dumps(record) + "\n")
    assert _check_measured(TrialStats(), tmp_path, "rpi4") == (1, 2)


def test_host_filled_arguments():
    tvm = pytest.importorskip("tvm")
    from adntn_export.tvm_backend.measure import host_filled_arguments

    info = [["TENSOR", "float32", [2, 3]], ["TENSOR", "int64", [4]]]
    (args,) = host_filled_arguments(None, tvm.cpu(), info, 1)
    assert args[0].numpy().shape == (2, 3) and args[0].numpy().dtype == np.float32
    assert np.abs(args[0].numpy()).max() <= 1.0 and set(args[1].numpy()) <= {0, 1}
    with pytest.raises(ValueError, match="only TENSOR"):
        host_filled_arguments(None, tvm.cpu(), [["SCALAR", "int32", []]], 1)


# ------------------------------------------------------------------ artefacts checked first


@pytest.fixture(scope="module")
def host_artefact(tmp_path_factory):
    pytest.importorskip("tvm")
    import _tvm_models as models

    from adntn_export.tvm_backend import compile as tc

    tmp = tmp_path_factory.mktemp("art")
    onnx_path = models.matmul_tanh_chain(tmp / "chain.onnx")
    tc.compile_onnx(onnx_path, "host", tmp / "out")
    return tmp / "out"


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_model_so_is_refused_before_loading(host_artefact, tmp_path):
    from adntn_export.tvm_backend import run as tr

    out = _copy(host_artefact, tmp_path / "out")
    so = out / "model.so"
    so.write_bytes(so.read_bytes()[: so.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model\.so does not match .*manifest\.json: sha256"):
        tr.load(out)
    with pytest.raises(ValueError, match="sha256"):
        tr.load_rpc(out, tracker="127.0.0.1:1", key="rpi4")  # refused before any network
    so.unlink()
    with pytest.raises(ValueError, match=r"model\.so is missing"):
        tr.load(out)


def test_manifest_listing_outside_paths_is_refused(host_artefact, tmp_path):
    from adntn_runtime.tvm.manifest import verify_files

    out = _copy(host_artefact, tmp_path / "out")
    raw = json.loads((out / "manifest.json").read_text())
    raw["files"]["../../etc/passwd"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="outside"):
        verify_files(out)


def test_bench_of_a_truncated_artefact_exits_nonzero(host_artefact, tmp_path):
    out = _copy(host_artefact, tmp_path / "out")
    so = out / "model.so"
    so.write_bytes(so.read_bytes()[:1000])
    proc = subprocess.run(
        [sys.executable, "-m", "adntn_export.cli", "bench", str(out), "--runtime", "tvm"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "sha256" in proc.stdout + proc.stderr


def test_bench_exits_nonzero_when_every_row_fails(tmp_path):
    """A child that dies (here: an ONNX file that ORT cannot load) is a failed row: exit 1."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="no.such.domain")
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("no.such.domain", 1)],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    for cmd in (
        [sys.executable, "-m", "adntn_export.cli", "bench", str(path), "--runs", "2"],
        [sys.executable, "-m", "adntn_runtime.bench", str(path), "--runs", "2"],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, (cmd, proc.stdout[-2000:], proc.stderr[-2000:])
        assert "failed" in proc.stdout + proc.stderr


# ------------------------------------------------------------------ tracker timeouts


@pytest.fixture
def silent_port():
    """A port that accepts connections but never answers (listen, never accept)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


def test_tracker_that_never_answers_times_out(silent_port):
    pytest.importorskip("tvm")
    from adntn_runtime.tvm.rpc import check_tracker, connect

    t0 = time.time()
    with pytest.raises(RuntimeError, match="did not answer within"):
        check_tracker(f"127.0.0.1:{silent_port}", "rpi4", timeout=1.0)
    with pytest.raises(RuntimeError, match="did not answer within"):
        connect(tracker=f"127.0.0.1:{silent_port}", key="rpi4", timeout=1.0)
    assert time.time() - t0 < 20


def test_bench_against_a_silent_tracker_fails_fast(host_artefact, silent_port):
    t0 = time.time()
    cmd = [sys.executable, "-m", "adntn_export.cli", "bench", str(host_artefact)]
    cmd += ["--runtime", "tvm", "--rpc-tracker", f"127.0.0.1:{silent_port}", "--rpc-key", "rpi4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "did not answer" in proc.stdout + proc.stderr
    assert time.time() - t0 < 60


def test_unreachable_tracker_names_a_flag_that_exists():
    from adntn_export.cli import build_parser
    from adntn_runtime.tvm.rpc import check_reachable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RuntimeError) as info:
        check_reachable("127.0.0.1", port, timeout=1.0)
    msg = str(info.value)
    assert "adntn serve-device --run-tracker" in msg and "--tracker-only" not in msg
    args = build_parser().parse_args(["serve-device", "--run-tracker"])
    assert args.run_tracker is True


def test_serve_device_emulate_flags():
    from adntn_export.cli import main

    assert main(["serve-device", "--emulate", "rpi4", "--key", "jetson"]) == 2
    with pytest.raises(SystemExit):
        main(["serve-device", "--emulate", "rpi9"])
