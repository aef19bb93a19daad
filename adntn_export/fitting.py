"""Fit an ADNTN layer's generator to a dense weight (layer-wise initialisation).

The objective is the relative reconstruction error ``||W - W_d||^2 / ||W_d||^2``,
plus, with calibration inputs ``X``, the activation-aware term
``||(W - W_d) X^T||^2 / ||W_d X^T||^2``, which weights errors by how the data
actually uses the layer. Adam on every core (and on a generated bias).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from adntn_export.svd_init import INITS, svd_initialize

if TYPE_CHECKING:
    from adntn_export.layers import ADNTNLayer

__all__ = ["FitResult", "capture_layer_inputs", "fit_layer"]


def capture_layer_inputs(
    model: nn.Module, names: Sequence[str], batch: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Run ``model`` once on ``batch`` (eval mode, no autograd) and return the input each named
    submodule received, detached; the model's train/eval state is restored."""
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:

        def hook(_mod: nn.Module, inputs: tuple[torch.Tensor, ...], *, _name: str = name) -> None:
            captured[_name] = inputs[0].detach()

        handles.append(modules[name].register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return captured


@dataclass
class FitResult:
    """Outcome of a fit: relative Frobenius error before and after, steps and time."""

    relative_error: float
    initial_relative_error: float
    steps: int
    seconds: float
    activation_error: float | None = None
    history: list[float] = field(default_factory=list)
    #: Set by :func:`adntn_export.compress.compress` when it threw the fit away.
    discarded: bool = False

    def __float__(self) -> float:
        return self.relative_error


def _relative_error(w: torch.Tensor, ref: torch.Tensor) -> float:
    return float((w - ref).norm() / ref.norm().clamp_min(1e-30))


def fit_layer(
    layer: ADNTNLayer,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    steps: int = 500,
    lr: float = 0.02,
    calibration: torch.Tensor | None = None,
    activation_weight: float = 1.0,
    log_every: int = 0,
    init: str = "svd",
) -> FitResult:
    """Fit ``layer``'s generator to ``weight`` (shape ``(out, in_features_flat)``).

    ``init="svd"`` first sets the cores by hierarchical SVD of ``weight``
    (:func:`adntn_export.svd_init.svd_initialize`, exact when ``weight`` is representable
    with identity activations); ``"random"`` starts from the layer's current cores.
    The dense ``bias`` is copied into a dense-bias layer, or fitted by the bias
    generator. Returns a :class:`FitResult`; the layer keeps the best cores seen.
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid inits: {list(INITS)}")
    gen = layer.weight_generator
    plan = gen.plan
    ref = weight.detach().to(dtype=next(gen.parameters()).dtype)
    if tuple(ref.shape) != (plan.out_features, plan.in_features):
        raise ValueError(
            f"weight has shape {tuple(ref.shape)}, the layer generates "
            f"{(plan.out_features, plan.in_features)}"
        )
    x_cal = None
    ref_act = None
    if calibration is not None:
        x_cal = calibration.detach().reshape(-1, plan.in_features).to(ref.dtype)
        ref_act = (x_cal @ ref.T).norm().pow(2).clamp_min(1e-30)
    start = time.perf_counter()
    if init == "svd":
        svd_initialize(gen, ref)
    # With a linear top step the weight is linear in the root core, so the fit runs on
    # a unit-scale copy of the target (root divided by the same factor, restored after):
    # Adam's steps are then of the same relative size for the root as for the other
    # cores, which makes the fit converge far more reliably.
    unit = float(ref.std()) if plan.top_is_linear and ref.numel() > 1 else 1.0
    unit = unit if unit > 0 else 1.0
    with torch.no_grad():
        ref = ref / unit
        if x_cal is not None:
            ref_act = ref_act / unit**2
        ref_norm = ref.norm().pow(2).clamp_min(1e-30)
        gen.cores["root"].div_(unit)
        gen.clear_cache()
        # Start from the right scale: least-squares scale of the root.
        if plan.top_is_linear:
            w0 = gen.weight()
            scale = float((w0 * ref).sum() / w0.pow(2).sum().clamp_min(1e-30))
            if scale != 0.0:
                gen.cores["root"].mul_(scale)
            gen.clear_cache()
        initial = _relative_error(gen.weight(), ref)
        if layer.bias is not None and bias is not None:
            layer.bias.copy_(bias.detach())

    params = list(gen.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=lr * 0.05)
    best = (initial, [p.detach().clone() for p in params])
    history: list[float] = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        w = gen.weight()
        diff = w - ref
        loss = diff.pow(2).sum() / ref_norm
        if x_cal is not None:
            loss = loss + activation_weight * (x_cal @ diff.T).pow(2).sum() / ref_act
        loss.backward()
        opt.step()
        sched.step()
        err = float(diff.detach().norm() / ref_norm.sqrt())
        history.append(err)
        if err < best[0]:
            best = (err, [p.detach().clone() for p in params])
        if log_every and step % log_every == 0:
            print(f"fit step {step}: relative error {err:.4f}")
    with torch.no_grad():
        for p, b in zip(params, best[1], strict=True):
            p.copy_(b)
        gen.clear_cache()
        final = _relative_error(gen.weight(), ref)
        act_err = None
        if x_cal is not None:
            act_err = float(((x_cal @ (gen.weight() - ref).T).norm().pow(2) / ref_act).sqrt())
        gen.cores["root"].mul_(unit)
        gen.clear_cache()
    if layer.bias_generator is not None and bias is not None:
        _fit_bias(layer, bias.detach(), steps=max(100, steps // 2), lr=lr)
    return FitResult(final, initial, steps, time.perf_counter() - start, act_err, history)


def _fit_bias(layer: ADNTNLayer, bias: torch.Tensor, *, steps: int, lr: float) -> None:
    gen = layer.bias_generator
    assert gen is not None
    ref = bias.to(next(gen.parameters()).dtype).reshape(-1, 1)
    opt = torch.optim.Adam(gen.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = (gen.weight() - ref).pow(2).sum()
        loss.backward()
        opt.step()
    gen.clear_cache()
