"""Checkpoints: model files and training states, read by one loader that never runs code.

A model checkpoint is a ``torch.save`` of a plain dict (no pickled classes)::

    {"format": 1,
     "builder": "zoo",                               # a registered builder, or None
     "kwargs": {"name": "small_cnn"},                # builder keyword arguments
     "sequential": [...] or None,                    # builder None: an nn.Sequential spec
     "adntn_layers": {"classifier.0": {"type": "ADNTNLinear", ...}, ...},
     "state_dict": {...},
     "example_input_shape": [1, 1, 28, 28]}

A training state (``<checkpoint_dir>/last.pt``, written by :func:`adntn_export.training.train`)
is a dict with ``"version"`` and the model, optimizer, scheduler and RNG states.

:func:`load_checkpoint` reads both (``torch.load(weights_only=True)``) and returns a
:class:`Checkpoint`. A file is untrusted data:

* **No code from the file.** The architecture is rebuilt by a *registered* builder, looked
  up by name in an allow-list: ``"zoo"`` (:func:`adntn_models.get_model`; files written
  with the old name ``"adntn_models.registry:get_model"`` still load) and whatever the
  program registered with :func:`register_builder`; or, with ``builder=None``, from the
  ``sequential`` spec, whose entries name a fixed list of ``torch.nn`` layers
  (:data:`SEQUENTIAL_LAYERS`) and ADNTN layers. Nothing read from the file is ever imported
  or looked up as an attribute.
* **Sizes checked before allocation.** The architecture is first built on the ``meta``
  device (no memory), and every parameter and buffer shape is compared with the state dict
  (whose tensors the file really holds) before the model is built for real.
* **Format versions.** ``"format"`` (model) and ``"version"`` (training) are compared with
  :data:`CHECKPOINT_FORMAT` / :data:`TRAINING_FORMAT`; a newer or unknown one is refused
  with both named.
* **Finite values.** A NaN or Inf in a stored tensor is refused unless
  ``allow_nonfinite=True``.

Errors are :class:`CheckpointError` (a ``ValueError``) naming the file, the entry and what is
valid. Files are written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adntn_export.layers import ADNTNLayer
from adntn_runtime.files import atomic_write
from adntn_runtime.modes import missing_and_unknown

__all__ = [
    "CHECKPOINT_FORMAT",
    "SEQUENTIAL_LAYERS",
    "TRAINING_FORMAT",
    "Checkpoint",
    "CheckpointError",
    "builder_names",
    "load_checkpoint",
    "load_model",
    "register_builder",
    "save_model",
]

#: Format of model checkpoints written by :func:`save_model`.
CHECKPOINT_FORMAT = 1
#: Format (``"version"`` field) of training states written by ``adntn_export.training``.
TRAINING_FORMAT = 1
#: Largest example input (elements) a checkpoint may declare.
MAX_EXAMPLE_ELEMENTS = 2**26
#: Largest total of buffers outside the state dict (elements) a rebuilt model may hold.
MAX_UNSAVED_ELEMENTS = 2**24

_TRAINING_FIELDS = ("version", "model", "optimizer", "scheduler", "rng", "epoch", "step_in_epoch")

#: ``torch.nn`` layers a ``sequential`` spec may name, with the constructor arguments stored.
SEQUENTIAL_LAYERS: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
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


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, of another format, or does not fit."""


# ---------------------------------------------------------------------------- builders
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def _zoo(**kwargs: Any) -> nn.Module:
    from adntn_models.registry import get_model

    return get_model(**kwargs)


