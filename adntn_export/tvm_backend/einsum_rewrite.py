"""Rewrite ONNX ``Einsum`` nodes into Transpose/Reshape/MatMul before importing into TVM.

TVM's einsum lowering produces one naive loop nest per node and schedules poorly, so every
``Einsum`` whose operand shapes are static is rewritten on the ONNX graph:

* one operand, a pure permutation (``"ijk->kij"``): ``Transpose``;
* two operands, each letter appearing once per operand, no ``...``: transpose both operands to
  ``[batch, free, contracted]`` / ``[batch, contracted, free]``, reshape to 3-D, ``MatMul``,
  reshape back and transpose into the output order. Letters present in one operand only and not
  in the output are summed first with ``ReduceSum``.

Limitation: other forms (ellipsis, repeated letters such as traces/diagonals, three or more
operands, unknown shapes) are left as ``Einsum``; TVM still compiles them, only slower.
:func:`rewrite_einsum` reports what it left.
"""

from __future__ import annotations

import numpy as np

_INT64 = 7  # onnx.TensorProto.INT64


def _static_shapes(model: object) -> dict[str, list[int]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _parse(eq: str, n_inputs: int) -> tuple[list[str], str] | None:
    eq = eq.replace(" ", "")
    if "..." in eq or "->" not in eq:
        return None
    lhs, out = eq.split("->")
    ins = lhs.split(",")
    if len(ins) != n_inputs or any(len(set(t)) != len(t) for t in [*ins, out]):
        return None
    return ins, out


def rewrite_einsum(model: object) -> tuple[object, list[str]]:
    """Return ``(model, left)``: a copy with Einsum nodes rewritten, and the equations left."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    if not any(n.op_type == "Einsum" for n in model.graph.node):
        return model, []
    shapes = _static_shapes(model)
    new_nodes = []
    inits = []
    left: list[str] = []
    counter = [0]

    def fresh(base: str) -> str:
        counter[0] += 1
        return f"{base}__ein{counter[0]}"

    def const(vals: list[int]) -> str:
        name = fresh("shape")
        inits.append(numpy_helper.from_array(np.asarray(vals, dtype=np.int64), name))
        return name

    def transpose(x: str, perm: list[int]) -> str:
        if perm == sorted(perm):
            return x
        y = fresh(x)
        new_nodes.append(helper.make_node("Transpose", [x], [y], perm=perm))
        return y

    def reshape(x: str, shape: list[int]) -> str:
        y = fresh(x)
        new_nodes.append(helper.make_node("Reshape", [x, const(shape)], [y]))
        return y

    for node in model.graph.node:
        if node.op_type != "Einsum":
            new_nodes.append(node)
            continue
        eq = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "equation")
        eq = eq.decode() if isinstance(eq, bytes) else eq
        parsed = _parse(eq, len(node.input))
        if parsed is None or len(node.input) > 2 or any(i not in shapes for i in node.input):
            new_nodes.append(node)
            left.append(eq)
            continue
        ins, out = parsed
        dim = {}
        for term, name in zip(ins, node.input, strict=True):
            dim.update(dict(zip(term, shapes[name], strict=True)))
        y = node.output[0]
        if len(ins) == 1:
            (a_t,) = ins
            x = node.input[0]
            extra = [c for c in a_t if c not in out]
            if extra:
                red = fresh(x)
                axes = const([a_t.index(c) for c in extra])
                new_nodes.append(helper.make_node("ReduceSum", [x, axes], [red], keepdims=0))
                x, a_t = red, "".join(c for c in a_t if c in out)
            new_nodes.append(
                helper.make_node("Transpose", [x], [y], perm=[a_t.index(c) for c in out])
            )
            continue
        names = list(node.input)
        terms = list(ins)
        # letters only in one operand and not in the output: sum them away first
        for k in range(2):
            other = terms[1 - k]
            extra = [c for c in terms[k] if c not in other and c not in out]
            if extra:
                red = fresh(names[k])
                axes = const([terms[k].index(c) for c in extra])
                new_nodes.append(helper.make_node("ReduceSum", [names[k], axes], [red], keepdims=0))
                names[k] = red
                terms[k] = "".join(c for c in terms[k] if c not in extra)
        a_t, b_t = terms
        batch = [c for c in a_t if c in b_t and c in out]
        contr = [c for c in a_t if c in b_t and c not in out]
        a_free = [c for c in a_t if c not in b_t]
        b_free = [c for c in b_t if c not in a_t]

        def prod(cs: list[str], dim: dict[str, int] = dim) -> int:
            return int(np.prod([dim[c] for c in cs], dtype=np.int64))

        a = transpose(names[0], [a_t.index(c) for c in batch + a_free + contr])
        a = reshape(a, [prod(batch), prod(a_free), prod(contr)])
        b = transpose(names[1], [b_t.index(c) for c in batch + contr + b_free])
        b = reshape(b, [prod(batch), prod(contr), prod(b_free)])
        mm = fresh(y)
        new_nodes.append(helper.make_node("MatMul", [a, b], [mm]))
        order = batch + a_free + b_free
        r = reshape(mm, [dim[c] for c in order])
        perm = [order.index(c) for c in out]
        if perm == sorted(perm):
            new_nodes.append(helper.make_node("Identity", [r], [y]))
        else:
            new_nodes.append(helper.make_node("Transpose", [r], [y], perm=perm))
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    model.graph.initializer.extend(inits)
    return model, left
