"""``adntn compile MODEL.onnx --target T -o OUTDIR [--mode fold|materialize|regenerate]``."""

from __future__ import annotations

import argparse

from adntn_export.commands._common import check_output_dir


def _shapes(values: list[str] | None) -> dict[str, list[int]] | None:
    if not values:
        return None
    out = {}
    for v in values:
        name, sep, dims = v.partition("=")
        if not sep:
            raise ValueError(f"bad --input-shape {v!r}: expected NAME=D0,D1,...")
        try:
            out[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise ValueError(
                f"bad --input-shape {v!r}: expected NAME=D0,D1,... with integer dims"
            ) from None
    return out


def _handler(args: argparse.Namespace) -> int:
    from adntn_runtime.files import read_onnx

    check_output_dir("-o/--output", args.output)
    input_shapes = _shapes(args.input_shape)
    read_onnx(args.model, allow_nonfinite=args.allow_nonfinite)  # untrusted: validate first
    from adntn_export.tvm_backend.compile import compile_onnx

    manifest = compile_onnx(
        args.model, args.target, args.output, mode=args.mode, input_shapes=input_shapes
    )
    print(f"compiled {args.model} for {manifest.target} ({manifest.mode}) -> {args.output}")
    for note in manifest.notes:
        print(f"note: {note}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compile`` verb."""
    from adntn_export.tvm_backend.compile import MODES
    from adntn_export.tvm_backend.targets import target_names

    p = subparsers.add_parser("compile", help="compile an ONNX model with Apache TVM")
    p.add_argument("model", help="ONNX model")
    p.add_argument("--target", required=True, choices=target_names())
    p.add_argument("-o", "--output", required=True, help="output folder (OUTDIR)")
    p.add_argument(
        "--mode",
        choices=MODES,
        default=None,
        help="fold: weights generated at compile time; materialize: weights generated once "
        "at load from the embedded cores; regenerate: weights regenerated at every call "
        "(default: regenerate for ADNTN regenerate exports, else fold)",
    )
    p.add_argument(
        "--input-shape",
        action="append",
        metavar="NAME=D0,D1",
        help="static shape for a dynamic input (repeatable)",
    )
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="compile a model whose ADNTN layers hold NaN/Inf (refused by default)",
    )
    p.set_defaults(handler=_handler)
