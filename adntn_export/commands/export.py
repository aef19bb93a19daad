"""``adntn export CHECKPOINT -o MODEL.onnx --mode MODE``: a checkpoint to an ONNX file."""

from __future__ import annotations

import argparse
import sys

from adntn_runtime.modes import ExportMode

_MODES = tuple(m.value for m in ExportMode)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` verb."""
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint (adntn_export.checkpoint.save_model) to ONNX",
        description=(
            "Export a model checkpoint to ONNX with each ADNTN layer lowered in MODE "
            "(auto: ai.adntn placeholders with plan and cores, for the runtime to lower)."
        ),
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="file written by save_model")
    parser.add_argument("-o", "--output", required=True, metavar="MODEL.onnx", help="ONNX file")
    parser.add_argument(
        "--mode",
        choices=_MODES,
        default=None,
        help="default: each layer in the mode its checkpoint stored (layer.mode)",
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument(
        "--no-einsum",
        action="store_true",
        help="Transpose/Reshape/MatMul instead of Einsum (ORT mobile builds)",
    )
    parser.add_argument(
        "--batch", type=int, default=1, help="batch size of the example input (default 1)"
    )
    parser.add_argument(
        "--static-batch", action="store_true", help="fix the batch dimension (default: dynamic)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``adntn export``; returns the exit code."""
    import torch

    from adntn_export.checkpoint import load_checkpoint
    from adntn_export.onnx_export import export_onnx

    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    ckpt = load_checkpoint(args.checkpoint)
    shape = (args.batch, *ckpt.example_input_shape[1:])
    example = torch.randn(shape)
    try:
        path = export_onnx(
            ckpt.model,
            example,
            args.output,
            mode=args.mode,
            opset=args.opset,
            dynamic_batch=not args.static_batch,
            einsum=not args.no_einsum,
        )
    except PermissionError as exc:
        print(f"adntn export: error: {exc}", file=sys.stderr)
        return 2
    size = path.stat().st_size
    mode = args.mode or "per layer"
    print(f"wrote {path} ({size:,} bytes, mode {mode}, opset {args.opset})")
    return 0
