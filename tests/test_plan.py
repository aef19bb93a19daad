"""The framework-free plan: factorisation, topology, schedules and costs, against numpy."""

from __future__ import annotations

import math
import re
import string

import numpy as np
import pytest
from conftest import NETWORKS, random_cores
from hypothesis import given, settings
from hypothesis import strategies as st

from adntn_runtime.factorize import balanced_factors, factorize
from adntn_runtime.plan import LAYOUTS, ADNTNPlan
from adntn_runtime.reference import apply, generate_weight, run_schedule
from adntn_runtime.schedule import BATCH, Contract


@st.composite
def plans(draw: st.DrawFn) -> ADNTNPlan:
    network = draw(st.sampled_from(NETWORKS))
    out = draw(st.integers(1, 40))
    inp = draw(st.integers(1, 40))
    layout = draw(st.sampled_from(LAYOUTS))
    sites = draw(st.integers(2 if layout == "split" else 1, 6))
    arity = draw(st.integers(2, 3))
    probe = ADNTNPlan(out, inp, network=network, num_sites=sites, arity=arity, layout=layout)
    bonds = draw(
        st.lists(st.integers(1, 4), min_size=len(probe.bond_dims), max_size=len(probe.bond_dims))
    )
    acts = draw(
        st.lists(
            st.sampled_from(["identity", "tanh", "relu", "gelu", "sin"]),
            min_size=len(probe.activations),
            max_size=len(probe.activations),
        )
    )
    return ADNTNPlan(
        out,
        inp,
        network=network,
        num_sites=sites,
        arity=arity,
        bond_dim=bonds,
        activation=acts,
        layout=layout,
    )


# ---------------------------------------------------------------- factorisation
@pytest.mark.parametrize(
    ("n", "k", "padded"),
    [
        (4096, 4, 4096),
        (25088, 4, 25088),
        (9216, 4, 9216),
        (1000, 4, 1000),
        (10, 4, 12),
        (1, 3, 1),
        (1009, 4, 1024),
        (4096, 5, 4096),
    ],
)
def test_factorize_known_sizes(n: int, k: int, padded: int) -> None:
    got, factors = factorize(n, k)
    assert got == padded
    assert len(factors) == k
    assert int(np.prod(factors)) == got


@given(st.integers(1, 200_000), st.integers(1, 8))
@settings(max_examples=150, deadline=None)
def test_factorize_properties(n: int, k: int) -> None:
    padded, factors = factorize(n, k)
    assert padded >= n and int(np.prod(factors)) == padded and len(factors) == k
    assert padded <= max(2 * n, n + 64)  # padding stays small
    exact = balanced_factors(n, k)
    if exact is not None and exact[0] <= 2 * n ** (1 / k):
        assert padded == n


