"""TVM runtime libraries for the device (what goes into ``OUT/runtime/``).

For the host architecture the libraries come from the installed ``apache-tvm`` and
``apache-tvm-ffi`` wheels. For other architectures (aarch64) they come from the matching
wheels, downloaded once on request with::

    pip download --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
        --python-version 3.11 apache-tvm==<tvm version> apache-tvm-ffi==<ffi version>

and extracted under the cache directory (never at import time)::

    $ADNTN_CACHE_DIR (default: $XDG_CACHE_HOME/adntn or ~/.cache/adntn)
      tvm-runtime/<tvm version>-<ffi version>-<arch>/{wheels,extracted}/

``extracted`` holds the wheels' ``tvm/`` and ``tvm_ffi/`` trees (libraries and C++ headers).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

#: Platform tags tried in order when downloading the aarch64 wheels.
AARCH64_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64")


def cache_dir() -> Path:
    """Root of the adntn cache (``$ADNTN_CACHE_DIR``, else ``$XDG_CACHE_HOME/adntn``)."""
    env = os.environ.get("ADNTN_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "adntn"


def versions() -> tuple[str, str]:
    """Installed ``apache-tvm`` and ``apache-tvm-ffi`` versions."""
    return metadata.version("apache-tvm"), metadata.version("apache-tvm-ffi")


@dataclass(frozen=True)
class RuntimeTree:
    """Where the TVM runtime libraries and headers for one architecture live."""

    arch: str
    tvm_lib: Path
    ffi_lib: Path
    ffi_include: Path
    dlpack_include: Path

    def libraries(self, kind: str = "cpu") -> list[Path]:
        """Shared libraries a device needs to load a ``model.so`` of this target kind."""
        libs = [self.tvm_lib / "libtvm_runtime.so", self.ffi_lib / "libtvm_ffi.so"]
        if kind == "cuda":
            libs.append(self.tvm_lib / "libtvm_runtime_cuda.so")
        return [p for p in libs if p.exists()]


def _tree(root: Path, arch: str) -> RuntimeTree:
    return RuntimeTree(
        arch=arch,
        tvm_lib=root / "tvm" / "lib",
        ffi_lib=root / "tvm_ffi" / "lib",
        ffi_include=root / "tvm_ffi" / "include",
        dlpack_include=root / "tvm_ffi" / "3rdparty" / "dlpack" / "include",
    )


def _native_root() -> Path:
    import tvm_ffi  # only used for its location; cheap

    return Path(tvm_ffi.__file__).resolve().parent.parent


def _wanted(member: str) -> bool:
    """Wheel members worth extracting: runtime libraries and the tvm-ffi C++ headers."""
    return (
        (member.startswith("tvm/lib/libtvm_runtime") and member.endswith(".so"))
        or member == "tvm_ffi/lib/libtvm_ffi.so"
        or member.startswith(("tvm_ffi/include/", "tvm_ffi/3rdparty/dlpack/include/"))
    )


def runtime_dir(arch: str) -> Path:
    """Cache folder for ``arch``'s runtime (may not exist yet)."""
    tvm_v, ffi_v = versions()
    return cache_dir() / "tvm-runtime" / f"{tvm_v}-{ffi_v}-{arch}"


def find_runtime(arch: str) -> RuntimeTree | None:
    """The runtime tree for ``arch`` if available without downloading, else ``None``."""
    from adntn_export.tvm_backend.targets import _machine_arch

    if arch == _machine_arch():
        tree = _tree(_native_root(), arch)
    else:
        tree = _tree(runtime_dir(arch) / "extracted", arch)
    ok = (tree.tvm_lib / "libtvm_runtime.so").exists() and (tree.ffi_lib / "libtvm_ffi.so").exists()
    return tree if ok else None


def ensure_runtime(arch: str, *, download: bool = True, timeout: float = 600.0) -> RuntimeTree:
    """Return the runtime tree for ``arch``, downloading the wheels with pip if allowed.

    Raises ``RuntimeError`` with the manual command when it cannot be obtained.
    """
    tree = find_runtime(arch)
    if tree is not None:
        return tree
    tvm_v, ffi_v = versions()
    wheels = runtime_dir(arch) / "wheels"
    pkgs = [f"apache-tvm=={tvm_v}", f"apache-tvm-ffi=={ffi_v}"]
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    platforms = AARCH64_PLATFORMS if arch == "aarch64" else (f"manylinux_2_28_{arch}",)
    if not download:
        raise RuntimeError(
            f"TVM runtime libraries for {arch} are not cached under {runtime_dir(arch)}; "
            "call adntn_export.tvm_backend.device_runtime.ensure_runtime"
            f"({arch!r}) (runs `pip download` for {' '.join(pkgs)})"
        )
    wheels.mkdir(parents=True, exist_ok=True)
    errors = []
    for plat in platforms:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--platform",
            plat,
            "--python-version",
            pyver,
            "-d",
            str(wheels),
            *pkgs,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0:
            break
        errors.append(f"{plat}: {proc.stderr.strip().splitlines()[-1:]}")
    else:
        raise RuntimeError(
            f"could not download the {arch} TVM wheels ({'; '.join(errors)}); run by hand: "
            f"pip download --no-deps --only-binary=:all: --platform {platforms[0]} "
            f"-d {wheels} {' '.join(pkgs)}"
        )
    out = runtime_dir(arch) / "extracted"
    for whl in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(whl) as zf:
            zf.extractall(out, [n for n in zf.namelist() if _wanted(n)])
    tree = find_runtime(arch)
    if tree is None:
        raise RuntimeError(f"the downloaded wheels in {wheels} hold no TVM runtime for {arch}")
    return tree
