"""Compress a model in place: swap chosen ``nn.Linear``/``nn.Conv2d`` layers for ADNTN layers.

:func:`compress` picks layers by dotted module name (``"classifier.4"``), by the
model's own FC aliases (``"fc7"``, from ``model.fc_layers`` of the zoo models) or by
:mod:`fnmatch` glob patterns (``"classifier.*"``, ``"features.*"``), optionally fits
each new layer to the dense weights it replaces (layer-wise initialisation,
activation-aware when calibration inputs are given), and records the fit of every
layer in ``model.adntn_fit_report`` (layer name -> :class:`~adntn_export.fitting.FitResult`).

Named recipes are JSON files in ``adntn_models/recipes/`` (for example
``alexnet32_ttn``, ``vgg16_32_mera``)::

    {
      "name": "alexnet32_ttn",
      "model": "alexnet32",
      "description": "...",
      "defaults": {"network": "ttn", "bond_dim": 2, "bias": "generated", "bias_bond_dim": 1},
      "layers": {"fc6": {"num_sites": 8}, "fc7": {"num_sites": 12}, "fc8": {"bond_dim": 3}}
    }

and are applied with ``compress(model, recipe="alexnet32_ttn")``.

Example:
    >>> from adntn_models import alexnet32
    >>> model = compress(alexnet32(), recipe="alexnet32_ttn", fit_steps=50)
    >>> sorted(model.adntn_fit_report)
    ['classifier.1', 'classifier.4', 'classifier.6']
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import json
import math
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adntn_export.fitting import FitResult, capture_layer_inputs
from adntn_export.layers import ADNTNConv2d, ADNTNLayer, ADNTNLinear

__all__ = [
    "RECIPE_PACKAGE",
    "compress",
    "compressible_layers",
    "list_recipes",
    "load_recipe",
    "model_outputs",
    "output_divergence",
    "resolve_layers",
]

#: Package whose ``recipes/`` folder holds the named recipes.
RECIPE_PACKAGE = "adntn_models"

_GLOB_CHARS = set("*?[")
_DEFAULTS: dict[str, Any] = {
    "network": "ttn",
    "bond_dim": 4,
    "activation": "tanh",
    "bias": "dense",
}
# Keys a recipe's "defaults" / per-layer entries may carry besides the ADNTN layer
# arguments: they steer the fit rather than the layer ("discard_fit_above": that layer's
# ``compress(discard_fit_above=...)``; JSON null: never discard its fit).
_FIT_KEYS = ("fit_steps", "fit_lr", "activation_weight", "discard_fit_above")
#: What decides which cores a fitted layer keeps (``compress(select=...)``).
SELECTIONS = ("objective", "output")
#: Calibration images per forward pass when scoring candidates by the model's output.
_SCORE_CHUNK = 32


def _recipe_dir() -> Any:
    return resources.files(RECIPE_PACKAGE).joinpath("recipes")


def list_recipes() -> list[str]:
    """Names of the recipes shipped in ``adntn_models/recipes/`` (sorted)."""
    folder = _recipe_dir()
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_recipe(name: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a compression recipe by name (``"vgg16_32_ttn"``) or from a ``.json`` path.

    Returns:
        The recipe as a dict with ``defaults`` (layer arguments for every layer) and
        ``layers`` (layer name or pattern -> per-layer overrides).

    Raises:
        ValueError: If the name is not a shipped recipe (the message lists them) or the
            file is not a valid recipe.
    """
    path = Path(name)
    if str(name).endswith(".json") or path.is_file():
        if not path.is_file():
            raise ValueError(f"recipe file {str(name)!r} does not exist")
        text = path.read_text()
        where = str(path)
    else:
        resource = _recipe_dir().joinpath(f"{name}.json")
        if not resource.is_file():
            raise ValueError(
                f"unknown recipe {str(name)!r}; valid recipes: {', '.join(list_recipes())} "
                "(or a path to a .json file)"
            )
        text = resource.read_text()
        where = f"recipe {name!r}"
    try:
        recipe = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("layers"), dict | list):
        raise ValueError(f"{where} must be a JSON object with a 'layers' object or list")
    if not isinstance(recipe.get("defaults", {}), dict):
        raise ValueError(f"{where}: 'defaults' must be a JSON object")
    recipe.setdefault("defaults", {})
    recipe.setdefault("name", str(name))
    return recipe


