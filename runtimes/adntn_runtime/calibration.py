"""Short on-device measurements that calibrate the policy, cached per device and model.

Two kinds of numbers:

* :class:`~adntn_runtime.policy.DeviceRates` (per thread count): ORT ``Gemm`` rate when
  compute-bound, the rate of streaming a weight larger than the caches, the rate of the
  generator's small ``Einsum`` contractions, the cost per element an einsum writes, and the
  fixed cost of a node. About a second in all.
* per-layer latencies: each candidate mode of each ADNTN layer lowered alone
  (:func:`adntn_runtime.onnx_lowering.layer_model`) and timed (median of a few runs).

Both are cached under ``$ADNTN_CACHE_DIR/calibration/`` (default
``~/.cache/adntn/calibration/``). The rates are the device's, not a model's: one file per
(CPU model, ORT version), measured the first time any model is calibrated on the device (or
beforehand, by ``python -m adntn_runtime.calibration --threads N`` at deployment) and shared by
every model after::

    device-<digest>.json: {"format": 1, "cpu": "...", "onnxruntime": "1.31.1",
                           "rates": {"threads=1": {"gemm_gflops": ..., ...}}}

The per-layer latencies are one file per (CPU model, ORT version, model sha256)::

    <digest>.json: {"format": 1, "cpu": "...", "onnxruntime": "1.31.1", "model_sha256": "...",
     "layers": {"fc|fused|einsum=1|b1|t1|tile=None": {"ms": 0.14, "rss_bytes": 12288}}}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from adntn_runtime.files import atomic_write
from adntn_runtime.policy import DeviceRates

__all__ = [
    "CalibrationCache",
    "DeviceRatesCache",
    "cache_dir",
    "cpu_model",
    "device_rates",
    "measure_device_rates",
    "sha256_file",
    "time_call",
    "vm_rss_bytes",
]

CACHE_FORMAT = 1


def cache_dir() -> Path:
    """``$ADNTN_CACHE_DIR`` or ``~/.cache/adntn``."""
    env = os.environ.get("ADNTN_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "adntn"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def vm_rss_bytes(field: str = "VmRSS") -> int:
    """``VmRSS`` (or ``VmHWM``) of this process from ``/proc/self/status``; 0 if unavailable."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def time_call(
    fn: Callable[[], Any],
    *,
    warmup: int = 2,
    min_runs: int = 3,
    max_runs: int = 25,
    max_seconds: float = 0.3,
) -> float:
    """Median milliseconds of ``fn()`` after ``warmup`` calls, within a time box."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_runs and time.perf_counter() - start > max_seconds:
            break
    return statistics.median(times) * 1e3


class _JsonCache:
    """One JSON file of the calibration cache, keyed by this device (CPU model, ORT version)
    and ``extra`` (written atomically; a missing, corrupt or foreign file reads as empty)."""

    def __init__(self, stem: str, extra: dict[str, str], directory: Path | None) -> None:
        import onnxruntime as ort

        self.cpu = cpu_model()
        self.ort_version = ort.__version__
        key = "|".join([self.cpu, self.ort_version, *extra.values()])
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        self.path = (directory or cache_dir()) / "calibration" / f"{stem}{digest}.json"
        self.data: dict[str, Any] = {
            "format": CACHE_FORMAT,
            "cpu": self.cpu,
            "onnxruntime": self.ort_version,
            **extra,
        }
        self.loaded = False
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(self.path.read_text())
            if isinstance(data, dict) and all(data.get(k) == v for k, v in self.data.items()):
                self.data.update(data)
                self.loaded = True
        self._dirty = False

    def save(self) -> None:
        """Write the file atomically (best effort: an unwritable cache is not an error)."""
        if not self._dirty:
            return
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.path) as f:
                f.write(json.dumps(self.data, indent=1, sort_keys=True).encode())
            self._dirty = False


class DeviceRatesCache(_JsonCache):
    """The device rates of this CPU and ORT version, per thread count (every model's)."""

    def __init__(self, *, directory: Path | None = None) -> None:
        super().__init__("device-", {}, directory)
        self.data.setdefault("rates", {})

    def rates(self, threads: int) -> DeviceRates | None:
        """Cached device rates for ``threads``, or None."""
        got = self.data["rates"].get(f"threads={threads}")
        return DeviceRates.from_dict(got) if isinstance(got, dict) else None

    def set_rates(self, threads: int, rates: DeviceRates) -> None:
        """Store device rates for ``threads``."""
        self.data["rates"][f"threads={threads}"] = rates.to_dict()
        self._dirty = True


def device_rates(
    threads: int = 1, *, directory: Path | None = None, force: bool = False
) -> DeviceRates:
    """This device's rates for ``threads``: from the cache, else (or with ``force``) measured
    (about a second, a 16 MiB weight resident meanwhile) and cached for every later load of
    any model."""
    cache = DeviceRatesCache(directory=directory)
    got = None if force else cache.rates(threads)
    if got is None:
        got = measure_device_rates(threads)
        cache.set_rates(threads, got)
        cache.save()
    return got


class CalibrationCache(_JsonCache):
    """The per-layer measurements of one model on this device (CPU model, ORT version)."""

    def __init__(self, model_sha256: str, *, directory: Path | None = None) -> None:
        super().__init__("", {"model_sha256": model_sha256}, directory)
        self.model_sha256 = model_sha256
        self.data.setdefault("layers", {})

    def layer(self, key: str) -> dict[str, float] | None:
        """A cached per-layer measurement, or None."""
        return self.data["layers"].get(key)

    def set_layer(self, key: str, value: dict[str, float]) -> None:
        """Store a per-layer measurement."""
        self.data["layers"][key] = value
        self._dirty = True


def _session_options(threads: int, config: dict[str, str]) -> Any:
    """Quiet ORT options for a measurement: ``threads`` intra-op, one inter-op, ``config``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    for key, value in config.items():
        so.add_session_config_entry(key, value)
    return so


def _session(model: Any, threads: int, *, folding: bool = True) -> Any:
    import onnxruntime as ort

    config = {} if folding else {"optimization.disable_specified_optimizers": "ConstantFolding"}
    so = _session_options(threads, config)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _gemm_session(m: int, n: int, threads: int, *, prepack: bool = True) -> Any:
    """An ORT session of ``y = x @ w.T`` with a random ``(m, n)`` weight that ORT reads from a
    file itself (written in row blocks): the weight is resident once, in ORT's pre-packed
    copy (or, with ``prepack=False``, as read: batch-1 calls stream it as stored), and never
    also in numpy, in a protobuf or in serialized bytes."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", m])
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[m, n])
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", str(4 * m * n))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([node], "gemm", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    so = _session_options(threads, {} if prepack else {"session.disable_prepacking": "1"})
    with tempfile.TemporaryDirectory(prefix="adntn-rates-") as tmp:
        with open(Path(tmp) / "w.bin", "wb") as f:
            rows = max(1, (1 << 22) // (4 * n))
            for r in range(0, m, rows):
                f.write(memoryview(rng.standard_normal((min(rows, m - r), n), dtype=np.float32)))
        path = Path(tmp) / "gemm.onnx"
        path.write_bytes(model.SerializeToString())
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def measure_device_rates(threads: int = 1) -> DeviceRates:
    """Micro-benchmarks of ORT on this device (about a second); see the module docstring."""
    from adntn_runtime.layer_spec import LayerSpec
    from adntn_runtime.plan import ADNTNPlan
    from adntn_runtime.substitution import layer_model

    rng = np.random.default_rng(0)
    # Compute-bound GEMM: batch 64 through a 1024x1024 weight (in cache).
    s = _gemm_session(1024, 1024, threads)
    x = rng.standard_normal((64, 1024), dtype=np.float32)
    ms = time_call(lambda: s.run(None, {"x": x}), max_seconds=0.25)
    gemm = 2 * 64 * 1024 * 1024 / (ms * 1e6)
    # Streaming: batch 1 through a 16 MiB weight, 4x the last-level cache of the edge CPUs
    # (Pi 5: 2 MiB, Jetson Orin: 4 MiB). On this project's 2-core host a 32 MiB weight
    # measured 23.8-24.5 GB/s and this one 25.1-25.6, but the probe's peak fell from 111 to
    # 95 MB: it must stay near the peak of the small models it serves (canonical AlexNet
    # compressed whole, fused: ~100 MB).
    del s  # one session at a time
    s = _gemm_session(1024, 4096, threads, prepack=False)  # batch 1: no packed copy needed
    x1 = rng.standard_normal((1, 4096), dtype=np.float32)
    ms = time_call(lambda: s.run(None, {"x": x1}), max_seconds=0.25)
    bw = 1024 * 4096 * 4 / (ms * 1e6)
    del s
    # Node overhead: a chain of 32 tiny Einsum nodes.
    from onnx import TensorProto, helper, numpy_helper

    nodes, prev = [], "x"
    for k in range(32):
        nodes.append(helper.make_node("Einsum", [prev, "c"], [f"v{k}"], equation="ab,bc->ac"))
        prev = f"v{k}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.eye(4, dtype=np.float32), "c")],
    )
    chain = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    chain.ir_version = 10
    s = _session(chain, threads)
    xs = np.ones((1, 4), np.float32)
    overhead_us = time_call(lambda: s.run(None, {"x": xs}), max_seconds=0.15) * 1e3 / 32
    # Einsum rate and per-element cost: a fused and a regenerated 1024x1024 TTN layer.
    plan = ADNTNPlan(1024, 1024, network="ttn", bond_dim=4)
    cores = {k: rng.standard_normal(c.shape, dtype=np.float32) for k, c in plan.cores.items()}
    spec = LayerSpec("cal", "linear", plan, cores)
    base = DeviceRates(gemm, bw, 1.0, 0.0, overhead_us)
    from adntn_runtime.policy import predict_latency_ms

    xb = rng.standard_normal((32, 1024), dtype=np.float32)
    del s
    s = _session(layer_model(spec, "fused", input_shape=("batch", 1024)), threads)
    fused_ms = time_call(lambda: s.run(None, {"input": xb}), max_seconds=0.2)
    cost = plan.cost("fused", 32)
    fixed = predict_latency_ms(plan, "fused", 32, replace_rates(base, einsum_gflops=1e12))
    einsum = cost.flops / max((fused_ms - fixed) * 1e6, 1e-3)
    einsum = min(max(einsum, 0.05), gemm)
    regen = layer_model(spec, "regenerate", input_shape=("batch", 1024))
    del s
    s = _session(regen, threads, folding=False)
    regen_ms = time_call(lambda: s.run(None, {"input": x[:1]}), warmup=1, max_seconds=0.3)
    with_rate = replace_rates(base, einsum_gflops=einsum)
    rest = predict_latency_ms(plan, "regenerate", 1, with_rate)
    from adntn_runtime.policy import _written_elements

    written = _written_elements(plan, "regenerate", 1, None)
    ns = max((regen_ms - rest) * 1e6 / max(written, 1), 0.0)
    return DeviceRates(gemm, bw, einsum, ns, overhead_us)


def replace_rates(rates: DeviceRates, **changes: float) -> DeviceRates:
    """A copy of ``rates`` with some fields changed."""
    return DeviceRates(**{**rates.to_dict(), **changes})


def main(argv: list[str] | None = None) -> int:
    """``python -m adntn_runtime.calibration --threads 1,2``: measure and cache this device's
    rates ahead of the first load (e.g. at deployment); prints them and the cache file."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m adntn_runtime.calibration",
        description="Measure this device's rates for the runtime's policy and cache them.",
    )
    parser.add_argument("--threads", default="1", help="comma-separated ORT thread counts")
    parser.add_argument("--force", action="store_true", help="measure even if cached")
    args = parser.parse_args(argv)
    try:
        counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        parser.error(f"--threads {args.threads!r}: give positive integers, e.g. 1,2")
    for threads in counts:
        rates = device_rates(threads, force=args.force)
        print(f"threads={threads}: " + json.dumps(rates.to_dict()))
    print(f"cached in {DeviceRatesCache().path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
