"""Data-free initialisation of a weight generator from a dense weight: hierarchical SVD.

The padded weight ``W[i_0..i_{K-1}, j_0..j_{K-1}]`` is regrouped by site into
``T[(i_0 j_0), (i_1 j_1), ...]``. Bottom-up along the plan's tree (the leaves-to-root
hierarchical SVD of Grasedyck, SIAM J. Matrix Anal. Appl. 31, 2010):

* each leaf ``k`` gets the ``bond_dim[0]`` leading left singular vectors of the
  matricisation of ``T`` with site ``k``'s legs as rows; ``T`` is then projected onto
  them (one leg of size ``bond_dim[0]`` per leaf);
* each internal node of height ``h``, in turn, gets the ``bond_dim[h]`` leading left
  singular vectors of the projected tensor with its children's bond legs as rows (its
  core), and the tensor is projected again;
* the root core is what is left.

With identity activations the generated weight is then the tree-structured truncation of
``W``: exact when ``W`` is representable at these bond dimensions (every matricisation
along the tree has rank <= its bond), and quasi-optimal otherwise. When the plan pads
the weight, the padding is free: it is filled with the reconstruction and the
decomposition repeated (alternating projections), which recovers a representable weight
in the cases tested but, the problem being non-convex, is not guaranteed to.

Nonlinear levels start from that linear solution: each activated node's core is scaled
down until its pre-activation is at most :data:`LINEAR_RANGE` in magnitude, where
``tanh``, ``sin`` and ``gelu`` are close to linear (``gelu(x) ~ x/2``), and its parent's core
is scaled up by the inverse of the scale times the activation's slope at 0. ``relu`` has
no linear range around 0: it gets the linear cores unscaled, a start the fit has to
repair. Disentanglers (``attn``, ``mera``) start as the identity on their first lateral
slice, which gives back the tree exactly; their other slices get a small random value so
the fit's gradient with respect to them is not zero.
"""

from __future__ import annotations

import math

import torch

from adntn_export.generator import WeightGenerator
from adntn_runtime.plan import ADNTNPlan, TreeNode

__all__ = ["ACTIVATION_SLOPE", "INITS", "LINEAR_RANGE", "svd_initialize"]

#: Initialisations a fit may start from: ``"svd"`` (this module) or ``"random"``.
INITS: tuple[str, ...] = ("svd", "random")
#: Largest pre-activation magnitude an activated node starts with.
LINEAR_RANGE = 0.3
#: Slope at 0 of each activation (``relu``: none, it is not linear around 0).
ACTIVATION_SLOPE: dict[str, float | None] = {
    "identity": 1.0,
    "tanh": 1.0,
    "sin": 1.0,
    "gelu": 0.5,
    "relu": None,
}
# Relative size of the random values that break symmetries (padding columns,
# disentanglers' extra lateral slices).
_NOISE = 1e-3


def _left_basis(m: torch.Tensor, rank: int) -> torch.Tensor:
    """At most ``rank`` orthonormal leading left singular vectors of ``m`` (rows x cols);
    fewer when ``m`` has fewer rows or columns."""
    rows, cols = m.shape
    if rows <= cols:
        _, evecs = torch.linalg.eigh(m @ m.T)
        return evecs.flip(-1)[:, : min(rank, rows)]
    # fewer columns: the left vectors from the right ones
    evals, evecs = torch.linalg.eigh(m.T @ m)
    vecs = evecs.flip(-1)[:, : min(rank, cols)]
    basis = m @ vecs
    norms = basis.norm(dim=0)
    good = norms > norms.max().clamp_min(1e-300) * 1e-12
    return basis[:, good] / norms[good]


def _padded_core(
    block: torch.Tensor, shape: tuple[int, ...], rng: torch.Generator | None
) -> torch.Tensor:
    """A core of ``shape`` holding ``block`` in its leading corner. The output columns beyond
    ``block``'s get small random values on the leading rows (their parent's rows are zero,
    so the weight is unchanged, but the fit's gradient is not zero); the rest is zero.
    ``rng=None`` (the root, which has no output bond) pads with zeros only."""
    core = torch.zeros(shape, dtype=block.dtype)
    core[tuple(slice(0, d) for d in block.shape)] = block
    extra = shape[-1] - block.shape[-1]
    if extra > 0 and rng is not None:
        rows = block.shape[:-1]
        noise = torch.randn(*rows, extra, generator=rng, dtype=block.dtype)
        noise *= _NOISE / math.sqrt(max(math.prod(rows), 1))
        core[(*(slice(0, d) for d in rows), slice(block.shape[-1], None))] = noise
    return core


