"""``adntn compile MODEL.onnx --target T -o OUTDIR [--mode M | --memory-budget-mb MB ...]``."""

from __future__ import annotations

import argparse

from adntn_export.commands._args import add_allow_nonfinite
from adntn_export.commands._common import check_output_dir
from adntn_runtime.modes import LoweringMode


def _shapes(values: list[str] | None) -> dict[str, list[int]] | None:
    if not values:
        return None
    out = {}
    for v in values:
        name, sep, dims = v.partition("=")
        try:
            shape = [int(d) for d in dims.split(",")] if sep else []
        except ValueError:
            shape = []
        if not sep or not name or not shape or min(shape) < 1:
            raise ValueError(
                f"bad --input-shape {v!r}: expected NAME=D0,D1,... with positive integer sizes"
            )
        out[name] = shape
    return out


def _handler(args: argparse.Namespace) -> int:
    from adntn_runtime.files import read_onnx

    check_output_dir("-o/--output", args.output)
    input_shapes = _shapes(args.input_shape)
    read_onnx(args.model, allow_nonfinite=args.allow_nonfinite)  # untrusted: validate first
    from adntn_export.tvm_backend.compile import compile_onnx

    manifest = compile_onnx(
        args.model,
        args.target,
        args.output,
        mode=args.mode,
        input_shapes=input_shapes,
        batch=args.batch,
        memory_budget_mb=args.memory_budget_mb,
        latency_target_ms=args.latency_target_ms,
        runner=args.with_runner,
    )
    print(f"compiled {args.model} for {manifest.target} ({manifest.mode}) -> {args.output}")
    for name, layer in manifest.layers.items():
        print(f"  {name}: {layer['mode']} ({layer['reason']})")
    for note in manifest.notes:
        print(f"note: {note}")
    if args.with_runner:
        mat = " --materialize" if manifest.materialize else ""
        out = args.output.rstrip("/")
        print(f"run on the device: {out}/runtime/tvm_runner {out}/model.so RESULTS{mat} INPUT.npy")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compile`` verb."""
    from adntn_export.tvm_backend.targets import target_names

    p = subparsers.add_parser("compile", help="compile an ONNX model with Apache TVM")
    p.add_argument("model", help="ONNX model (any file `adntn export` writes)")
    p.add_argument("--target", required=True, choices=target_names())
    p.add_argument("-o", "--output", required=True, help="output folder (OUTDIR)")
    p.add_argument(
        "--mode",
        choices=[m.value for m in LoweringMode],
        default=None,
        help="force every ADNTN layer's mode: dense (weight folded at compile time), "
        "materialize (built once at load), regenerate (rebuilt at every call), fused "
        "(default: the policy chooses per layer for --mode auto exports; the export's "
        "modes otherwise)",
    )
    p.add_argument(
        "--memory-budget-mb",
        type=float,
        default=None,
        help="memory the ADNTN layers may hold (policy, auto exports)",
    )
    p.add_argument(
        "--latency-target-ms",
        type=float,
        default=None,
        help="good-enough latency of the ADNTN layers (policy, auto exports)",
    )
    p.add_argument("--batch", type=int, default=None, help="batch size for a dynamic batch")
    p.add_argument(
        "--input-shape",
        action="append",
        metavar="NAME=D0,D1",
        help="static shape for a dynamic input (repeatable)",
    )
    add_allow_nonfinite(p, "compile a model whose ADNTN layers hold NaN/Inf")
    p.add_argument(
        "--with-runner",
        action="store_true",
        help="also put the C++ tvm_runner for the device in OUTDIR/runtime/ (CPU targets): "
        "OUTDIR/runtime/tvm_runner OUTDIR/model.so RESULTS [--materialize] INPUT.npy",
    )
    p.set_defaults(handler=_handler)
