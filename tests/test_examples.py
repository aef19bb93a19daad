"""Each example script runs in reduced form (``--quick``) in a fresh interpreter.

Exit code 77 from a script means a module it needs (ONNX exporter, device runtime,
TVM backend) is not available: the test is skipped, not failed, but only when the module
the script names is really not importable here (:func:`_check_skip_is_justified`).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = 77


def _run(script: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    paths = os.pathsep.join(str(ROOT / p) for p in (".", "runtimes", "models"))
    env = {**os.environ, "PYTHONPATH": paths, "ADNTN_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, str(ROOT / "examples" / script), "--quick", "--out", str(tmp_path)]
    proc = subprocess.run(
        [*cmd, *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    if proc.returncode == SKIP:
        _check_skip_is_justified(script, proc.stdout)
        pytest.skip(f"{script}: {proc.stdout.strip().splitlines()[-1]}")
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _check_skip_is_justified(script: str, stdout: str) -> None:
    """Exit 77 must name a module this interpreter cannot import: anything else (a broken
    adntn module, an ``AttributeError``) is a failure, not a skip."""
    found = re.search(r"No module named '([\w.]+)'", stdout)
    assert found, f"{script} exited 77 without naming a missing module:\n{stdout[-2000:]}"
    module = found.group(1)
    try:
        present = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        present = False
    assert not present, f"{script} exited 77 for {module!r}, which is installed:\n{stdout[-2000:]}"


def test_skip_check_rejects_an_installed_module():
    with pytest.raises(AssertionError, match="which is installed"):
        _check_skip_is_justified("x.py", "skipped: No module named 'numpy'\n")
    with pytest.raises(AssertionError, match="without naming a missing module"):
        _check_skip_is_justified("x.py", "skipped: module 'adntn_runtime' has no attribute\n")
    _check_skip_is_justified("x.py", "skipped: No module named 'no_such_module_adntn'\n")


def test_train_example(tmp_path):
    proc = _run("train.py", tmp_path)
    assert "ADNTN test accuracy" in proc.stdout
    assert (tmp_path / "small_cnn_adntn.pt").is_file()


def test_compress_example(tmp_path):
    proc = _run("compress.py", tmp_path)
    assert "classifier.4" in proc.stdout and "output (2, 10)" in proc.stdout


def test_export_example(tmp_path):
    proc = _run("export.py", tmp_path)
    assert "max |onnxruntime - torch|" in proc.stdout


def test_bench_example(tmp_path):
    proc = _run("bench.py", tmp_path)
    assert "median latency" in proc.stdout


@pytest.mark.slow
def test_compile_example(tmp_path):
    proc = _run("compile.py", tmp_path)
    assert "compiled" in proc.stdout