def register_builder(name: str, factory: Callable[..., nn.Module]) -> None:
    """Allow checkpoints to name ``factory`` as their builder, under ``name``.

    ``factory(**kwargs)`` must return the architecture (before any ADNTN replacement); the
    kwargs are the plain data given to :func:`save_model` as ``builder_kwargs``. The factory
    must build its modules with the default device (checkpoints are first rebuilt on the
    ``meta`` device to check their sizes). Registering a name again replaces its factory.

    Raises:
        TypeError: ``name`` is not a non-empty string or ``factory`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"builder name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"builder {name!r}: factory must be callable, got {factory!r}")
    _BUILDERS[name] = factory


def builder_names() -> tuple[str, ...]:
    """Names checkpoints may use as ``builder`` (the allow-list)."""
    return tuple(sorted(_BUILDERS))


register_builder("zoo", _zoo)
register_builder("adntn_models.registry:get_model", _zoo)  # the name format-1 files carry


def _builder(name: object, where: str) -> Callable[..., nn.Module]:
    if not isinstance(name, str) or name not in _BUILDERS:
        raise CheckpointError(
            f"{where}: unknown builder {name!r}; valid builders: {list(builder_names())} "
            "(a program adds its own with adntn_export.checkpoint.register_builder(name, "
            "factory); a checkpoint never names code to import)"
        )
    return _BUILDERS[name]


# ---------------------------------------------------------------------------- the result
@dataclass(eq=False)
class Checkpoint(Mapping[str, Any]):
    """A loaded checkpoint; reads like the stored dict (``ckpt["epoch"]``).

    Attributes:
        kind: ``"model"`` (:func:`save_model`) or ``"training"`` (a training state).
        path: the file read.
        state: the stored dict (validated).
        model: the rebuilt model (``None`` for a training state).
        example_input_shape: shape of one example input (model checkpoints).
        builder, kwargs: the registered builder and its arguments (model checkpoints).
    """

    kind: str
    path: Path
    state: dict[str, Any]
    model: nn.Module | None = None
    example_input_shape: tuple[int, ...] | None = None
    builder: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.state[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.state)

    def __len__(self) -> int:
        return len(self.state)


# ---------------------------------------------------------------------------- saving
def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _sequential_spec(module: nn.Module) -> list[dict[str, Any]]:
    if not isinstance(module, nn.Sequential):
        raise ValueError(
            f"save_model with builder=None needs an nn.Sequential, got {type(module).__name__}; "
            f"pass builder= one of {list(builder_names())} (and builder_kwargs), or register "
            "your own with register_builder"
        )
    spec = []
    for child in module:
        kind = type(child).__name__
        if isinstance(child, ADNTNLayer):
            spec.append({"type": "ADNTN"})
        elif isinstance(child, nn.Sequential):
            spec.append({"type": "Sequential", "layers": _sequential_spec(child)})
        elif kind in SEQUENTIAL_LAYERS and type(child) is SEQUENTIAL_LAYERS[kind][0]:
            args = {a: _plain(getattr(child, a)) for a in SEQUENTIAL_LAYERS[kind][1]}
            if kind in ("Linear", "Conv2d"):
                args["bias"] = child.bias is not None
            spec.append({"type": kind, "args": args})
        else:
            raise ValueError(
                f"cannot describe layer type {kind!r} for builder=None; supported: "
                f"{sorted([*SEQUENTIAL_LAYERS, 'Sequential', 'ADNTN'])}; pass a builder instead"
            )
    return spec


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
        builder: a registered builder name (:func:`builder_names`, e.g. ``"zoo"`` with
            ``builder_kwargs={"name": "small_cnn"}``) rebuilding the architecture before the
            ADNTN replacements; ``None``: ``model`` must be an ``nn.Sequential`` of
            :data:`SEQUENTIAL_LAYERS` and ADNTN layers, stored as a spec.
    """
    shape = [int(s) for s in example_input_shape]
    if not shape or min(shape) < 1:
        raise ValueError(f"example_input_shape must be positive ints, got {example_input_shape!r}")
    if builder is not None:
        _builder(builder, "save_model")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, ADNTNLayer)}
    if "" in layers:
        raise ValueError("the model is itself an ADNTN layer: wrap it in nn.Sequential to save it")
    state = {
        "format": CHECKPOINT_FORMAT,
        "builder": builder,
        "kwargs": dict(builder_kwargs or {}),
        "sequential": None if builder is not None else _sequential_spec(model),
        "adntn_layers": {n: m.config() for n, m in layers.items()},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "example_input_shape": shape,
    }
    target = Path(path)
    with atomic_write(target) as f:
        torch.save(state, f)
    return target


