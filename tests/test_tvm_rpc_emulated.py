"""The device journey against EMULATED Raspberry Pis: aarch64 Pythons running
``tvm.exec.rpc_server`` under qemu-user (``QEMU_CPU`` cortex-a72 for rpi4, cortex-a76 for
rpi5), registered at a TVM tracker on 127.0.0.1 - two rpi4 servers (a farm) and one rpi5.

compile -> deploy over the tracker -> run (matches the host to 1e-5) -> tune (8 trials, all
valid, database resumable) -> bench over RPC beside the dense model (labelled emulated).
Also: a tune whose trials all fail exits non-zero naming the device error; two servers under
one key share the tuning load; no process survives a farm.

Needs the emulated Python built by ``runtimes/tvm_runner/build_arm64_python.sh`` (``.ci/run``
builds it; cached under ``~/.cache/adntn/arm64-python``), qemu-user-static and the aarch64
cross-compiler; skips with the reason otherwise. Slow: ``import tvm`` under emulation takes
~45 s per server (the servers start in parallel, once per module).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")
pytest.importorskip("tornado")
psutil = pytest.importorskip("psutil")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).parent))
import _tvm_models as models  # noqa: E402
from _processes import alive, descendants, free_port  # noqa: E402
from _requirements import require  # noqa: E402

IN, OUT, BATCH = 256, 64, 2
TRIALS = 8
#: Emulation latencies measured here, printed at the end of the module (``-s``) for reports.
MEASURED: dict[str, dict] = {}


def _need_emulated_python():
    from adntn_export.tvm_backend import emulated

    require("aarch64-g++", "qemu-aarch64")
    py, reason = emulated.find_arm64_python()
    if py is None:
        pytest.skip(reason)
    return py


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """Tracker + 2 emulated rpi4 servers + 1 emulated rpi5 server; nothing left afterwards."""
    _need_emulated_python()
    from adntn_export.tvm_backend.emulated import EmulatedFarm

    logs = tmp_path_factory.mktemp("logs")
    f = EmulatedFarm({"rpi4": 2, "rpi5": 1}, tracker_port=free_port(), log_dir=logs)
    pids = [s.proc.pid for s in f.servers]
    tree = set(pids) | descendants(pids)
    try:
        yield f
    finally:
        tree |= descendants(pids)  # session workers started since
        f.close()
        time.sleep(0.5)
        assert not alive(tree), f"processes left behind: {alive(tree)}"
        if MEASURED:
            print("\nEMULATED (qemu-user) measurements, not device speed:")
            print(json.dumps(MEASURED, indent=1))


@pytest.fixture(scope="module")
def layer_exports(tmp_path_factory):
    """An ADNTN layer (ADNTNLinear(256, 64) + ReLU) exported in fused and dense modes."""
    from adntn_export import ADNTNLinear
    from adntn_export.onnx_export import export_onnx

    tmp = tmp_path_factory.mktemp("exports")
    torch.manual_seed(0)
    model = torch.nn.Sequential(ADNTNLinear(IN, OUT, bond_dim=4), torch.nn.ReLU())
    x = torch.randn(BATCH, IN)
    return {
        mode: export_onnx(model, x, tmp / f"layer-{mode}.onnx", mode=mode, dynamic_batch=False)
        for mode in ("fused", "dense")
    }


def _ort(path, x):
    from adntn_runtime.onnx_lowering import session_options_for

    sess = ort.InferenceSession(
        str(path), session_options_for(str(path)), providers=["CPUExecutionProvider"]
    )
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.slow
@pytest.mark.parametrize("board", ["rpi4", "rpi5"])
def test_device_journey(farm, layer_exports, tmp_path, board):
    from adntn_export.tvm_backend import compile as tc
    from adntn_export.tvm_backend import run as tr
    from adntn_export.tvm_backend.tune import tune_onnx
    from adntn_runtime.bench import bench_model, validate_result

    adntn, dense = layer_exports["fused"], layer_exports["dense"]
    x = np.random.default_rng(5).standard_normal((BATCH, IN)).astype(np.float32)
    ref = _ort(adntn, x)
    # compile -> deploy over the tracker -> run on the (emulated) device
    manifest = tc.compile_onnx(adntn, board, tmp_path / "adntn")
    assert manifest.arch == "aarch64"
    tc.compile_onnx(dense, board, tmp_path / "dense")
    with tr.load_rpc(tmp_path / "adntn", tracker=farm.tracker, key=board) as model:
        assert model.device_info.get("emulated") is True and model.device_info["board"] == board
        np.testing.assert_allclose(model.run([x])[0], ref, atol=1e-5, rtol=1e-5)
    # tune: every trial measured on the device, then resumed from the database
    tuned = tune_onnx(
        adntn, board, tmp_path / "tuned", trials=TRIALS, rpc_tracker=farm.tracker, rpc_key=board
    )
    run = tuned.tuned["this_run"]
    # MetaSchedule may overshoot the budget by a few trials (it stops after a whole batch)
    assert run["total_trials"] >= TRIALS and run["valid_trials"] == run["total_trials"], run
    again = tune_onnx(
        adntn, board, tmp_path / "tuned", trials=TRIALS, rpc_tracker=farm.tracker, rpc_key=board
    )
    assert again.tuned["records_before"] == tuned.tuned["records_after"] >= TRIALS
    assert again.tuned["this_run"]["total_trials"] == 0  # resumed: the budget is already met
    assert again.tuned["valid_records"] == tuned.tuned["records_after"]
    with tr.load_rpc(tmp_path / "tuned", tracker=farm.tracker, key=board) as model:
        np.testing.assert_allclose(model.run([x])[0], ref, atol=1e-5, rtol=1e-5)
    # bench over RPC, the dense model beside the ADNTN one; labelled emulated
    data = bench_model(
        tmp_path / "adntn",
        runtime="tvm",
        dense_model=tmp_path / "dense",
        rpc_tracker=farm.tracker,
        rpc_key=board,
        warmup=2,
        runs=10,
        timeout=300,
    )
    validate_result(data)
    assert data["emulated"] is True
    rows = {r["config"]: r for r in data["results"]}
    assert set(rows) == {"tvm", "dense"}
    assert all(r["ok"] for r in rows.values()), [r["error"] for r in rows.values()]
    assert data["ratios"] and data["ratios"][0]["config"] == "tvm"
    MEASURED[board] = {
        "tuning_best_us": [t["best_us"] for t in run["tasks"]],
        "valid_trials": f"{run['valid_trials']}/{run['total_trials']}",
        "bench_p50_ms": {k: round(r["latency_ms"]["p50"], 4) for k, r in rows.items()},
    }


@pytest.mark.slow
def test_farm_shares_tuning(farm, tmp_path):
    """Two rpi4 servers under one key: the tuning run's sessions reach both."""
    from adntn_export.tvm_backend.tune import tune_onnx

    onnx_path = models.adntn_cores(tmp_path / "cores.onnx")
    rpi4 = [s for s in farm.servers if "rpi4" in s.log.name]
    before = [s.log.read_text().count("load_module") for s in rpi4]
    m = tune_onnx(
        onnx_path, "rpi4", tmp_path / "out", trials=4, rpc_tracker=farm.tracker, rpc_key="rpi4"
    )
    assert m.tuned["this_run"]["valid_trials"] == 4
    after = [s.log.read_text().count("load_module") for s in rpi4]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


