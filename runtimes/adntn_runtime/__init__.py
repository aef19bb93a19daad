"""adntn_runtime: the device-side half of adntn. Imports numpy (and onnxruntime), never torch.

It also holds the framework-free ADNTN plan (:mod:`adntn_runtime.plan`), because
the device must be able to lower a layer in the mode its policy picks without
the host toolchain installed.

Entry point: :func:`load` (``adntn_runtime.load(path, memory_budget_mb=..., ...)``) returns a
:class:`~adntn_runtime.session.Session` whose ``decisions`` say which mode each ADNTN layer
runs in and why (:mod:`adntn_runtime.policy`, calibrated by :mod:`adntn_runtime.calibration`);
:mod:`adntn_runtime.bench` measures files in clean subprocesses. ``load`` and friends are
imported lazily, so ``import adntn_runtime.plan`` stays light (no onnx / onnxruntime).
"""

from __future__ import annotations

from typing import Any

__all__ = ["BudgetError", "LayerDecision", "Session", "load"]


def __getattr__(name: str) -> Any:
    if name in ("load", "Session", "LayerDecision"):
        from adntn_runtime import session

        return getattr(session, name)
    if name == "BudgetError":
        from adntn_runtime.policy import BudgetError

        return BudgetError
    raise AttributeError(f"module 'adntn_runtime' has no attribute {name!r}")