def _project(t: torch.Tensor, start: int, count: int, basis: torch.Tensor) -> torch.Tensor:
    """Replace legs ``start..start+count-1`` of ``t`` by one leg: their product with ``basis``
    (``(prod of those legs) x r``)."""
    shape = t.shape
    pre = math.prod(shape[:start])
    post = math.prod(shape[start + count :])
    mid = t.reshape(pre, -1, post)
    out = torch.einsum("agb,gr->arb", mid, basis)
    return out.reshape(*shape[:start], basis.shape[1], *shape[start + count :])


def _matricize(t: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """The matrix with legs ``start..start+count-1`` of ``t`` as rows, the rest as columns."""
    shape = t.shape
    pre = math.prod(shape[:start])
    mid = math.prod(shape[start : start + count])
    m = t.reshape(pre, mid, -1).permute(1, 0, 2)
    return m.reshape(mid, -1)


@torch.no_grad()
def svd_initialize(
    gen: WeightGenerator,
    weight: torch.Tensor,
    *,
    seed: int = 0,
    linear_range: float = LINEAR_RANGE,
    padding_iterations: int = 500,
) -> None:
    """Set ``gen``'s cores from ``weight`` (``(out_features, in_features)``) by hierarchical SVD.

    Exact (up to rounding) for identity activations when ``weight`` is representable by
    the plan; see the module docstring for nonlinear levels and disentanglers.

    Raises:
        ValueError: If ``weight`` does not have the plan's shape.
    """
    plan = gen.plan
    if tuple(weight.shape) != (plan.out_features, plan.in_features):
        raise ValueError(
            f"weight has shape {tuple(weight.shape)}, the generator makes "
            f"{(plan.out_features, plan.in_features)}"
        )
    rng = torch.Generator().manual_seed(seed)
    target = weight.detach().to("cpu", torch.float64)
    w = torch.zeros(plan.rows_padded, plan.cols_padded, dtype=torch.float64)
    w[: plan.out_features, : plan.in_features] = target
    padded = (plan.rows_padded, plan.cols_padded) != (plan.out_features, plan.in_features)
    cores = _hierarchical_svd(plan, w, rng)
    # The padding is free (the generated weight is cropped): fill it with the current
    # reconstruction and decompose again (alternating projections), so a weight the
    # plan represents is recovered exactly even when its shape is padded.
    previous = float("inf")
    for _ in range(padding_iterations if padded else 0):
        w = _linear_weight(plan, cores)
        err = float((w[: plan.out_features, : plan.in_features] - target).norm())
        if err <= 1e-12 * float(target.norm()) or err >= previous * (1 - 1e-7):
            break  # exact, or no longer improving
        previous = err
        w[: plan.out_features, : plan.in_features] = target
        cores = _hierarchical_svd(plan, w, rng)
    _to_linear_range(plan, cores, linear_range)
    for name, spec in plan.cores.items():
        p = gen.cores[name]
        if spec.role == "disentangler":
            value = torch.randn(spec.shape, generator=rng, dtype=torch.float64) * _NOISE
            value[:, :, 0] = torch.eye(spec.shape[0], dtype=torch.float64)
        else:
            value = cores[name]
        p.copy_(value.to(p.dtype))
    gen.clear_cache()


def _hierarchical_svd(
    plan: ADNTNPlan, w: torch.Tensor, rng: torch.Generator
) -> dict[str, torch.Tensor]:
    """Leaves-to-root hierarchical SVD of the padded weight ``w`` along ``plan``'s tree."""
    k_sites = plan.num_sites
    t = w.reshape(*plan.row_factors, *plan.col_factors)
    t = t.permute(*[p for k in range(k_sites) for p in (k, k_sites + k)])
    t = t.reshape(*(plan.row_factors[k] * plan.col_factors[k] for k in range(k_sites)))

    cores: dict[str, torch.Tensor] = {}
    specs = plan.cores
    # Leaves: all bases from the original tensor, then one projection each. A basis has
    # at most min(bond, rows, cols) columns; the core is padded to the bond.
    bases = [_left_basis(_matricize(t, k, 1), plan.bond_dims[0]) for k in range(k_sites)]
    for k, basis in enumerate(bases):
        block = basis.reshape(plan.row_factors[k], plan.col_factors[k], basis.shape[1])
        cores[f"leaf{k}"] = _padded_core(block, specs[f"leaf{k}"].shape, rng)
        t = _project(t, k, 1, basis)
    # Internal nodes, height by height; the frontier keeps t's legs in site order.
    frontier: list[TreeNode] = sorted(
        (n for n in _walk(plan.root) if n.is_leaf), key=lambda n: n.sites[0]
    )
    for height in range(1, plan.root.height):
        nodes = [n for n in _walk(plan.root) if n.height == height]
        groups = []
        for node in nodes:
            names = {c.name for c in node.children}
            pos = [i for i, f in enumerate(frontier) if f.name in names]
            groups.append((node, pos[0], len(pos)))
        bases_h = [
            _left_basis(_matricize(t, start, count), plan.bond_dims[height])
            for _, start, count in groups
        ]
        for (node, start, count), basis in sorted(
            zip(groups, bases_h, strict=True), key=lambda g: -g[0][1]
        ):  # right to left, so earlier positions stay valid
            block = basis.reshape(*t.shape[start : start + count], basis.shape[1])
            cores[node.name] = _padded_core(block, specs[node.name].shape, rng)
            t = _project(t, start, count, basis)
            frontier[start : start + count] = [node]
    cores["root"] = _padded_core(t, specs["root"].shape, None)
    return cores


def _linear_value(
    node: TreeNode,
    cores: dict[str, torch.Tensor],
    record: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The value of ``node`` with identity activations: ``(its sites' physical entries) x
    bond``; with ``record``, every internal node's value is stored there by name."""
    if node.is_leaf:
        c = cores[node.name]
        return c.reshape(-1, c.shape[-1])
    acc = _linear_value(node.children[0], cores, record)
    for child in node.children[1:]:
        v = _linear_value(child, cores, record)
        acc = torch.einsum("ab,cd->acbd", acc, v).reshape(acc.shape[0] * v.shape[0], -1)
    out = acc @ cores[node.name].reshape(acc.shape[1], -1)
    if record is not None:
        record[node.name] = out
    return out


def _linear_weight(plan: ADNTNPlan, cores: dict[str, torch.Tensor]) -> torch.Tensor:
    """The padded weight the tree cores make with identity activations."""
    k_sites = plan.num_sites
    t = _linear_value(plan.root, cores).reshape(
        *(d for k in range(k_sites) for d in (plan.row_factors[k], plan.col_factors[k]))
    )
    t = t.permute(*range(0, 2 * k_sites, 2), *range(1, 2 * k_sites, 2))
    return t.reshape(plan.rows_padded, plan.cols_padded).clone()


def _walk(node: TreeNode) -> list[TreeNode]:
    out: list[TreeNode] = []
    for c in node.children:
        out.extend(_walk(c))
    out.append(node)
    return out


def _to_linear_range(plan: ADNTNPlan, cores: dict[str, torch.Tensor], linear_range: float) -> None:
    """Scale activated nodes into their activation's near-linear range, compensating the parent."""
    values: dict[str, torch.Tensor] = {}
    for child in plan.root.children:
        if not child.is_leaf:
            _linear_value(child, cores, values)
    parents = {c.name: n.name for n in _walk(plan.root) for c in n.children}
    for node in _walk(plan.root):
        if node.is_leaf or node is plan.root:
            continue
        act = plan.activations[node.height - 1]
        slope = ACTIVATION_SLOPE[act]
        if slope is None or act == "identity":
            continue
        peak = float(values[node.name].abs().max())
        scale = min(1.0, linear_range / peak) if peak > 0 else 1.0
        cores[node.name] = cores[node.name] * scale
        cores[parents[node.name]] = cores[parents[node.name]] / (scale * slope)
    final = plan.final_activation
    if final is not None and ACTIVATION_SLOPE[final] is not None:
        cores["root"] = cores["root"] / ACTIVATION_SLOPE[final]
