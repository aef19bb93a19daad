"""``adntn report``: describe the ADNTN plan of a weight shape, or report a saved model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adntn_export.commands._args import add_allow_nonfinite
from adntn_export.commands._common import check_output_file
from adntn_runtime.activations import ACTIVATIONS
from adntn_runtime.plan import LAYOUTS, NETWORKS


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``report`` verb."""
    p = sub.add_parser(
        "report",
        help="describe an ADNTN plan (network drawing, counts, costs) or a saved model",
        description="Draw the tensor network for a weight shape and print its parameter counts "
        "and per-mode costs; or, with --checkpoint, print the compression table of a model.",
    )
    p.add_argument("--shape", help="weight shape OUTxIN, e.g. 4096x4096")
    p.add_argument("--network", choices=NETWORKS, default="ttn")
    p.add_argument("--bond-dim", type=int, default=4)
    p.add_argument("--activation", choices=ACTIVATIONS, default="tanh")
    p.add_argument("--num-sites", type=int, default=None)
    p.add_argument("--layout", choices=LAYOUTS, default="paired", help="site layout")
    p.add_argument("--batch", type=int, default=1, help="batch size for the cost table")
    p.add_argument("--checkpoint", type=Path, help="a model saved by adntn (train/compress)")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    add_allow_nonfinite(p, "read a --checkpoint holding NaN/Inf")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the plan description or the model's compression table."""
    check_output_file("--json", args.json)
    if args.checkpoint is not None:
        from adntn_export.checkpoint import load_model
        from adntn_export.report import compression_report

        report = compression_report(
            load_model(args.checkpoint, allow_nonfinite=args.allow_nonfinite)
        )
        report.print()
        if args.json:
            args.json.write_text(report.to_json())
        return 0
    if not args.shape:
        raise ValueError("give --shape OUTxIN (e.g. 4096x4096) or --checkpoint FILE")
    parts = args.shape.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"--shape must look like OUTxIN (e.g. 4096x4096), got {args.shape!r}")
    from adntn_runtime.plan import MODES, ADNTNPlan

    plan = ADNTNPlan(
        int(parts[0]),
        int(parts[1]),
        network=args.network,
        bond_dim=args.bond_dim,
        activation=args.activation,
        num_sites=args.num_sites,
        layout=args.layout,
    )
    print(plan.describe())
    dense_flops = 2 * args.batch * plan.dense_parameters
    print(f"\nper-call cost at batch {args.batch} (dense GEMM: {dense_flops:,} flops)")
    rows = {}
    for mode in MODES:
        c = plan.cost(mode, args.batch)
        rows[mode] = {
            "flops": c.flops,
            "setup_flops": c.setup_flops,
            "peak_elements": c.peak_elements,
        }
        print(
            f"  {mode:12s} flops {c.flops:>14,}  setup {c.setup_flops:>14,}  "
            f"resident elements {c.peak_elements:>12,}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "plan": plan.to_dict(),
                    "costs": rows,
                    "stored": plan.num_parameters,
                    "ratio": plan.compression_ratio,
                },
                indent=2,
            )
        )
    return 0
