"""Where a whole model's time goes: ONNX Runtime per node beside TVM's tuned kernels per task.

The ORT side loads the model with the device runtime (``adntn_runtime.load(...,
modes=..., profile_prefix=...)``, the session the whole-model benchmark times), runs it
``--runs`` times after ``--warmup`` calls and reports each node's median kernel time from ORT's
own profile, beside the end-to-end p50 of a second session without profiling. The TVM side
(``--tvm-dir``, an ``adntn tune`` output folder) reads the best measured latency of each
tuning task from the folder's ``manifest.json`` (MetaSchedule's own measurement of the kernel
alone; only the tasks of the last tuning run). Kernel times on either side are measured in
isolation of the rest of the call: their sum is not the end-to-end latency.

Usage::

    PYTHONPATH=.:runtimes:models python benchmarks/op_profile.py MODEL.onnx [--modes fused]
        [--threads 2] [--batch 1] [--runs 60] [--tvm-dir OUT] [--top 20]

Prints a table and adds an entry (keyed by file, modes, threads and batch) to
``benchmarks/results/op_profile.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from model_suite import _machine, current_other_share  # noqa: E402

RESULTS = HERE / "results" / "op_profile.json"


def _inputs(session: Any, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for name, shape in session.input_shapes.items():
        dims = [batch if (i == 0 and d is None) else d for i, d in enumerate(shape)]
        if any(d is None for d in dims):
            raise SystemExit(
                f"op_profile: input {name!r} has a symbolic dimension besides the batch {shape}"
            )
        feeds[name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def node_medians(trace: list[dict[str, Any]], runs: int) -> list[dict[str, Any]]:
    """Each node's median kernel time (us) over its last ``runs`` calls in an ORT profile."""
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for event in trace:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            op = str(event.get("args", {}).get("op_name", "?"))
            times[(name[: -len("_kernel_time")], op)].append(float(event["dur"]))
    rows = [
        {"node": node, "op": op, "median_us": statistics.median(v[-runs:]), "calls": len(v)}
        for (node, op), v in times.items()
    ]
    return sorted(rows, key=lambda r: -r["median_us"])


def profile_ort(
    path: Path, modes: str | None, threads: int, batch: int, runs: int, warmup: int
) -> dict[str, Any]:
    """ORT per-node medians of ``path`` loaded by the device runtime, and the call's p50."""
    import adntn_runtime

    kw: dict[str, Any] = {"threads": threads, "batch": batch}
    if modes:
        kw["modes"] = modes
    with tempfile.TemporaryDirectory(prefix="adntn-prof-") as tmp:
        sess = adntn_runtime.load(path, profile_prefix=str(Path(tmp) / "ort"), **kw)
        feeds = _inputs(sess, batch)
        for _ in range(warmup + runs):
            sess.run(feeds)
        trace = json.loads(Path(sess.ort_session.end_profiling()).read_text())
        picked = {name: d.mode for name, d in sess.decisions.items()}
    del sess
    plain = adntn_runtime.load(path, **kw)  # the same session without profiling, timed
    for _ in range(warmup):
        plain.run(feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        plain.run(feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    nodes = node_medians(trace, runs)
    return {
        "p50_ms": statistics.median(times),
        "modes": picked,
        "nodes": nodes,
        "sum_node_medians_ms": sum(n["median_us"] for n in nodes) / 1e3,
    }


def tvm_tasks(out_dir: Path) -> dict[str, Any]:
    """Best measured latency per tuning task from an ``adntn tune`` folder's manifest."""
    manifest = json.loads((out_dir / "manifest.json").read_text())
    tuned = manifest.get("tuned") or {}
    tasks = (tuned.get("this_run") or {}).get("tasks") or []
    if not tasks:
        raise SystemExit(
            f"op_profile: {out_dir}/manifest.json has no tuning tasks (not an `adntn tune` "
            "output, or its last run tuned nothing: pass the folder of a run that tuned)"
        )
    rows = [
        {"task": t["name"], "best_us": t["best_us"], "trials": t["valid"]}
        for t in tasks
        if t.get("best_us") is not None
    ]
    rows.sort(key=lambda r: -r["best_us"])
    return {
        "trials": tuned.get("valid_records"),
        "tasks": rows,
        "sum_best_ms": sum(r["best_us"] for r in rows) / 1e3,
    }


def table(entry: dict[str, Any], top: int) -> str:
    ort = entry["ort"]
    lines = [
        f"ONNX Runtime ({entry['threads']} threads, batch {entry['batch']}): p50 "
        f"{ort['p50_ms']:.3f} ms; sum of node medians {ort['sum_node_medians_ms']:.3f} ms",
        f"{'node':48s} {'op':12s} {'median us':>10s}",
    ]
    lines += [f"{n['node'][:48]:48s} {n['op']:12s} {n['median_us']:10.1f}" for n in ort["nodes"]][
        :top
    ]
    tvm = entry.get("tvm")
    if tvm:
        lines += [
            "",
            f"TVM tuned ({tvm['trials']} records): sum of task bests {tvm['sum_best_ms']:.3f} ms "
            "(MetaSchedule's measurements of each kernel alone)",
            f"{'task':48s} {'trials':>6s} {'best us':>10s}",
        ]
        lines += [
            f"{t['task'][:48]:48s} {t['trials']:6d} {t['best_us']:10.1f}"
            + (" *" if t["trials"] == 1 else "")
            for t in tvm["tasks"]
        ][:top]
        if any(t["trials"] == 1 for t in tvm["tasks"]):
            lines.append(
                "* one measurement (a task with nothing to tune, e.g. a reshape): it carries "
                "the load of its moment; a loaded box inflates it by milliseconds"
            )
    lines.append(f"others' CPU share: {entry['other_cpu_share']:.0%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path, help="ONNX file (as the exporter writes it)")
    ap.add_argument("--modes", default="fused", help="mode for every ADNTN layer ('' = policy)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--tvm-dir", type=Path, default=None, help="an `adntn tune` output folder")
    ap.add_argument("--top", type=int, default=20, help="rows printed per side")
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    for flag, value, low in (("--threads", args.threads, 1), ("--batch", args.batch, 1)):
        if value < low:
            ap.error(f"{flag} must be >= {low}, got {value}")
    if args.runs < 1 or args.warmup < 0:
        ap.error(f"--runs must be >= 1 and --warmup >= 0, got {args.runs} / {args.warmup}")
    if not args.model.is_file():
        ap.error(f"model file {args.model} does not exist")
    if args.tvm_dir is not None and not (args.tvm_dir / "manifest.json").is_file():
        ap.error(f"--tvm-dir {args.tvm_dir} has no manifest.json (an `adntn tune` output folder)")
    share = current_other_share()
    entry: dict[str, Any] = {
        "model": str(args.model),
        "modes": args.modes or "policy",
        "threads": args.threads,
        "batch": args.batch,
        "runs": args.runs,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": _machine(),
        "ort": profile_ort(
            args.model, args.modes or None, args.threads, args.batch, args.runs, args.warmup
        ),
    }
    if args.tvm_dir is not None:
        entry["tvm"] = tvm_tasks(args.tvm_dir)
    entry["other_cpu_share"] = max(share, current_other_share())
    print(table(entry, args.top))
    data = json.loads(args.json.read_text()) if args.json.exists() else {}
    key = f"{args.model.name}|{entry['modes']}|t{args.threads}|b{args.batch}"
    data[key] = entry
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.json} [{key}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