# ---------------------------------------------------------------- modes agree
@given(plans(), st.integers(1, 5), st.integers(0, 10_000))
@settings(max_examples=60, deadline=None)
def test_three_modes_agree(plan: ADNTNPlan, batch: int, seed: int) -> None:
    cores = random_cores(plan, seed)
    w = generate_weight(plan, cores)
    assert w.shape == (plan.out_features, plan.in_features)
    tile = max(1, plan.rows_padded // 3)
    np.testing.assert_allclose(
        generate_weight(plan, cores, mode="regenerate", tile_rows=tile), w, rtol=1e-10, atol=1e-12
    )
    x = np.random.default_rng(seed).standard_normal((batch, plan.in_features))
    np.testing.assert_allclose(apply(plan, cores, x, mode="fused"), x @ w.T, rtol=1e-9, atol=1e-10)
    for mode in ("materialize", "fused"):
        assert plan.schedule(mode, batch=batch).max_labels() <= 26
    for step in plan.schedule("fused", batch=batch).contractions:
        assert re.fullmatch(r"[a-z]+,[a-z]+->[a-z]*", step.equation)


@given(plans())
@settings(max_examples=40, deadline=None)
def test_regenerate_tiles_cover_rows_exactly_once(plan: ADNTNPlan) -> None:
    for tile_rows in (1, 3, plan.rows_padded):
        tiles = plan.row_tiles(tile_rows)
        covered = np.zeros(plan.rows_padded, dtype=int)
        for t in tiles:
            covered[t.row_start : t.row_stop] += 1
            assert 1 <= t.row_stop - t.row_start <= tile_rows
        assert (covered[: plan.out_features] == 1).all()


def test_tiles_respect_tile_rows() -> None:
    plan = ADNTNPlan(4096, 4096, bond_dim=2)
    tiles = plan.row_tiles(64)
    assert all(t.row_stop - t.row_start == 64 for t in tiles)
    assert len(tiles) == 64


# ---------------------------------------------------------------- independent flop count
def _count_from_equation(eq: str, shapes: list[tuple[int, ...]]) -> int:
    """Independent count from the equation text: every label combination once, times 2 when
    some label is summed (a multiply-add), else 1 (a plain product)."""
    ins, out = eq.split("->")
    size: dict[str, int] = {}
    for term, shape in zip(ins.split(","), shapes, strict=True):
        assert len(term) == len(shape)
        for label, n in zip(term, shape, strict=True):
            assert size.setdefault(label, n) == n
    summed = set(size) - set(out)
    return int(np.prod(list(size.values()))) * (2 if summed else 1)


def _numpy_flops(eq: str, shapes: list[tuple[int, ...]]) -> int:
    arrays = [np.empty(s) for s in shapes]
    text = np.einsum_path(eq, *arrays, optimize=False)[1]
    return int(float(re.search(r"Naive FLOP count:\s*([0-9.e+]+)", text).group(1)))


@given(plans(), st.integers(1, 6))
@settings(max_examples=30, deadline=None)
def test_flop_counts_match_an_independent_count(plan: ADNTNPlan, batch: int) -> None:
    for mode in ("materialize", "fused"):
        sch = plan.schedule(mode, batch=1)
        total = 0
        for step in sch.contractions:
            shapes = [
                tuple(batch if x == BATCH else sch.dims[x] for x in legs) for legs in step.in_legs
            ]
            n = _count_from_equation(step.equation, shapes)
            ins, out = step.equation.split("->")
            a, b = ins.split(",")
            if (set(a) & set(b)) <= (set(a) - set(out)):
                # numpy agrees whenever every shared label is summed (it prints 4 digits)
                assert n == pytest.approx(_numpy_flops(step.equation, shapes), rel=1e-3)
            total += n
        assert sch.flops(batch) == total


# ---------------------------------------------------------------- topologies are what they claim
def _single_einsum_weight(plan: ADNTNPlan, cores: dict[str, np.ndarray]) -> np.ndarray:
    """Contract every core in one numpy.einsum call (valid only with identity activations)."""
    legs = sorted({leg for c in plan.cores.values() for leg in c.legs})
    letters = dict(zip(legs, string.ascii_letters, strict=False))
    assert len(legs) <= len(string.ascii_letters)
    terms = ["".join(letters[x] for x in c.legs) for c in plan.cores.values()]
    out = "".join(letters[f"i{k}"] for k in range(plan.num_sites))
    out += "".join(letters[f"j{k}"] for k in range(plan.num_sites))
    w = np.einsum(",".join(terms) + "->" + out, *[cores[n] for n in plan.cores], optimize="greedy")
    return w.reshape(plan.rows_padded, plan.cols_padded)[: plan.out_features, : plan.in_features]


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize(
    ("shape", "sites", "arity"), [((16, 24), 4, 2), ((27, 8), 3, 3), ((30, 20), 5, 2)]
)
def test_identity_activation_equals_linear_network(network, shape, sites, arity) -> None:
    plan = ADNTNPlan(
        *shape, network=network, num_sites=sites, arity=arity, bond_dim=3, activation="identity"
    )
    cores = random_cores(plan, 3)
    np.testing.assert_allclose(
        generate_weight(plan, cores), _single_einsum_weight(plan, cores), rtol=1e-10, atol=1e-12
    )


def _identity_disentanglers(plan: ADNTNPlan, cores: dict[str, np.ndarray]) -> None:
    for name, spec in plan.cores.items():
        if spec.role == "disentangler":
            d = np.zeros(spec.shape)
            d[:, :, 0] = np.eye(spec.shape[0])
            cores[name] = d


@pytest.mark.parametrize("network", ["attn", "mera"])
@pytest.mark.parametrize("activation", ["tanh", "gelu", "relu", "sin"])
@pytest.mark.parametrize("sites", [4, 8])
def test_identity_disentanglers_give_the_tree(network, activation, sites) -> None:
    kwargs = dict(num_sites=sites, bond_dim=3, activation=activation)
    tree = ADNTNPlan(32, 48, network="ttn", **kwargs)
    other = ADNTNPlan(32, 48, network=network, **kwargs)
    assert any(c.role == "disentangler" for c in other.cores.values())
    cores = random_cores(other, 5)
    _identity_disentanglers(other, cores)
    tree_cores = {k: cores[k] for k in tree.cores}
    assert {k: v.shape for k, v in tree_cores.items()} == {
        k: c.shape for k, c in tree.cores.items()
    }
    np.testing.assert_allclose(
        generate_weight(other, cores), generate_weight(tree, tree_cores), rtol=1e-10, atol=1e-12
    )


def test_mera_differs_from_attn_and_disentangles_every_level() -> None:
    attn = ADNTNPlan(4096, 4096, network="attn", num_sites=8)
    mera = ADNTNPlan(4096, 4096, network="mera", num_sites=8)
    stages = lambda p: {c.level for c in p.cores.values() if c.role == "disentangler"}  # noqa: E731
    assert stages(attn) == {0}
    assert stages(mera) == {0, 1}
    assert ADNTNPlan(4096, 4096, network="mera").num_sites == 8


@pytest.mark.parametrize("network", NETWORKS)
def test_describe_draws_the_network(network) -> None:
    text = ADNTNPlan(64, 64, network=network, num_sites=4).describe()
    assert "root" in text and "leaf0" in text and "leaf3" in text and "node1_0" in text
    assert ("disentanglers" in text) == (network != "ttn")


def test_plan_roundtrips_through_dict() -> None:
    plan = ADNTNPlan(
        100, 300, network="mera", bond_dim=[3, 2, 2], activation=["tanh", "sin"], num_sites=6
    )
    again = ADNTNPlan.from_dict(plan.to_dict())
    assert again == plan and again.cores == plan.cores


def test_schedule_steps_are_two_operand_and_run() -> None:
    plan = ADNTNPlan(64, 64, network="attn", num_sites=4)
    sch = plan.schedule("materialize")
    assert all(isinstance(s, Contract) and len(s.inputs) == 2 for s in sch.contractions)
    w = run_schedule(sch, random_cores(plan))
    assert w.shape == tuple(sch.dims[x] for x in sch.output_legs)


def test_matmul_form_matches_einsum() -> None:
    plan = ADNTNPlan(30, 40, network="mera", num_sites=4, bond_dim=3)
    rng = np.random.default_rng(0)
    dims = {**plan.schedule("fused").dims, BATCH: 3}
    for step in plan.schedule("fused", batch=3).contractions:
        a, b = (rng.standard_normal([dims[x] for x in legs]) for legs in step.in_legs)
        f = step.as_matmul()
        size = lambda legs: int(np.prod([dims[x] for x in legs]))  # noqa: E731
        bshape = [dims[x] for x in f.batch_legs]
        am = a.transpose(f.perm_a).reshape(*bshape, size(f.free_a), size(f.inner))
        bm = b.transpose(f.perm_b).reshape(*bshape, size(f.inner), size(f.free_b))
        out = (am @ bm).reshape([dims[x] for x in f.mid_legs]).transpose(f.perm_out)
        np.testing.assert_allclose(out, np.einsum(step.equation, a, b), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- canonical FC shapes
FC_SHAPES = {
    "alexnet.fc6": (4096, 9216),
    "vgg16.fc6": (4096, 25088),
    "fc7": (4096, 4096),
    "fc8": (1000, 4096),
}


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("name", list(FC_SHAPES))
def test_canonical_fc_shapes_build(network, name) -> None:
    out, inp = FC_SHAPES[name]
    plan = ADNTNPlan(out, inp, network=network, bond_dim=4)
    assert plan.dense_parameters == out * inp
    assert plan.rows_padded >= out and plan.cols_padded >= inp
    assert plan.compression_ratio > 1000
    assert plan.schedule("fused").max_labels() <= 26
    fused = plan.cost("fused")
    assert fused.flops < 2 * out * inp  # cheaper than the dense GEMV at batch 1


def test_costs_are_affine_in_batch() -> None:
    plan = ADNTNPlan(512, 256, network="ttn", bond_dim=4)
    sch = plan.schedule("fused")
    f1, f2, f3 = (sch.flops(b, include_constant=False) for b in (1, 2, 3))
    assert f2 - f1 == f3 - f2 > 0
    assert plan.cost("materialize", 8).flops == 2 * 8 * 512 * 256
    assert plan.cost("regenerate").peak_elements < plan.cost("materialize").peak_elements


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"network": "peps"}, ValueError, r"unknown network 'peps'; valid networks: \['ttn'"),
        ({"activation": "swish"}, ValueError, r"unknown activation 'swish'; valid activations"),
        ({"final_activation": "elu"}, ValueError, r"unknown final_activation 'elu'"),
        ({"bond_dim": 0}, ValueError, r"bond_dim must be >= 1, got 0"),
        ({"bond_dim": 2.5}, TypeError, r"bond_dim must be an int"),
        ({"bond_dim": [2, 2, 2, 2, 2]}, ValueError, r"bond_dim has 5 entries but this tree has 2"),
        ({"activation": ["tanh", "relu"]}, ValueError, r"activation has 2 entries"),
        ({"arity": 1}, ValueError, r"arity must be >= 2"),
        ({"num_sites": 0}, ValueError, r"num_sites must be >= 1, got 0"),
        ({"layout": "rows"}, ValueError, r"unknown layout 'rows'; valid layouts: \['paired'"),
        (
            {"layout": "split", "num_sites": 1},
            ValueError,
            r"num_sites=1 is out of range for layout='split': valid num_sites: 2\.\.12",
        ),
    ],
)
def test_bad_plan_arguments(kwargs, exc, match) -> None:
    args = {"num_sites": 4, **kwargs}
    with pytest.raises(exc, match=match):
        ADNTNPlan(64, 64, **args)


