"""``adntn compress``: compress a zoo model's layers and report the parameter counts."""

from __future__ import annotations

import argparse
from typing import Any

from adntn_export.commands._common import (
    add_compress_args,
    check_compress_args,
    check_compression_plan,
    check_output_file,
    compress_kwargs,
)


def register(subparsers: Any) -> None:
    """Add the ``compress`` verb."""
    p = subparsers.add_parser(
        "compress",
        help="compress a model with ADNTN layers and write the compression report",
        description=(
            "Build a zoo model, replace the chosen layers (a recipe, or --layers/--network/"
            "--bond-dim) by ADNTN layers, write the compression report as JSON and print it "
            "as a table. Fitting to the (here freshly initialised) dense weights is optional "
            "(--fit); use `adntn train` for trained models."
        ),
    )
    p.add_argument("model", help="alexnet, alexnet32, vgg16, vgg16_32, mlp or small_cnn")
    p.add_argument("--out", default="compression.json", help="report JSON path")
    p.add_argument("--fit", action="store_true", help="fit each layer to the dense weights")
    p.add_argument("--list-recipes", action="store_true", help="list the named recipes and exit")
    add_compress_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``adntn compress``."""
    from rich.console import Console

    from adntn_export.compress import compress, list_recipes
    from adntn_export.report import compression_report
    from adntn_models import get_model

    if args.list_recipes:
        print("\n".join(list_recipes()))
        return 0
    check_compress_args(args)
    out = check_output_file("--out", args.out)
    assert out is not None
    model = get_model(args.model)
    kwargs = compress_kwargs(args) or {}
    kwargs.setdefault("fit_steps", args.fit_steps)
    if args.fit:
        check_compression_plan(model, kwargs)
    compress(model, fit=args.fit, **kwargs)
    report = compression_report(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.to_json())
    Console().print(report.table())
    print(f"wrote {out}")
    return 0
