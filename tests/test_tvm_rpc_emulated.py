"""RPC deploy-and-run against an EMULATED aarch64 device: an aarch64 Python running
``tvm.exec.rpc_server`` under qemu-user, registered at a host tracker on 127.0.0.1, serving an
``rpi4`` artefact uploaded by :func:`adntn_export.tvm_backend.run.load_rpc`.

Needs the interpreter built by ``runtimes/tvm_runner/build_arm64_python.sh`` (cached under
``~/.cache/adntn/arm64-python``), qemu-user-static and the aarch64 cross-compiler; skips with the
reason otherwise. Slow: ``import tvm`` under emulation takes ~45 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")
pytest.importorskip("tornado")
pytest.importorskip("psutil")
ort = pytest.importorskip("onnxruntime")

sys.path.insert(0, str(Path(__file__).parent))
import _tvm_models as models  # noqa: E402
from _requirements import require  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["materialize"])
def test_rpi4_artefact_runs_on_emulated_aarch64_rpc_server(tmp_path, mode):
    from adntn_export.tvm_backend import compile as tc
    from adntn_export.tvm_backend import emulated, rpc
    from adntn_export.tvm_backend import run as tr

    require("aarch64-g++", "qemu-aarch64", "arm64-python")
    onnx_path = models.adntn_cores(tmp_path / "cores.onnx")
    manifest = tc.compile_onnx(onnx_path, "rpi4", tmp_path / "out", mode=mode)
    assert manifest.arch == "aarch64"
    x = np.random.default_rng(5).standard_normal((2, 64)).astype(np.float32)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x})[0]
    key = "rpi4-emulated"
    tracker = rpc.start_local_tracker()
    server = None
    try:
        rpc.check_reachable("127.0.0.1", tracker.port)
        server = emulated.start_emulated_server(tracker.port, key, log=tmp_path / "server.log")
        summary = rpc.check_tracker(f"127.0.0.1:{tracker.port}", key)
        assert key in summary["queue_info"]
        model = tr.load_rpc(tmp_path / "out", tracker=f"127.0.0.1:{tracker.port}", key=key)
        got = model.run([x])[0]
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
        assert model.bench([x], runs=3).runs == 3  # timed on the (emulated) device
        log = (tmp_path / "server.log").read_text()
        assert "load_module" in log  # the server (aarch64 python) loaded the uploaded model.so
    finally:
        if server is not None:
            server.terminate()
        tracker.terminate()
