"""Command-line flags that several ``adntn`` verbs share, spelled once."""

from __future__ import annotations

import argparse

__all__ = ["add_allow_nonfinite"]


def add_allow_nonfinite(parser: argparse.ArgumentParser, what: str) -> None:
    """Add ``--allow-nonfinite``; ``what`` says what the verb then accepts despite NaN/Inf."""
    parser.add_argument(
        "--allow-nonfinite", action="store_true", help=f"{what} (refused by default)"
    )
