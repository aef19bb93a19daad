"""Per-layer modes on TVM: which :class:`~adntn_runtime.modes.LoweringMode` each ADNTN layer
of an exported file compiles in, and why.

* An ``auto`` file (``ai.adntn`` placeholders carrying the plan) gets its modes from the same
  policy as the ONNX Runtime device runtime (:func:`adntn_runtime.policy.choose_modes` over
  :func:`~adntn_runtime.policy.layer_candidates`, predicted with the default device rates, a
  convolution at one row per output pixel),
  within ``--memory-budget-mb`` / ``--latency-target-ms``; ``--mode`` forces one mode.
* A fixed-mode file (``adntn export --mode fused|materialize|regenerate``) records each
  layer's placeholder (``adntn.placeholder.<name>``): :mod:`.compile` rebuilds it, and the
  layer compiles like an ``auto`` file's, in its export's mode (``adntn.layer.<name>``) unless
  ``--mode`` or the policy's limits ask otherwise.
* A file without that record (older exports, ``dense``) was lowered for good at export
  (:func:`file_layer_modes`): each layer keeps its recorded mode. ``--mode`` may only repeat
  it, or ask ``dense`` for a materialize/regenerate layer (its weight build is then folded
  into constants at compile time).

What each mode means on TVM (:mod:`.compile` implements it):

* ``dense``: the weight is a constant of the artefact (folded at compile time).
* ``materialize``: the cores are constants of a VM function ``materialize()`` that builds the
  weight once at load (Relax ``LiftTransformParams``); ``main`` takes the built weight.
* ``regenerate``: the cores are returned unchanged by ``materialize()``; ``main`` rebuilds the
  weight at every call (nothing of it is folded), one row tile at a time: a fixed file's
  layer tiles as its export did (the record's ``tile_rows``), others by the plan's default;
  ``manifest.json`` gives each regenerate layer's ``tile_rows`` (when set) and ``row_tiles``.
* ``fused``: the input is contracted into the network; the cores are constants and only the
  input-independent factors are folded at compile time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from adntn_runtime import onnx_lowering as lowering
from adntn_runtime.modes import LoweringMode, parse_mode
from adntn_runtime.policy import DEFAULT_RATES, BudgetError, choose_modes, layer_candidates

__all__ = ["LayerMode", "file_layer_modes", "placeholder_layer_modes"]

LAYER_KEY = "adntn.layer."


@dataclass(frozen=True)
class LayerMode:
    """The mode one ADNTN layer compiles in, and why (both go to ``manifest.json``); for a
    regenerate layer lowered from its plan, the rows per tile asked (``None``: the plan's
    default) and the number of row tiles."""

    mode: LoweringMode
    reason: str
    tile_rows: int | None = None
    row_tiles: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the tiling only when known)."""
        out: dict[str, Any] = {"mode": self.mode.value, "reason": self.reason}
        if self.tile_rows is not None:
            out["tile_rows"] = self.tile_rows
        if self.row_tiles is not None:
            out["row_tiles"] = self.row_tiles
        return out


def _specs(model: Any) -> dict[str, lowering.LayerSpec]:
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.domain == lowering.ADNTN_DOMAIN:
            arrays = {n: numpy_helper.to_array(inits[n]) for n in node.input[1:] if n in inits}
            spec = lowering.spec_from_node(node, arrays)
            out[spec.name] = spec
    return out


def placeholder_layer_modes(
    model: Any,
    *,
    mode: str | None,
    batch: int,
    memory_budget_mb: float | None = None,
    latency_target_ms: float | None = None,
) -> dict[str, LayerMode]:
    """Modes of the placeholder layers of an ``auto`` file (layer name -> :class:`LayerMode`)."""
    specs = _specs(model)
    if mode is not None:
        forced = parse_mode(mode, LoweringMode, name="--mode")
        for name, spec in specs.items():
            if forced is LoweringMode.FUSED and not spec.plan.top_is_linear:
                raise ValueError(
                    f"--mode fused: layer {name!r} cannot run fused (its plan ends in "
                    f"{spec.plan.final_activation!r}); choose --mode materialize, regenerate "
                    "or dense, or leave --mode out to let the policy choose per layer"
                )
        return {n: LayerMode(forced, f"forced by --mode {forced.value}") for n in specs}
    candidates = {
        n: layer_candidates(
            s.plan, batch, DEFAULT_RATES, rows=s.gemm_rows(batch), conv=s.conv is not None
        )
        for n, s in specs.items()
    }
    try:
        choices = choose_modes(
            candidates, memory_budget_mb=memory_budget_mb, latency_target_ms=latency_target_ms
        )
    except BudgetError as exc:  # name the CLI flags, not the Python keywords
        raise BudgetError(_flags(str(exc)), exc.min_budget_mb) from None
    except ValueError as exc:
        raise ValueError(_flags(str(exc))) from None
    return {
        n: LayerMode(LoweringMode(c.mode), f"policy (batch {batch}): {c.reason}")
        for n, c in choices.items()
    }


def _flags(text: str) -> str:
    text = text.replace("memory_budget_mb", "--memory-budget-mb")
    return text.replace("latency_target_ms", "--latency-target-ms")


def file_layer_modes(model: Any, *, mode: str | None) -> dict[str, LayerMode]:
    """Modes of the layers of a fixed-mode file, from its ``adntn.layer.<name>`` metadata.

    Layer names are the metadata's (the lowering prefix, which the layer's nodes carry in
    their own ``adntn.layer`` metadata).
    """
    forced = None if mode is None else parse_mode(mode, LoweringMode, name="--mode")
    out = {}
    for entry in model.metadata_props:
        if not entry.key.startswith(LAYER_KEY):
            continue
        name = entry.key[len(LAYER_KEY) :]
        try:
            info = json.loads(entry.value)
            written = LoweringMode(info["mode"])
        except (ValueError, KeyError, TypeError):
            continue  # not a lowered layer (e.g. the "auto" summary of a placeholder file)
        if forced is None or forced is written:
            out[name] = LayerMode(written, f"fixed by the export (adntn export --mode {written})")
        elif forced is LoweringMode.DENSE and written in (
            LoweringMode.MATERIALIZE,
            LoweringMode.REGENERATE,
        ):
            out[name] = LayerMode(forced, f"forced by --mode dense (exported {written})")
        else:
            raise ValueError(
                f"--mode {forced.value}: layer {name!r} was exported in mode {written.value} and "
                f"can compile only as {written.value}"
                + (" or dense" if written in ("materialize", "regenerate") else "")
                + "; export with `adntn export --mode auto` to choose the mode at compile time"
            )
    return out
