"""Runs the README's "From a trained model to a Raspberry Pi" commands, exactly as written
(parsed from its ``sh`` block), the on-device line under qemu-user; the logits it writes match
TVM's own and ONNX Runtime's on the dense lowering of the same file."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## From a trained model to a Raspberry Pi"


def readme_commands() -> list[str]:
    """The command lines of the section's ``sh`` block (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    block = re.search(r"```sh\n(.*?)```", text[start:], re.S)
    assert block, f"no ```sh block under {SECTION!r}"
    lines = [ln.strip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_readme_section_lists_the_journey():
    cmds = readme_commands()
    verbs = [shlex.split(c)[1] for c in cmds if c.startswith("adntn ")]
    assert verbs == ["train", "export", "compile"]
    assert "--target rpi4" in cmds[2] and cmds[-1].split("&&")[-1].strip().startswith("pi4/")


@pytest.mark.slow
def test_readme_pi_commands_run(tmp_path):
    pytest.importorskip("tvm")
    for tool in ("aarch64-linux-gnu-g++", "qemu-aarch64-static"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    from adntn_export.tvm_backend.runner_build import runner_command

    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for cmd in readme_commands():
        if "pi4/runtime/tvm_runner" in cmd:  # the on-device line: run it under qemu-user
            prefix = " ".join(runner_command(Path("pi4/runtime/tvm_runner"), "aarch64")[:-1])
            cmd = cmd.replace("pi4/runtime/tvm_runner", f"{prefix} pi4/runtime/tvm_runner")
        proc = subprocess.run(
            cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        if cmd.startswith("adntn compile"):
            assert "pi4/runtime/tvm_runner pi4/model.so RESULTS --materialize" in proc.stdout
    got = np.load(tmp_path / "results" / "output_0.npy")
    import adntn_runtime

    x = np.load(tmp_path / "image.npy")
    ref = adntn_runtime.load(tmp_path / "small_cnn.onnx", modes="materialize", calibrate=False)
    want = ref.run({"input": x})[0]
    assert got.shape == want.shape == (1, 10)
    assert float(np.abs(got - want).max() / np.abs(want).max()) < 1e-4
