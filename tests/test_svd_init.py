"""Hierarchical-SVD initialisation (adntn_export.svd_init) and the truncated-SVD baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from adntn_export.compress import compress
from adntn_export.fitting import fit_layer
from adntn_export.generator import WeightGenerator
from adntn_export.layers import ADNTNLinear
from adntn_export.svd_baseline import svd_rank_for, truncated_svd
from adntn_export.svd_init import svd_initialize
from adntn_runtime.plan import ADNTNPlan


def _representable(plan: ADNTNPlan, seed: int) -> torch.Tensor:
    """A weight made by a random identity-activation network of ``plan``'s shape (identity
    disentanglers, so attn/mera weights are tree weights)."""
    torch.manual_seed(seed)
    src = WeightGenerator(plan, dtype=torch.float64)
    with torch.no_grad():
        for name, spec in plan.cores.items():
            if spec.role == "disentangler":
                src.cores[name].zero_()
                src.cores[name][:, :, 0] = torch.eye(spec.shape[0], dtype=torch.float64)
        return src.weight().detach().clone()


def _rel(gen: WeightGenerator, w: torch.Tensor) -> float:
    with torch.no_grad():
        return float((gen.weight().double() - w).norm() / w.norm())


@pytest.mark.parametrize(
    "shape, kwargs",
    [
        ((256, 300), {"num_sites": 4, "bond_dim": 3}),
        ((100, 64), {"num_sites": 7, "bond_dim": [2, 3, 4]}),  # padded, per-level bonds
        ((256, 256), {"num_sites": 6, "bond_dim": 2, "arity": 3}),
        ((64, 64), {"num_sites": 4, "bond_dim": 3, "network": "attn"}),
        ((256, 256), {"num_sites": 8, "bond_dim": 2, "network": "mera"}),
        ((30, 20), {"num_sites": 1, "bond_dim": 4}),
        ((64, 48), {"num_sites": 6, "bond_dim": 8}),  # bond larger than the leaves' rank
        ((64, 48), {"num_sites": 2, "bond_dim": 3, "layout": "split"}),
        ((64, 48), {"num_sites": 4, "bond_dim": [8, 3], "layout": "split"}),
        ((100, 64), {"num_sites": 5, "bond_dim": [4, 3, 2], "layout": "split"}),  # padded
        ((64, 64), {"num_sites": 4, "bond_dim": 3, "network": "mera", "layout": "split"}),
    ],
)
def test_exact_for_representable_weight(shape, kwargs) -> None:
    plan = ADNTNPlan(*shape, activation="identity", **kwargs)
    w = _representable(plan, seed=1)
    gen = WeightGenerator(plan, dtype=torch.float64)
    svd_initialize(gen, w)
    assert _rel(gen, w) < 1e-5


def test_float32_cores_and_nonlinear_levels_start_near_the_linear_solution() -> None:
    lin = ADNTNPlan(256, 256, num_sites=4, bond_dim=3, activation="identity")
    w = _representable(lin, seed=2).float()
    for act, tol in (("identity", 1e-5), ("tanh", 0.1), ("sin", 0.1), ("gelu", 0.3)):
        plan = ADNTNPlan(256, 256, num_sites=4, bond_dim=3, activation=act)
        gen = WeightGenerator(plan)
        svd_initialize(gen, w)
        assert _rel(gen, w.double()) < tol, act


@settings(max_examples=12, deadline=None)
@given(
    out=st.integers(1, 40),
    inp=st.integers(1, 40),
    sites=st.integers(1, 5),
    arity=st.integers(2, 3),
    bond=st.integers(1, 4),
    network=st.sampled_from(["ttn", "attn", "mera"]),
    seed=st.integers(0, 2**16),
)
def test_properties_on_shapes_and_topologies(out, inp, sites, arity, bond, network, seed) -> None:
    plan = ADNTNPlan(
        out,
        inp,
        network=network,
        num_sites=sites,
        arity=arity,
        bond_dim=bond,
        activation="identity",
    )
    gen = WeightGenerator(plan, dtype=torch.float64)
    # a representable weight is recovered exactly (padded shapes: by alternating
    # projections, which converge in the parametrized cases but are not guaranteed to)
    w = _representable(plan, seed)
    unpadded = (plan.rows_padded, plan.cols_padded) == (out, inp)
    if unpadded and float(w.norm()) > 1e-8:
        svd_initialize(gen, w)
        assert _rel(gen, w) < 1e-5
    # any weight: the cores keep their shapes, are finite, and the truncation never has
    # more error than the zero matrix
    torch.manual_seed(seed)
    w = torch.randn(out, inp, dtype=torch.float64)
    svd_initialize(gen, w)
    for name, spec in plan.cores.items():
        assert tuple(gen.cores[name].shape) == spec.shape
        assert torch.isfinite(gen.cores[name]).all()
    assert _rel(gen, w) <= 1.0 + 1e-6


def _trained_linear() -> nn.Linear:
    """A 64 -> 64 layer trained (from PyTorch's random init) to imitate a map that a bond-4
    TTN represents; what it keeps of its random init makes it not exactly representable."""
    teacher = _representable(ADNTNPlan(64, 64, num_sites=4, bond_dim=4, activation="identity"), 3)
    teacher = (teacher / teacher.std() * 0.1).float()
    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    for _ in range(100):
        x = torch.randn(128, 64)
        loss = (layer(x) - x @ teacher.T).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return layer


def test_svd_init_beats_random_init_on_a_trained_layer() -> None:
    layer = _trained_linear()
    errors = {}
    for init in ("svd", "random"):
        torch.manual_seed(0)
        new, fit = ADNTNLinear.from_linear(
            layer, network="ttn", bond_dim=4, num_sites=4, steps=50, init=init
        )
        errors[init] = fit.relative_error
    assert errors["svd"] < errors["random"] - 0.05, errors


def test_compress_keeps_a_svd_fit_unscaled_and_not_discarded() -> None:
    model = nn.Sequential(_trained_linear())
    compress(model, layers=["0"], network="ttn", bond_dim=4, num_sites=4, fit_steps=20)
    fit = model.adntn_fit_report["0"]
    assert not fit.discarded and fit.relative_error < 0.9


def test_bad_init_and_shape_are_named() -> None:
    layer = ADNTNLinear(8, 8, bond_dim=2)
    with pytest.raises(
        ValueError, match="unknown init 'hosvd'; valid inits: \\['svd', 'random'\\]"
    ):
        fit_layer(layer, torch.zeros(8, 8), init="hosvd")
    with pytest.raises(ValueError, match="weight has shape \\(4, 8\\)"):
        svd_initialize(layer.weight_generator, torch.zeros(4, 8))


def test_truncated_svd_matches_numpy_and_counts_stored_numbers() -> None:
    torch.manual_seed(0)
    w = torch.randn(30, 20, dtype=torch.float64)
    assert svd_rank_for((30, 20), 49) == 0
    assert svd_rank_for((30, 20), 100) == 2
    assert svd_rank_for((30, 20), 10**6) == 20
    base = truncated_svd(w, 100)
    s = np.linalg.svd(w.numpy(), compute_uv=False)
    expected = np.sqrt((s[2:] ** 2).sum() / (s**2).sum())
    assert base.rank == 2 and base.stored == 100
    assert base.relative_error == pytest.approx(expected, rel=1e-9)
    assert truncated_svd(w, 10).relative_error == pytest.approx(1.0)


@pytest.mark.parametrize("rank", [1, 4, 9])
def test_split_layout_contains_truncated_svd(rank) -> None:
    """A two-site split plan with identity activations, started from the hierarchical SVD, is
    the truncated SVD of the weight at that rank (Eckart-Young): same error."""
    torch.manual_seed(rank)
    w = torch.randn(96, 80, dtype=torch.float64)
    plan = ADNTNPlan(96, 80, num_sites=2, bond_dim=rank, layout="split", activation="identity")
    gen = WeightGenerator(plan, dtype=torch.float64)
    svd_initialize(gen, w)
    svd = truncated_svd(w, rank * (96 + 80))
    assert svd.rank == rank
    assert _rel(gen, w) == pytest.approx(svd.relative_error, rel=1e-9)
