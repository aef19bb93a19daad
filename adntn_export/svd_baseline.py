"""The truncated-SVD baseline at a budget of stored numbers.

A rank-``r`` factorisation ``W ~ U_r S_r V_r^T`` of an ``(m, n)`` weight stores
``r * (m + n)`` numbers (the singular values folded into one factor), so a budget of
``B`` stored numbers buys rank ``floor(B / (m + n))``; below ``m + n`` numbers the
baseline is the zero matrix (relative error 1). :func:`truncated_svd` gives the weight
and its relative Frobenius error, which is the best any rank-``r`` matrix reaches
(Eckart-Young), so it is the reference an ADNTN fit at the same stored numbers is
compared with.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["SVDBaseline", "svd_baseline_model", "svd_rank_for", "truncated_svd"]


def svd_rank_for(shape: tuple[int, int], stored: int) -> int:
    """The largest rank whose two factors fit in ``stored`` numbers (0 when none does)."""
    m, n = shape
    return max(0, min(min(m, n), stored // (m + n)))


@dataclass(frozen=True)
class SVDBaseline:
    """A truncated SVD of a weight: its rank, stored numbers, relative error and weight."""

    rank: int
    stored: int
    relative_error: float
    weight: torch.Tensor


@torch.no_grad()
def truncated_svd(weight: torch.Tensor, stored: int) -> SVDBaseline:
    """The best rank-``r`` approximation of ``weight`` (2-D) storing at most ``stored`` numbers.

    Raises:
        ValueError: If ``weight`` is not 2-D or ``stored`` is negative.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    if stored < 0:
        raise ValueError(f"stored must be >= 0, got {stored}")
    w = weight.detach().to(torch.float64)
    rank = svd_rank_for((w.shape[0], w.shape[1]), stored)
    if rank == 0:
        approx = torch.zeros_like(w)
    else:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        approx = (u[:, :rank] * s[:rank]) @ vh[:rank]
    err = float((approx - w).norm() / w.norm().clamp_min(1e-300))
    return SVDBaseline(rank, rank * sum(w.shape), err, approx.to(weight.dtype))


@torch.no_grad()
def svd_baseline_model(
    dense: nn.Module, compressed: nn.Module
) -> tuple[nn.Module, dict[str, SVDBaseline]]:
    """The dense model with each layer that ``compressed`` replaced by an ADNTN layer given
    its truncated SVD at the ADNTN layer's stored weight numbers (the bias kept dense).

    Returns:
        The baseline model (a copy of ``dense``) and ``{module name: SVDBaseline}``.
    """
    from adntn_export.layers import ADNTNLayer

    baseline = copy.deepcopy(dense)
    out: dict[str, SVDBaseline] = {}
    for name, module in compressed.named_modules():
        if not isinstance(module, ADNTNLayer):
            continue
        target = baseline.get_submodule(name)
        w = target.weight
        svd = truncated_svd(w.reshape(w.shape[0], -1), module.stored_weight_parameters)
        w.copy_(svd.weight.reshape(w.shape).to(w.dtype))
        out[name] = svd
    return baseline, out
