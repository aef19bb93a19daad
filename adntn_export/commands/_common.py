"""Helpers shared by the ``adntn`` verbs (not a verb: the leading underscore hides it)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from adntn_runtime.plan import LAYOUTS


def add_compress_args(parser: argparse.ArgumentParser) -> None:
    """``--recipe/--layers/--network/--bond-dim/--activation/--bias/--num-sites/--layout/
    --fit-steps/--init``."""
    g = parser.add_argument_group("compression")
    g.add_argument(
        "--recipe",
        "--compress",
        dest="recipe",
        help="named recipe (e.g. alexnet32_ttn) or a recipe .json path",
    )
    g.add_argument(
        "--layers",
        nargs="+",
        help=(
            "layer names, zoo aliases (fc6, conv5, conv5_3) or glob patterns (classifier.*); "
            "default: all Linear"
        ),
    )
    g.add_argument("--network", choices=("ttn", "attn", "mera"), help="default ttn")
    g.add_argument("--bond-dim", type=int, help="bond dimension (default 4)")
    g.add_argument("--activation", help="activation between levels (default tanh)")
    g.add_argument("--bias", choices=("dense", "generated", "none"), help="default dense")
    g.add_argument("--num-sites", type=int, help="sites of the tensor network (default: auto)")
    g.add_argument(
        "--layout",
        choices=LAYOUTS,
        help=(
            "site layout: paired (default; each site a row and a column factor) or split "
            "(row-only and column-only sites: the tree contains truncated SVD)"
        ),
    )
    g.add_argument("--fit-steps", type=int, default=300, help="layer-wise fit steps (default 300)")
    g.add_argument(
        "--init",
        choices=("svd", "random"),
        default="svd",
        help=(
            "start of the layer-wise fit: svd (default; hierarchical SVD of the dense weight, "
            "exact when the weight is representable) or random cores"
        ),
    )


def compress_kwargs(args: argparse.Namespace) -> dict[str, Any] | None:
    """The :func:`adntn_export.compress.compress` keyword arguments the flags ask for, or None."""
    chosen = {
        "recipe": args.recipe,
        "layers": args.layers,
        "network": args.network,
        "bond_dim": args.bond_dim,
        "activation": args.activation,
        "bias": args.bias,
    }
    if args.num_sites is not None:
        chosen["num_sites"] = args.num_sites
    if getattr(args, "layout", None) is not None:
        chosen["layout"] = args.layout
    if all(v is None for v in chosen.values()):
        return None
    kwargs = {k: v for k, v in chosen.items() if v is not None}
    kwargs["fit_steps"] = args.fit_steps
    kwargs["init"] = args.init
    return kwargs


def input_shape(model: Any) -> tuple[int, ...]:
    """``(1, C, H, W)`` of one input of a zoo model."""
    return (1, *tuple(getattr(model, "input_shape", (1, 28, 28))))


# --------------------------------------------------------------------------- checks before work
#
# Every verb validates its option values and its output paths before it starts any work, so
# a long run never ends in an error it could have reported at once (a read-only --out after a
# full training run, an existing directory given as -o after an export).


def _bound(value: float | None) -> str:
    """A range bound as written: whole numbers in full (2147483647, not 2.14748e+09)."""
    assert value is not None
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def check_number(
    flag: str,
    value: float | None,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> None:
    """Raise ``ValueError`` naming ``flag`` when ``value`` lies outside its valid range.

    ``None`` (the flag was not given) always passes. ``low_open``: ``low`` itself is invalid.
    """
    if value is None:
        return
    ok = value == value  # NaN fails every range
    if low is not None:
        ok = ok and (value > low if low_open else value >= low)
    if high is not None:
        ok = ok and value <= high
    if ok:
        return
    lo = "" if low is None else f"{'>' if low_open else '>='} {_bound(low)}"
    hi = "" if high is None else f"<= {_bound(high)}"
    valid = (
        f"in [{_bound(low)}, {_bound(high)}]"
        if lo and hi and not low_open
        else " and ".join(s for s in (lo, hi) if s)
    )
    raise ValueError(f"{flag} must be {valid}, got {value!r}")


def check_choice(flag: str, value: str | None, choices: Any) -> None:
    """Raise ``ValueError`` naming ``flag`` and the valid choices when ``value`` is not one."""
    if value is not None and value not in choices:
        raise ValueError(f"{flag} {value!r} is not valid; valid: {', '.join(map(str, choices))}")


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")  # pragma: no cover - "/" always exists


def _cannot_write(flag: str, path: Path, reason: str) -> OSError:
    return OSError(f"cannot write {flag} {str(path)!r}: {reason}")


def _probe_directory(flag: str, target: Path, directory: Path) -> None:
    """Raise ``OSError`` unless a file can be created in ``directory`` (an existing folder)."""
    if not directory.is_dir():
        raise _cannot_write(
            flag, target, f"{str(directory)!r} is a file, not a directory; give a path in a folder"
        )
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise _cannot_write(
            flag,
            target,
            f"{str(directory)!r} is not writable ({exc.strerror or exc}); "
            "give a path in a writable folder",
        ) from None


def check_output_dir(flag: str, path: str | os.PathLike[str] | None) -> Path | None:
    """Check, before any work, that ``path`` can be (or is) a writable directory.

    Creates nothing: the nearest existing ancestor must be a writable directory, and
    ``path`` itself must not be an existing file. Returns ``Path(path)`` (``None`` if unset).

    Raises:
        OSError: Naming ``flag``, the path and why it cannot be written.
    """
    if path is None:
        return None
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise _cannot_write(flag, target, "it is an existing file; give a directory")
    _probe_directory(flag, target, _existing_ancestor(target))
    return target


def check_output_file(flag: str, path: str | os.PathLike[str] | None) -> Path | None:
    """Check, before any work, that a file can be written at ``path``.

    ``path`` must not be an existing directory, and its folder must be (or be creatable as)
    a writable directory. Creates nothing. Returns ``Path(path)`` (``None`` if unset).

    Raises:
        OSError: Naming ``flag``, the path and why it cannot be written.
    """
    if path is None:
        return None
    target = Path(path)
    if target.is_dir():
        raise _cannot_write(
            flag, target, "it is an existing directory; give a file name (e.g. DIR/name)"
        )
    if target.exists() and not os.access(target, os.W_OK):
        raise _cannot_write(flag, target, "the existing file is not writable")
    _probe_directory(flag, target, _existing_ancestor(target.parent))
    return target


def check_compress_args(args: argparse.Namespace) -> None:
    """Range checks of the :func:`add_compress_args` flags (before any work)."""
    from adntn_runtime.activations import ACTIVATIONS

    check_number("--bond-dim", args.bond_dim, low=1)
    check_number("--num-sites", args.num_sites, low=1)
    check_number("--fit-steps", args.fit_steps, low=0)
    check_choice("--activation", args.activation, ACTIVATIONS)


def check_compression_plan(model: Any, kwargs: dict[str, Any] | None) -> None:
    """Apply the compression flags to a throw-away copy of ``model`` without fitting, so a bad
    recipe, layer name or layer argument is reported before any training or fitting."""
    if not kwargs:
        return
    import copy

    import torch

    from adntn_export.compress import compress

    with torch.random.fork_rng(devices=[]):  # leaves the caller's random stream as it was
        compress(
            copy.deepcopy(model), fit=False, **{k: v for k, v in kwargs.items() if k != "fit_steps"}
        )