# ---------------------------------------------------------------------------- loading
def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupt ({path.stat().st_size} bytes; "
            f"{type(exc).__name__}: {first}); delete it, or restore an intact copy"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{str(path)!r} is not an adntn checkpoint (it holds a {type(state).__name__}, "
            "not a dict); valid: a file written by save_model or by training"
        )
    return state


def _check_format(path: Path, found: object, reads: int, what: str) -> None:
    if found == reads and type(found) is int:
        return
    newer = isinstance(found, int) and not isinstance(found, bool) and found > reads
    raise CheckpointError(
        f"checkpoint {str(path)!r} has {'a newer' if newer else 'an unknown'} {what} format "
        f"{found!r}; this adntn reads {what} format {reads}"
        + (" (upgrade adntn to read it)" if newer else "")
    )


def _kind_of(path: Path, state: Mapping[str, Any]) -> str:
    if "format" in state:
        return "model"
    if "version" in state:
        return "training"
    raise CheckpointError(
        f"{str(path)!r} is not an adntn checkpoint (no 'format' or 'version' field; keys "
        f"{sorted(map(str, state))[:8]}); valid: a file written by save_model or by training"
    )


def load_checkpoint(
    path: str | os.PathLike,
    *,
    kind: str | None = None,
    allow_nonfinite: bool = False,
) -> Checkpoint:
    """Read a model checkpoint or a training state; see the module docstring.

    Args:
        path: the file.
        kind: ``"model"`` or ``"training"`` to refuse the other kind; ``None``: either.
        allow_nonfinite: accept NaN / Inf in stored tensors (refused by default).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        CheckpointError: truncated or corrupt, another kind or format, an unknown builder or
            layer type, sizes that do not match the state dict, non-finite values.
    """
    if kind not in (None, "model", "training"):
        raise ValueError(f"unknown checkpoint kind {kind!r}; valid: ['model', 'training', None]")
    path = Path(path)
    state = _read(path)
    found = _kind_of(path, state)
    if kind is not None and found != kind:
        hint = {
            "model": "a model file written by save_model (adntn train's model.pt)",
            "training": "a training state (last.pt in --checkpoint-dir)",
        }
        raise CheckpointError(
            f"{str(path)!r} is a {found} checkpoint, but a {kind} checkpoint is needed: "
            f"give {hint[kind]}"
        )
    if found == "training":
        _check_format(path, state["version"], TRAINING_FORMAT, "training-state")
        missing = [k for k in _TRAINING_FIELDS if k not in state]
        if missing:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks fields {missing}")
        for key in ("epoch", "step_in_epoch"):
            value = state[key]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
                raise CheckpointError(
                    f"checkpoint {str(path)!r}: {key}={value!r} is invalid; valid: an int in "
                    f"0..{2**31 - 1}"
                )
        if not isinstance(state["model"], dict):
            raise CheckpointError(f"checkpoint {str(path)!r}: 'model' is not a state dict")
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        for rng in rngs:
            _check_rng(path, rng)
        if not allow_nonfinite:
            _check_finite(path, state["model"])
        return Checkpoint("training", path, state)
    _check_format(path, state["format"], CHECKPOINT_FORMAT, "model")
    return _load_model_checkpoint(path, state, allow_nonfinite)


def _load_model_checkpoint(path: Path, state: dict[str, Any], allow_nonfinite: bool) -> Checkpoint:
    where = f"checkpoint {str(path)!r}"
    tensors = state.get("state_dict")
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        raise CheckpointError(f"{where}: 'state_dict' must map names to tensors")
    shape = _example_shape(where, state.get("example_input_shape"))
    builder = state.get("builder")
    kwargs = state.get("kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise CheckpointError(f"{where}: 'kwargs' must be a dict with string keys, got {kwargs!r}")
    configs = state.get("adntn_layers") or {}
    if not isinstance(configs, dict):
        raise CheckpointError(f"{where}: 'adntn_layers' must be a dict, got {type(configs)}")
    configs = {name: _layer_config(where, name, c) for name, c in configs.items()}
    if not allow_nonfinite:
        _check_finite(path, tensors)

    def build(device: str | None) -> nn.Module:
        if builder is not None:
            factory = _builder(builder, where)
            try:
                with torch.device(device) if device else contextlib.nullcontext():
                    model = factory(**kwargs)
            except (TypeError, ValueError) as exc:
                raise CheckpointError(
                    f"{where}: builder {builder!r} refused kwargs {kwargs!r}: {exc}"
                ) from None
            if not isinstance(model, nn.Module):
                raise CheckpointError(f"{where}: builder {builder!r} returned no nn.Module")
        else:
            model = _from_spec(where, state.get("sequential"), device=device)
        modules = dict(model.named_modules())
        for name, config in configs.items():
            parent_name, _, attr = name.rpartition(".")
            if not attr or parent_name not in modules:
                raise CheckpointError(
                    f"{where}: ADNTN layer {name!r} has no parent module in the rebuilt "
                    f"model; valid parents: {sorted(modules)[:12]}"
                )
            try:
                layer = ADNTNLayer.from_config(config, device=device)
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"{where}: ADNTN layer {name!r}: {exc}") from None
            setattr(modules[parent_name], attr, layer)
        return model

    _check_sizes(where, build("meta"), tensors)
    model = build(None)
    model.load_state_dict(tensors, strict=True)
    return Checkpoint("model", path, state, model, shape, builder, dict(kwargs))


def _example_shape(where: str, value: object) -> tuple[int, ...]:
    ok = (
        isinstance(value, list | tuple)
        and 1 <= len(value) <= 8
        and all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d < 2**31 for d in value)
    )
    if not ok or math.prod(value) > MAX_EXAMPLE_ELEMENTS:  # type: ignore[arg-type]
        raise CheckpointError(
            f"{where}: example_input_shape {value!r} is invalid; valid: 1 to 8 positive ints "
            f"with at most {MAX_EXAMPLE_ELEMENTS:,} elements in all"
        )
    return tuple(value)  # type: ignore[arg-type]


