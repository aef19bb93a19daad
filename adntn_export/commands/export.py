"""``adntn export CHECKPOINT -o MODEL.onnx --mode MODE``: a checkpoint to an ONNX file."""

from __future__ import annotations

import argparse

from adntn_export.commands._args import add_allow_nonfinite
from adntn_export.commands._common import check_number, check_output_file
from adntn_runtime.modes import ExportMode
from adntn_runtime.plan import MAX_TILE_ROWS

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
        "--tile-rows",
        type=int,
        default=None,
        metavar="N",
        help=(
            "rows per regenerate tile for every layer (default: each layer's own "
            "layer.tile_rows, else about 1/64 of its rows); recorded for adntn compile"
        ),
    )
    parser.add_argument(
        "--batch", type=int, default=1, help="batch size of the example input (default 1)"
    )
    parser.add_argument(
        "--static-batch", action="store_true", help="fix the batch dimension (default: dynamic)"
    )
    add_allow_nonfinite(parser, "load and export a checkpoint holding NaN/Inf")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``adntn export``; returns the exit code."""
    import onnx
    import torch

    from adntn_export.checkpoint import load_checkpoint
    from adntn_export.onnx_export import export_onnx

    check_number("--batch", args.batch, low=1)
    check_number("--opset", args.opset, low=18, high=onnx.defs.onnx_opset_version())
    check_number("--tile-rows", args.tile_rows, low=1, high=MAX_TILE_ROWS)
    check_output_file("-o/--output", args.output)
    ckpt = load_checkpoint(args.checkpoint, kind="model", allow_nonfinite=args.allow_nonfinite)
    assert ckpt.model is not None and ckpt.example_input_shape is not None
    shape = (args.batch, *ckpt.example_input_shape[1:])
    example = torch.randn(shape)
    path = export_onnx(
        ckpt.model,
        example,
        args.output,
        mode=args.mode,
        opset=args.opset,
        dynamic_batch=not args.static_batch,
        einsum=not args.no_einsum,
        tile_rows=args.tile_rows,
        allow_nonfinite=args.allow_nonfinite,
    )
    size = path.stat().st_size
    mode = args.mode or "per layer"
    print(f"wrote {path} ({size:,} bytes, mode {mode}, opset {args.opset})")
    return 0