@pytest.mark.parametrize(("out", "inp", "param"), [(0, 4, "out_features"), (4, -1, "in_features")])
def test_bad_shapes(out, inp, param) -> None:
    with pytest.raises(ValueError, match=rf"{param} must be >= 1"):
        ADNTNPlan(out, inp)


def test_fused_needs_linear_top() -> None:
    plan = ADNTNPlan(16, 16, final_activation="tanh")
    with pytest.raises(ValueError, match=r"mode 'fused' needs a linear top step.*'tanh'"):
        plan.schedule("fused")
    with pytest.raises(
        ValueError, match=r"mode='fast' is not a valid mode; choose one of materialize \| r"
    ):
        plan.schedule("fast")


def test_too_many_labels_is_reported() -> None:
    with pytest.raises(ValueError, match=r"more than 26 distinct legs"):
        ADNTNPlan(2**13, 2**13, num_sites=13, arity=13, bond_dim=1)


# ---------------------------------------------------------------- split layout
@pytest.mark.parametrize("network", NETWORKS)
def test_split_layout_separates_rows_and_columns(network) -> None:
    plan = ADNTNPlan(4096, 9216, network=network, bond_dim=3, layout="split")
    rows = [k for k in range(plan.num_sites) if plan.col_factors[k] == 1]
    cols = [k for k in range(plan.num_sites) if plan.row_factors[k] == 1]
    assert rows and cols and sorted(rows + cols) == list(range(plan.num_sites))
    assert math.prod(plan.row_factors) == plan.rows_padded >= 4096
    assert math.prod(plan.col_factors) == plan.cols_padded >= 9216
    # the root's two children are the row subtree and the column subtree
    assert [c.sites for c in plan.root.children] == [tuple(rows), tuple(cols)]
    assert ADNTNPlan.from_dict(plan.to_dict()) == plan and plan.to_dict()["layout"] == "split"
    assert "layout" not in ADNTNPlan(64, 64).to_dict()  # paired plans read in older adntn


