"""Load a compiled OUTDIR (``adntn compile``) and run or time it: in-process or over RPC.

* :func:`load` - ``tvm.runtime.load_module`` + ``relax.VirtualMachine`` on this machine
  (CPU artefacts built for this machine's architecture).
* :func:`load_rpc` - upload ``model.so`` to an RPC server (directly or through a tracker)
  and run it there; the same :class:`LoadedModel` interface.
* :func:`bench` - warm-up then many timed runs; p50/p90/p99 in milliseconds.

Both loaders check every file against the manifest's sha256 first (:func:`.verify_files`).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adntn_runtime.tvm.manifest import MODEL_FILE, Manifest, verify_files
from adntn_runtime.tvm.rpc import SESSION_TIMEOUT, connect, device_info


@dataclass
class BenchResult:
    """Latency statistics in milliseconds."""

    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    times_ms: list[float] | None = None

    def __str__(self) -> str:
        return (
            f"p50 {self.p50_ms:.3f} ms, p90 {self.p90_ms:.3f} ms, p99 {self.p99_ms:.3f} ms "
            f"({self.runs} runs)"
        )


def stats(times_s: Sequence[float]) -> BenchResult:
    """Percentiles (ms) of durations given in seconds."""
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return BenchResult(
        len(ms), float(p50), float(p90), float(p99), float(ms.mean()), [float(t) for t in ms]
    )


def machine_arch() -> str:
    """This machine's CPU architecture as the manifests name it (``x86_64``, ``aarch64``)."""
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


