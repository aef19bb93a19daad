"""`adntn compile` on real ADNTN exports (export_onnx): every export mode, Einsum on/off,
ttn/attn/mera, compiled for the host and checked against ONNX Runtime to 1e-5; each layer keeps
the mode its export fixed (``manifest.json`` says so), ``--mode dense`` folds a
materialize/regenerate layer's weight at compile time.

Exports are small (ADNTNLinear(256, 64) + ReLU, batch 2) so compiling is ~1 s each. Each network
is exported once with ``mode="auto"`` through :func:`export_onnx` and lowered to every mode with
:func:`adntn_runtime.onnx_lowering.lower_model` (what ``export_onnx`` does after tracing); one
model per network is also exported directly with ``export_onnx(mode=...)``. The fast set covers
every network, mode and Einsum setting at least once; the full matrix (every network x mode
x Einsum on/off, compiled as exported and, where possible, dense) is ``slow``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from conftest import NETWORKS

pytest.importorskip("tvm")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from adntn_export.tvm_backend import compile as tc  # noqa: E402
from adntn_export.tvm_backend import run as tr  # noqa: E402
from adntn_runtime.onnx_lowering import lower_model, session_options_for  # noqa: E402

MODES = ("fused", "regenerate", "materialize", "dense")
IN, OUT, BATCH = 256, 64, 2
TILE_ROWS = 32  # regenerate: 2 tiles (the default, one row per tile, makes 64 kernels)


def _model(network: str) -> torch.nn.Module:
    from adntn_export import ADNTNLinear

    torch.manual_seed({"ttn": 0, "attn": 1, "mera": 2, "split": 3}[network])
    if network == "split":  # a TTN in the split site layout (row-only and column-only sites)
        layer = ADNTNLinear(IN, OUT, network="ttn", bond_dim=4, layout="split")
    else:
        layer = ADNTNLinear(IN, OUT, network=network, bond_dim=4)
    return torch.nn.Sequential(layer, torch.nn.ReLU())


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """network -> ``mode="auto"`` export (placeholders + cores)."""
    from adntn_export.onnx_export import export_onnx

    tmp = tmp_path_factory.mktemp("adntn")
    return {
        net: export_onnx(
            _model(net),
            torch.randn(BATCH, IN),
            tmp / f"{net}-auto.onnx",
            mode="auto",
            dynamic_batch=False,
        )
        for net in (*NETWORKS, "split")
    }


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((BATCH, IN)).astype(np.float32)


def _lowered(exports, net: str, mode: str, einsum: bool, tmp_path: Path) -> Path:
    model = lower_model(onnx.load(str(exports[net])), mode, einsum=einsum, tile_rows=TILE_ROWS)
    path = tmp_path / f"{net}-{mode}-{'einsum' if einsum else 'matmul'}.onnx"
    onnx.save(model, str(path))
    return path


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(
        str(path), session_options_for(str(path)), providers=["CPUExecutionProvider"]
    )
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _check(path: Path, x: np.ndarray, out: Path, mode: str | None = None) -> tc.Manifest:
    manifest = tc.compile_onnx(path, "host", out, mode=mode)
    got = tr.load(out).run([x])[0]
    np.testing.assert_allclose(got, _ort(path, x), atol=1e-5, rtol=1e-5)
    return manifest


# fast set: every network, every mode and both Einsum settings at least once, and the split
# site layout in the three generator modes (9 compiles)
FAST = [
    ("ttn", "fused", True),
    ("ttn", "regenerate", False),
    ("attn", "materialize", True),
    ("attn", "dense", False),
    ("mera", "fused", False),
    ("mera", "regenerate", True),
    ("split", "fused", False),
    ("split", "regenerate", True),
    ("split", "materialize", False),
]
FULL = list(itertools.product(NETWORKS, MODES, (True, False)))


@pytest.mark.parametrize(("net", "mode", "einsum"), FAST)
def test_adntn_export_compiles_and_matches_ort(exports, x, tmp_path, net, mode, einsum):
    path = _lowered(exports, net, mode, einsum, tmp_path)
    manifest = _check(path, x, tmp_path / "out")
    assert manifest.mode == mode
    layer = f"fixed by the export (adntn export --mode {mode})"
    if mode != "dense":  # a dense export keeps no cores: nothing to lower from the plan
        layer += "; lowered from the plan"
    tiling = {"tile_rows": TILE_ROWS, "row_tiles": OUT // TILE_ROWS}  # the export's, recorded
    extra = tiling if mode == "regenerate" else {}
    assert manifest.layers == {"0": {"mode": mode, "reason": layer, **extra}}
    assert (manifest.materialize is not None) == (mode in ("materialize", "regenerate"))


@pytest.mark.slow
@pytest.mark.parametrize(("net", "mode", "einsum"), FULL)
def test_adntn_export_full_matrix(exports, x, tmp_path, net, mode, einsum):
    path = _lowered(exports, net, mode, einsum, tmp_path)
    for cmode in (None, mode, "dense") if mode in ("materialize", "regenerate") else (None, mode):
        _check(path, x, tmp_path / f"out-{cmode}", mode=cmode)


@pytest.mark.parametrize(
    "net",
    [
        "ttn",
        pytest.param("attn", marks=pytest.mark.slow),
        pytest.param("mera", marks=pytest.mark.slow),
    ],
)
def test_direct_export_onnx_fused(x, tmp_path, net):
    """export_onnx(mode="fused") straight to a file: compiles fused, from the plan."""
    from adntn_export.onnx_export import export_onnx

    path = export_onnx(
        _model(net),
        torch.randn(BATCH, IN),
        tmp_path / "m.onnx",
        mode="fused",
        dynamic_batch=False,
        einsum=net != "attn",
    )
    manifest = _check(path, x, tmp_path / "fused")
    assert manifest.mode == "fused" and manifest.materialize is None
    assert manifest.layers["0"]["reason"].endswith("; lowered from the plan")


def _constant_sizes(mod) -> list[int]:
    """Element counts of every tensor constant in the module's Relax functions."""
    from tvm import relax

    const_type = type(relax.const(np.zeros(1, np.float32)))  # tvm.ir.GenericConst in 0.27
    sizes = []

    def visit(e) -> None:
        if isinstance(e, const_type):
            sizes.append(int(np.prod(e.value.shape)))

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return sizes