def _layer_config(where: str, name: object, config: object) -> dict[str, Any]:
    """The :meth:`ADNTNLayer.config` dict of one stored layer (older files: class + args)."""
    if not isinstance(name, str) or not isinstance(config, dict):
        raise CheckpointError(f"{where}: ADNTN layer entry {name!r} is not a name -> dict")
    if "class" in config and "type" not in config:  # format-1 files before the one serialiser
        args = config.get("args")
        if not isinstance(args, dict):
            raise CheckpointError(f"{where}: ADNTN layer {name!r} has no 'args' dict")
        return {"type": config["class"], **args}
    return dict(config)


def _from_spec(
    where: str, spec: object, path: str = "", *, device: str | None = None
) -> nn.Sequential:
    valid = sorted([*SEQUENTIAL_LAYERS, "Sequential", "ADNTN"])
    if not isinstance(spec, list):
        raise CheckpointError(
            f"{where}: with builder None the 'sequential' spec must be a list of layers, "
            f"got {type(spec).__name__}"
        )
    layers: list[nn.Module] = []
    for n, entry in enumerate(spec):
        at = f"{path}{n}"
        kind = entry.get("type") if isinstance(entry, dict) else None
        if kind == "ADNTN":
            layers.append(nn.Identity())  # replaced by the stored ADNTN layer
        elif kind == "Sequential":
            layers.append(_from_spec(where, entry.get("layers"), f"{at}.", device=device))
        elif isinstance(kind, str) and kind in SEQUENTIAL_LAYERS:
            cls, names = SEQUENTIAL_LAYERS[kind]
            args = entry.get("args", {})
            allowed = set(names) | ({"bias"} if kind in ("Linear", "Conv2d") else set())
            if not isinstance(args, dict) or set(args) - allowed:
                raise CheckpointError(
                    f"{where}: layer {at!r} ({kind}) has arguments {args!r}; valid: "
                    f"{sorted(allowed)}"
                )
            extra = {"device": device} if kind in ("Linear", "Conv2d") else {}
            try:
                layers.append(cls(**args, **extra))
            except (TypeError, ValueError, RuntimeError) as exc:
                raise CheckpointError(f"{where}: layer {at!r} ({kind}{args}): {exc}") from None
        else:
            raise CheckpointError(
                f"{where}: layer {at!r} has unknown type {kind!r}; valid: {valid}"
            )
    return nn.Sequential(*layers)


