"""README "Tune on your Raspberry Pi": the emulated-Pi commands, run as written (with the
tracker port swapped for a free one), under bash. Then: every tuning trial (>= 8) valid, the bench
JSON says emulated with the dense model beside the tuned one, and no process survives the
``kill %1`` of ``adntn serve-device --emulate``.

Needs what ``tests/test_tvm_rpc_emulated.py`` needs (the emulated Python, qemu, the aarch64
cross-compiler); skips with the reason otherwise. Slow (~3-5 min on 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("tvm")
psutil = pytest.importorskip("psutil")
from _processes import alive, free_port, terminate  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def _emulated_block() -> str:
    text = README.read_text()
    section = text.split("## Tune on your Raspberry Pi", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    (block,) = [b for b in blocks if "--emulate" in b]
    return block


def test_readme_block_is_found():
    block = _emulated_block()
    assert "adntn serve-device --emulate rpi4" in block and "adntn tune" in block
    assert "adntn bench" in block and "--dense-model" in block


@pytest.mark.slow
def test_readme_emulated_pi_commands(tmp_path):
    from adntn_export.tvm_backend import emulated

    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ not installed (Debian package g++-aarch64-linux-gnu)")
    py, reason = emulated.find_arm64_python()
    if py is None:
        pytest.skip(reason)
    port = free_port()
    # `adntn` and `python` as executables of this interpreter (exec: `kill %1` must reach
    # serve-device itself, as it does for an installed `adntn`)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, args in (("adntn", "-m adntn_export.cli "), ("python", "")):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" {args}"$@"\n')
        (bin_dir / name).chmod(0o755)
    script = "set -euo pipefail\n" + _emulated_block().replace("9190", str(port))
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen: set[int] = set()
    stop = threading.Event()

    def watch() -> None:  # every process the block starts, while it runs
        while not stop.is_set():
            try:
                seen.update(c.pid for c in psutil.Process(proc.pid).children(recursive=True))
            except psutil.NoSuchProcess:
                return
            time.sleep(0.3)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, _ = proc.communicate(timeout=1500)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        left = alive(seen)
        deadline = time.time() + 60  # `kill %1` returns at once; serve-device stops its children
        while time.time() < deadline and left:
            time.sleep(0.5)
            left = alive(seen)
        terminate(seen)  # whatever a failure left behind (serve-device first: it cleans up)
    serve_log = (work / "serve.log").read_text() if (work / "serve.log").exists() else ""
    assert proc.returncode == 0, out[-4000:] + serve_log[-2000:]
    found = re.search(r"this run (\d+)/(\d+) valid trials", out)
    assert found, out[-3000:]
    valid, total = int(found[1]), int(found[2])
    assert valid == total >= 8, found[0]  # every trial measured on the (emulated) device
    data = json.loads((work / "bench-rpi4.json").read_text())
    assert data["emulated"] is True
    assert {r["config"]: r["ok"] for r in data["results"]} == {"tvm": True, "dense": True}
    assert not left, f"processes left behind: {left}"
    assert "stopped every server and tracker" in serve_log
