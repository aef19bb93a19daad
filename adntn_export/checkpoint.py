"""Model checkpoints that rebuild their architecture and load with ``weights_only=True``.

A checkpoint is a ``torch.save`` of a plain dict (no pickled classes)::

    {"format": 1,
     "builder": "adntn_models.registry:get_model",   # or None
     "kwargs": {"name": "small_cnn"},                # builder keyword arguments
     "sequential": [...] or None,                    # builder None: an nn.Sequential spec
     "adntn_layers": {"classifier.0": {"class": "ADNTNLinear", "args": {...}}, ...},
     "state_dict": {...},
     "example_input_shape": [1, 1, 28, 28]}

On load the model is rebuilt by the builder (an importable ``module:function`` returning an
``nn.Module``) or, with ``builder=None``, from the ``sequential`` spec (a list of
``{"type": "Conv2d", "args": {...}}`` for the common ``torch.nn`` layers: Linear, Conv2d,
ReLU, Tanh, GELU, Sigmoid, Identity, Flatten, MaxPool2d, AvgPool2d, Dropout, nested
Sequential, and ``{"type": "ADNTN"}`` for an ADNTN layer). Then each ADNTN layer is
re-created from its stored constructor arguments and ``setattr`` at its dotted name, and
the state dict is loaded strictly. Files are written atomically (temporary file +
``os.replace``); a truncated or corrupt file raises :class:`ValueError`.
"""

from __future__ import annotations

import importlib
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adntn_export.layers import ADNTNConv2d, ADNTNLayer, ADNTNLinear
from adntn_runtime.files import atomic_write

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "load_checkpoint", "load_model", "save_model"]

CHECKPOINT_FORMAT = 1

