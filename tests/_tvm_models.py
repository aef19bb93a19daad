"""Small ONNX models (built with onnx.helper) for the TVM backend tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(nodes, inputs, outputs, inits, path, opset: int = 17) -> str:
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return str(path)


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def matmul_tanh_chain(path, batch: int = 2, n: int = 64, seed: int = 0) -> str:
    """x -> MatMul -> Tanh -> MatMul -> Transpose/Reshape; plain weights."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((n, 2 * n)) / np.sqrt(n)).astype(np.float32)
    w2 = (rng.standard_normal((2 * n, n)) / np.sqrt(2 * n)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.array([batch * n], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("MatMul", ["t", "w2"], ["o"]),
        helper.make_node("Transpose", ["o"], ["ot"], perm=[1, 0]),
        helper.make_node("Reshape", ["ot", "flat"], ["y"]),
    ]
    return _save(nodes, [_f("x", [batch, n])], [_f("y", [batch * n])], inits, path)


def adntn_cores(path, batch: int = 2, n: int = 64, rank: int = 8, seed: int = 1) -> str:
    """Weights generated from ADNTN-style cores: W = Reshape(Transpose(Tanh(G1 @ G2)))."""
    rng = np.random.default_rng(seed)
    g1 = (rng.standard_normal((n, rank)) / 2).astype(np.float32)
    g2 = (rng.standard_normal((rank, n)) / 2).astype(np.float32)
    inits = [
        numpy_helper.from_array(g1, "G1"),
        numpy_helper.from_array(g2, "G2"),
        numpy_helper.from_array(np.array([n, n], np.int64), "wshape"),
    ]
    nodes = [
        helper.make_node("MatMul", ["G1", "G2"], ["g"]),
        helper.make_node("Tanh", ["g"], ["gt"]),
        helper.make_node("Transpose", ["gt"], ["gtt"], perm=[1, 0]),
        helper.make_node("Reshape", ["gtt", "wshape"], ["W"]),
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Tanh", ["h"], ["y"]),
    ]
    return _save(nodes, [_f("x", [batch, n])], [_f("y", [batch, n])], inits, path)


def einsum_model(path, seed: int = 2) -> str:
    """y[a', b'] = sum_{a,b,r} x[a,b] F1[a,a',r] F2[b,b',r] with Einsum nodes."""
    rng = np.random.default_rng(seed)
    f1 = (rng.standard_normal((16, 16, 4)) / 4).astype(np.float32)
    f2 = (rng.standard_normal((16, 16, 4)) / 4).astype(np.float32)
    inits = [numpy_helper.from_array(f1, "F1"), numpy_helper.from_array(f2, "F2")]
    nodes = [
        helper.make_node("Einsum", ["x", "F1"], ["t"], equation="ab,acr->bcr"),
        helper.make_node("Einsum", ["t", "F2"], ["y"], equation="bcr,bdr->cd"),
    ]
    return _save(nodes, [_f("x", [16, 16])], [_f("y", [16, 16])], inits, path)


def elementwise(path, n: int = 1024) -> str:
    """y = tanh(x) * x (one fused elementwise kernel on GPUs)."""
    nodes = [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Mul", ["t", "x"], ["y"])]
    return _save(nodes, [_f("x", [n])], [_f("y", [n])], [], path)


def factorised_4096(path, n: int = 64, r: int = 4, seed: int = 3) -> str:
    """A 4096x4096 layer as y = x[64,64] contracted with F1[64,64,r] and F2[64,64,r]
    (MatMul/Transpose/Reshape only)."""
    rng = np.random.default_rng(seed)
    f1 = (rng.standard_normal((n, n * r)) / n).astype(np.float32)  # [a, (a' r)]
    f2 = (rng.standard_normal((n * r, n)) / n).astype(np.float32)  # [(b r), b']
    c = lambda v, name: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    inits = [
        numpy_helper.from_array(f1, "F1"),
        numpy_helper.from_array(f2, "F2"),
        c([n, n], "s_ab"),
        c([n, n, r], "s_bar"),
        c([n, n * r], "s_a_br"),
        c([1, n * n], "s_out"),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "s_ab"], ["xa"]),  # [a, b]
        helper.make_node("Transpose", ["xa"], ["xb"], perm=[1, 0]),  # [b, a]
        helper.make_node("MatMul", ["xb", "F1"], ["t"]),  # [b, a' r]
        helper.make_node("Reshape", ["t", "s_bar"], ["t3"]),  # [b, a', r]
        helper.make_node("Transpose", ["t3"], ["t4"], perm=[1, 0, 2]),  # [a', b, r]
        helper.make_node("Reshape", ["t4", "s_a_br"], ["t5"]),  # [a', b r]
        helper.make_node("MatMul", ["t5", "F2"], ["o"]),  # [a', b']
        helper.make_node("Reshape", ["o", "s_out"], ["y"]),
    ]
    return _save(nodes, [_f("x", [1, n * n])], [_f("y", [1, n * n])], inits, path)


def adntn_layer(
    path, out_features: int = 64, in_features: int = 64, batch: int = 2, seed: int = 4
) -> str:
    """One ADNTN linear layer (seeded TTN plan and cores) as an ``auto`` placeholder file."""
    from conftest import random_cores, random_plan

    from adntn_runtime.onnx_lowering import LayerSpec, layer_model

    plan = random_plan(seed, network="ttn", out_features=out_features, in_features=in_features)
    cores = {k: (v / 2).astype(np.float32) for k, v in random_cores(plan, seed).items()}
    spec = LayerSpec(name="fc", kind="linear", plan=plan, cores=cores)
    model = layer_model(spec, "auto", input_shape=(batch, in_features))
    onnx.save(model, str(path))
    return str(path)


def torch_style_flatten(path, batch: int | str = "batch", seed: int = 5) -> str:
    """What torch's exporter writes for ``flatten``: a ``Constant`` with ``value_ints`` and a
    ``Shape -> Gather -> Concat -> Reshape`` sub-graph over a (symbolic) batch, then Gemm."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((10, 48)) / 7).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["minus1"], value_ints=[-1]),
        helper.make_node("Constant", [], ["zero"], value_ints=[0]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Concat", ["n", "minus1"], ["flat"], axis=0),
        helper.make_node("Reshape", ["x", "flat"], ["x2"]),
        helper.make_node("Gemm", ["x2", "w"], ["y"], transB=1),
    ]
    inits = [numpy_helper.from_array(w, "w")]
    return _save(nodes, [_f("x", [batch, 3, 4, 4])], [_f("y", [batch, 10])], inits, path, 18)