def compressible_layers(model: nn.Module) -> list[str]:
    """Dotted names of the model's ``nn.Linear`` and ``nn.Conv2d`` modules, in model order."""
    return [
        name
        for name, module in model.named_modules()
        if name and isinstance(module, nn.Linear | nn.Conv2d)
    ]


def _aliases(model: nn.Module) -> dict[str, str]:
    """Layer aliases the model declares: ``model.fc_layers`` and ``model.conv_layers``."""
    alias: dict[str, str] = {}
    for attr in ("fc_layers", "conv_layers"):
        table = getattr(model, attr, None)
        if isinstance(table, Mapping):
            alias.update(table)
    return alias


def _candidates_text(model: nn.Module) -> str:
    names = compressible_layers(model)
    alias = _aliases(model)
    text = ", ".join(names) if names else "(none)"
    if alias:
        text += "; aliases: " + ", ".join(f"{k}={v}" for k, v in alias.items())
    return text


def resolve_layers(
    model: nn.Module, layers: str | Sequence[str] | Mapping[str, Mapping[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """Map a layer selection to ``{module name: per-layer overrides}``, in model order.

    Entries are dotted module names, aliases from ``model.fc_layers`` (``"fc7"``) and
    ``model.conv_layers`` (``"conv5_3"``), or
    :mod:`fnmatch` patterns matched against the Linear/Conv2d names (and aliases).
    ``None`` selects every ``nn.Linear``. A mapping gives per-entry overrides; where
    entries overlap, later entries override earlier ones key by key.

    Raises:
        ValueError: On an unknown name, a pattern that matches nothing, or a named
            module that is not ``nn.Linear``/``nn.Conv2d``; the message lists the
            candidates.
    """
    modules = dict(model.named_modules())
    candidates = compressible_layers(model)
    alias = _aliases(model)
    if layers is None:
        items: list[tuple[str, Mapping[str, Any]]] = [
            (n, {}) for n in candidates if isinstance(modules[n], nn.Linear)
        ]
    elif isinstance(layers, str):
        items = [(layers, {})]
    elif isinstance(layers, Mapping):
        items = []
        for key, value in layers.items():
            if not isinstance(value, Mapping):
                raise ValueError(
                    f"per-layer overrides for {key!r} must be a mapping of layer arguments, "
                    f"got {value!r}"
                )
            items.append((key, value))
    elif isinstance(layers, Sequence):
        items = [(entry, {}) for entry in layers]
    else:
        raise ValueError(
            f"layers must be None, a name/pattern, a list of them or a dict name -> overrides; "
            f"got {layers!r}"
        )
    chosen: dict[str, dict[str, Any]] = {}
    for entry, overrides in items:
        if not isinstance(entry, str) or not entry:
            raise ValueError(f"layer names must be non-empty strings, got {entry!r}")
        if _GLOB_CHARS & set(entry):
            names = [n for n in candidates if fnmatch.fnmatchcase(n, entry)]
            names += [
                path
                for a, path in alias.items()
                if fnmatch.fnmatchcase(a, entry) and path in candidates
            ]
            if not names:
                raise ValueError(
                    f"layer pattern {entry!r} matches no Linear/Conv2d layer; candidates: "
                    + _candidates_text(model)
                )
        else:
            name = alias.get(entry, entry)
            if name not in modules or not name:
                raise ValueError(f"unknown layer {entry!r}; candidates: " + _candidates_text(model))
            if not isinstance(modules[name], nn.Linear | nn.Conv2d):
                raise ValueError(
                    f"layer {entry!r} is a {type(modules[name]).__name__}, not nn.Linear or "
                    "nn.Conv2d; candidates: " + _candidates_text(model)
                )
            names = [name]
        for name in names:
            chosen.setdefault(name, {}).update(overrides)
    order = {n: i for i, n in enumerate(candidates)}
    return {n: chosen[n] for n in sorted(chosen, key=order.__getitem__)}


def _capture_inputs(
    model: nn.Module, names: Sequence[str], calibration: torch.Tensor, max_rows: int
) -> dict[str, torch.Tensor]:
    """Run ``model`` once on ``calibration`` and keep each named layer's input."""
    modules = dict(model.named_modules())
    captured = capture_layer_inputs(model, names, calibration)
    out = {}
    for name, x in captured.items():
        if isinstance(modules[name], nn.Linear):
            x = x.reshape(-1, x.shape[-1])
            if x.shape[0] > max_rows:
                x = x[torch.linspace(0, x.shape[0] - 1, max_rows).long()]
        out[name] = x
    return out


@torch.no_grad()
def _match_norm(layer: ADNTNLayer, dense_weight: torch.Tensor) -> None:
    gen = layer.weight_generator
    if not gen.plan.top_is_linear or "root" not in gen.cores:
        return
    norm = gen.weight().norm()
    target = dense_weight.norm()
    if float(norm) > 0 and float(norm) < float(target):
        gen.cores["root"].mul_(target / norm)
        gen.clear_cache()


def _unfitted_layer(dense: nn.Linear | nn.Conv2d, **kwargs: Any) -> ADNTNLayer:
    """An ADNTN layer of ``dense``'s shape with fresh (Kaiming-scale) cores."""
    kwargs.setdefault("bias", "dense" if dense.bias is not None else "none")
    factory = {"dtype": dense.weight.dtype, "device": dense.weight.device}
    if isinstance(dense, nn.Linear):
        return ADNTNLinear(dense.in_features, dense.out_features, **factory, **kwargs)
    return ADNTNConv2d(
        dense.in_channels,
        dense.out_channels,
        dense.kernel_size,
        stride=dense.stride,
        padding=dense.padding,  # type: ignore[arg-type]
        dilation=dense.dilation,
        **factory,
        **kwargs,
    )


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _layer_defaults(
    recipe: str | os.PathLike[str] | Mapping[str, Any] | None,
    layers: Any,
    explicit: Mapping[str, Any],
) -> tuple[dict[str, Any], Any]:
    """The layer arguments every chosen layer starts from (built-ins < recipe < explicit
    arguments; ``None`` means not given), and the layer selection (the recipe's if unset)."""
    defaults: dict[str, Any] = dict(_DEFAULTS)
    if recipe is not None:
        spec = dict(recipe) if isinstance(recipe, Mapping) else load_recipe(recipe)
        defaults.update(spec.get("defaults", {}))
        if layers is None:
            layers = spec.get("layers")
    defaults.update({k: v for k, v in explicit.items() if v is not None})
    return defaults, layers


def compress(
    model: nn.Module,
    *,
    recipe: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    layers: str | Sequence[str] | Mapping[str, Mapping[str, Any]] | None = None,
    network: str | None = None,
    bond_dim: int | Sequence[int] | None = None,
    activation: str | Sequence[str] | None = None,
    bias: bool | str | None = None,
    fit: bool = True,
    fit_steps: int = 300,
    fit_lr: float = 0.02,
    calibration: torch.Tensor | None = None,
    activation_weight: float = 1.0,
    max_calibration_rows: int = 4096,
    match_norm: bool = True,
    discard_fit_above: float = 0.9,
    init: str = "svd",
    select: str = "objective",
    verbose: bool = False,
    **layer_kwargs: Any,
) -> nn.Module:
    """Replace chosen ``nn.Linear``/``nn.Conv2d`` layers of ``model`` by ADNTN layers, in place.

    Args:
        model: The model; modified in place and returned.
        recipe: A recipe name (see :func:`list_recipes`), a ``.json`` path or a recipe
            dict; supplies ``layers`` and the defaults below.
        layers: Which layers (see :func:`resolve_layers`): names, ``model.fc_layers``
            aliases, fnmatch patterns, or a dict name/pattern -> per-layer overrides
            (any ADNTN layer argument, plus ``fit_steps``/``fit_lr``/``activation_weight``
            and ``discard_fit_above``, None: never discard that layer's fit).
            ``None`` (and no recipe): every ``nn.Linear``.
        network, bond_dim, activation, bias: ADNTN layer arguments for every chosen
            layer; ``None`` means the recipe's value, else ``"ttn"``, ``4``, ``"tanh"``,
            ``"dense"``.
        fit: Fit each new layer to the dense weights it replaces (else fresh cores).
        fit_steps, fit_lr: Adam steps and learning rate of the layer-wise fit.
        calibration: Model inputs (a batch); the input of every chosen layer is
            captured with forward hooks in one pass of the dense model and the fit adds
            the activation-aware term ``||(W - W_d) X||^2``.
        activation_weight: Weight of that term.
        max_calibration_rows: Rows of a Linear layer's captured input kept (evenly spaced).
        match_norm: After a fit from ``init="random"`` that left the weight smaller than the
            dense one (at extreme compression the fit shrinks ``W`` towards zero, which would
            silence the layer for the fine-tuning), rescale it to the dense Frobenius norm.
            A fit from ``init="svd"`` is the tree's truncation of ``W_d``: left as fitted.
        discard_fit_above: Discard a fit whose relative weight error stays at or above this
            and, with ``calibration``, whose error on the calibration inputs stays at or
            above :data:`~adntn_export.fitting.ACTIVATION_KEEP_BELOW` (0.5) (it learned
            nothing and trains worse than a fresh start; :meth:`FitResult.learned_nothing`):
            the layer keeps its Kaiming-scale initialisation and ``FitResult.discarded`` is
            set; ``math.inf`` keeps every fit.
        init: Where each fit starts: ``"svd"`` (default; :mod:`adntn_export.svd_init`, exact
            when the weight is representable with identity activations) or ``"random"``.
        select: Which cores each fitted layer keeps. ``"objective"`` (default): the fit's
            (lowest objective seen), or a fresh initialisation under ``discard_fit_above``:
            the start for fine-tuning. ``"output"`` (needs ``calibration``): of the fit,
            its starting cores (with ``init="svd"``: the hierarchical SVD, which for a
            two-site split plan is truncated SVD) and a fresh initialisation, the one whose
            *model* output on the calibration inputs (the other layers dense) is closest to
            the dense model's; for a model used without fine-tuning (data-free compression:
            the fit's objective, a layer-output error, can favour cores that the rest of
            the network reads worse). "Closest": the KL divergence of the softmax of the
            model's outputs (a classifier's logits) from the dense model's.
            ``discard_fit_above`` does not apply; ``discarded`` means the fresh
            initialisation won. Costs three forward passes per layer.
        verbose: Print one line per layer.
        **layer_kwargs: Further ADNTN layer arguments for every chosen layer (``num_sites``...).

    Returns:
        ``model``, with ``model.adntn_fit_report``: ``{module name: FitResult}`` for the
        layers fitted (``FitResult.relative_error`` is ``||W - W_d|| / ||W_d||``), and
        ``model.adntn_layer_configs``: ``{module name: layer.config()}``.

    Raises:
        ValueError: On a bad selection (the message lists candidate layers) or bad arguments;
        the model is then left exactly as it was (all layers or none are replaced).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compress needs an nn.Module, got {type(model).__name__}")
    if select not in SELECTIONS:
        raise ValueError(f"unknown select {select!r}; valid: {list(SELECTIONS)}")
    if select == "output" and (calibration is None or not fit):
        raise ValueError("select='output' needs calibration inputs and fit=True")
    explicit = {"network": network, "bond_dim": bond_dim, "activation": activation, "bias": bias}
    defaults, layers = _layer_defaults(recipe, layers, explicit)
    defaults.update(layer_kwargs)
    built = _build_all(
        model,
        resolve_layers(model, layers),
        defaults,
        fit=fit,
        fit_args=dict(steps=fit_steps, lr=fit_lr, activation_weight=activation_weight, init=init),
        calibration=calibration,
        max_calibration_rows=max_calibration_rows,
        match_norm=match_norm,
        discard_fit_above=discard_fit_above,
        select=select,
    )
    _swap_in(model, built, verbose=verbose)
    return model


def _build_all(
    model: nn.Module,
    chosen: Mapping[str, Mapping[str, Any]],
    defaults: Mapping[str, Any],
    *,
    fit: bool,
    fit_args: Mapping[str, Any],
    calibration: torch.Tensor | None,
    max_calibration_rows: int,
    match_norm: bool,
    discard_fit_above: float,
    select: str = "objective",
) -> dict[str, tuple[ADNTNLayer, FitResult | None]]:
    """Every replacement layer (fitted when ``fit``), built before the model is touched."""
    inputs: dict[str, torch.Tensor] = {}
    if calibration is not None and fit:
        inputs = _capture_inputs(model, list(chosen), calibration, max_calibration_rows)
    modules = dict(model.named_modules())
    built = {}
    for name, overrides in chosen.items():
        kwargs = {**defaults, **overrides}
        discard = _discard_limit(name, kwargs.pop("discard_fit_above", discard_fit_above))
        built[name] = _replacement(
            modules[name],
            kwargs,
            fit=fit,
            fit_args=fit_args,
            calibration=inputs.get(name),
            match_norm=match_norm,
            discard_fit_above=math.inf if select == "output" else discard,
        )
    if select == "output":
        assert calibration is not None
        ref = model_outputs(model, calibration)  # the dense model's, shared by every layer
        for name, overrides in chosen.items():
            layer, result = built[name]
            assert result is not None
            kwargs = {k: v for k, v in {**defaults, **overrides}.items() if k not in _FIT_KEYS}
            built[name] = _select_by_output(
                model, name, layer, result, kwargs, fit_args, inputs[name], calibration, ref
            )
    return built


def _discard_limit(name: str, value: Any) -> float:
    """A layer's ``discard_fit_above`` (a recipe's per-layer value; None: never discard)."""
    if value is None:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(
            f"layer {name!r}: discard_fit_above {value!r} is not valid; valid: a number > 0 "
            "(a relative weight error) or null (never discard the fit)"
        )
    return float(value)


@torch.no_grad()
def model_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` in eval mode, in chunks (the modules' train flags restored after)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return torch.cat([model(part) for part in x.split(_SCORE_CHUNK)])
    finally:
        for m, flag in flags:
            m.training = flag


def output_divergence(out: torch.Tensor, ref: torch.Tensor) -> float:
    """KL(softmax(ref) || softmax(out)) over the last axis, the mean over the rest: how far
    a classifier's predictions move (a logit error in norm can rank candidates the other
    way: it is dominated by a shift common to every class, which no prediction sees)."""
    ref_logp = ref.float().log_softmax(-1)
    out_logp = out.float().log_softmax(-1)
    kl = (ref_logp.exp() * (ref_logp - out_logp)).sum(-1)
    return float(kl.mean())


def _select_by_output(
    model: nn.Module,
    name: str,
    fitted: ADNTNLayer,
    result: FitResult,
    kwargs: dict[str, Any],
    fit_args: Mapping[str, Any],
    layer_input: torch.Tensor,
    calibration: torch.Tensor,
    ref: torch.Tensor,
) -> tuple[ADNTNLayer, FitResult]:
    """Of the fit, its start and a fresh initialisation (see ``compress(select=...)``), the
    layer whose model output on ``calibration`` is closest to the dense model's."""
    dense = model.get_submodule(name)
    from_dense = ADNTNLinear.from_linear if isinstance(dense, nn.Linear) else ADNTNConv2d.from_conv
    start, start_result = from_dense(
        dense,
        steps=0,
        calibration=layer_input,
        activation_weight=fit_args["activation_weight"],
        init=fit_args["init"],
        **kwargs,
    )
    fresh = copy.deepcopy(fitted)
    with torch.no_grad():
        fresh.weight_generator.reset_parameters()
    fresh_result = dataclasses.replace(result, discarded=True)
    candidates = {
        "fit": (fitted, result),
        "start": (start, start_result),
        "fresh": (fresh, fresh_result),
    }
    errors = {}
    for key, (layer, _) in candidates.items():
        layer.train(dense.training)
        _set_module(model, name, layer)
        try:
            out = model_outputs(model, calibration)
        finally:
            _set_module(model, name, dense)
        errors[key] = output_divergence(out, ref)
    best = min(errors, key=errors.__getitem__)
    layer, chosen = candidates[best]
    chosen.selected, chosen.output_errors = best, errors
    return layer, chosen


def _swap_in(
    model: nn.Module, built: Mapping[str, tuple[ADNTNLayer, FitResult | None]], *, verbose: bool
) -> None:
    """Put the new layers in place and record their configs and fits on ``model``."""
    report: dict[str, FitResult] = dict(getattr(model, "adntn_fit_report", {}) or {})
    configs: dict[str, dict[str, Any]] = dict(getattr(model, "adntn_layer_configs", {}) or {})
    for name, (new, result) in built.items():
        _set_module(model, name, new)
        configs[name] = new.config()
        if result is not None:
            report[name] = result
        if verbose:
            _print_layer(name, new, report.get(name))
    model.adntn_fit_report = report  # type: ignore[assignment]
    model.adntn_layer_configs = configs  # type: ignore[assignment]


def _replacement(
    dense: nn.Module,
    kwargs: dict[str, Any],
    *,
    fit: bool,
    fit_args: Mapping[str, Any],
    calibration: torch.Tensor | None,
    match_norm: bool,
    discard_fit_above: float,
) -> tuple[ADNTNLayer, FitResult | None]:
    """The ADNTN layer that replaces ``dense`` (fitted to it when ``fit``), and its fit."""
    steps = int(kwargs.pop("fit_steps", fit_args["steps"]))
    lr = float(kwargs.pop("fit_lr", fit_args["lr"]))
    act_w = float(kwargs.pop("activation_weight", fit_args["activation_weight"]))
    if not fit:
        new = _unfitted_layer(dense, **kwargs)  # type: ignore[arg-type]
        new.train(dense.training)
        return new, None
    from_dense = ADNTNLinear.from_linear if isinstance(dense, nn.Linear) else ADNTNConv2d.from_conv
    new, result = from_dense(
        dense,
        steps=steps,
        lr=lr,
        calibration=calibration,
        activation_weight=act_w,
        init=fit_args["init"],
        **kwargs,
    )
    if result.learned_nothing(discard_fit_above):
        # The fit captured nothing (typical at >500x on a trained weight): its cores are
        # noise at the dense scale, which hurts the fine-tuning that follows (run `adntn
        # demo` with discard_fit_above=1.0 in DEMO_COMPRESSION to see it). Start from the
        # Kaiming-scale init instead.
        with torch.no_grad():
            new.weight_generator.reset_parameters()
        result.discarded = True
    elif match_norm and fit_args["init"] == "random":
        _match_norm(new, dense.weight.detach())
    new.train(dense.training)
    return new, result


def _print_layer(name: str, new: ADNTNLayer, result: FitResult | None) -> None:
    err = ""
    if result is not None:
        err = f", fit error {result.relative_error:.4f}"
        if result.activation_error is not None:
            err += f" (on the calibration inputs {result.activation_error:.4f})"
    if result is not None and result.output_errors is not None:
        err += f", output KL {result.output_errors[result.selected]:.4f}"
        err += f" (kept: {result.selected})"
    if result is not None and result.discarded:
        err += " (fit discarded: kept the initialisation)"
    print(
        f"compressed {name}: {new.dense_parameters:,} -> {new.stored_parameters:,} "
        f"params ({new.dense_parameters / new.stored_parameters:,.0f}x){err}"
    )