@pytest.mark.slow
def test_tune_with_failing_trials_exits_nonzero(farm, tmp_path):
    """x86 candidates sent to the aarch64 device: every trial fails there; the CLI says so."""
    onnx_path = models.adntn_cores(tmp_path / "cores.onnx")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "adntn_export.cli", "tune", str(onnx_path), "--target", "host"]
    cmd += ["--trials", "4", "--rpc-tracker", farm.tracker, "--rpc-key", "rpi5", "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "only 0 of 4 trials produced a measurement" in proc.stderr
    assert "first device error" in proc.stderr
    assert not (out / "model.so").exists()  # no module built from failures


@pytest.mark.slow
def test_torch_free_runtime_on_aarch64(tmp_path):
    """`pip install ./runtimes` for aarch64, then adntn_runtime.load of an auto export under
    qemu: the policy decides per layer and the outputs match the host's."""
    py = _need_emulated_python()
    import adntn_runtime
    from adntn_export import ADNTNLinear
    from adntn_export.onnx_export import export_onnx

    if not (py.runtime_site / "onnxruntime").is_dir():
        pytest.skip(f"{py.runtime_site} lacks onnxruntime: rerun build_arm64_python.sh")
    # this checkout's adntn_runtime, installed as a user would (pure Python, no download)
    site = tmp_path / "site"
    src = tmp_path / "src"
    src.mkdir()
    repo = Path(__file__).resolve().parents[1]
    shutil.copy(repo / "runtimes" / "pyproject.toml", src)
    shutil.copytree(repo / "runtimes" / "adntn_runtime", src / "adntn_runtime")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        pip + ["--target", str(site), str(src)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    torch.manual_seed(3)
    model = torch.nn.Sequential(
        ADNTNLinear(128, 64, bond_dim=4), torch.nn.ReLU(), ADNTNLinear(64, 16, bond_dim=4)
    )
    path = export_onnx(model, torch.randn(2, 128), tmp_path / "auto.onnx", mode="auto")
    x = np.random.default_rng(0).standard_normal((2, 128)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    host = adntn_runtime.load(path, batch=2)
    script = (
        "import json, platform, sys, numpy as np, adntn_runtime\n"
        "assert 'torch' not in sys.modules\n"
        f"s = adntn_runtime.load({str(path)!r}, batch=2)\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, s.run(np.load({str(tmp_path / 'x.npy')!r}))[0])\n"
        "print(json.dumps({'machine': platform.machine(), 'torch': 'torch' in sys.modules,\n"
        "  'decisions': {k: d.mode for k, d in s.decisions.items()}}))\n"
    )
    env = py.env(site=f"{site}{os.pathsep}{py.runtime_site}")
    env["ADNTN_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.run(
        py.command("-c", script), env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["machine"] == "aarch64" and info["torch"] is False
    assert set(info["decisions"]) == set(host.decisions) and len(info["decisions"]) == 2
    assert set(info["decisions"].values()) <= {"fused", "materialize", "regenerate"}
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), host.run(x)[0], atol=1e-5, rtol=1e-5)
    MEASURED["torch_free_runtime_aarch64"] = {"decisions": info["decisions"]}


def test_farm_gives_each_server_its_own_port_range(monkeypatch, tmp_path):
    """Servers started together must not share a port range: TVM's server binds with
    ``SO_REUSEADDR``, so two of them can bind one port and the second dies in ``listen()``
    ("Address already in use"). No qemu needed: the spawns are recorded, not run."""
    from adntn_export.tvm_backend import emulated, rpc

    spawned: list[tuple[str, int, int]] = []

    def spawn(tracker, key, *, port, port_end, log=None, cpu=None):
        spawned.append((key, port, port_end))
        return None

    monkeypatch.setattr(emulated, "ensure_arm64_python", lambda say=None: None)
    monkeypatch.setattr(emulated, "spawn_emulated_server", spawn)
    monkeypatch.setattr(emulated, "wait_registered", lambda servers, tracker, want: None)
    monkeypatch.setattr(rpc, "tracker_summary", lambda tracker: {})
    monkeypatch.setattr(rpc, "servers_under", lambda summary, key: 0)
    farm = emulated.EmulatedFarm(
        {"rpi4": 2, "rpi5": 1}, tracker="127.0.0.1:9190", server_port=9400, log_dir=tmp_path
    )
    farm.servers = []  # nothing was started
    assert [k for k, _, _ in spawned] == ["rpi4", "rpi4", "rpi5"]
    ranges = [range(lo, hi) for _, lo, hi in spawned]
    assert all(len(r) > 0 for r in ranges)
    for i, a in enumerate(ranges):
        for b in ranges[i + 1 :]:
            assert not set(a) & set(b), (a, b)
