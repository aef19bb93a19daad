"""Contraction schedules: ordered two-operand einsum steps and activations.

A schedule is what every backend executes step by step: torch (``torch.einsum``),
ONNX (one ``Einsum`` node per :class:`Contract`, or the ``MatMul`` form from
:meth:`Contract.as_matmul`), TVM and the numpy reference. Tensors are named
values; each leg has a symbolic name (``i3``, ``j3``, ``b_node1_0``, ``s0_1``,
``batch``) and a size in :attr:`Schedule.dims`. The ``batch`` leg is the only
leg whose size is not fixed, which makes costs exact affine functions of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import opt_einsum

__all__ = [
    "BATCH",
    "MAX_LABELS",
    "Activate",
    "BroadcastMatMulForm",
    "Contract",
    "MatMulForm",
    "Schedule",
    "Step",
    "Tile",
    "plan_pairwise",
]

BATCH = "batch"
#: ONNX ``Einsum`` accepts lower-case letters only, so at most 26 labels per step.
MAX_LABELS = 26

Leg = str


def _size(legs: Sequence[Leg], dims: Mapping[Leg, int], batch: int) -> int:
    return math.prod(batch if leg == BATCH else dims[leg] for leg in legs)


@dataclass(frozen=True)
class MatMulForm:
    """A two-operand einsum as ``Transpose -> Reshape -> MatMul -> Reshape -> Transpose``.

    ``a`` is permuted by ``perm_a`` to ``[batch legs, free legs of a, contracted legs]``
    and reshaped to ``[*batch dims, rows, inner]``; ``b`` is permuted to
    ``[batch legs, contracted legs, free legs of b]`` and reshaped to
    ``[*batch dims, inner, cols]``. The product ``[*batch dims, rows, cols]`` is
    reshaped to ``mid_legs`` (batch, free a, free b) and permuted by ``perm_out``
    to the step's output leg order. Sizes are the schedule's, with the
    ``batch`` leg written as ``-1`` where it must stay dynamic.
    """

    perm_a: tuple[int, ...]
    perm_b: tuple[int, ...]
    batch_legs: tuple[Leg, ...]
    free_a: tuple[Leg, ...]
    free_b: tuple[Leg, ...]
    inner: tuple[Leg, ...]
    mid_legs: tuple[Leg, ...]
    perm_out: tuple[int, ...]


@dataclass(frozen=True)
class BroadcastMatMulForm:
    """A two-operand einsum as one broadcasting ``MatMul`` whose result needs no transpose.

    The output legs are read as ``[prefix..., rows, cols]``: ``rows`` are legs of the
    first MatMul operand only, ``cols`` legs of the second only, and each prefix *group*
    (a maximal run of output legs with the same owner: first only, second only, or both)
    becomes one broadcast dimension, of size 1 in the operand that lacks it. Example: out
    ``(i0,i1,i2,i3,j0,j1,j2,j3)`` from ``A(i0,i1,j0,j1,a)`` and ``B(i2,i3,j2,j3,a)`` is
    ``A[I01,1,J01,a] @ B[1,I23,a,J23]``, written directly in the output's row-major order.

    ``swap``: the first MatMul operand is the step's second input. ``perm_first`` /
    ``perm_second`` permute each operand to ``[its prefix legs, rows|inner, inner|cols]``;
    ``first_dims`` / ``second_dims`` / ``out_dims`` are the leg groups of each reshaped
    operand and of the product (an empty group is a broadcast dimension of size 1).
    """

    swap: bool
    perm_first: tuple[int, ...]
    perm_second: tuple[int, ...]
    first_dims: tuple[tuple[Leg, ...], ...]
    second_dims: tuple[tuple[Leg, ...], ...]
    out_dims: tuple[tuple[Leg, ...], ...]
    prefix: tuple[Leg, ...]
    rows: tuple[Leg, ...]
    inner: tuple[Leg, ...]
    cols: tuple[Leg, ...]

    def calls(self, dims: Mapping[Leg, int], batch: int = 1) -> int:
        """Number of small GEMMs the broadcast MatMul runs (product of the prefix sizes)."""
        return _size(self.prefix, dims, batch)


@dataclass(frozen=True)
class Contract:
    """One two-operand contraction ``output = einsum(equation, a, b)``."""

    inputs: tuple[str, str]
    output: str
    in_legs: tuple[tuple[Leg, ...], tuple[Leg, ...]]
    out_legs: tuple[Leg, ...]
    level: int
    #: True when the step depends on the layer input ``x`` (fused mode only).
    uses_input: bool = False
    kind: Literal["contract"] = "contract"

    @property
    def equation(self) -> str:
        """The einsum equation with lower-case labels, assigned in order of appearance."""
        labels: dict[Leg, str] = {}
        for leg in (*self.in_legs[0], *self.in_legs[1], *self.out_legs):
            if leg not in labels:
                if len(labels) == MAX_LABELS:
                    raise ValueError(
                        f"step {self.output!r} has more than {MAX_LABELS} distinct legs; "
                        "ONNX Einsum allows lower-case labels a-z only: use fewer sites "
                        "(num_sites) or a smaller arity"
                    )
                labels[leg] = chr(ord("a") + len(labels))
        a, b = ("".join(labels[x] for x in legs) for legs in self.in_legs)
        return f"{a},{b}->{''.join(labels[x] for x in self.out_legs)}"

    @property
    def all_legs(self) -> tuple[Leg, ...]:
        """Distinct legs of the step, in order of appearance."""
        return tuple(dict.fromkeys((*self.in_legs[0], *self.in_legs[1], *self.out_legs)))

    @property
    def summed_legs(self) -> tuple[Leg, ...]:
        """Legs present in an input but not in the output."""
        return tuple(leg for leg in self.all_legs if leg not in self.out_legs)

    def flops(self, dims: Mapping[Leg, int], batch: int = 1) -> int:
        """Floating-point operations: ``prod(all leg sizes)``, doubled when a leg is summed."""
        return _size(self.all_legs, dims, batch) * (2 if self.summed_legs else 1)

    def out_size(self, dims: Mapping[Leg, int], batch: int = 1) -> int:
        """Number of elements of the output."""
        return _size(self.out_legs, dims, batch)

    def as_matmul(self) -> MatMulForm:
        """The same contraction as transposes, reshapes and one batched ``MatMul``."""
        a, b = self.in_legs
        out = self.out_legs
        batch_legs = tuple(x for x in a if x in b and x in out)
        inner = tuple(x for x in a if x in b and x not in out)
        free_a = tuple(x for x in a if x not in b)
        free_b = tuple(x for x in b if x not in a)
        for legs in (free_a, free_b):
            dangling = [x for x in legs if x not in out]
            if dangling:
                raise ValueError(
                    f"step {self.output!r}: legs {dangling} of one operand are summed alone; "
                    "the schedule planner never emits such steps"
                )
        perm_a = tuple(a.index(x) for x in (*batch_legs, *free_a, *inner))
        perm_b = tuple(b.index(x) for x in (*batch_legs, *inner, *free_b))
        mid = (*batch_legs, *free_a, *free_b)
        perm_out = tuple(mid.index(x) for x in out)
        return MatMulForm(perm_a, perm_b, batch_legs, free_a, free_b, inner, mid, perm_out)

    def as_broadcast_matmul(
        self,
        dims: Mapping[Leg, int],
        batch: int = 1,
        *,
        out_legs: Sequence[Leg] | None = None,
        in_legs: tuple[Sequence[Leg], Sequence[Leg]] | None = None,
    ) -> BroadcastMatMulForm:
        """The step as one broadcasting ``MatMul`` writing ``out_legs`` (default: the step's).

        ``in_legs`` overrides the physical leg order of the inputs (a lowering may keep an
        intermediate in another order). Of the two orientations, the one with the fewest
        GEMM calls (then the fewest permuted inputs) is returned.
        """
        legs_a, legs_b = (tuple(x) for x in (in_legs or self.in_legs))
        out = tuple(self.out_legs if out_legs is None else out_legs)
        if set(out) != set(self.out_legs) or len(out) != len(self.out_legs):
            raise ValueError(f"step {self.output!r}: out_legs {out} are not a permutation")
        best: tuple[tuple[int, int], BroadcastMatMulForm] | None = None
        for swap in (False, True):
            first, second = (legs_b, legs_a) if swap else (legs_a, legs_b)
            form = _broadcast_form(first, second, out, swap, self.output)
            moved = sum(list(p) != list(range(len(p))) for p in (form.perm_first, form.perm_second))
            key = (form.calls(dims, batch), moved)
            if best is None or key < best[0]:
                best = (key, form)
        assert best is not None
        return best[1]


def _broadcast_form(
    first: tuple[Leg, ...], second: tuple[Leg, ...], out: tuple[Leg, ...], swap: bool, name: str
) -> BroadcastMatMulForm:
    inner = tuple(x for x in first if x in second and x not in out)
    for legs in (first, second):
        dangling = [x for x in legs if x not in out and x not in inner]
        if dangling:
            raise ValueError(
                f"step {name!r}: legs {dangling} of one operand are summed alone; "
                "the schedule planner never emits such steps"
            )

    def owner(leg: Leg) -> str:
        return "both" if (leg in first and leg in second) else ("f" if leg in first else "s")

    n = len(out)
    c = n
    while c > 0 and owner(out[c - 1]) == "s":
        c -= 1
    r = c
    while r > 0 and owner(out[r - 1]) == "f":
        r -= 1
    prefix, rows, cols = out[:r], out[r:c], out[c:]
    groups: list[tuple[str, tuple[Leg, ...]]] = []
    for leg in prefix:
        o = owner(leg)
        if groups and groups[-1][0] == o:
            groups[-1] = (o, groups[-1][1] + (leg,))
        else:
            groups.append((o, (leg,)))
    f_dims = tuple(g if o in ("f", "both") else () for o, g in groups) + (rows, inner)
    s_dims = tuple(g if o in ("s", "both") else () for o, g in groups) + (inner, cols)
    f_order = [x for g in f_dims for x in g]
    s_order = [x for g in s_dims for x in g]
    return BroadcastMatMulForm(
        swap,
        tuple(first.index(x) for x in f_order),
        tuple(second.index(x) for x in s_order),
        f_dims,
        s_dims,
        tuple(g for _, g in groups) + (rows, cols),
        prefix,
        rows,
        inner,
        cols,
    )


@dataclass(frozen=True)
class Activate:
    """An elementwise activation ``output = activation(input)``."""

    input: str
    output: str
    activation: str
    level: int
    uses_input: bool = False
    kind: Literal["activate"] = "activate"


Step = Contract | Activate


@dataclass(frozen=True)
class Tile:
    """A block of weight rows for the regenerate mode.

    ``slices`` maps a leaf core name to the ``(start, stop)`` range of its first
    (row-digit) axis; the tile covers padded rows ``[row_start, row_stop)``.
    """

    slices: tuple[tuple[str, int, int], ...]
    row_start: int
    row_stop: int

    def dims(self, dims: Mapping[Leg, int], row_legs: Mapping[str, Leg]) -> dict[Leg, int]:
        """The schedule's leg sizes with the sliced row legs shrunk to this tile."""
        out = dict(dims)
        for leaf, start, stop in self.slices:
            out[row_legs[leaf]] = stop - start
        return out


@dataclass(frozen=True)
class Schedule:
    """An ordered list of steps that turns the cores (and ``x``) into the output.

    Attributes:
        mode: ``materialize`` (output: the padded weight), ``regenerate`` (the same
            steps, run once per :class:`Tile` on sliced leaves) or ``fused``
            (output: ``y`` with legs ``(batch, i_1..i_K)``; input ``x`` with legs
            ``(batch, j_1..j_K)``).
        inputs: value name -> legs, for every core and for ``x``.
        output: the name of the final value; ``output_legs`` its legs.
        dims: size of every leg except ``batch``.
        tiles: the row tiles (regenerate mode only).
        row_legs: leaf core name -> its row leg (for slicing tiles).
    """

    mode: str
    steps: tuple[Step, ...]
    inputs: dict[str, tuple[Leg, ...]]
    output: str
    output_legs: tuple[Leg, ...]
    dims: dict[Leg, int]
    tiles: tuple[Tile, ...] = ()
    row_legs: dict[str, Leg] = field(default_factory=dict)

    @property
    def contractions(self) -> tuple[Contract, ...]:
        """The :class:`Contract` steps only."""
        return tuple(s for s in self.steps if isinstance(s, Contract))

    @property
    def cached_values(self) -> frozenset[str]:
        """The ``x``-independent part of a fused schedule: values computed from the cores alone
        that a step depending on ``x`` reads. The fused mode computes them once (at load, or
        on the first call) and keeps them; every executor takes the set from here.

        Empty for a schedule that does not read ``x``.
        """
        consumed: set[str] = set()
        for step in self.steps:
            if step.uses_input:
                consumed.update(step.inputs if isinstance(step, Contract) else (step.input,))
        return frozenset(consumed & {s.output for s in self.constant_steps})

    @property
    def constant_steps(self) -> tuple[Step, ...]:
        """The steps that do not depend on ``x`` (all of them outside the fused mode)."""
        return tuple(s for s in self.steps if not s.uses_input)

    def _tile_dims(self) -> list[dict[Leg, int]]:
        if not self.tiles:
            return [self.dims]
        return [t.dims(self.dims, self.row_legs) for t in self.tiles]

    def flops(self, batch: int = 1, *, include_constant: bool = True) -> int:
        """Flops of all contraction steps (summed over tiles in regenerate mode).

        With ``include_constant=False`` only the steps that depend on ``x`` count
        (the per-call cost of the fused mode once its constant part is cached).
        """
        total = 0
        for dims in self._tile_dims():
            for step in self.contractions:
                if include_constant or step.uses_input:
                    total += step.flops(dims, batch)
        return total

    def peak_elements(self, batch: int = 1) -> int:
        """The largest single intermediate (elements), over all steps and tiles."""
        best = 0
        for dims in self._tile_dims():
            for step in self.steps:
                legs = step.out_legs if isinstance(step, Contract) else self._legs_of(step.input)
                best = max(best, _size(legs, dims, batch))
        return best

    def peak_live_elements(self, batch: int = 1) -> int:
        """Peak of the sum of live intermediates (elements), inputs excluded, for one tile."""
        legs_of = dict(self.inputs)
        for step in self.steps:
            if isinstance(step, Contract):
                legs_of[step.output] = step.out_legs
            else:
                legs_of[step.output] = legs_of[step.input]
        last_use: dict[str, int] = {}
        for n, step in enumerate(self.steps):
            for name in step.inputs if isinstance(step, Contract) else (step.input,):
                last_use[name] = n
        last_use[self.output] = len(self.steps)
        dims = self._tile_dims()[0]
        live: dict[str, int] = {}
        peak = 0
        for n, step in enumerate(self.steps):
            live[step.output] = _size(legs_of[step.output], dims, batch)
            peak = max(peak, sum(live.values()))
            for name in list(live):
                if last_use.get(name, -1) <= n:
                    del live[name]
        return peak

    def _legs_of(self, name: str) -> tuple[Leg, ...]:
        if name in self.inputs:
            return self.inputs[name]
        for step in self.steps:
            if step.output == name:
                return step.out_legs if isinstance(step, Contract) else self._legs_of(step.input)
        raise KeyError(name)

    def max_labels(self) -> int:
        """The largest number of distinct legs in one step (ONNX allows 26)."""
        return max((len(s.all_legs) for s in self.contractions), default=0)


def plan_pairwise(
    operands: Sequence[tuple[str, tuple[Leg, ...]]],
    out_legs: tuple[Leg, ...],
    dims: Mapping[Leg, int],
    *,
    output: str,
    level: int,
    batch: int = 1,
    input_values: frozenset[str] = frozenset(),
    temp_prefix: str | None = None,
) -> list[Contract]:
    """Split a multi-operand contraction into two-operand steps with opt_einsum's path search.

    Args:
        operands: ``(value name, legs)`` of each operand.
        out_legs: legs of the result, in order.
        dims: leg sizes (``batch`` is taken from ``batch``).
        output: name of the final value; intermediates are ``{temp_prefix}.{n}``.
        level: the level recorded on each step.
        batch: the batch size the path is optimised for.
        input_values: names of values that depend on ``x`` (to flag steps).
    """
    if len(operands) < 2:
        raise ValueError(f"a contraction needs at least two operands, got {len(operands)}")
    prefix = temp_prefix or output
    symbols: dict[Leg, str] = {}
    for _, legs in operands:
        for leg in legs:
            symbols.setdefault(leg, opt_einsum.get_symbol(len(symbols)))
    eq = ",".join("".join(symbols[x] for x in legs) for _, legs in operands)
    eq += "->" + "".join(symbols[x] for x in out_legs)
    shapes = [tuple(batch if x == BATCH else dims[x] for x in legs) for _, legs in operands]
    optimize = "optimal" if len(operands) <= 5 else "dp"
    path, _ = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=optimize)

    current = [(name, tuple(legs)) for name, legs in operands]
    depends = {name for name, _ in operands if name in input_values}
    steps: list[Contract] = []
    for n, pos in enumerate(path):
        if len(pos) != 2:
            raise ValueError(f"unexpected contraction path step {pos} for {eq}")
        i, j = sorted(pos, reverse=True)
        (name_b, legs_b), (name_a, legs_a) = current.pop(i), current.pop(j)
        rest = {leg for _, legs in current for leg in legs}
        last = not current
        if last:
            res_legs = tuple(out_legs)
        else:
            keep = [x for x in dict.fromkeys((*legs_a, *legs_b)) if x in rest or x in out_legs]
            res_legs = tuple(
                [x for x in out_legs if x in keep] + [x for x in keep if x not in out_legs]
            )
        res_name = output if last else f"{prefix}.{n}"
        uses = name_a in depends or name_b in depends
        if uses:
            depends.add(res_name)
        steps.append(
            Contract((name_a, name_b), res_name, (legs_a, legs_b), res_legs, level, uses_input=uses)
        )
        current.append((res_name, res_legs))
    return steps