class LoadedModel:
    """A Relax VM over an exported model, with the materialized weights (if any) bound."""

    def __init__(self, vm: Any, manifest: Manifest, device: Any, session: Any = None) -> None:
        self.vm = vm
        self.manifest = manifest
        self.device = device
        self.session = session  # keeps an RPC session alive
        #: what the device says about itself (``{"emulated": True, ...}`` on an emulated Pi)
        self.device_info: dict[str, Any] = device_info(session) if session is not None else {}
        self._weights: list[Any] = []
        if manifest.materialize:  # weight generation, once at load
            self._weights = _leaves(self._call(manifest.materialize, []))

    def close(self) -> None:
        """Release the VM, the weights and (over RPC) the device session now.

        TVM's remote objects reference each other, so dropping the model leaves its session
        (and the device, for every other client of the tracker) held until Python's cycle
        collector runs; ``close()`` frees the device at once.
        """
        import gc

        self._weights = []
        self.vm = self.device = self.session = None
        gc.collect()

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: str, args: list[Any]) -> Any:
        # stateful invocation: tuple results come back as Python tuples, also over RPC
        self.vm.set_input(fn, *args)
        self.vm.invoke_stateful(fn)
        return self.vm.get_outputs(fn)

    def device_args(self, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[Any]:
        """Check ``inputs`` against the manifest and copy them to the device (+ weights)."""
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

    _args = device_args  # backwards-compatible name

    def random_inputs(self, seed: int = 0) -> list[np.ndarray]:
        """Standard-normal inputs of the manifest's shapes and dtypes (for timing)."""
        rng = np.random.default_rng(seed)
        return [rng.standard_normal(t.shape).astype(t.dtype) for t in self.manifest.inputs]

    @property
    def batch(self) -> int:
        """Leading dimension of the first input (1 for a scalar input)."""
        shape = self.manifest.inputs[0].shape if self.manifest.inputs else []
        return int(shape[0]) if shape else 1

    def run(self, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run ``main`` once; returns the outputs as numpy arrays."""
        return [t.numpy() for t in _leaves(self._call("main", self.device_args(inputs)))]

    def bench(
        self,
        inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
        *,
        warmup: int = 10,
        runs: int = 100,
    ) -> BenchResult:
        """Time ``main`` (inputs already on the device); on RPC, timed on the remote side."""
        args = self.device_args(inputs)
        if self.session is not None:
            self.vm.set_input("main", *args)
            timer = self.vm.module.time_evaluator(
                "invoke_stateful", self.device, number=1, repeat=runs, min_repeat_ms=0
            )
            for _ in range(max(warmup, 1)):
                self.vm.module["invoke_stateful"]("main")
            return stats(list(timer("main").results))
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
    return stats(times)


def _device_for(manifest: Manifest, session: Any = None) -> Any:
    import tvm

    api = session if session is not None else tvm
    kinds = {"cpu": "cpu", "cuda": "cuda", "opencl": "cl"}
    if manifest.kind not in kinds:
        raise ValueError(f"manifest kind {manifest.kind!r}; valid kinds: {sorted(kinds)}")
    return getattr(api, kinds[manifest.kind])(0)


def load(out_dir: str | os.PathLike[str]) -> LoadedModel:
    """Load an OUTDIR built for this machine (``host``, or a same-architecture CPU target)."""
    import tvm
    from tvm import relax

    manifest = Manifest.load(out_dir)
    if manifest.arch != machine_arch() or manifest.kind != "cpu":
        raise RuntimeError(
            f"{out_dir} was built for {manifest.target} ({manifest.arch}, {manifest.kind}); "
            f"it cannot run in-process on this {machine_arch()} CPU: use load_rpc or "
            "run_with_runner"
        )
    verify_files(out_dir, manifest)
    use_target_threads(manifest.target_config)
    lib = tvm.runtime.load_module(str(Path(out_dir) / MODEL_FILE))
    dev = tvm.cpu()
    return LoadedModel(relax.VirtualMachine(lib, dev), manifest, dev)


#: Environment variables TVM's CPU thread pool reads its size from (the first one set wins).
THREAD_VARS = ("TVM_NUM_THREADS", "OMP_NUM_THREADS")


def use_target_threads(target_config: Mapping[str, Any]) -> int | None:
    """Size TVM's CPU thread pool for the cores the module was tuned for, unless the user did.

    TVM sizes its pool once, at its first parallel call, from ``TVM_NUM_THREADS`` (or
    ``OMP_NUM_THREADS``), else from the logical CPU count, halved on x86 (it assumes
    hyper-threading): on a 2-core x86 machine a module MetaSchedule parallelised for 2 cores
    ran on 1 thread. Where neither variable is set this sets ``TVM_NUM_THREADS`` to the
    target's ``num-cores`` (at most this machine's CPUs) and returns it; None where the user's
    setting stands or the target names no core count. A pool this process already started
    keeps its size.
    """
    if any(os.environ.get(var) for var in THREAD_VARS):
        return None
    cores = target_config.get("num-cores")
    if not isinstance(cores, int) or isinstance(cores, bool) or cores < 1:
        return None
    threads = min(cores, os.cpu_count() or cores)
    os.environ["TVM_NUM_THREADS"] = str(threads)
    return threads


def load_rpc(
    out_dir: str | os.PathLike[str],
    *,
    tracker: str | None = None,
    key: str | None = None,
    server: str | None = None,
    timeout: float = 10.0,
    session_timeout: float = SESSION_TIMEOUT,
) -> LoadedModel:
    """Upload ``model.so`` to a remote TVM RPC server and load it there.

    Give either ``tracker="HOST:PORT"`` and ``key`` (request a device from a tracker), or
    ``server="HOST:PORT"`` (connect to a server directly). The server ends the session after
    ``session_timeout`` seconds.
    """
    from tvm import relax

    manifest = verify_files(out_dir)
    sess = connect(
        tracker=tracker, key=key, server=server, timeout=timeout, session_timeout=session_timeout
    )
    sess.upload(str(Path(out_dir) / MODEL_FILE))
    lib = sess.load_module(MODEL_FILE)
    dev = _device_for(manifest, sess)
    return LoadedModel(relax.VirtualMachine(lib, dev), manifest, dev, session=sess)
