"""Emit a plan's schedule as ONNX nodes: the builder every ONNX lowering of a layer uses.

:class:`OnnxBuilder` collects the nodes and initializers of one layer under a name prefix
(``{layer}/level2/node2_0.t.0``; every node carries ``metadata_props`` ``adntn.layer`` and
``adntn.level``) and turns each two-operand step into an ``Einsum``, a broadcasting
``MatMul`` (when that writes the output's order directly), or Transpose/Reshape/MatMul
(``einsum=False``: no 26-label limit, ORT mobile builds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from adntn_runtime.schedule import BATCH, MAX_LABELS, Activate, Contract, Schedule

__all__ = ["OnnxBuilder"]


def _prod(legs: Sequence[str], dims: Mapping[str, int], batch: int) -> int:
    return math.prod(batch if x == BATCH else dims[x] for x in legs)


class OnnxBuilder:
    """Collects the nodes and initializers of one layer under a name prefix."""

    def __init__(
        self, prefix: str, opset: int, *, einsum: bool, native_gelu: bool, batch_hint: int = 1
    ) -> None:
        self.prefix = prefix
        self.batch_hint = batch_hint
        self._views: dict[tuple, str] = {}
        #: ONNX value -> its leg order, for intermediates written in a non-declared order.
        self._legs: dict[str, tuple[str, ...]] = {}
        self.opset = opset
        self.einsum = einsum
        self.native_gelu = native_gelu
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._used: set[str] = set()
        self._consts: dict[tuple, str] = {}
        #: Initializers whose values are known here (cached fused factors): their
        #: transposes and reshapes are folded into new initializers instead of nodes.
        self.arrays: dict[str, np.ndarray] = {}

    def unique(self, name: str) -> str:
        full = f"{self.prefix}/{name}"
        if full in self._used:
            n = 1
            while f"{full}_{n}" in self._used:
                n += 1
            full = f"{full}_{n}"
        self._used.add(full)
        return full

    def node(
        self,
        op: str,
        inputs: Sequence[str],
        name: str,
        *,
        output: str | None = None,
        level: int | None = None,
        **attrs: Any,
    ) -> str:
        full = self.unique(name)
        out = output or full
        node = helper.make_node(op, list(inputs), [out], name=full, **attrs)
        entry = node.metadata_props.add()
        entry.key, entry.value = "adntn.layer", self.prefix
        if level is not None:
            entry = node.metadata_props.add()
            entry.key, entry.value = "adntn.level", str(level)
        self.nodes.append(node)
        return out

    def legs_of(self, value: str, declared: Sequence[str]) -> tuple[str, ...]:
        """The leg order ``value`` was written in by :meth:`run` (an intermediate may be
        written in another order than its schedule declares), else ``declared``."""
        return tuple(self._legs.get(value, declared))

    def tensor(self, name: str, array: np.ndarray) -> str:
        full = self.unique(name)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), full))
        return full

    def constant(self, name: str, array: np.ndarray) -> str:
        """An initializer whose views (:meth:`view`) fold into initializers."""
        full = self.tensor(name, array)
        self.arrays[full] = np.ascontiguousarray(array)
        return full

    def view(
        self,
        x: str,
        perm: Sequence[int],
        shape: Sequence[int] | None,
        name: str,
        level: int,
        tag: str = "",
    ) -> str:
        """``x`` transposed by ``perm`` then reshaped to ``shape`` (None: kept): folded into an
        initializer when ``x`` is a :meth:`constant`, else nodes ``{name}.t{tag}`` (Transpose)
        and ``{name}.r{tag}`` (Reshape)."""
        identity = list(perm) == list(range(len(perm)))
        if x in self.arrays:
            if identity and shape is None:
                return x
            arr = self.arrays[x].transpose(perm)
            return self.constant(f"{name}.c{tag}", arr if shape is None else arr.reshape(shape))
        out = x
        if not identity:
            out = self.node("Transpose", [out], f"{name}.t{tag}", level=level, perm=list(perm))
        if shape is not None:
            out = self.node("Reshape", [out, self.ints(shape)], f"{name}.r{tag}", level=level)
        return out

    def ints(self, values: Sequence[int]) -> str:
        key = ("i64", tuple(int(v) for v in values))
        if key not in self._consts:
            label = "_".join(str(v).replace("-", "m") for v in key[1]) or "empty"
            self._consts[key] = self.tensor(f"const/i{label}", np.array(key[1], dtype=np.int64))
        return self._consts[key]

    def scalar(self, value: float) -> str:
        key = ("f32", float(value))
        if key not in self._consts:
            self._consts[key] = self.tensor(f"const/f{value:.6g}", np.array(value, np.float32))
        return self._consts[key]

    def slice(self, x: str, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int],
              name: str, *, output: str | None = None) -> str:  # fmt: skip
        return self.node(
            "Slice", [x, self.ints(starts), self.ints(ends), self.ints(axes)], name, output=output
        )

    def reshape(self, x: str, shape: Sequence[int], name: str, *, output: str | None = None) -> str:
        return self.node("Reshape", [x, self.ints(shape)], name, output=output)

    # -------------------------------------------------------------- schedule steps
    def activation(self, act: str, x: str, name: str, level: int) -> str:
        simple = {"tanh": "Tanh", "relu": "Relu", "sin": "Sin", "identity": "Identity"}
        if act in simple:
            return self.node(simple[act], [x], name, level=level)
        if act != "gelu":
            raise ValueError(
                f"unknown activation {act!r}; valid activations: "
                "['identity', 'tanh', 'relu', 'gelu', 'sin']"
            )
        if self.native_gelu:
            return self.node("Gelu", [x], name, level=level, approximate="none")
        # gelu(x) = 0.5 * x * (1 + erf(x / sqrt(2))): exact, any opset >= 9.
        t = self.node("Div", [x, self.scalar(math.sqrt(2.0))], f"{name}.div", level=level)
        t = self.node("Erf", [t], f"{name}.erf", level=level)
        t = self.node("Add", [t, self.scalar(1.0)], f"{name}.add", level=level)
        t = self.node("Mul", [x, t], f"{name}.mul", level=level)
        return self.node("Mul", [t, self.scalar(0.5)], name, level=level)

    def _operand(self, x: str, perm: Sequence[int], shape: Sequence[int], name: str,
                 tag: str, level: int) -> str:  # fmt: skip
        """``x`` permuted by ``perm`` and reshaped to ``shape``, memoized per value.

        A value used by many steps (a shared factor of every regenerate tile, a cached fused
        factor) is permuted and reshaped once; later steps reuse the first node's output.
        """
        key = (x, tuple(perm), tuple(shape))
        if key not in self._views:
            self._views[key] = self.view(x, perm, shape, name, level, tag)
        return self._views[key]

    def _broadcast_ok(self, step: Contract, dims: Mapping[str, int]) -> Any:
        """The broadcast MatMul form of ``step`` when it is an efficient lowering, else None.

        Efficient: each of its small GEMMs writes at least 256 elements, so the per-call
        overhead of a broadcast ``MatMul`` stays small next to the writes it saves.
        """
        form = step.as_broadcast_matmul(dims, self.batch_hint)
        per_call = _prod(form.rows, dims, self.batch_hint) * _prod(form.cols, dims, self.batch_hint)
        return form if per_call >= 256 else None

    def _needs_transpose(self, form: Any, a: str, b: str) -> bool:
        """True when the broadcast MatMul ``form`` must transpose an operand at run time (a
        transpose of a :meth:`constant` is folded, so it costs nothing)."""
        first, second = (b, a) if form.swap else (a, b)
        return any(
            list(perm) != list(range(len(perm))) and value not in self.arrays
            for value, perm in ((first, form.perm_first), (second, form.perm_second))
        )

    def contract(self, step: Contract, a: str, b: str, name: str, dims: Mapping[str, int]) -> str:
        mm = step.as_matmul()
        out_transposed = list(mm.perm_out) != list(range(len(mm.perm_out)))
        # A step whose output a plain (batched) MatMul would write transposed, or whose
        # inputs are already laid out for it, is lowered as one broadcasting MatMul that
        # writes the output's row-major order directly (ORT's Einsum pays a full transpose
        # of the output there, the worst case being the last step of every regenerate tile).
        form = self._broadcast_ok(step, dims)
        if form is not None and (out_transposed or not self._needs_transpose(form, a, b)):
            return self.broadcast_matmul(step, form, a, b, name, dims)
        if self.einsum:
            try:
                eq = step.equation
            except ValueError as exc:
                raise ValueError(
                    f"layer {self.prefix!r}: {exc}; or lower with einsum=False (the "
                    f"MatMul form has no {MAX_LABELS}-label limit)"
                ) from None
            return self.node("Einsum", [a, b], name, level=step.level, equation=eq)

        def size(legs: Sequence[str]) -> int:
            if BATCH in legs:
                return -1
            return math.prod(dims[x] for x in legs)

        batch_shape = [size([x]) for x in mm.batch_legs]
        a_shape = None
        if not (len(mm.free_a) == 1 and len(mm.inner) == 1):
            a_shape = [*batch_shape, size(mm.free_a), size(mm.inner)]
        a_t = self.view(a, mm.perm_a, a_shape, name, step.level, "a")
        b_shape = None
        if not (len(mm.free_b) == 1 and len(mm.inner) == 1):
            b_shape = [*batch_shape, size(mm.inner), size(mm.free_b)]
        b_t = self.view(b, mm.perm_b, b_shape, name, step.level, "b")
        trivial_out = len(mm.free_a) == 1 and len(mm.free_b) == 1
        identity_out = not out_transposed
        prod = self.node(
            "MatMul",
            [a_t, b_t],
            name if trivial_out and identity_out else f"{name}.mm",
            level=step.level,
        )
        if not trivial_out:
            shape = [size([x]) for x in mm.mid_legs]
            prod = self.node(
                "Reshape",
                [prod, self.ints(shape)],
                name if identity_out else f"{name}.ro",
                level=step.level,
            )
        if not identity_out:
            prod = self.node("Transpose", [prod], name, level=step.level, perm=list(mm.perm_out))
        return prod

    def broadcast_matmul(
        self, step: Contract, form: Any, a: str, b: str, name: str, dims: Mapping[str, int]
    ) -> str:
        """Emit ``step`` as one broadcasting MatMul (see :class:`BroadcastMatMulForm`)."""
        first, second = (b, a) if form.swap else (a, b)

        def shape(groups: Sequence[Sequence[str]]) -> list[int]:
            return [-1 if BATCH in g else math.prod(dims[x] for x in g) for g in groups]

        f = self._operand(first, form.perm_first, shape(form.first_dims), name, "a", step.level)
        s_ = self._operand(second, form.perm_second, shape(form.second_dims), name, "b", step.level)
        prod = self.node("MatMul", [f, s_], f"{name}.mm", level=step.level)
        out_shape = [-1 if x == BATCH else dims[x] for x in step.out_legs]
        return self.node("Reshape", [prod, self.ints(out_shape)], name, level=step.level)

    def _wanted_layouts(self, sch: Schedule, dims: Mapping[str, int]) -> dict[str, tuple]:
        """Leg order each intermediate should be written in so its consumer needs no transpose.

        A backward pass: the final step keeps the schedule's output order; every step whose
        broadcast MatMul form is efficient asks for its intermediate inputs in the order
        that form reads them (an activation passes the wish through). A producer adopts the
        wish only when its own broadcast MatMul can write that order (see :meth:`run`).
        """
        wanted: dict[str, tuple] = {}
        for step in reversed(sch.steps):
            if isinstance(step, Activate):
                if step.output in wanted and step.input not in sch.inputs:
                    wanted.setdefault(step.input, wanted[step.output])
                continue
            out = step.out_legs if step.output == sch.output else wanted.get(step.output)
            form = self._broadcast_ok(replace(step, out_legs=tuple(out or step.out_legs)), dims)
            if form is None:
                continue
            first, second = step.inputs[::-1] if form.swap else step.inputs
            for value, groups in ((first, form.first_dims), (second, form.second_dims)):
                if value not in sch.inputs:
                    wanted.setdefault(value, tuple(x for g in groups for x in g))
        return wanted

    def run(
        self,
        sch: Schedule,
        env: dict[str, str],
        *,
        scope: str = "",
        dims: Mapping[str, int] | None = None,
        only: set[str] | None = None,
    ) -> str:
        """Emit the schedule's steps; ``env`` maps schedule value names to ONNX value names.

        With ``only``, emit just the steps whose output is in it (``env`` holds the rest).
        """
        dims = sch.dims if dims is None else dims
        wanted = self._wanted_layouts(sch, dims)
        for step in sch.steps:
            if only is not None and step.output not in only:
                continue
            name = f"{scope}level{step.level}/{step.output}"
            if isinstance(step, Contract):
                a, b = (env[v] for v in step.inputs)
                # Intermediates may live in another leg order than the schedule declares
                # (chosen so that their consumer needs no transpose): track the real one.
                phys = (self._legs.get(a, step.in_legs[0]), self._legs.get(b, step.in_legs[1]))
                step = replace(step, in_legs=phys)
                out_legs = wanted.get(step.output) if step.output != sch.output else None
                if out_legs is not None and tuple(out_legs) != step.out_legs:
                    alt = replace(step, out_legs=tuple(out_legs))
                    form = self._broadcast_ok(alt, dims)
                    if form is not None:
                        step = alt
                env[step.output] = self.contract(step, a, b, name, dims)
                self._legs[env[step.output]] = step.out_legs
            elif isinstance(step, Activate):
                env[step.output] = self.activation(
                    step.activation, env[step.input], name, step.level
                )
                if env[step.input] in self._legs:
                    self._legs[env[step.output]] = self._legs[env[step.input]]
        return env.get(sch.output, "")
