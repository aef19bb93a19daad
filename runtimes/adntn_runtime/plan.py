"""The ADNTN plan: one framework-free object describing a layer's weight generator.

A plan fixes the site factorisation of the weight, the topology (``ttn``,
``attn``, ``mera``), every core's shape, the activations, and the two-operand
contraction schedule of each run mode. Torch, ONNX and TVM all consume it; it
imports only numpy and opt_einsum.

Topology, precisely:

* Site layout (``layout``): ``"paired"`` (the default) gives every site one row factor
  and one column factor (``W[i_0..i_{K-1}, j_0..j_{K-1}]`` regrouped as ``(i_k j_k)``);
  ``"split"`` gives the first ``K_r`` sites row factors only and the other ``K - K_r``
  column factors only (their other factor is 1), and the root's two children are the
  row subtree and the column subtree. The root bond is then the rank of the generated
  weight across rows and columns: with identity activations and full subtrees a split
  plan is a truncated SVD ``W = A R B^T``, and a smaller one compresses ``A`` and ``B``
  further. A paired plan mixes rows and columns at every site, so a weight that is
  close to low rank is far from any paired plan of the same size.
* The ``K`` sites are split top-down into ``arity`` contiguous, near-equal
  groups, recursively, giving a tree whose leaves are the sites. A node's
  *height* is 0 for a leaf and ``1 + max(child heights)`` otherwise; the root
  has height ``H``.
* A leaf core ``leaf{k}[i_k, j_k, b]`` maps site ``k``'s physical index to a
  bond vector of size ``bond_dim[0]``. An internal node of height ``h`` has a
  core ``node{h}_{n}[b_child_1, ..., b_child_r, b]`` (``b`` of size
  ``bond_dim[h]``): its value is ``activation[h-1]`` of the contraction of its
  children's values with its core, over all their physical indices at once.
  The root core ``root[b_child_1, ..., b_child_r]`` has no output bond; the
  root step is linear unless ``final_activation`` is set.
* Disentanglers (``attn``: stage 0 only; ``mera``: every stage): before the
  nodes of height ``h+1`` are formed, each pair of neighbouring frontier nodes
  ``(A, B)`` that belong to different parents is mixed by a disentangler
  ``D[a, b, a', b']``, stored in its exact operator-Schmidt (split) form
  ``D = sum_s U[a, a', s] V[b, b', s]`` with ``s`` of size
  ``disentangler_rank`` (default 2; ``bond_dim**2`` makes it fully general). ``A`` becomes
  ``A @ U`` and ``B`` becomes ``B @ V``; the shared *lateral* leg ``s`` rides up
  both subtrees (their intermediates grow by ``rank``) and is summed at their
  lowest common ancestor. An identity disentangler (``U = V = delta``,
  ``rank = 1``) gives back the tree exactly, whatever the activations, because
  every activation maps 0 to 0.

Modes: ``materialize`` contracts the whole weight; ``regenerate`` runs the same
steps per row tile on sliced leaves; ``fused`` contracts the root's children
(independent of ``x``, cached) with the root core and ``x`` itself. For a split plan,
:meth:`ADNTNPlan.low_rank` gives the weight as ``left @ right``, two ``x``-independent
factors (the root core contracted into one subtree's value): what the fused mode of a split
convolution runs as a ``(rank, C, kh, kw)`` convolution followed by a 1x1 one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from adntn_runtime.activations import ACTIVATIONS, check_activation
from adntn_runtime.factorize import choose_num_sites, factorize
from adntn_runtime.modes import Mode, parse_mode
from adntn_runtime.schedule import (
    BATCH,
    Activate,
    Contract,
    Schedule,
    Step,
    Tile,
    plan_pairwise,
)

__all__ = [
    "MODES",
    "NETWORKS",
    "LAYOUTS",
    "ADNTNPlan",
    "CoreSpec",
    "CostEstimate",
    "LowRankForm",
    "TreeNode",
    "check_tile_rows",
]

NETWORKS: tuple[str, ...] = ("ttn", "attn", "mera")
#: Site layouts: every site a row and a column factor, or row-only and column-only sites.
LAYOUTS: tuple[str, ...] = ("paired", "split")
#: The layer modes as strings (an alias of :class:`~adntn_runtime.modes.Mode`, kept for callers).
MODES: tuple[str, ...] = tuple(m.value for m in Mode)
PLAN_FORMAT = 1

#: Largest ``out_features`` / ``in_features`` a plan accepts (int32 range: ONNX dims,
#: and the site factorisation stays fast).
MAX_FEATURES = 2**31 - 1
#: Most sites: every site adds a row and a column leg to the top step, and an ONNX Einsum
#: has 26 labels (a-z), so 13 sites can never be lowered.
MAX_SITES = 12
#: Largest arity, bond dimension and disentangler rank accepted.
MAX_ARITY = 26
MAX_BOND = 2**16
#: Largest core (elements): 2**26 float32 is 256 MiB, far above any useful ADNTN core.
MAX_CORE_ELEMENTS = 2**26
#: Most rows per regenerate tile accepted (a tile never needs more rows than a weight has).
MAX_TILE_ROWS = MAX_FEATURES
#: Most row tiles a regenerate schedule may have (each tile is a few ONNX nodes / kernels; a
#: file's ``tile_rows`` of 1 on a huge layer must fail fast, not build millions of them).
MAX_ROW_TILES = 2**14


def _sites(
    out_features: int, in_features: int, network: str, num_sites: int | None, layout: str
) -> int:
    """The number of sites: the caller's (checked), else chosen from the shape."""
    if num_sites is None and layout == "split":
        num_sites = choose_num_sites(out_features, 1) + choose_num_sites(1, in_features)
    elif num_sites is None:
        num_sites = choose_num_sites(out_features, in_features)
        if network == "mera":
            # A binary MERA needs 8 sites before it differs from an aTTN (below 8
            # the only disentanglers are those of the physical layer).
            depth = int(math.log2(out_features * in_features) // 2)
            num_sites = max(num_sites, min(8, depth))
    checked = _check_positive_int(num_sites, "num_sites")
    if checked > MAX_SITES:
        raise ValueError(
            f"num_sites={num_sites} is out of range: valid num_sites: 1..{MAX_SITES} (each "
            f"site adds two legs to the top step, so more sites give a step with more than "
            "26 distinct legs, beyond the a-z labels of an ONNX Einsum)"
        )
    if layout == "split" and checked < 2:
        raise ValueError(
            f"num_sites={num_sites} is out of range for layout='split': valid num_sites: "
            f"2..{MAX_SITES} (at least one row site and one column site)"
        )
    return checked


def _row_sites(out_features: int, in_features: int, num_sites: int) -> int:
    """Row sites of a split layout: the share of ``num_sites`` that ``log(rows)`` has of
    ``log(rows * cols)``, at least 1 and at most ``num_sites - 1``."""
    logs = math.log(max(out_features, 2)), math.log(max(in_features, 2))
    return min(num_sites - 1, max(1, round(num_sites * logs[0] / (logs[0] + logs[1]))))


def _bond_dims(bond_dim: int | Sequence[int], n_bonds: int) -> tuple[int, ...]:
    """One bond dimension per height 0..n_bonds-1, from an int or one int per level."""
    if isinstance(bond_dim, int) and not isinstance(bond_dim, bool):
        return (_check_positive_int(bond_dim, "bond_dim", MAX_BOND),) * n_bonds
    if isinstance(bond_dim, Sequence) and not isinstance(bond_dim, str):
        bonds = tuple(_check_positive_int(b, "bond_dim", MAX_BOND) for b in bond_dim)
        if len(bonds) != n_bonds:
            raise ValueError(
                f"bond_dim has {len(bonds)} entries but this tree has {n_bonds} bond "
                f"levels (heights 0..{n_bonds - 1}); pass an int or {n_bonds} ints"
            )
        return bonds
    raise TypeError(f"bond_dim must be an int or a sequence of ints, got {bond_dim!r}")


def _activations(activation: str | Sequence[str], height: int) -> tuple[str, ...]:
    """One activation per internal level (heights 1..height-1), from a name or a list."""
    n_act = max(height - 1, 0)
    if isinstance(activation, str):
        return (check_activation(activation),) * n_act
    if isinstance(activation, Sequence):
        acts = tuple(check_activation(a) for a in activation)
        if len(acts) != n_act:
            raise ValueError(
                f"activation has {len(acts)} entries but this tree has {n_act} internal "
                f"levels (heights 1..{height - 1}); pass one name or {n_act} names"
            )
        return acts
    raise TypeError(
        f"activation must be a name or a sequence of names from {list(ACTIVATIONS)}, "
        f"got {activation!r}"
    )


@dataclass(frozen=True)
class CoreSpec:
    """A stored core: its name, shape, symbolic legs and role."""

    name: str
    shape: tuple[int, ...]
    legs: tuple[str, ...]
    role: Literal["leaf", "node", "root", "disentangler"]
    level: int

    def __post_init__(self) -> None:
        if self.size > MAX_CORE_ELEMENTS:
            raise ValueError(
                f"core {self.name!r} would have shape {self.shape} ({self.size:,} elements), "
                f"more than the limit of {MAX_CORE_ELEMENTS:,}: valid plans have smaller cores "
                "(lower bond_dim, arity or disentangler_rank, or use more num_sites)"
            )

    @property
    def size(self) -> int:
        """Number of stored parameters."""
        return math.prod(self.shape)


@dataclass
class TreeNode:
    """A node of the tree: the sites it covers, its children and height."""

    name: str
    sites: tuple[int, ...]
    children: list[TreeNode]
    height: int

    @property
    def is_leaf(self) -> bool:
        """True for a leaf (one site, no children)."""
        return not self.children


@dataclass(frozen=True)
class CostEstimate:
    """Predicted cost of one call ``y = W x`` in a mode, from the schedule.

    ``flops`` per call; ``setup_flops`` once at load; ``peak_elements`` the
    largest number of elements resident at once besides the cores (the weight
    for materialize, a tile for regenerate, intermediates for fused).
    """

    mode: str
    batch: int
    flops: int
    setup_flops: int
    peak_elements: int
    stored_elements: int


@dataclass(frozen=True)
class LowRankForm:
    """A split plan's weight as a rank-``rank`` product ``W = left @ right`` of two
    ``x``-independent factors (:meth:`ADNTNPlan.low_rank`).

    ``steps`` are the materialize schedule's steps below the root (they produce the row
    subtree's value ``Rv`` and the column subtree's value ``Cv``), then one contraction of the
    root core into the side whose open bond is larger (``Rv @ root`` on ties), so the rank is
    the smaller bond times the lateral legs joining the two subtrees (attn/mera). Every value
    a step writes has its declared legs; ``left`` has legs ``left_legs`` (a permutation of
    ``row_legs + rank_legs``), ``right`` has ``right_legs`` (of ``rank_legs + col_legs``).
    ``row_legs`` read as one index are the padded rows ``0..rows_padded-1`` (the column legs
    of the row sites have size 1), ``col_legs`` likewise the padded columns.

    Attributes:
        steps: the ``x``-independent steps, in order (value names are the materialize
            schedule's, so the fused schedule's cached root children can stand for theirs).
        inputs: every core's legs; ``dims``: every leg's size.
        left, right: the names of the two factors.
        left_legs, right_legs: their legs as the steps write them.
        row_legs, rank_legs, col_legs: the target orders (see above).
    """

    steps: tuple[Step, ...]
    inputs: dict[str, tuple[str, ...]]
    dims: dict[str, int]
    left: str
    left_legs: tuple[str, ...]
    right: str
    right_legs: tuple[str, ...]
    row_legs: tuple[str, ...]
    rank_legs: tuple[str, ...]
    col_legs: tuple[str, ...]

    @property
    def rank(self) -> int:
        """The number of terms of the product (the size of the rank legs together)."""
        return math.prod(self.dims[x] for x in self.rank_legs)

    def left_perm(self, legs: Sequence[str] | None = None) -> tuple[int, ...]:
        """The permutation taking ``left`` (written with ``legs``, default ``left_legs``) to
        ``(*row_legs, *rank_legs)``, which reshapes to ``(rows_padded, rank)``."""
        have = tuple(self.left_legs if legs is None else legs)
        return tuple(have.index(x) for x in (*self.row_legs, *self.rank_legs))

    def right_perm(self, legs: Sequence[str] | None = None) -> tuple[int, ...]:
        """The permutation taking ``right`` (written with ``legs``, default ``right_legs``)
        to ``(*rank_legs, *col_legs)``, which reshapes to ``(rank, cols_padded)``."""
        have = tuple(self.right_legs if legs is None else legs)
        return tuple(have.index(x) for x in (*self.rank_legs, *self.col_legs))

    def schedule(self) -> Schedule:
        """The steps as a schedule (its output is the root contraction's value; the other
        factor is an intermediate, or a core when its subtree is a single leaf)."""
        last = self.steps[-1]
        assert isinstance(last, Contract)
        return Schedule("materialize", self.steps, dict(self.inputs), last.output,
                        last.out_legs, dict(self.dims))  # fmt: skip


def _check_positive_int(value: object, parameter: str, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{parameter} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{parameter} must be >= 1, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{parameter}={value} is out of range: valid {parameter}: 1..{high}")
    return value


def check_tile_rows(value: object, name: str = "tile_rows", *, where: str = "") -> int | None:
    """``value`` as rows per regenerate tile: ``None`` (the plan's default) or an int in
    ``1..MAX_TILE_ROWS``; else ``ValueError`` naming ``where`` (e.g. a file), ``name`` and the
    value."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TILE_ROWS:
        raise ValueError(
            f"{where}{name}={repr(value)[:80]} is not valid: valid {name}: an int in "
            f"1..{MAX_TILE_ROWS} (rows per regenerate tile), or none for the plan's default "
            "(about 1/64 of the rows)"
        )
    return value


class ADNTNPlan:
    """Framework-free description of an ADNTN weight generator for an ``(out, in)`` weight.

    Args:
        out_features: rows ``M`` of the weight (output channels for a conv).
        in_features: columns ``N`` (``in_channels * kh * kw`` for a conv).
        network: ``"ttn"``, ``"attn"`` or ``"mera"``.
        bond_dim: bond dimension, an int or one per height ``0..H-1``.
        activation: activation of internal levels, one name or one per height ``1..H-1``.
        final_activation: activation of the root step; ``None`` keeps it linear
            (required by the fused mode).
        arity: children per internal node (2 = binary tree).
        num_sites: number of sites ``K``; default: each site about 64 entries
            (``m_k * n_k``), and at least 8 sites for ``mera`` when the weight
            has ``>= 2**16`` entries (fewer sites give a MERA no disentangler
            layer above the physical one).
        disentangler_rank: size of the lateral leg of each disentangler
            (attn/mera); default 2 (the smallest rank that couples two subtrees;
            ``bond_dim**2`` makes a disentangler fully general). Intermediates
            crossing a disentangled boundary grow by this factor.
        layout: ``"paired"`` (each site a row and a column factor) or ``"split"``
            (row-only sites, then column-only sites, the root joining the two subtrees;
            default ``num_sites`` about 64 rows or columns per site); see the module
            docstring.

    Example:
        >>> plan = ADNTNPlan(4096, 4096, network="ttn", bond_dim=4)
        >>> plan.row_factors, plan.col_factors
        ((8, 8, 8, 8), (8, 8, 8, 8))
        >>> plan.num_parameters
        1168
    """

    def __init__(
        self,
        out_features: int,
        in_features: int,
        *,
        network: str = "ttn",
        bond_dim: int | Sequence[int] = 4,
        activation: str | Sequence[str] = "tanh",
        final_activation: str | None = None,
        arity: int = 2,
        num_sites: int | None = None,
        disentangler_rank: int | None = None,
        layout: str = "paired",
    ) -> None:
        self.out_features = _check_positive_int(out_features, "out_features", MAX_FEATURES)
        self.in_features = _check_positive_int(in_features, "in_features", MAX_FEATURES)
        if not isinstance(network, str) or network not in NETWORKS:
            raise ValueError(f"unknown network {network!r}; valid networks: {list(NETWORKS)}")
        self.network = network
        self.arity = _check_positive_int(arity, "arity")
        if not 2 <= self.arity <= MAX_ARITY:
            raise ValueError(
                f"arity must be >= 2 (2 = binary tree) and <= {MAX_ARITY}, got arity={arity}; "
                f"valid arity: 2..{MAX_ARITY}"
            )
        if not isinstance(layout, str) or layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; valid layouts: {list(LAYOUTS)}")
        self.layout = layout
        self.num_sites = _sites(self.out_features, self.in_features, network, num_sites, layout)
        if layout == "split":
            rows = _row_sites(self.out_features, self.in_features, self.num_sites)
            cols = self.num_sites - rows
            self.rows_padded, row_f = factorize(self.out_features, rows)
            self.cols_padded, col_f = factorize(self.in_features, cols)
            self.row_factors = _interleave(row_f) + (1,) * cols
            self.col_factors = (1,) * rows + _interleave(col_f)
        else:
            self.rows_padded, row_f = factorize(self.out_features, self.num_sites)
            self.cols_padded, col_f = factorize(self.in_features, self.num_sites)
            self.row_factors = _interleave(row_f)
            self.col_factors = _interleave(col_f)
        self.final_activation = (
            None
            if final_activation in (None, "identity")
            else check_activation(final_activation, parameter="final_activation")
        )

        self.root = self._build_tree(tuple(range(self.num_sites)))
        height = self.root.height
        self.height = height
        # Bond dims: one per height 0..H-1 (the root has no output bond).
        self.bond_dims = _bond_dims(bond_dim, max(height, 1))
        self.activations = _activations(activation, height)
        if disentangler_rank is not None:
            _check_positive_int(disentangler_rank, "disentangler_rank", MAX_BOND)
        self.disentangler_rank = disentangler_rank
        self._materialize, self._cores = self._build_program(fused=False, batch=1)
        for step in self._materialize.steps:
            if isinstance(step, Contract):
                _ = step.equation  # raises if a step has more than 26 labels
        self._fused_cache: dict[int, Schedule] = {}
        self._low_rank: LowRankForm | None = None

    # ------------------------------------------------------------------ topology
    def _build_tree(self, sites: tuple[int, ...]) -> TreeNode:
        counter: dict[int, int] = {}

        def build(s: tuple[int, ...]) -> TreeNode:
            if len(s) == 1:
                return TreeNode(f"leaf{s[0]}", s, [], 0)
            parts = min(self.arity, len(s))
            q, r = divmod(len(s), parts)
            chunks, start = [], 0
            for p in range(parts):
                size = q + (1 if p < r else 0)
                chunks.append(s[start : start + size])
                start += size
            return join([build(c) for c in chunks])

        def join(children: list[TreeNode]) -> TreeNode:
            covered = tuple(k for c in children for k in c.sites)
            return TreeNode("", covered, children, 1 + max(c.height for c in children))

        if self.layout == "split":  # the root joins the row subtree and the column subtree
            rows = _row_sites(self.out_features, self.in_features, len(sites))
            root = join([build(sites[:rows]), build(sites[rows:])])
        else:
            root = build(sites)
        if root.is_leaf:  # a single site: the root merges the one leaf
            root = TreeNode("", sites, [root], 1)

        def name(node: TreeNode) -> None:
            for c in node.children:
                name(c)
            if not node.is_leaf:
                n = counter.get(node.height, 0)
                counter[node.height] = n + 1
                node.name = f"node{node.height}_{n}"

        name(root)
        root.name = "root"
        return root

    def _nodes(self) -> list[TreeNode]:
        out: list[TreeNode] = []

        def walk(node: TreeNode) -> None:
            for c in node.children:
                walk(c)
            out.append(node)

        walk(self.root)
        return out

    def _parents(self) -> dict[str, str]:
        return {c.name: n.name for n in self._nodes() for c in n.children}

    @property
    def leaf_names(self) -> tuple[str, ...]:
        """Names of the leaf cores, in site order."""
        return tuple(f"leaf{k}" for k in range(self.num_sites))

    @property
    def root_children(self) -> tuple[str, ...]:
        """Names of the values the root merges (the fused mode's cached factors)."""
        return tuple(c.name for c in self.root.children)

    # ------------------------------------------------------------------ program
    def _disentangles_at(self, stage: int) -> bool:
        return self.network == "mera" or (self.network == "attn" and stage == 0)

    def _build_program(self, *, fused: bool, batch: int) -> tuple[Schedule, dict[str, CoreSpec]]:
        """The materialize (or fused) schedule and every core's spec; ``self`` is not changed."""
        program = _Program(self, fused=fused, batch=batch)
        program.add_leaves()
        by_height: dict[int, list[TreeNode]] = {}
        for node in self._nodes():
            by_height.setdefault(node.height, []).append(node)
        for stage in range(self.root.height):
            if self._disentangles_at(stage):
                program.disentangle(stage)
            for node in by_height.get(stage + 1, []):
                program.merge(node)
        return program.schedule(), program.cores

    # ------------------------------------------------------------------ public API
    @property
    def cores(self) -> dict[str, CoreSpec]:
        """Every stored core, by name (leaves, nodes, root, disentanglers)."""
        return dict(self._cores)

    @property
    def num_parameters(self) -> int:
        """Stored parameters of the generator (every core)."""
        return sum(c.size for c in self._cores.values())

    @property
    def dense_parameters(self) -> int:
        """Parameters of the dense weight this plan generates (``out * in``)."""
        return self.out_features * self.in_features

    @property
    def compression_ratio(self) -> float:
        """Dense weight parameters / stored core parameters (bias not included)."""
        return self.dense_parameters / self.num_parameters

    @property
    def top_is_linear(self) -> bool:
        """True when the root step has no activation (the fused mode needs it)."""
        return self.final_activation is None

    def schedule(
        self, mode: Mode | str = Mode.MATERIALIZE, *, batch: int = 1, tile_rows: int | None = None
    ) -> Schedule:
        """The two-operand contraction schedule of ``mode``.

        Args:
            mode: ``materialize``, ``regenerate`` or ``fused``.
            batch: the batch size the fused path is optimised for (its flops and
                memory are exact for any batch via :meth:`Schedule.flops`).
            tile_rows: rows per tile for ``regenerate`` (default: about 1/64 of
                the padded rows).
        """
        mode = parse_mode(mode, Mode)
        if mode is Mode.MATERIALIZE:
            return self._materialize
        if mode == "regenerate":
            base = self._materialize
            return Schedule(
                "regenerate",
                base.steps,
                base.inputs,
                base.output,
                base.output_legs,
                base.dims,
                tiles=self.row_tiles(tile_rows),
                row_legs=base.row_legs,
            )
        if mode == "fused":
            if not self.top_is_linear:
                raise ValueError(
                    f"mode 'fused' needs a linear top step, but final_activation="
                    f"{self.final_activation!r}; use mode 'materialize' or 'regenerate', "
                    "or build the layer with final_activation=None"
                )
            batch = _check_positive_int(batch, "batch")
            if batch not in self._fused_cache:
                self._fused_cache[batch], _ = self._build_program(fused=True, batch=batch)
            return self._fused_cache[batch]
        raise AssertionError(mode)  # pragma: no cover - parse_mode admits only the three

    def low_rank(self) -> LowRankForm:
        """This split plan's weight as a product ``left @ right`` of two ``x``-independent
        factors (see :class:`LowRankForm`): how a split convolution runs as two convolutions
        (``right`` as a ``(rank, C, kh, kw)`` kernel, then ``left`` as a 1x1 one).

        Raises:
            ValueError: a paired plan (its weight has no such product), or a nonlinear top
                step (``final_activation``).
        """
        if self.layout != "split" or not self.top_is_linear:
            raise ValueError(
                f"low_rank needs layout='split' and a linear top step, but this plan has "
                f"layout={self.layout!r}, final_activation={self.final_activation!r}; valid: "
                "a split plan with final_activation=None"
            )
        if self._low_rank is None:
            self._low_rank = _low_rank_form(self)
        return self._low_rank

    def row_tiles(self, tile_rows: int | None = None) -> tuple[Tile, ...]:
        """Row tiles for the regenerate mode: fixed leading row digits and a range of the next.

        A tile fixes the digits ``i_0..i_{t-1}`` and takes a range of ``i_t``, so its
        rows are contiguous; ``t`` is the first digit whose unit (rows per value)
        fits in ``tile_rows``. At most :data:`MAX_ROW_TILES` tiles (``ValueError`` naming
        ``tile_rows`` otherwise).
        """
        m = self.row_factors
        default = max(1, self.rows_padded // 64)
        tile_rows = _check_positive_int(
            default if tile_rows is None else tile_rows, "tile_rows", MAX_TILE_ROWS
        )
        unit = self.rows_padded
        t = 0
        for t in range(self.num_sites):
            unit //= m[t]
            if unit <= tile_rows:
                break
        chunk = max(1, min(m[t], tile_rows // unit))
        count = math.prod(m[:t]) * -(-m[t] // chunk)  # padding tiles included: a bound
        if count > MAX_ROW_TILES:
            raise ValueError(
                f"tile_rows={tile_rows} cuts this {self.out_features}x{self.in_features} "
                f"weight into {count} row tiles, over the {MAX_ROW_TILES} allowed; valid: a "
                f"larger tile_rows (the plan's default is {default})"
            )
        tiles: list[Tile] = []
        prefixes: list[tuple[int, ...]] = [()]
        for d in range(t):
            prefixes = [p + (v,) for p in prefixes for v in range(m[d])]
        for prefix in prefixes:
            base = 0
            for d, v in enumerate(prefix):
                base = base * m[d] + v
            for start in range(0, m[t], chunk):
                stop = min(m[t], start + chunk)
                row0 = (base * m[t] + start) * unit
                if row0 >= self.out_features:
                    continue  # entirely in the cropped padding
                slices = tuple((f"leaf{d}", v, v + 1) for d, v in enumerate(prefix))
                slices += ((f"leaf{t}", start, stop),)
                tiles.append(Tile(slices, row0, (base * m[t] + stop) * unit))
        return tuple(tiles)

    def cost(
        self, mode: Mode | str, batch: int = 1, *, tile_rows: int | None = None
    ) -> CostEstimate:
        """Predicted flops and resident elements of one call in ``mode`` at ``batch``."""
        mode = parse_mode(mode, Mode)
        batch = _check_positive_int(batch, "batch")
        m, n = self.out_features, self.in_features
        mp, np_ = self.rows_padded, self.cols_padded
        gemm = 2 * batch * m * n
        io = batch * (m + n)
        gen = self._materialize
        if mode == "materialize":
            return CostEstimate(mode, batch, gemm, gen.flops(), m * n + io, self.num_parameters)
        if mode == "regenerate":
            sch = self.schedule("regenerate", tile_rows=tile_rows)
            rows = [t.row_stop - t.row_start for t in sch.tiles]
            one_tile = replace(sch, dims=sch.tiles[0].dims(sch.dims, sch.row_legs), tiles=())
            return CostEstimate(
                mode,
                batch,
                sch.flops() + 2 * batch * sum(rows) * np_,
                0,
                one_tile.peak_live_elements() + max(rows) * np_ + io + batch * np_,
                self.num_parameters,
            )
        if mode == "fused":
            sch = self.schedule("fused", batch=batch)
            cached = sch.cached_values
            const = sum(
                s.out_size(sch.dims)
                for s in sch.contractions
                if not s.uses_input and s.output in cached
            )
            return CostEstimate(
                mode,
                batch,
                sch.flops(batch, include_constant=False),
                sch.flops(batch) - sch.flops(batch, include_constant=False),
                const + sch.peak_live_elements(batch) + batch * (mp + np_),
                self.num_parameters,
            )
        raise AssertionError(mode)  # pragma: no cover - parse_mode admits only the three

    # ------------------------------------------------------------------ description
    def describe(self) -> str:
        """A text drawing of the network: sites, tree, disentanglers, cores and cost."""
        lines = [
            f"ADNTN {self.network} plan: weight {self.out_features}x{self.in_features} "
            f"(padded {self.rows_padded}x{self.cols_padded}), {self.num_sites} sites, "
            f"arity {self.arity}, height {self.height}, {self.layout} layout",
            f"  row factors {self.row_factors}, col factors {self.col_factors}",
            f"  bond dims by height {self.bond_dims}; activations by height "
            f"{self.activations or ()}; top step "
            + ("linear" if self.top_is_linear else f"{self.final_activation}"),
        ]

        def draw(node: TreeNode, prefix: str, last: bool) -> None:
            branch = "`-- " if last else "|-- "
            spec = self._cores.get(node.name)
            shape = "x".join(map(str, spec.shape)) if spec else "?"
            if node.is_leaf:
                k = node.sites[0]
                label = f"{node.name} [i{k}={self.row_factors[k]}, j{k}={self.col_factors[k]}]"
            else:
                act = (
                    self.final_activation or "linear"
                    if node is self.root
                    else self.activations[node.height - 1]
                )
                label = f"{node.name} (height {node.height}, {act}) sites {list(node.sites)}"
            lines.append(f"{prefix}{branch}{label} core {shape}")
            for n, c in enumerate(node.children):
                draw(c, prefix + ("    " if last else "|   "), n == len(node.children) - 1)

        lines.append("  tree:")
        draw(self.root, "    ", True)
        dis = [c for c in self._cores.values() if c.role == "disentangler"]
        if dis:
            lines.append("  disentanglers (U on the left node, V on the right, lateral leg s):")
            for c in dis:
                lines.append(f"    {c.name}: legs {c.legs} shape {c.shape}")
        fused = self.cost("fused") if self.top_is_linear else None
        lines.append(
            f"  stored {self.num_parameters} parameters, dense {self.dense_parameters}, "
            f"ratio {self.compression_ratio:.1f}x; materialize schedule "
            f"{len(self._materialize.contractions)} einsum steps, "
            f"{self._materialize.flops():,} flops"
            + (f"; fused flops/call at batch 1: {fused.flops:,}" if fused else "")
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"ADNTNPlan({self.out_features}, {self.in_features}, network={self.network!r}, "
            f"bond_dim={list(self.bond_dims)}, activation={list(self.activations)}, "
            f"final_activation={self.final_activation!r}, arity={self.arity}, "
            f"num_sites={self.num_sites}"
            + (f", layout={self.layout!r})" if self.layout != "paired" else ")")
        )

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready constructor arguments; :meth:`from_dict` rebuilds the same plan.

        ``layout`` is written only when it is not ``"paired"``, so a paired plan reads in
        an adntn that predates layouts, and a split plan is refused there (unknown field)
        rather than misread.
        """
        data: dict[str, Any] = {
            "format": PLAN_FORMAT,
            "out_features": self.out_features,
            "in_features": self.in_features,
            "network": self.network,
            "bond_dim": list(self.bond_dims),
            "activation": list(self.activations),
            "final_activation": self.final_activation,
            "arity": self.arity,
            "num_sites": self.num_sites,
            "disentangler_rank": self.disentangler_rank,
        }
        if self.layout != "paired":
            data["layout"] = self.layout
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ADNTNPlan:
        """Rebuild a plan from :meth:`to_dict` output (untrusted data: every field checked).

        Raises:
            ValueError: not a dict, a format other than :data:`PLAN_FORMAT` (both named),
                missing or unknown fields, or a field out of range.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a plan must be a JSON object, got {type(data).__name__}")
        fmt = data.get("format")
        if fmt != PLAN_FORMAT:
            newer = isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > PLAN_FORMAT
            raise ValueError(
                f"{'newer' if newer else 'unknown'} plan format {fmt!r}; this adntn reads plan "
                f"format {PLAN_FORMAT}" + (" (upgrade adntn to read it)" if newer else "")
            )
        fields = set(_PLAN_FIELDS)
        missing = sorted({"out_features", "in_features"} - set(data))
        unknown = sorted(set(data) - fields - {"format"})
        if missing or unknown:
            raise ValueError(
                f"plan has missing fields {missing} and unknown fields {unknown}; valid fields: "
                f"{sorted(fields)}"
            )
        kwargs = {
            k: v for k, v in data.items() if k not in ("format", "out_features", "in_features")
        }
        try:
            return cls(data["out_features"], data["in_features"], **kwargs)
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    @classmethod
    def from_json(cls, text: str | bytes) -> ADNTNPlan:
        """Rebuild a plan from the JSON text of :meth:`to_dict` (as stored in ONNX files).

        Raises:
            ValueError: text that is not JSON, or see :meth:`from_dict`.
        """
        import json

        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            shown = text[:60] if isinstance(text, str) else text[:60].decode(errors="replace")
            raise ValueError(
                f"plan is not valid JSON ({exc}): {shown!r}; expected the JSON object of "
                "ADNTNPlan.to_dict()"
            ) from None
        return cls.from_dict(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ADNTNPlan) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))


_PLAN_FIELDS = (
    "out_features",
    "in_features",
    "network",
    "bond_dim",
    "activation",
    "final_activation",
    "arity",
    "num_sites",
    "disentangler_rank",
    "layout",
)
#: One entry of the frontier while a program is built: (node, value name, legs, bond leg).
_Frontier = tuple[TreeNode, str, tuple[str, ...], str]


class _Program:
    """Builds one schedule of a plan, level by level: leaves, disentanglers, node merges.

    The frontier holds, in site order, the value each subtree built so far has produced.
    """

    def __init__(self, plan: ADNTNPlan, *, fused: bool, batch: int) -> None:
        self.plan = plan
        self.fused = fused
        self.batch = batch
        self.dims: dict[str, int] = {}
        self.inputs: dict[str, tuple[str, ...]] = {}
        self.steps: list[Step] = []
        self.cores: dict[str, CoreSpec] = {}
        self.parents = plan._parents()
        self.frontier: list[_Frontier] = []
        for k in range(plan.num_sites):
            self.dims[f"i{k}"] = plan.row_factors[k]
            self.dims[f"j{k}"] = plan.col_factors[k]

    def _core(self, name: str, legs: tuple[str, ...], role: Any, level: int) -> None:
        self.cores[name] = CoreSpec(name, tuple(self.dims[x] for x in legs), legs, role, level)
        self.inputs[name] = legs

    def add_leaves(self) -> None:
        """One leaf core per site, ``leaf{k}[i_k, j_k, b]``, each on the frontier."""
        leaves = [n for n in self.plan._nodes() if n.is_leaf]
        for leaf in sorted(leaves, key=lambda n: n.sites[0]):
            k = leaf.sites[0]
            bond = f"b_{leaf.name}"
            self.dims[bond] = self.plan.bond_dims[0]
            legs = (f"i{k}", f"j{k}", bond)
            self._core(leaf.name, legs, "leaf", 0)
            self.frontier.append((leaf, leaf.name, legs, bond))

    def disentangle(self, stage: int) -> None:
        """Mix each pair of neighbouring frontier values with different parents (U on the
        left, V on the right, sharing a lateral leg)."""
        rank = self.plan.disentangler_rank or min(2, self.plan.bond_dims[stage] ** 2)
        t = 0
        for pos in range(len(self.frontier) - 1):
            a_node, b_node = self.frontier[pos][0], self.frontier[pos + 1][0]
            if self.parents[a_node.name] == self.parents[b_node.name]:
                continue
            lateral = f"s{stage}_{t}"
            self.dims[lateral] = rank
            for side, idx in (("u", pos), ("v", pos + 1)):
                node, value, legs, bond = self.frontier[idx]
                new_bond = f"{bond}~{stage}{side}"
                self.dims[new_bond] = self.dims[bond]
                core = f"dis{stage}_{t}_{side}"
                core_legs = (bond, new_bond, lateral)
                self._core(core, core_legs, "disentangler", stage)
                out_legs = tuple(x for x in legs if x != bond) + (new_bond, lateral)
                out = f"{node.name}.dis{stage}{side}"
                self.steps.append(Contract((value, core), out, (legs, core_legs), out_legs, stage))
                self.frontier[idx] = (node, out, out_legs, new_bond)
            t += 1

    def merge(self, node: TreeNode) -> None:
        """Contract ``node``'s children's values with its core (and ``x`` at a fused root),
        then its activation; the result replaces the children on the frontier."""
        plan = self.plan
        child_names = {c.name for c in node.children}
        members = [f for f in self.frontier if f[0].name in child_names]
        is_root = node is plan.root
        bond = "" if is_root else f"b_{node.name}"
        if bond:
            self.dims[bond] = plan.bond_dims[node.height]
        core_legs = tuple(m[3] for m in members) + ((bond,) if bond else ())
        self._core(node.name, core_legs, "root" if is_root else "node", node.height)
        operands = [(m[1], m[2]) for m in members] + [(node.name, core_legs)]
        out_legs = self._root_legs(node, operands) if is_root else _node_legs(node, operands, bond)
        act = plan.final_activation if is_root else plan.activations[node.height - 1]
        nonlinear = act not in (None, "identity")
        pre = f"{node.name}.pre" if nonlinear else f"{node.name}.out"
        if is_root:
            pre = "y" if self.fused else ("weight.pre" if act else "weight")
        self.steps.extend(
            plan_pairwise(
                operands,
                out_legs,
                self.dims,
                output=pre,
                level=node.height,
                batch=self.batch,
                input_values=frozenset({"x"}) if self.fused else frozenset(),
                temp_prefix=f"{node.name}.t",
            )
        )
        value = pre
        if nonlinear:
            value = "weight" if is_root else f"{node.name}.out"
            self.steps.append(Activate(pre, value, act, node.height))
        self.frontier = [f for f in self.frontier if f[0].name not in child_names]
        insert_at = min(
            (i for i, f in enumerate(self.frontier) if f[0].sites[0] > node.sites[0]),
            default=len(self.frontier),
        )
        self.frontier.insert(insert_at, (node, value, out_legs, bond))

    def _root_legs(
        self, node: TreeNode, operands: list[tuple[str, tuple[str, ...]]]
    ) -> tuple[str, ...]:
        """The root's output legs; a fused root also takes ``x`` as an operand."""
        phys_i = tuple(f"i{k}" for k in node.sites)
        phys_j = tuple(f"j{k}" for k in node.sites)
        if not self.fused:
            return (*phys_i, *phys_j)
        x_legs = (BATCH, *phys_j)
        self.inputs["x"] = x_legs
        operands.append(("x", x_legs))
        return (BATCH, *phys_i)

    def schedule(self) -> Schedule:
        """The schedule of the steps added so far (the frontier holds the root's value)."""
        (_, out_value, out_legs, _) = self.frontier[0]
        row_legs = {f"leaf{k}": f"i{k}" for k in range(self.plan.num_sites)}
        return Schedule(
            "fused" if self.fused else "materialize",
            tuple(self.steps),
            self.inputs,
            out_value,
            out_legs,
            self.dims,
            row_legs=row_legs,
        )


def _low_rank_form(plan: ADNTNPlan) -> LowRankForm:
    """The :class:`LowRankForm` of a split plan: the materialize steps below the root, then
    the root core contracted into the side with the larger open bond."""
    sch = plan.schedule(Mode.MATERIALIZE)
    top = plan.root.height
    root_steps = [s for s in sch.contractions if s.level == top]
    made = {s.output for s in root_steps}
    legs = {
        n: lg
        for s in root_steps
        for n, lg in zip(s.inputs, s.in_legs, strict=True)
        if n not in made
    }
    root_legs = legs.pop("root")
    row_sites, col_sites = (c.sites for c in plan.root.children)
    rv, cv = sorted(legs, key=lambda n: f"i{row_sites[0]}" not in legs[n])
    rv_legs, cv_legs = legs[rv], legs[cv]
    laterals = tuple(x for x in rv_legs if x in cv_legs)
    bond_r, bond_c = (next(x for x in root_legs if x in lg) for lg in (rv_legs, cv_legs))
    row_legs = tuple(f"{a}{k}" for a in "ij" for k in row_sites)
    col_legs = tuple(f"{a}{k}" for a in "ij" for k in col_sites)
    if sch.dims[bond_c] <= sch.dims[bond_r]:  # root into the row side: rank = bond_c x lateral
        rank_legs = (bond_c, *laterals)
        left, right, output = "lowrank.left", cv, "lowrank.left"
        operands, out_legs = [(rv, rv_legs), ("root", root_legs)], (*row_legs, *rank_legs)
        left_legs, right_legs = out_legs, cv_legs
    else:
        rank_legs = (bond_r, *laterals)
        left, right, output = rv, "lowrank.right", "lowrank.right"
        operands, out_legs = [("root", root_legs), (cv, cv_legs)], (*rank_legs, *col_legs)
        left_legs, right_legs = rv_legs, out_legs
    step = plan_pairwise(operands, out_legs, sch.dims, output=output, level=top)
    below = tuple(s for s in sch.steps if s.level < top)
    return LowRankForm(
        below + tuple(step), dict(sch.inputs), dict(sch.dims), left, left_legs, right,
        right_legs, row_legs, rank_legs, col_legs,
    )  # fmt: skip


def _node_legs(
    node: TreeNode, operands: list[tuple[str, tuple[str, ...]]], bond: str
) -> tuple[str, ...]:
    """An internal node's output legs: its physical legs, its bond and the open lateral legs."""
    counts: dict[str, int] = {}
    for _, legs in operands:
        for leg in legs:
            counts[leg] = counts.get(leg, 0) + 1
    once = [x for x in counts if counts[x] == 1]
    phys = [f"i{k}" for k in node.sites] + [f"j{k}" for k in node.sites]
    lateral = sorted(x for x in once if x.startswith("s"))
    out_legs = (*phys, bond, *lateral)
    missing = set(once) - set(out_legs)
    if missing:  # pragma: no cover - guards the construction above
        raise AssertionError(f"dangling legs {missing} at {node.name}")
    return out_legs


def _interleave(factors: tuple[int, ...]) -> tuple[int, ...]:
    """Order descending factors large, small, large, ... so both halves of the tree are balanced."""
    lo, hi = 0, len(factors) - 1
    out: list[int] = []
    while lo <= hi:
        out.append(factors[lo])
        if lo != hi:
            out.append(factors[hi])
        lo, hi = lo + 1, hi - 1
    return tuple(out)
