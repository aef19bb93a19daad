"""The ``adntn`` console script.

Each verb lives in its own module under :mod:`adntn_export.commands` and exposes
``register(subparsers)``; this file only discovers them, so adding a verb never
touches a shared list. Heavy libraries (torch, onnxruntime, tvm) are imported
inside each verb's handler, so ``adntn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import errno
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
    except OSError as exc:
        print(f"adntn {args.verb}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2


#: errno values that mean a file or folder could not be created or written.
_WRITE_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EEXIST,
    errno.EFBIG,
}


def describe_os_error(exc: OSError) -> str:
    """``cannot write PATH: reason`` (or ``cannot access``) for an ``OSError``, no traceback."""
    if exc.filename is None:
        return str(exc)
    what = "write" if exc.errno in _WRITE_ERRNOS else "access"
    path = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    reason = exc.strerror or str(exc)
    return f"cannot {what} {path}: {reason}"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
