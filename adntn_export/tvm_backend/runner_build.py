"""Build the C++ ``tvm_runner`` (``runtimes/tvm_runner/runner.cc``) for an architecture.

The binary is linked against ``libtvm_runtime.so`` and ``libtvm_ffi.so`` of that
architecture (see :mod:`.device_runtime`) with ``RUNPATH=$ORIGIN``, so it runs when placed next
to them (e.g. in ``OUT/runtime/``). Build outputs go to the cache, never into the repository::

    <cache>/tvm_runner/<arch>-<sha256(runner.cc)[:12]>/tvm_runner

On x86 hosts aarch64 binaries run under ``qemu-aarch64-static -L /usr/aarch64-linux-gnu``
(:func:`runner_command`).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from adntn_export.tvm_backend.device_runtime import cache_dir, ensure_runtime
from adntn_export.tvm_backend.targets import CROSS_COMPILER_PACKAGES, _machine_arch

#: Source of the runner, next to the other runtimes of the repository.
RUNNER_SOURCE = Path(__file__).resolve().parents[2] / "runtimes" / "tvm_runner" / "runner.cc"

QEMU = {"aarch64": ("qemu-aarch64-static", "/usr/aarch64-linux-gnu", "qemu-user-static")}


def _compiler(arch: str) -> str:
    cxx = "g++" if arch == _machine_arch() else f"{arch}-linux-gnu-g++"
    if shutil.which(cxx) is None:
        pkg = CROSS_COMPILER_PACKAGES.get(cxx, "g++")
        raise RuntimeError(f"{cxx!r} not found on PATH; install the Debian package {pkg!r}")
    return cxx


def build_runner(arch: str, *, download: bool = True) -> Path:
    """Build (or reuse from the cache) the runner for ``arch``; returns the binary's path.

    The runtime libraries are copied beside the binary so ``$ORIGIN`` resolves them.
    """
    if not RUNNER_SOURCE.exists():
        raise FileNotFoundError(f"runner source not found: {RUNNER_SOURCE}")
    tree = ensure_runtime(arch, download=download)
    digest = hashlib.sha256(RUNNER_SOURCE.read_bytes()).hexdigest()[:12]
    out_dir = cache_dir() / "tvm_runner" / f"{arch}-{digest}"
    exe = out_dir / "tvm_runner"
    if exe.exists():
        return exe
    out_dir.mkdir(parents=True, exist_ok=True)
    for lib in tree.libraries():
        shutil.copy2(lib, out_dir / lib.name)
    tmp = out_dir / "tvm_runner.tmp"
    cmd = [
        _compiler(arch),
        "-std=c++17",
        "-O2",
        str(RUNNER_SOURCE),
        f"-I{tree.ffi_include}",
        f"-I{tree.dlpack_include}",
        f"-L{out_dir}",
        "-ltvm_runtime",
        "-ltvm_ffi",
        "-Wl,-rpath,$ORIGIN",
        "-o",
        str(tmp),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building tvm_runner failed:\n{proc.stderr[-4000:]}")
    tmp.replace(exe)
    return exe


def runner_command(exe: Path, arch: str) -> list[str]:
    """Command prefix that runs ``exe`` here (through qemu-user for foreign architectures)."""
    if arch == _machine_arch():
        return [str(exe)]
    qemu, sysroot, pkg = QEMU.get(arch, (f"qemu-{arch}-static", f"/usr/{arch}-linux-gnu", "?"))
    if shutil.which(qemu) is None:
        raise RuntimeError(f"{qemu!r} not found; install the Debian package {pkg!r}")
    return [qemu, "-L", sysroot, str(exe)]
