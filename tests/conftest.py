"""The shared test corpus: networks, seeded random plans/cores, and the zoo models with their
ADNTN layers, exported in every mode and compiled with TVM once per session.

* :data:`NETWORKS`, :data:`EXPORT_MODES`, :data:`LOWERING_MODES`: the vocabularies to cross.
* :func:`random_plan`, :func:`random_cores`: seeded plans and cores (numpy, torch-free).
* Marker ``@pytest.mark.needs("aarch64-g++", ...)``: skip, naming the Debian package, unless
  every named requirement of ``tests/_requirements.py`` is met (checked when the test runs).
* :data:`SMALL_ZOO` (default tests), :data:`MEDIUM_ZOO` and :data:`CANONICAL_ZOO` (slow
  tests): zoo model names. :func:`zoo_case` builds one (every ``nn.Linear`` compressed with
  ``network``, bond dimension 4, seeded, unfitted) with its input and torch logits; a name
  with :data:`WHOLE` appended (``"small_cnn+whole"``) also compresses every ``nn.Conv2d``
  in the split layout (whole-network compression, the ``*_whole`` recipes' form).
* Session fixtures ``zoo_export(name, mode, einsum=True)`` -> ONNX path and
  ``tvm_compiled(name, mode, target, einsum=True, compile_mode=None)`` -> OUTDIR: each file
  is written once per session (``tmp_path_factory``) whichever test asks first.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adntn_runtime.modes import ExportMode, LoweringMode
from adntn_runtime.plan import NETWORKS, ADNTNPlan

__all__ = ["NETWORKS", "random_cores", "random_plan", "zoo_case"]
EXPORT_MODES: tuple[str, ...] = tuple(m.value for m in ExportMode)
LOWERING_MODES: tuple[str, ...] = tuple(m.value for m in LoweringMode)
SMALL_ZOO: tuple[str, ...] = ("mlp", "small_cnn")
MEDIUM_ZOO: tuple[str, ...] = ("alexnet32", "vgg16_32")
CANONICAL_ZOO: tuple[str, ...] = ("alexnet", "vgg16")
#: Suffix of a corpus name whose convolutions are compressed too (split layout, 3 sites).
WHOLE = "+whole"
ZOO_INPUTS: dict[str, tuple[int, ...]] = {
    "mlp": (1, 1, 28, 28),
    "small_cnn": (1, 1, 28, 28),
    "alexnet32": (1, 3, 32, 32),
    "vgg16_32": (1, 3, 32, 32),
    "alexnet": (1, 3, 224, 224),
    "vgg16": (1, 3, 224, 224),
}


def random_plan(
    seed: int = 0, *, network: str | None = None, out_features: int = 24, in_features: int = 32
) -> ADNTNPlan:
    """A seeded plan: ``network`` (default: drawn from :data:`NETWORKS`), bond dims in 2..4."""
    rng = np.random.default_rng(seed)
    net = network or NETWORKS[int(rng.integers(len(NETWORKS)))]
    probe = ADNTNPlan(out_features, in_features, network=net)
    bonds = [int(b) for b in rng.integers(2, 5, size=len(probe.bond_dims))]
    return ADNTNPlan(out_features, in_features, network=net, bond_dim=bonds)


def random_cores(
    plan: ADNTNPlan,
    seed: int | np.random.Generator = 0,
    scale: float = 0.7,
    *,
    fan_in: bool = False,
    dtype: type | None = None,
) -> dict[str, np.ndarray]:
    """Seeded cores of ``plan``: standard normal times ``scale`` (float64), or divided by the
    square root of each core's last dimension with ``fan_in``; cast to ``dtype`` if given.

    ``seed`` may be a generator, to keep drawing from it after the cores (e.g. a bias).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    cores = {}
    for k, c in plan.cores.items():
        z = rng.standard_normal(c.shape)
        z = z / np.sqrt(max(c.shape[-1], 1)) if fan_in else z * scale
        cores[k] = z if dtype is None else z.astype(dtype)
    return cores


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.needs(*names)``: skip with the reason unless every requirement is met."""
    from _requirements import missing

    for marker in item.iter_markers("needs"):
        reason = missing(*marker.args)
        if reason is not None:
            pytest.skip(reason)


@dataclass
class ZooCase:
    """A zoo model with its ADNTN layers, one seeded input and its torch logits."""

    name: str
    model: Any  # torch.nn.Module, eval mode
    x: np.ndarray
    logits: np.ndarray


@functools.cache
def zoo_case(name: str, network: str = "ttn") -> ZooCase:
    """Zoo model ``name`` with every ``nn.Linear`` compressed (``network``, bond dim 4); with
    :data:`WHOLE` appended, every ``nn.Conv2d`` too (split layout, 3 sites, bond dim 4:
    row-only and column-only subtrees with a tanh level; fused as a low-rank convolution)."""
    import torch
    from torch import nn

    from adntn_export.compress import compress
    from adntn_models import get_model

    model_name, whole = name.removesuffix(WHOLE), name.endswith(WHOLE)
    torch.manual_seed(0)
    model = get_model(model_name)
    compress(model, network=network, bond_dim=4, fit=False)
    if whole:
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        split = {"layout": "split", "num_sites": 3}
        compress(model, layers={n: split for n in convs}, bond_dim=4, fit=False)
    model.eval()
    x = np.random.default_rng(1).standard_normal(ZOO_INPUTS[model_name]).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    return ZooCase(name, model, x, logits)


@pytest.fixture(scope="session")
def zoo_export(tmp_path_factory) -> Callable[..., Path]:
    """``(name, mode, einsum=True) -> Path``: the zoo model exported (static batch 1)."""
    root = tmp_path_factory.mktemp("zoo")

    @functools.cache
    def get(name: str, mode: str, einsum: bool = True) -> Path:
        import torch

        from adntn_export.onnx_export import export_onnx

        case = zoo_case(name)
        path = root / f"{name}-{mode}-{'einsum' if einsum else 'matmul'}.onnx"
        return export_onnx(
            case.model,
            torch.from_numpy(case.x),
            path,
            mode=mode,
            dynamic_batch=False,
            einsum=einsum,
        )

    return get


@pytest.fixture(scope="session")
def tvm_compiled(tmp_path_factory, zoo_export) -> Callable[..., Path]:
    """``(name, mode, target, einsum=True, compile_mode=None) -> OUTDIR`` (compiled once)."""
    root = tmp_path_factory.mktemp("tvm")

    @functools.cache
    def get(
        name: str, mode: str, target: str, einsum: bool = True, compile_mode: str | None = None
    ) -> Path:
        from adntn_export.tvm_backend.compile import compile_onnx
        from adntn_export.tvm_backend.targets import get_target

        if get_target(target).is_cross:  # linking for an aarch64 host needs the cross g++
            from _requirements import require

            require("aarch64-g++")
        out = root / f"{name}-{mode}-{int(einsum)}-{target}-{compile_mode}"
        compile_onnx(zoo_export(name, mode, einsum), target, out, mode=compile_mode)
        return out

    return get
