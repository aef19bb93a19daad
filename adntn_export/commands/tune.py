"""``adntn tune MODEL.onnx --target T --trials N [--rpc-tracker H:P --rpc-key K] -o OUTDIR``."""

from __future__ import annotations

import argparse

from adntn_export.commands._common import check_number, check_output_dir


def _handler(args: argparse.Namespace) -> int:
    from adntn_export.commands.compile import _shapes
    from adntn_export.tvm_backend.tune import tune_onnx

    check_output_dir("-o/--output", args.output)
    check_output_dir("--work-dir", args.work_dir)
    check_number("--trials", args.trials, low=0)
    check_number("--max-trials-per-task", args.max_trials_per_task, low=1)

    manifest = tune_onnx(
        args.model,
        args.target,
        args.output,
        trials=args.trials,
        work_dir=args.work_dir,
        rpc_tracker=args.rpc_tracker,
        rpc_key=args.rpc_key,
        input_shapes=_shapes(args.input_shape),
        max_trials_per_task=args.max_trials_per_task,
        op_names=args.op_names.split(",") if args.op_names else None,
    )
    tuned = manifest.tuned or {}
    run = tuned.get("this_run") or {}
    print(
        f"tuned {args.model} for {manifest.target}: this run {run.get('valid_trials', 0)}/"
        f"{run.get('total_trials', 0)} valid trials; database {tuned.get('valid_records')}/"
        f"{tuned.get('records_after')} valid records in {tuned.get('database')} -> "
        f"{args.output} (tuning {tuned.get('tuning_seconds')} s)"
    )
    untuned = tuned.get("untuned_tasks") or []
    if untuned:
        print(
            f"NOT FULLY TUNED: {len(untuned)} of {tuned.get('tasks')} tasks "
            f"({tuned.get('untuned_flop_share', 0):.0%} of the FLOPs) have no measured schedule "
            "and run as plain loops; raise --trials"
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``tune`` verb."""
    from adntn_export.tvm_backend.targets import target_names

    p = subparsers.add_parser("tune", help="tune an ONNX model with TVM MetaSchedule")
    p.add_argument("model", help="ONNX model")
    p.add_argument("--target", required=True, choices=target_names())
    p.add_argument(
        "--trials",
        type=int,
        required=True,
        help="total measured trials wanted in the database (earlier runs count)",
    )
    p.add_argument("-o", "--output", required=True, help="output folder (OUTDIR)")
    p.add_argument(
        "--work-dir",
        default=None,
        help="database folder (default OUTDIR/tuning/TARGET); reused across runs",
    )
    p.add_argument(
        "--max-trials-per-task",
        type=int,
        default=None,
        help="cap per tuning task (default: MetaSchedule's, i.e. the whole remaining budget)",
    )
    p.add_argument(
        "--op-names",
        default=None,
        metavar="NAME[,NAME]",
        help="tune only tasks whose name contains one of these (e.g. matmul)",
    )
    p.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT")
    p.add_argument("--rpc-key", default=None)
    p.add_argument("--input-shape", action="append", metavar="NAME=D0,D1")
    p.set_defaults(handler=_handler)
