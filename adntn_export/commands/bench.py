"""``adntn bench MODEL --runtime onnxruntime|tvm``: latency and memory of every run mode vs dense.

Thin: the measuring lives in :mod:`adntn_runtime.bench` (torch-free, one subprocess per
configuration); this verb parses flags, prints a rich table and writes JSON / a plot.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from adntn_runtime.modes import ExportMode, Mode

#: ``--modes`` choices: each layer mode forced, and ``auto`` (the device policy).
_MODES = tuple(m.value for m in (Mode.FUSED, Mode.MATERIALIZE, Mode.REGENERATE, ExportMode.AUTO))


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"batch sizes must be ints >= 1, got {text!r}")
    return values


def _modes(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in _MODES]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"unknown modes {bad or text!r}; valid: {list(_MODES)}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` verb."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark every run mode of a model against its dense form",
        description=(
            "Benchmark an ONNX model exported with --mode auto (each mode lowered by the "
            "runtime, the policy's choice and the dense model, each in its own subprocess), "
            "or an `adntn compile` OUTDIR with --runtime tvm."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="ONNX file, or OUTDIR for --runtime tvm")
    p.add_argument("--runtime", choices=("onnxruntime", "tvm"), default="onnxruntime")
    p.add_argument("--batch", type=_int_list, default=[1], help="e.g. 1,8,32 (default 1)")
    p.add_argument("--threads", type=int, help="ORT intra-op threads (default: ORT's)")
    p.add_argument(
        "--max-batch",
        type=int,
        metavar="N",
        help="onnxruntime: run a larger batch in slices of at most N samples (every "
        "configuration, dense included): bounds the intermediate tensors' memory",
    )
    p.add_argument(
        "--modes",
        type=_modes,
        default=list(_MODES),
        help="default fused,materialize,regenerate,auto",
    )
    p.add_argument("--no-dense", action="store_true", help="skip the dense baseline")
    p.add_argument(
        "--rpc-tracker", metavar="HOST:PORT", help="tvm: run on a device from this tracker"
    )
    p.add_argument(
        "--rpc-key", metavar="KEY", help="tvm: the device key on the tracker (e.g. rpi4)"
    )
    p.add_argument(
        "--dense-model",
        metavar="OUTDIR",
        help="tvm: the dense model compiled for the same target, run beside MODEL as 'dense'",
    )
    p.add_argument("--runs", type=int, default=50, help="timed calls per config (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up calls (default 5)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds (default 1)")
    p.add_argument("--max-seconds", type=float, default=10.0, help="time box per config")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON (adntn.bench/1)")
    p.add_argument("--plot", metavar="OUT.png", help="latency vs peak memory plot (matplotlib)")
    p.set_defaults(handler=_handler)


def _table(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    ratios = {(r["config"], r["batch"]): r for r in data["ratios"]}
    where = f", on {data['device']}" if data.get("device") else ""
    title = f"adntn bench {data['model']} ({data['runtime']}, threads={data['threads']}{where})"
    if data.get("emulated"):
        title = f"EMULATED DEVICE (qemu): emulation timings, not device speed\n{title}"
    t = Table(title=title)
    for col in (
        "config",
        "batch",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "items/s",
        "peak RSS MB",
        "model RSS MB",
        "load s",
        "file KB",
        "speedup",
        "RSS vs dense",
    ):
        t.add_column(col, justify="left" if col == "config" else "right")
    for r in sorted(data["results"], key=lambda r: (r["batch"], r["config"])):
        if not r["ok"]:
            t.add_row(r["config"], str(r["batch"]), f"[red]{r['error']}[/red]")
            continue
        lat = r["latency_ms"]
        ratio = ratios.get((r["config"], r["batch"]))
        t.add_row(
            r["config"],
            str(r["batch"]),
            f"{lat['p50']:.3f}",
            f"{lat['p90']:.3f}",
            f"{lat['p99']:.3f}",
            f"{r['throughput_per_s']:.0f}",
            f"{r['peak_rss_bytes'] / 2**20:.1f}",
            f"{r['model_rss_bytes'] / 2**20:.1f}",
            f"{r['load_s']:.2f}",
            f"{r['file_bytes'] / 1024:.0f}",
            f"{ratio['speedup_vs_dense']:.2f}x" if ratio else "-",
            f"{ratio['model_rss_vs_dense']:.2f}x" if ratio else "-",
        )
    Console(width=max(Console().width, 160)).print(t)


def plot(data: dict[str, Any], out: str | Path) -> Path:
    """Scatter p50 latency against peak RSS, one marker per configuration and batch."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'adntn[plot]'") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in data["results"]:
        if not r["ok"]:
            continue
        x, y = r["peak_rss_bytes"] / 2**20, r["latency_ms"]["p50"]
        ax.scatter([x], [y], label=f"{r['config']} b{r['batch']}")
        ax.annotate(f"{r['config']} b{r['batch']}", (x, y), fontsize=7)
    ax.set_xlabel("peak resident memory (MB)")
    ax.set_ylabel("p50 latency (ms)")
    ax.set_yscale("log")
    title = Path(data["model"]).name
    ax.set_title(f"{title} (EMULATED: not device speed)" if data.get("emulated") else title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def _handler(args: argparse.Namespace) -> int:
    from adntn_export.commands._common import check_output_file
    from adntn_runtime.bench import bench_model, failed_rows

    check_output_file("--json", args.json)  # before the benchmark, not after it
    check_output_file("--plot", args.plot)
    data = bench_model(
        args.model,
        runtime=args.runtime,
        batches=args.batch,
        threads=args.threads,
        modes=args.modes,
        dense=not args.no_dense,
        warmup=args.warmup,
        runs=args.runs,
        repeats=args.repeats,
        max_seconds=args.max_seconds,
        rpc_tracker=args.rpc_tracker,
        rpc_key=args.rpc_key,
        dense_model=args.dense_model,
        max_batch=args.max_batch,
        progress=lambda line: print(f"  {line}", flush=True),
    )
    _table(data)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {plot(data, args.plot)}")
    failed = failed_rows(data)
    if failed:
        print(f"adntn bench: {len(failed)} of {len(data['results'])} configurations failed:")
        for line in failed:
            print(f"  {line}")
        return 1
    return 0
