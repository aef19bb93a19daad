"""Helpers shared by the ``adntn`` verbs (not a verb: the leading underscore hides it)."""

from __future__ import annotations

import argparse
from typing import Any


def add_compress_args(parser: argparse.ArgumentParser) -> None:
    """``--recipe/--layers/--network/--bond-dim/--activation/--bias/--num-sites/--fit-steps``."""
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
    if all(v is None for v in chosen.values()):
        return None
    kwargs = {k: v for k, v in chosen.items() if v is not None}
    kwargs["fit_steps"] = args.fit_steps
    kwargs["init"] = args.init
    return kwargs


def input_shape(model: Any) -> tuple[int, ...]:
    """``(1, C, H, W)`` of one input of a zoo model."""
    return (1, *tuple(getattr(model, "input_shape", (1, 28, 28))))
