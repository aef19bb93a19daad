"""Load an exported OUTDIR and run or benchmark it: in-process, over RPC, or via the C++ runner.

* :func:`load` / :class:`LoadedModel` - ``tvm.runtime.load_module`` + ``relax.VirtualMachine``
  on this machine (host-architecture CPU artefacts only).
* :func:`load_rpc` - upload ``model.so`` to an RPC server (directly or through a tracker)
  and run it there; the same :class:`LoadedModel` interface.
* :func:`run_with_runner` - run through ``runtimes/tvm_runner`` (under qemu-user for aarch64).
* :func:`bench` - warm-up then many timed runs; p50/p90/p99 in milliseconds.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adntn_export.tvm_backend.compile import Manifest


@dataclass
class BenchResult:
    """Latency statistics in milliseconds."""

    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    def __str__(self) -> str:
        return (
            f"p50 {self.p50_ms:.3f} ms, p90 {self.p90_ms:.3f} ms, p99 {self.p99_ms:.3f} ms "
            f"({self.runs} runs)"
        )


def _stats(times_s: Sequence[float]) -> BenchResult:
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return BenchResult(len(ms), float(p50), float(p90), float(p99), float(ms.mean()))


class LoadedModel:
    """A Relax VM over an exported model, with the materialized weights (if any) bound."""

    def __init__(self, vm: Any, manifest: Manifest, device: Any, session: Any = None) -> None:
        self.vm = vm
        self.manifest = manifest
        self.device = device
        self.session = session  # keeps an RPC session alive
        self._weights: list[Any] = []
        if manifest.materialize:  # weight generation, once at load
            self._weights = _leaves(self._call(manifest.materialize, []))

    def _call(self, fn: str, args: list[Any]) -> Any:
        # stateful invocation: tuple results come back as Python tuples, also over RPC
        self.vm.set_input(fn, *args)
        self.vm.invoke_stateful(fn)
        return self.vm.get_outputs(fn)

    def _args(self, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[Any]:
        import tvm

        names = [t.name for t in self.manifest.inputs]
        if isinstance(inputs, Mapping):
            missing = [n for n in names if n not in inputs]
            if missing:
                raise ValueError(f"missing inputs {missing}; model inputs: {names}")
            arrays = [inputs[n] for n in names]
        else:
            arrays = list(inputs)
            if len(arrays) != len(names):
                raise ValueError(f"expected {len(names)} inputs ({names}), got {len(arrays)}")
        args = []
        for info, arr in zip(self.manifest.inputs, arrays, strict=True):
            arr = np.ascontiguousarray(arr, dtype=info.dtype)
            if list(arr.shape) != info.shape:
                raise ValueError(f"input {info.name!r}: shape {list(arr.shape)} != {info.shape}")
            args.append(tvm.runtime.tensor(arr, device=self.device))
        return args + self._weights

    def run(self, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run ``main`` once; returns the outputs as numpy arrays."""
        return [t.numpy() for t in _leaves(self._call("main", self._args(inputs)))]

    def bench(
        self,
        inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
        *,
        warmup: int = 10,
        runs: int = 100,
    ) -> BenchResult:
        """Time ``main`` (inputs already on the device); on RPC, timed on the remote side."""
        args = self._args(inputs)
        if self.session is not None:
            self.vm.set_input("main", *args)
            timer = self.vm.module.time_evaluator(
                "invoke_stateful", self.device, number=1, repeat=runs, min_repeat_ms=0
            )
            self.vm.module["invoke_stateful"]("main")
            return _stats(list(timer("main").results))
        fn = self.vm["main"]
        return bench(lambda: fn(*args), warmup=warmup, runs=runs, sync=self.device.sync)


def _leaves(out: Any) -> list[Any]:
    if isinstance(out, tuple | list):
        return [leaf for item in out for leaf in _leaves(item)]
    return [out]


def bench(
    fn: Callable[[], Any],
    *,
    warmup: int = 10,
    runs: int = 100,
    sync: Callable[[], Any] | None = None,
) -> BenchResult:
    """Call ``fn`` ``warmup`` times, then time ``runs`` calls; percentiles in ms."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return _stats(times)


def _device_for(manifest: Manifest, session: Any = None) -> Any:
    import tvm

    api = session if session is not None else tvm
    name = {"cpu": "cpu", "cuda": "cuda", "opencl": "cl"}[manifest.kind]
    return getattr(api, name)(0)


def load(out_dir: str | os.PathLike[str]) -> LoadedModel:
    """Load an OUTDIR built for this machine (``host``, or a same-architecture CPU target)."""
    import tvm
    from tvm import relax

    from adntn_export.tvm_backend.targets import _machine_arch

    manifest = Manifest.load(out_dir)
    if manifest.arch != _machine_arch() or manifest.kind != "cpu":
        raise RuntimeError(
            f"{out_dir} was built for {manifest.target} ({manifest.arch}, {manifest.kind}); "
            f"it cannot run in-process on this {_machine_arch()} CPU: use load_rpc or "
            "run_with_runner"
        )
    lib = tvm.runtime.load_module(str(Path(out_dir) / "model.so"))
    dev = tvm.cpu()
    return LoadedModel(relax.VirtualMachine(lib, dev), manifest, dev)


def load_rpc(
    out_dir: str | os.PathLike[str],
    *,
    tracker: str | None = None,
    key: str | None = None,
    server: str | None = None,
    timeout: float = 10.0,
) -> LoadedModel:
    """Upload ``model.so`` to a remote TVM RPC server and load it there.

    Give either ``tracker="HOST:PORT"`` and ``key`` (request a device from a tracker), or
    ``server="HOST:PORT"`` (connect to a server directly).
    """
    from tvm import relax

    from adntn_export.tvm_backend.rpc import connect

    manifest = Manifest.load(out_dir)
    sess = connect(tracker=tracker, key=key, server=server, timeout=timeout)
    sess.upload(str(Path(out_dir) / "model.so"))
    lib = sess.load_module("model.so")
    dev = _device_for(manifest, sess)
    return LoadedModel(relax.VirtualMachine(lib, dev), manifest, dev, session=sess)


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

    manifest = Manifest.load(out_dir)
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