def test_regenerate_keeps_regenerating(exports, x, tmp_path):
    """A regenerate export compiles to a `main` that rebuilds the weight at every call from
    the cores (`materialize()` only hands them over); `--mode dense` folds it instead."""
    import tvm
    from tvm import relax

    from adntn_export.tvm_backend.targets import get_target

    path = _lowered(exports, "ttn", "regenerate", False, tmp_path)
    cores = [i for i in onnx.load(str(path)).graph.initializer if i.data_type == 1]
    cores = [i for i in cores if int(np.prod(i.dims)) > 1]
    prepared = tc.prepare_relax(path)
    assert prepared.mode == "regenerate"
    with get_target("host").tvm_target():
        lowered = relax.get_pipeline("zero")(prepared.mod)  # includes FoldConstant
    main = lowered["main"]
    assert len(main.params) == 1 + len(cores)  # x + every core, passed in, not bound
    # no constant in main as large as a weight tile (TILE_ROWS x IN): nothing was folded
    main_only = tvm.IRModule({"main": main})
    assert max(_constant_sizes(main_only), default=0) < TILE_ROWS * IN
    # materialize() hands back the stored tensors unchanged (the cores, not a weight)
    ex = tvm.compile(prepared.mod, target=get_target("host").tvm_target())
    vm = relax.VirtualMachine(ex, tvm.cpu())
    shapes = sorted(tuple(t.shape) for t in vm["materialize"]())
    assert shapes == sorted(tuple(i.dims) for i in cores)
    # --mode dense on the same file folds every tile's weight into a constant
    folded = tc.prepare_relax(path, mode="dense")
    with get_target("host").tvm_target():
        folded_mod = relax.get_pipeline("zero")(folded.mod)
    assert max(_constant_sizes(folded_mod)) >= TILE_ROWS * IN
    manifest = _check(path, x, tmp_path / "out")
    assert manifest.mode == "regenerate" and manifest.materialize == "materialize"


def test_materialize_mode_lifts_weight_generation(exports, x, tmp_path):
    """A materialize layer (LiftTransformParams): materialize() returns the dense weight."""
    import tvm
    from tvm import relax

    from adntn_export.tvm_backend.targets import get_target

    path = _lowered(exports, "mera", "materialize", True, tmp_path)
    prepared = tc.prepare_relax(path)
    ex = tvm.compile(prepared.mod, target=get_target("host").tvm_target())
    weights = relax.VirtualMachine(ex, tvm.cpu())["materialize"]()
    assert any(int(np.prod(w.shape)) == IN * OUT for w in weights)
    _check(path, x, tmp_path / "out")


def test_cli_compile_regenerate(exports, tmp_path, capsys):
    from adntn_export.cli import main

    path = _lowered(exports, "attn", "regenerate", True, tmp_path)
    assert main(["compile", str(path), "--target", "host", "-o", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "(regenerate)" in out and "0: regenerate (fixed by the export" in out


@pytest.mark.parametrize(("network", "einsum"), [("ttn", True), ("mera", False)])
def test_split_conv_fused_compiles_as_two_convolutions(tmp_path, network, einsum):
    """A split conv exported fused (a low-rank Conv + Conv1x1, padded rows and columns, stride
    2) and an auto export compiled with --mode fused both match ONNX Runtime and torch."""
    from adntn_export import ADNTNConv2d
    from adntn_export.onnx_export import export_onnx

    torch.manual_seed(8)
    model = torch.nn.Sequential(
        ADNTNConv2d(
            7,
            13,
            3,
            stride=2,
            padding=1,
            network=network,
            bond_dim=3,
            num_sites=6,
            layout="split",
            bias="generated",
        ),
        torch.nn.ReLU(),
    ).eval()
    xt = torch.randn(BATCH, 7, 9, 9)
    with torch.no_grad():
        ref = model(xt).numpy()
    xc = xt.numpy()
    for mode, compile_mode in (("fused", None), ("auto", "fused")):
        path = export_onnx(model, xt, tmp_path / f"{mode}.onnx", mode=mode,
                           dynamic_batch=False, einsum=einsum)  # fmt: skip
        manifest = tc.compile_onnx(path, "host", tmp_path / f"out-{mode}", mode=compile_mode)
        assert manifest.layers["0"]["mode"] == "fused"
        got = tr.load(tmp_path / f"out-{mode}").run([xc])[0]
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-4)
        if mode == "fused":
            np.testing.assert_allclose(got, _ort(path, xc), atol=1e-5, rtol=1e-5)
