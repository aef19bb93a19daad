"""Named deployment targets for the TVM backend.

Every target is a plain dict in TVM's ``Target`` JSON form (TVM 0.27 rejects CLI strings),
wrapped in ``tvm.target.Target`` only when needed. Tags exist in TVM for the Pi 4, the Jetson
Orin boards and Adreno, but the Orin Nano tag names the wrong host CPU (``carmel``) and there are
no tags for the Pi 5 or Mali GPUs, so this registry spells every target out.
"""

from __future__ import annotations

import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["cpu", "cuda", "opencl"]

#: Debian package that provides each cross-compiler we use.
CROSS_COMPILER_PACKAGES = {"aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu"}


def _cortex(mcpu: str, mattr: list[str], cores: int | None = None) -> dict[str, Any]:
    """LLVM target dict of an aarch64 Linux Cortex CPU."""
    attrs: dict[str, Any] = {
        "kind": "llvm",
        "mtriple": "aarch64-linux-gnu",
        "mcpu": mcpu,
        "mattr": mattr,
    }
    if cores is not None:
        attrs["num-cores"] = cores
    return attrs


_A72 = _cortex("cortex-a72", ["+neon"], cores=4)
_A76 = _cortex("cortex-a76", ["+neon", "+dotprod", "+fullfp16"], cores=4)
_A78 = _cortex("cortex-a78", ["+neon", "+dotprod", "+fullfp16"])
_ORIN_GPU = {
    "kind": "cuda",
    "arch": "sm_87",
    "max_num_threads": 1024,
    "max_threads_per_block": 1024,
    "thread_warp_size": 32,
    "max_shared_memory_per_block": 49152,
    "registers_per_block": 65536,
}


@dataclass(frozen=True)
class TargetSpec:
    """A named deployment target.

    ``target`` is the device target dict (without ``host``); ``host`` the CPU that runs the
    Relax VM and launches kernels (``None`` for CPU targets, whose host is the target itself).
    ``cross_compiler`` is the linker used by ``export_library`` (``None``: the host's ``g++``).
    ``arch`` is the CPU architecture of the device (``x86_64``/``aarch64``).
    """

    name: str
    target: dict[str, Any]
    host: dict[str, Any] | None
    cross_compiler: str | None
    kind: Kind
    description: str
    arch: str
    extra: dict[str, Any] = field(default_factory=dict)

    def target_dict(self) -> dict[str, Any]:
        """The full target dict (device + ``host``), as given to ``tvm.target.Target``."""
        out = dict(self.target)
        if self.name == "host":
            out.update(_host_cpu_attrs())
        if "num-cores" in self.extra and self.kind == "cpu":
            out["num-cores"] = int(self.extra["num-cores"])
        if self.host is not None:
            out["host"] = dict(self.host)
        return out

    def with_num_cores(self, n: int) -> TargetSpec:
        """This CPU target with ``num-cores=n`` (MetaSchedule parallelises for ``n`` cores;
        run the result with ``TVM_NUM_THREADS=n``). E.g. ``1`` for batch-1 latency on a loaded
        machine, where thread-pool wake-ups cost as much as the kernels."""
        import dataclasses

        if self.kind != "cpu" or n < 1:
            raise ValueError(f"num-cores applies to CPU targets (n >= 1), not {self.name!r}/{n}")
        return dataclasses.replace(self, extra={**self.extra, "num-cores": int(n)})

    def tvm_target(self) -> Any:
        """``tvm.target.Target`` for this spec (imports tvm)."""
        import tvm

        return tvm.target.Target(self.target_dict())

    @property
    def is_cross(self) -> bool:
        """Whether artefacts are built for another CPU architecture than this machine's."""
        return self.arch != _machine_arch()

    def require_cross_compiler(self) -> str | None:
        """Path of the cross-compiler, or ``None`` for native builds.

        Raises ``RuntimeError`` naming the Debian package when the compiler is missing.
        """
        if self.cross_compiler is None:
            return None
        path = shutil.which(self.cross_compiler)
        if path is None:
            pkg = CROSS_COMPILER_PACKAGES.get(self.cross_compiler, self.cross_compiler)
            raise RuntimeError(
                f"target {self.name!r} needs the cross-compiler {self.cross_compiler!r}, which is "
                f"not on PATH; install it with `apt-get install {pkg}` (Debian/Ubuntu package "
                f"{pkg!r})"
            )
        return path

    def fcompile(self) -> Callable[..., Any] | None:
        """``fcompile`` for ``export_library``: the cross-linker, or ``None`` for the default."""
        cc = self.require_cross_compiler()
        if cc is None:
            return None
        import tvm.support.cc

        return tvm.support.cc.cross_compiler(cc)