_SIMPLE: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "Linear": (nn.Linear, ("in_features", "out_features")),
    "Conv2d": (
        nn.Conv2d,
        ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"),
    ),
    "ReLU": (nn.ReLU, ()),
    "Tanh": (nn.Tanh, ()),
    "GELU": (nn.GELU, ("approximate",)),
    "Sigmoid": (nn.Sigmoid, ()),
    "Identity": (nn.Identity, ()),
    "Flatten": (nn.Flatten, ("start_dim", "end_dim")),
    "MaxPool2d": (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation")),
    "AvgPool2d": (nn.AvgPool2d, ("kernel_size", "stride", "padding")),
    "Dropout": (nn.Dropout, ("p",)),
}


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model and what was stored beside it."""

    model: nn.Module
    example_input_shape: tuple[int, ...]
    builder: str | None
    kwargs: dict[str, Any]


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def layer_config(layer: ADNTNLayer) -> dict[str, Any]:
    """Constructor arguments that rebuild ``layer`` (same plan, bias kind, mode)."""
    plan = layer.plan
    args: dict[str, Any] = {
        "network": plan.network,
        "bond_dim": list(plan.bond_dims),
        "activation": list(plan.activations),
        "final_activation": plan.final_activation,
        "bias": layer.bias_kind,
        "mode": layer.mode,
        "tile_rows": layer.tile_rows,
        "arity": plan.arity,
        "num_sites": plan.num_sites,
        "disentangler_rank": plan.disentangler_rank,
    }
    if layer.bias_generator is not None:
        args["bias_bond_dim"] = int(layer.bias_generator.plan.bond_dims[0])
    if isinstance(layer, ADNTNConv2d):
        args.update(
            in_channels=layer.in_channels,
            out_channels=layer.out_channels,
            kernel_size=list(layer.kernel_size),
            stride=list(layer.stride),
            padding=list(layer.padding),
            dilation=list(layer.dilation),
        )
        return {"class": "ADNTNConv2d", "args": args}
    assert isinstance(layer, ADNTNLinear)
    args.update(in_features=layer.in_features, out_features=layer.out_features)
    return {"class": "ADNTNLinear", "args": args}


def _build_layer(config: Mapping[str, Any]) -> ADNTNLayer:
    classes = {"ADNTNLinear": ADNTNLinear, "ADNTNConv2d": ADNTNConv2d}
    cls = classes.get(config.get("class"))  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(
            f"unknown ADNTN layer class {config.get('class')!r}; valid: {list(classes)}"
        )
    args = dict(config["args"])
    if cls is ADNTNConv2d:
        pos = [args.pop("in_channels"), args.pop("out_channels"), args.pop("kernel_size")]
    else:
        pos = [args.pop("in_features"), args.pop("out_features")]
    return cls(*pos, **args)


def _sequential_spec(module: nn.Module) -> list[dict[str, Any]]:
    if not isinstance(module, nn.Sequential):
        raise ValueError(
            f"save_model with builder=None needs an nn.Sequential, got {type(module).__name__}; "
            "pass builder='module:function' (and builder_kwargs) to rebuild other models"
        )
    spec = []
    for child in module:
        kind = type(child).__name__
        if isinstance(child, ADNTNLayer):
            spec.append({"type": "ADNTN"})
        elif isinstance(child, nn.Sequential):
            spec.append({"type": "Sequential", "layers": _sequential_spec(child)})
        elif kind in _SIMPLE and type(child) is _SIMPLE[kind][0]:
            args = {a: _plain(getattr(child, a)) for a in _SIMPLE[kind][1]}
            if kind in ("Linear", "Conv2d"):
                args["bias"] = child.bias is not None
            spec.append({"type": kind, "args": args})
        else:
            raise ValueError(
                f"cannot describe layer type {kind!r} for builder=None; supported: "
                f"{sorted([*_SIMPLE, 'Sequential', 'ADNTN'])}; pass a builder instead"
            )
    return spec


def _from_spec(spec: Sequence[Mapping[str, Any]]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for entry in spec:
        kind = entry.get("type")
        if kind == "ADNTN":
            layers.append(nn.Identity())  # replaced by the stored ADNTN layer
        elif kind == "Sequential":
            layers.append(_from_spec(entry["layers"]))
        elif kind in _SIMPLE:
            layers.append(_SIMPLE[kind][0](**entry.get("args", {})))
        else:
            raise ValueError(f"unknown layer type {kind!r} in checkpoint; valid: {sorted(_SIMPLE)}")
    return nn.Sequential(*layers)


def _resolve(builder: str) -> Callable[..., nn.Module]:
    module_name, sep, func_name = builder.partition(":")
    if not sep or not module_name or not func_name:
        raise ValueError(f"builder must look like 'package.module:function', got {builder!r}")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import builder {builder!r}: {exc}") from None
    if not callable(func):
        raise ValueError(f"builder {builder!r} is not callable")
    return func


def save_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    example_input_shape: Sequence[int],
    builder: str | None = None,
    builder_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint of ``model`` to ``path`` atomically; returns the path.

    Args:
        model: the model (ADNTN layers anywhere in it).
        path: the file to write.
        example_input_shape: shape of one input, e.g. ``(1, 1, 28, 28)`` (used by exports).
        builder: ``"module:function"`` rebuilding the architecture (before the ADNTN
            replacements) from ``builder_kwargs``; ``None``: ``model`` must be an
            ``nn.Sequential`` of supported layers, stored as a spec.
    """
    shape = [int(s) for s in example_input_shape]
    if not shape or min(shape) < 1:
        raise ValueError(f"example_input_shape must be positive ints, got {example_input_shape!r}")
    if builder is not None:
        _resolve(builder)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, ADNTNLayer)}
    if "" in layers:
        raise ValueError("the model is itself an ADNTN layer: wrap it in nn.Sequential to save it")
    state = {
        "format": CHECKPOINT_FORMAT,
        "builder": builder,
        "kwargs": dict(builder_kwargs or {}),
        "sequential": None if builder is not None else _sequential_spec(model),
        "adntn_layers": {n: layer_config(m) for n, m in layers.items()},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "example_input_shape": shape,
    }
    target = Path(path)
    with atomic_write(target) as f:
        torch.save(state, f)
    return target


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Rebuild the model stored in ``path`` (``weights_only=True``) with its metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as exc:
        raise ValueError(
            f"{str(path)!r} is not a readable adntn checkpoint (truncated or corrupt?): {exc}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{str(path)!r} is not an adntn checkpoint of format {CHECKPOINT_FORMAT} "
            f"(found {found!r}); write one with adntn_export.checkpoint.save_model"
        )
    builder = state.get("builder")
    kwargs = dict(state.get("kwargs") or {})
    if builder is not None:
        model = _resolve(builder)(**kwargs)
    else:
        model = _from_spec(state["sequential"])
    modules = dict(model.named_modules())
    for name, config in state["adntn_layers"].items():
        parent_name, _, attr = name.rpartition(".")
        if parent_name not in modules:
            raise ValueError(f"checkpoint layer {name!r} has no parent module in the rebuilt model")
        setattr(modules[parent_name], attr, _build_layer(config))
    model.load_state_dict(state["state_dict"], strict=True)
    return Checkpoint(model, tuple(state["example_input_shape"]), builder, kwargs)


def load_model(path: str | os.PathLike) -> nn.Module:
    """The model stored in ``path`` (see :func:`load_checkpoint`)."""
    return load_checkpoint(path).model
