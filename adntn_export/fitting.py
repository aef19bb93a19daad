"""Fit an ADNTN layer's generator to a dense weight (layer-wise initialisation).

The objective is the relative reconstruction error ``||W - W_d||^2 / ||W_d||^2``,
plus, with calibration inputs ``X``, the activation-aware term
``||(W - W_d) X^T||^2 / ||W_d X^T||^2``, which weights errors by how the data
actually uses the layer. Adam on every core (and on a generated bias).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from adntn_export.svd_init import INITS, svd_initialize

if TYPE_CHECKING:
    from adntn_export.layers import ADNTNLayer

__all__ = ["ACTIVATION_KEEP_BELOW", "FitResult", "capture_layer_inputs", "fit_layer"]

#: A fit whose relative error on the calibration inputs is below this is kept, whatever its
#: weight error (see :meth:`FitResult.learned_nothing`).
ACTIVATION_KEEP_BELOW = 0.5


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
    """Outcome of a fit: relative Frobenius error before and after, steps and time.

    ``objective`` is what the fit minimised, ``e_w^2 + a * e_x^2`` (``e_w`` the relative
    weight error, ``e_x`` the relative activation error on the calibration inputs, ``a``
    the activation weight; ``e_w^2`` alone without calibration inputs). The layer keeps
    the cores with the lowest objective seen, so ``objective <= initial_objective``; with
    calibration inputs the weight error alone may rise while the objective falls.
    """

    relative_error: float
    initial_relative_error: float
    steps: int
    seconds: float
    activation_error: float | None = None
    history: list[float] = field(default_factory=list)
    #: Set by :func:`adntn_export.compress.compress` when it threw the fit away.
    discarded: bool = False
    objective: float = math.nan
    initial_objective: float = math.nan
    #: ``compress(select="output")``: the candidate kept (``"fit"``, ``"start"``: the fit's
    #: starting cores, ``"fresh"``: a fresh initialisation) and each candidate's KL divergence
    #: of the model's predictions on the calibration inputs from the dense model's (the
    #: other layers dense).
    selected: str = "fit"
    output_errors: dict[str, float] | None = None

    def __float__(self) -> float:
        return self.relative_error

    def learned_nothing(
        self, weight_above: float = 0.9, activation_above: float | None = None
    ) -> bool:
        """True when the fit reproduces neither the weight (relative error >= ``weight_above``)
        nor, with calibration inputs, the layer's outputs on them (relative error >=
        ``activation_above``, default :data:`ACTIVATION_KEEP_BELOW`).

        Either is enough to keep a fit: a low-rank fit of a trained layer keeps most of its
        outputs with a weight error above 0.9, and a fit that shrinks the weight towards zero
        lowers the output error a little without capturing anything (such a layer then
        silences the network for the fine-tuning that follows).
        """
        if self.relative_error < weight_above:
            return False
        limit = ACTIVATION_KEEP_BELOW if activation_above is None else activation_above
        return self.activation_error is None or self.activation_error >= limit


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
    start = time.perf_counter()
    target = _FitTarget.make(gen, ref, calibration, init, activation_weight)
    with torch.no_grad():
        if layer.bias is not None and bias is not None:
            layer.bias.copy_(bias.detach())
    params = list(gen.parameters())
    history = _optimise(gen, params, target, steps=steps, lr=lr, log_every=log_every)
    final, act_err = target.finish(gen)
    if layer.bias_generator is not None and bias is not None:
        _fit_bias(layer, bias.detach(), steps=max(100, steps // 2), lr=lr)
    assert target.best is not None
    return FitResult(
        final,
        target.initial,
        steps,
        time.perf_counter() - start,
        act_err,
        history,
        objective=target.best[0],
        initial_objective=target.initial_objective,
    )


@dataclass
class _FitTarget:
    """The (unit-scaled) weight a fit aims at, its calibration inputs and norms.

    With a linear top step the weight is linear in the root core, so the fit runs on a
    unit-scale copy of the target (root divided by the same factor, restored by
    :meth:`finish`): Adam's steps are then of the same relative size for the root as for
    the other cores, which makes the fit converge far more reliably.
    """

    ref: torch.Tensor
    ref_norm: torch.Tensor
    x_cal: torch.Tensor | None
    ref_act: torch.Tensor | None
    unit: float
    initial: float
    activation_weight: float = 1.0
    initial_objective: float = math.nan
    #: (objective, cores) of the best step so far
    best: tuple[float, list[torch.Tensor]] | None = None

    def loss(self, w: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The objective of the (unit-scaled) weight ``w`` (a tensor, for autograd) and its
        relative weight error."""
        diff = w - self.ref
        loss = diff.pow(2).sum() / self.ref_norm
        err = float(loss.detach().sqrt())
        if self.x_cal is not None:
            assert self.ref_act is not None
            act = (self.x_cal @ diff.T).pow(2).sum() / self.ref_act
            loss = loss + self.activation_weight * act
        return loss, err

    @classmethod
    def make(
        cls,
        gen: Any,
        ref: torch.Tensor,
        calibration: torch.Tensor | None,
        init: str,
        activation_weight: float = 1.0,
    ) -> _FitTarget:
        plan = gen.plan
        x_cal = ref_act = None
        if calibration is not None:
            x_cal = calibration.detach().reshape(-1, plan.in_features).to(ref.dtype)
            ref_act = (x_cal @ ref.T).norm().pow(2).clamp_min(1e-30)
        if init == "svd":
            svd_initialize(gen, ref)
        unit = float(ref.std()) if plan.top_is_linear and ref.numel() > 1 else 1.0
        unit = unit if unit > 0 else 1.0
        with torch.no_grad():
            ref = ref / unit
            if ref_act is not None:
                ref_act = ref_act / unit**2
            ref_norm = ref.norm().pow(2).clamp_min(1e-30)
            gen.cores["root"].div_(unit)
            gen.clear_cache()
            if plan.top_is_linear:  # start from the right scale: least-squares root scale
                w0 = gen.weight()
                scale = float((w0 * ref).sum() / w0.pow(2).sum().clamp_min(1e-30))
                if scale != 0.0:
                    gen.cores["root"].mul_(scale)
                gen.clear_cache()
            initial = _relative_error(gen.weight(), ref)
            target = cls(ref, ref_norm, x_cal, ref_act, unit, initial, activation_weight)
            target.initial_objective = float(target.loss(gen.weight())[0])
        return target

    def finish(self, gen: Any) -> tuple[float, float | None]:
        """Restore the best cores seen and the root's scale; the final weight error and
        activation error."""
        with torch.no_grad():
            if self.best is not None:
                for p, b in zip(gen.parameters(), self.best[1], strict=True):
                    p.copy_(b)
            gen.clear_cache()
            final = _relative_error(gen.weight(), self.ref)
            act_err = None
            if self.x_cal is not None:
                assert self.ref_act is not None
                diff = gen.weight() - self.ref
                act_err = float(((self.x_cal @ diff.T).norm().pow(2) / self.ref_act).sqrt())
            gen.cores["root"].mul_(self.unit)
            gen.clear_cache()
        return final, act_err


def _optimise(
    gen: Any,
    params: list[torch.Tensor],
    target: _FitTarget,
    *,
    steps: int,
    lr: float,
    log_every: int,
) -> list[float]:
    """Adam with a cosine schedule on the fit's objective; ``target.best`` keeps the cores
    with the lowest objective seen (the start included). Returns the weight error of every
    step's cores."""
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=lr * 0.05)
    target.best = (target.initial_objective, [p.detach().clone() for p in params])
    history: list[float] = []
    for step in range(steps + 1):
        opt.zero_grad(set_to_none=True)
        loss, err = target.loss(gen.weight())
        value = float(loss.detach())
        if step:  # step 0's cores are the start, already in target.best
            history.append(err)
            if value < target.best[0]:
                target.best = (value, [p.detach().clone() for p in params])
        if step == steps:
            break  # the last step's cores were scored above; no update after them
        loss.backward()
        opt.step()
        sched.step()
        if log_every and step % log_every == 0:
            print(f"fit step {step}: objective {value:.4f}, relative weight error {err:.4f}")
    gen.clear_cache()
    return history


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