def _machine_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def _host_cpu_attrs() -> dict[str, Any]:
    """``mcpu`` and ``num-cores`` of this machine (TVM's LLVM rejects ``-mcpu=native``;
    MetaSchedule needs ``num-cores``)."""
    import os

    from tvm.target import codegen

    attrs: dict[str, Any] = {"num-cores": os.cpu_count() or 1}
    cpu = str(codegen.llvm_get_system_cpu())
    if cpu and cpu != "generic":
        attrs["mcpu"] = cpu
    return attrs


def _cross(arch: str) -> str | None:
    return None if arch == _machine_arch() else f"{arch}-linux-gnu-g++"


def _board(
    name: str, kind: Kind, description: str, target: dict[str, Any], host: dict[str, Any] | None
) -> TargetSpec:
    """An aarch64 board: built natively on aarch64, cross-compiled from anywhere else."""
    return TargetSpec(
        name=name,
        target=dict(target),
        host=None if host is None else dict(host),
        cross_compiler=_cross("aarch64"),
        kind=kind,
        description=description,
        arch="aarch64",
    )


def _mobile_opencl(device: str, shared_memory: int, **attrs: Any) -> dict[str, Any]:
    """OpenCL target dict of a mobile GPU: 256 threads a block, no warps."""
    return {
        "kind": "opencl",
        "device": device,
        "max_num_threads": 256,
        "max_threads_per_block": 256,
        "thread_warp_size": 1,
        "max_shared_memory_per_block": shared_memory,
        **attrs,
    }


_REGISTRY: dict[str, TargetSpec] = {
    spec.name: spec
    for spec in [
        TargetSpec(
            name="host",
            target={"kind": "llvm"},
            host=None,
            cross_compiler=None,
            kind="cpu",
            description="This machine's CPU (LLVM, mcpu detected at compile time).",
            arch=_machine_arch(),
        ),
        _board(
            "rpi4",
            "cpu",
            "Raspberry Pi 4B: 4x Cortex-A72, NEON (as TVM tag raspberry-pi/4b-aarch64).",
            _A72,
            None,
        ),
        _board(
            "rpi5",
            "cpu",
            "Raspberry Pi 5: 4x Cortex-A76, NEON + dotprod + fp16 (no TVM tag).",
            _A76,
            None,
        ),
        _board(
            "jetson-orin-nano",
            "cuda",
            "Jetson Orin Nano: Ampere sm_87 GPU, 6x Cortex-A78AE host "
            "(TVM's tag says carmel, which is wrong).",
            _ORIN_GPU,
            {**_A78, "num-cores": 6},
        ),
        _board(
            "jetson-orin-agx",
            "cuda",
            "Jetson AGX Orin: Ampere sm_87 GPU, 12x Cortex-A78AE host.",
            _ORIN_GPU,
            {**_A78, "num-cores": 12},
        ),
        _board(
            "mali",
            "opencl",
            "ARM Mali GPU via OpenCL (-device=mali; no TVM tag), Cortex-A76 host.",
            _mobile_opencl("mali", 32768),
            _A76,
        ),
        _board(
            "adreno",
            "opencl",
            "Qualcomm Adreno GPU via OpenCL (as TVM tag qcom/adreno-opencl), "
            "Kryo (Cortex-A76-class) host.",
            _mobile_opencl(
                "adreno",
                16384,
                texture_spatial_limit=16384,
                texture_depth_limit=2048,
                image_base_address_alignment=64,
            ),
            _A76,
        ),
    ]
}


def target_names() -> list[str]:
    """Names accepted by :func:`get_target`."""
    return list(_REGISTRY)


def get_target(name: str | TargetSpec) -> TargetSpec:
    """Look up a named target; raises ``ValueError`` naming the bad value and the valid ones."""
    if isinstance(name, TargetSpec):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown target {name!r}; valid targets: {', '.join(_REGISTRY)}"
        ) from None