def _check_sizes(where: str, meta: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Compare the meta-device architecture with the stored tensors before any allocation."""
    expected = meta.state_dict()
    missing, unexpected = missing_and_unknown(expected, tensors)
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: the state dict does not fit the architecture: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}"
        )
    for key, want in expected.items():
        got = tensors[key]
        if tuple(want.shape) != tuple(got.shape):
            layer, _, tensor = key.rpartition(".")
            raise CheckpointError(
                f"{where}: layer {layer!r} {tensor} has shape {tuple(want.shape)} in the "
                f"architecture but {tuple(got.shape)} in the state dict; valid: the shapes "
                "the file holds"
            )
    unsaved = sum(b.numel() for n, b in meta.named_buffers() if n not in expected)
    if unsaved > MAX_UNSAVED_ELEMENTS:
        raise CheckpointError(
            f"{where}: the architecture holds {unsaved:,} buffer elements outside the state "
            f"dict; at most {MAX_UNSAVED_ELEMENTS:,} are accepted"
        )


def _check_rng(path: Path, rng: object) -> None:
    """A training state's RNG states are what :func:`torch.set_rng_state`,
    :func:`numpy.random.set_state` and :func:`random.setstate` accept."""
    ok = isinstance(rng, dict)
    if ok:
        torch_state, keys = rng.get("torch"), rng.get("numpy_keys")
        python = rng.get("python")
        ok = (
            isinstance(torch_state, torch.Tensor)
            and torch_state.dtype == torch.uint8
            and torch_state.shape == torch.get_rng_state().shape
            and isinstance(keys, torch.Tensor)
            and tuple(keys.shape) == (624,)
            and all(isinstance(rng.get(k), int) for k in ("numpy_pos", "numpy_has_gauss"))
            and isinstance(rng.get("numpy_cached_gaussian"), float)
            and isinstance(python, tuple | list)
            and len(python) == 3
            and isinstance(python[1], tuple | list)
            and len(python[1]) == 625
        )
    if not ok:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: 'rng' is not a valid set of RNG states (torch, numpy "
            "and python, as adntn training writes them); valid: a state written by "
            "adntn_export.training.train"
        )


def _check_finite(path: Path, tensors: Mapping[str, Any]) -> None:
    for key, value in tensors.items():
        if (
            isinstance(value, torch.Tensor)
            and value.is_floating_point()
            and not bool(torch.isfinite(value).all())
        ):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"checkpoint {str(path)!r}: tensor {str(key)!r} holds {bad} NaN/Inf "
                "value(s); valid: finite values (pass allow_nonfinite=True, or "
                "--allow-nonfinite on the command line, to load it anyway)"
            )


def load_model(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> nn.Module:
    """The model stored in ``path`` (see :func:`load_checkpoint`)."""
    model = load_checkpoint(path, kind="model", allow_nonfinite=allow_nonfinite).model
    assert model is not None
    return model
