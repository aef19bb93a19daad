"""Builders of hostile files for tests/bad_inputs (checkpoints, ONNX files), and the CLI runner.

Every builder writes into a folder the test gives and returns the path; nothing here runs
the files. The payload checkpoints would create ``marker`` if any code named in them ran.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from adntn_export.checkpoint import save_model
from adntn_export.layers import ADNTNLinear
from adntn_export.onnx_export import layer_spec
from adntn_runtime import onnx_lowering as lowering

MARKER = "PWNED"


class CliError(Exception):
    """``adntn`` exited non-zero; the message is its stderr."""

    def __init__(self, code: int, stderr: str) -> None:
        super().__init__(stderr)
        self.code = code


def run_cli(argv: Sequence[str]) -> Callable[[], None]:
    """An action running ``adntn argv``; raises :class:`CliError` on a non-zero exit."""

    def action() -> None:
        from adntn_export.cli import main

        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main([str(a) for a in argv])
        if code != 0:
            raise CliError(code, err.getvalue())

    return action


# ---------------------------------------------------------------------------- checkpoints
def raw_checkpoint(path: Path, **fields: Any) -> Path:
    """A model checkpoint dict (format 1, a tiny valid Sequential) with ``fields`` replaced."""
    state: dict[str, Any] = {
        "format": 1,
        "builder": None,
        "kwargs": {},
        "sequential": [{"type": "Linear", "args": {"in_features": 4, "out_features": 2}}],
        "adntn_layers": {},
        "state_dict": {"0.weight": torch.zeros(2, 4), "0.bias": torch.zeros(2)},
        "example_input_shape": [1, 4],
    }
    state.update(fields)
    torch.save(state, path)
    return path


def payload_checkpoint(path: Path, marker: Path, builder: str = "os:system") -> Path:
    """A checkpoint whose builder, if imported and called, would create ``marker``."""
    kwargs: dict[str, Any] = {"command": f"touch {marker}"}
    if builder.startswith("builtins:"):
        kwargs = {"source": f"open({str(marker)!r}, 'w').close()"}
    return raw_checkpoint(path, builder=builder, kwargs=kwargs, sequential=None, state_dict={})


def adntn_checkpoint(path: Path, *, nan: bool = False) -> Path:
    """A valid checkpoint of ``Sequential(ADNTNLinear(16, 8))`` (a NaN in a core if asked)."""
    torch.manual_seed(0)
    model = nn.Sequential(ADNTNLinear(16, 8, bond_dim=2))
    if nan:
        with torch.no_grad():
            next(iter(model[0].weight_generator.cores.values())).view(-1)[0] = float("nan")
    return save_model(model, path, example_input_shape=(1, 16))


def training_state(path: Path, **fields: Any) -> Path:
    """A minimal training state (``last.pt``) with ``fields`` replaced."""
    state: dict[str, Any] = {
        "version": 1,
        "model": {},
        "optimizer": {},
        "scheduler": {},
        "rng": {},
        "epoch": 0,
        "step_in_epoch": 0,
    }
    state.update(fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


# ---------------------------------------------------------------------------- ONNX files
def auto_model(in_features: int = 16, out_features: int = 8, **kwargs: Any) -> onnx.ModelProto:
    """The ``auto`` (placeholder) model of one seeded ADNTNLinear layer named ``fc``."""
    torch.manual_seed(0)
    layer = ADNTNLinear(in_features, out_features, bond_dim=2, **kwargs)
    spec = layer_spec(layer, "fc")
    return lowering.layer_model(spec, "auto", input_shape=["batch", in_features])


def fused_model() -> onnx.ModelProto:
    """The fused lowering of the same layer."""
    torch.manual_seed(0)
    spec = layer_spec(ADNTNLinear(16, 8, bond_dim=2), "fc")
    return lowering.layer_model(spec, "fused", input_shape=["batch", 16])


def regenerate_model(tile_rows: int = 4, out_features: int = 8) -> onnx.ModelProto:
    """The regenerate lowering of the same layer (batch 1, so that ``adntn compile`` needs no
    ``--batch``), its placeholder recorded with ``tile_rows``."""
    torch.manual_seed(0)
    spec = layer_spec(ADNTNLinear(16, out_features, bond_dim=2), "fc")
    return lowering.layer_model(spec, "regenerate", input_shape=[1, 16], tile_rows=tile_rows)


def tamper_record(model: onnx.ModelProto, **changes: Any) -> onnx.ModelProto:
    """Change fields of the layer's placeholder record (``adntn.placeholder.fc``)."""
    entry = next(p for p in model.metadata_props if p.key == "adntn.placeholder.fc")
    entry.value = json.dumps({**json.loads(entry.value), **changes})
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def placeholder(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.domain == lowering.ADNTN_DOMAIN)


def set_attr(model: onnx.ModelProto, key: str, value: Any) -> onnx.ModelProto:
    """Replace (or, with ``value=None``, remove) one attribute of the placeholder."""
    node = placeholder(model)
    kept = [a for a in node.attribute if a.name != key]
    del node.attribute[:]
    node.attribute.extend(kept)
    if value is not None:
        node.attribute.append(helper.make_attribute(key, value))
    return model


def tamper_plan(model: onnx.ModelProto, **changes: Any) -> onnx.ModelProto:
    """Change fields of the placeholder's plan JSON."""
    node = placeholder(model)
    attr = next(a for a in node.attribute if a.name == "plan")
    plan = json.loads(attr.s)
    plan.update(changes)
    return set_attr(model, "plan", json.dumps(plan))


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> onnx.ModelProto:
    lowering.set_metadata(model, key, value)
    return model


def poison_initializer(model: onnx.ModelProto, value: float = float("nan")) -> onnx.ModelProto:
    """Put ``value`` into the first float initializer of the ADNTN layer (a core)."""
    init = next(t for t in model.graph.initializer if "/cores/" in t.name)
    array = numpy_helper.to_array(init).copy()
    array.reshape(-1)[0] = value
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    return model


def external(model: onnx.ModelProto, location: str, **info: str) -> onnx.ModelProto:
    """Make the first core initializer external, stored at ``location`` (not written)."""
    init = next(t for t in model.graph.initializer if "/cores/" in t.name)
    array = numpy_helper.to_array(init)
    init.ClearField("raw_data")
    init.ClearField("float_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    entries: Mapping[str, str] = {"location": location, "length": str(array.nbytes), **info}
    for key, value in entries.items():
        e = init.external_data.add()
        e.key, e.value = key, value
    return model


def core_bytes(model: onnx.ModelProto) -> bytes:
    init = next(t for t in model.graph.initializer if "/cores/" in t.name)
    return np.ascontiguousarray(numpy_helper.to_array(init)).tobytes()
