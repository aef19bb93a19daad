"""The ``adntn`` console script.

Each verb lives in its own module under :mod:`adntn_export.commands` and exposes
``register(subparsers)``; this file only discovers them, so adding a verb never
touches a shared list. Heavy libraries (torch, onnxruntime, tvm) are imported
inside each verb's handler, so ``adntn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from adntn_export import commands


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every verb found in :mod:`adntn_export.commands`."""
    parser = argparse.ArgumentParser(
        prog="adntn",
        description="Train, export, tune and benchmark ADNTN-compressed neural networks.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``adntn`` command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        print(f"adntn {args.verb}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