def test_split_layout_fused_is_a_low_rank_product() -> None:
    """Two sites, identity: W = A R B^T, and the fused path costs (M + N) r per row of x."""
    plan = ADNTNPlan(300, 200, num_sites=2, bond_dim=5, layout="split", activation="identity")
    cores = random_cores(plan, seed=3)
    w = generate_weight(plan, cores)
    assert np.linalg.matrix_rank(w) == 5
    fused = plan.cost("fused", batch=1)
    assert fused.flops <= 2 * 5 * (300 + 200) + 2 * 25


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize(
    ("out_f", "in_f", "sites", "bond"),
    [(13, 63, 6, 3), (20, 700, 2, 4), (100, 300, 5, [4, 8, 16]), (20, 700, 3, [2, 5])],
)
def test_split_low_rank_form(network, out_f, in_f, sites, bond) -> None:
    """W = left @ right, left (out, rank), right (rank, in): the root goes into the side with
    the larger open bond, so the rank is the smaller bond times the lateral legs."""
    from adntn_runtime.reference import fused_constants, low_rank_factors

    plan = ADNTNPlan(out_f, in_f, network=network, bond_dim=bond, num_sites=sites, layout="split")
    cores = random_cores(plan, seed=2)
    form = plan.low_rank()
    bonds = [plan.cores["root"].shape[0], plan.cores["root"].shape[1]]
    lateral = math.prod(form.dims[x] for x in form.rank_legs if x.startswith("s"))
    assert form.rank == min(bonds) * lateral
    assert (lateral > 1) == (network != "ttn" and sites > 2)
    w = generate_weight(plan, cores)
    for known in (None, fused_constants(plan, cores)):
        left, right = low_rank_factors(plan, cores, known=known)
        assert left.shape == (out_f, form.rank) and right.shape == (form.rank, in_f)
        np.testing.assert_allclose(left @ right, w, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"layout='split'.*layout='paired'"):
        ADNTNPlan(out_f, in_f).low_rank()
    with pytest.raises(ValueError, match=r"final_activation='tanh'"):
        ADNTNPlan(out_f, in_f, layout="split", final_activation="tanh").low_rank()
