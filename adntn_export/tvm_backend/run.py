"""Load an exported OUTDIR and run or benchmark it: in-process, over RPC, or via the C++ runner.

The device half (:func:`load`, :func:`load_rpc`, :class:`LoadedModel`, :func:`bench`) lives in
the torch-free runtime, :mod:`adntn_runtime.tvm.run`, and is re-exported here;
:func:`run_with_runner` (which builds ``runtimes/tvm_runner``) is host toolchain.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adntn_runtime.tvm.manifest import Manifest, verify_files
from adntn_runtime.tvm.run import (
    BenchResult,
    LoadedModel,
    bench,
    load,
    load_rpc,
    machine_arch,
)
from adntn_runtime.tvm.run import stats as _stats

__all__ = [
    "BenchResult",
    "LoadedModel",
    "Manifest",
    "bench",
    "load",
    "load_rpc",
    "machine_arch",
    "run_with_runner",
    "_stats",
]


def run_with_runner(
    out_dir: str | os.PathLike[str],
    inputs: Sequence[np.ndarray],
    *,
    repeat: int = 0,
    timeout: float = 600.0,
) -> tuple[list[np.ndarray], float | None]:
    """Run an OUTDIR through the C++ ``tvm_runner`` (qemu-user for foreign CPUs).

    Returns ``(outputs, p50_ms)``; ``p50_ms`` is ``None`` unless ``repeat > 0`` (and is
    meaningless under emulation). Only CPU-kind artefacts can run here.
    """
    from adntn_export.tvm_backend.runner_build import build_runner, runner_command

    manifest = verify_files(out_dir)
    if manifest.kind != "cpu":
        raise RuntimeError(f"tvm_runner only runs CPU artefacts here, not {manifest.kind}")
    exe = build_runner(manifest.arch)
    with tempfile.TemporaryDirectory(prefix="adntn-runner-") as tmp:
        args = []
        for i, (info, arr) in enumerate(zip(manifest.inputs, inputs, strict=True)):
            path = Path(tmp) / f"input_{i}.npy"
            np.save(path, np.ascontiguousarray(arr, dtype=info.dtype))
            args.append(str(path))
        cmd = runner_command(exe, manifest.arch) + [str(Path(out_dir, "model.so").resolve()), tmp]
        if manifest.materialize:
            cmd.append("--materialize")
        if repeat:
            cmd += ["--repeat", str(repeat)]
        proc = subprocess.run(cmd + args, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"tvm_runner failed ({proc.returncode}): {proc.stderr.strip()}")
        n = len(manifest.outputs)
        outs = [np.load(Path(tmp) / f"output_{i}.npy") for i in range(n)]
    p50 = None
    for line in proc.stdout.splitlines():
        if line.startswith("p50_ms="):
            p50 = float(line.split("=", 1)[1])
    return outs, p50
