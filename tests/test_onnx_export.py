"""ONNX export of ADNTN layers and models: every mode, both evaluators, files, errors."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import NETWORKS, random_cores
from onnx.reference import ReferenceEvaluator
from torch import nn

from adntn_export import ADNTNConv2d, ADNTNLinear
from adntn_export.checkpoint import load_checkpoint, load_model, save_model
from adntn_export.cli import main as cli_main
from adntn_export.onnx_export import export_onnx, export_onnx_model, layer_spec
from adntn_runtime import onnx_lowering as lowering
from adntn_runtime.onnx_format import PLACEHOLDER_RECORD_KEY, read_placeholder_records
from adntn_runtime.onnx_lowering import (
    LayerSpec,
    layer_model,
    lower_model,
    placeholder_layers,
    session_options_for,
)
from adntn_runtime.plan import ADNTNPlan
from adntn_runtime.schedule import Contract

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
import make_golden  # noqa: E402

MODES = ("fused", "regenerate", "materialize", "dense")
#: "split": the "model" with every ADNTN layer in the split site layout (row-only and
#: column-only sites).
KINDS = ("linear", "conv", "model", "split")
TOL = 1e-5

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def _build(kind: str, network: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed({"ttn": 0, "attn": 1, "mera": 2}[network])
    if kind == "linear":
        layer = ADNTNLinear(24, 20, network=network, bond_dim=3, num_sites=4, activation="gelu")
        return layer.eval(), (24,)
    if kind == "conv":
        conv = ADNTNConv2d(
            3, 5, 3, stride=2, padding=1, network=network, bond_dim=2, num_sites=4,
            activation="sin", bias="generated",
        )  # fmt: skip
        return conv.eval(), (3, 7, 7)
    layout = "split" if kind == "split" else "paired"
    model = nn.Sequential(
        ADNTNConv2d(2, 4, 3, padding=1, network=network, bond_dim=2, num_sites=4, layout=layout),
        nn.ReLU(),
        nn.Flatten(),
        ADNTNLinear(
            4 * 6 * 6, 10, network=network, bond_dim=3, num_sites=4, bias="none", layout=layout
        ),
        nn.ReLU(),
        nn.Linear(10, 3),
    )
    return model.eval(), (2, 6, 6)


@functools.cache
def _auto(kind: str, network: str) -> tuple[nn.Module, tuple[int, ...], onnx.ModelProto]:
    model, shape = _build(kind, network)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = export_onnx_model(model, torch.randn(7, *shape), mode="auto")
    return model, shape, proto


def _rel(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))


def _ort(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(proto.SerializeToString(), session_options_for(proto))
    return sess.run(None, {"input": x})[0]


def _reference(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ReferenceEvaluator(proto).run(None, {"input": x})[0]


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("einsum", [True, False], ids=["einsum", "matmul"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip(kind, network, mode, einsum):
    model, shape, auto = _auto(kind, network)
    proto = lower_model(auto, mode, einsum=einsum)
    onnx.checker.check_model(proto, full_check=True)
    assert not placeholder_layers(proto)
    ops = {n.op_type for n in proto.graph.node}
    if mode != "dense":
        assert ("Einsum" in ops) == einsum
    for batch in (1, 7):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            ref = model(x).numpy()
        for run in (_ort, _reference):
            y = run(proto, x.numpy())
            assert y.shape == ref.shape
            assert _rel(y, ref) <= TOL, (run.__name__, batch)


@pytest.mark.parametrize("mode", [*MODES, "auto"])
def test_export_onnx_writes_valid_files(tmp_path, mode):
    model, shape = _build("model", "attn")
    path = export_onnx(model, torch.randn(1, *shape), tmp_path / f"m_{mode}.onnx", mode=mode)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == [path.name]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert proto.producer_name == "adntn" and meta["adntn.producer"].startswith("adntn ")
    assert proto.ir_version == lowering.IR_VERSION
    layer = json.loads(meta["adntn.layer.3"])
    assert layer["network"] == "attn" and layer["mode"] == mode and layer["compression_ratio"] > 1
    assert ("adntn.session_options" in meta) == (mode == "regenerate")
    if mode == "auto":
        assert placeholder_layers(proto) == ["0", "3"]
        node = next(n for n in proto.graph.node if n.op_type == "ADNTNLinear")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert ADNTNPlan.from_dict(json.loads(attrs["plan"])) == model[3].plan
        assert list(node.input[1:]) == [f"3/cores/{c}" for c in model[3].plan.cores]
        proto = lower_model(proto, {"0": "regenerate", "3": "fused"})
    x = torch.randn(5, *shape)
    with torch.no_grad():
        ref = model(x).numpy()
    assert _rel(_ort(proto, x.numpy()), ref) <= TOL


def _row_tiles(proto: onnx.ModelProto, prefix: str) -> int:
    """Row tiles a regenerate lowering emitted for one layer (its ``tile<n>/`` nodes)."""
    return len(
        {n.name.split("/")[1] for n in proto.graph.node if n.name.startswith(f"{prefix}/tile")}
    )


def _record_formats(proto: onnx.ModelProto) -> dict[str, int]:
    return {
        p.key[len(PLACEHOLDER_RECORD_KEY) :]: json.loads(p.value)["format"]
        for p in proto.metadata_props
        if p.key.startswith(PLACEHOLDER_RECORD_KEY)
    }


def test_export_tiles_and_records_tile_rows(tmp_path, capsys):
    """Rows per regenerate tile (the export's ``tile_rows``, else each layer's
    ``layer.tile_rows``) tile the lowering and are recorded with the layer's placeholder
    (record format 2); a layer without one keeps a format-1 record (the plan's default)."""
    model, shape = _build("model", "ttn")
    x = torch.randn(3, *shape)
    with torch.no_grad():
        ref = model(x).numpy()
    plans = {"0": model[0].plan, "3": model[3].plan}
    model[3].tile_rows = 4
    proto = export_onnx_model(model, x[:1], mode="regenerate")
    records = read_placeholder_records(proto)
    assert {k: r.tile_rows for k, r in records.items()} == {"0": None, "3": 4}
    assert _record_formats(proto) == {"0": 1, "3": 2}
    assert _row_tiles(proto, "0") == len(plans["0"].row_tiles())
    assert _row_tiles(proto, "3") == len(plans["3"].row_tiles(4)) < len(plans["3"].row_tiles())
    assert _rel(_ort(proto, x.numpy()), ref) <= TOL
    # the export's tile_rows, for every layer, from the API and the CLI
    proto = export_onnx_model(model, x[:1], mode="regenerate", tile_rows=2)
    assert {k: r.tile_rows for k, r in read_placeholder_records(proto).items()} == {"0": 2, "3": 2}
    assert _row_tiles(proto, "3") == len(plans["3"].row_tiles(2))
    assert _rel(_ort(proto, x.numpy()), ref) <= TOL
    ckpt = save_model(model, tmp_path / "m.ckpt", example_input_shape=(1, *shape))
    out = tmp_path / "m.onnx"
    argv = ["export", str(ckpt), "-o", str(out), "--mode", "regenerate", "--tile-rows", "2"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    cli = onnx.load(str(out))
    assert {k: r.tile_rows for k, r in read_placeholder_records(cli).items()} == {"0": 2, "3": 2}
    assert _rel(_ort(cli, x.numpy()), ref) <= TOL
    # bad values: the export's, and a layer's own
    for bad in (0, -1, 10**12, "x"):
        with pytest.raises(ValueError, match=r"tile_rows=.* is not valid: valid tile_rows: an int"):
            export_onnx_model(model, x[:1], mode="regenerate", tile_rows=bad)
    model[3].tile_rows = 0
    with pytest.raises(ValueError, match=r"ADNTN layer '3': tile_rows=0 is not valid: valid"):
        export_onnx_model(model, x[:1], mode="regenerate")


def test_dense_parts_only_no_folded_adntn_weights():
    model, _, auto = _auto("model", "ttn")
    stored = {t.name: int(np.prod(t.dims)) for t in auto.graph.initializer}
    adntn = sum(v for k, v in stored.items() if k.startswith(("0/", "3/")))
    dense = sum(v for k, v in stored.items() if not k.startswith(("0/", "3/")))
    assert adntn == sum(m.stored_parameters for m in (model[0], model[3]))
    assert dense == sum(p.numel() for p in model[5].parameters())


def test_opset_20_native_gelu_and_erf_decomposition():
    model, shape = _build("linear", "ttn")
    x = torch.randn(3, *shape)
    with torch.no_grad():
        ref = model(x).numpy()
    for opset, op in ((18, "Erf"), (20, "Gelu")):
        proto = export_onnx_model(model, x, mode="fused", opset=opset)
        assert op in {n.op_type for n in proto.graph.node}
        assert _rel(_ort(proto, x.numpy()), ref) <= TOL
        assert _rel(_reference(proto, x.numpy()), ref) <= TOL


def test_names_say_layer_and_level():
    _, _, auto = _auto("model", "mera")
    proto = lower_model(auto, "regenerate")
    names = [n.name for n in proto.graph.node if n.op_type == "Einsum"]
    assert names and all(n.startswith(("0/", "3/")) and "/level" in n for n in names)
    assert any("/tile1/level" in n for n in names)
    assert all(t.name.startswith(("0/", "3/", "5.")) for t in proto.graph.initializer)


def test_regenerate_keeps_einsum_in_ort_optimized_graph(tmp_path):
    _, _, auto = _auto("linear", "ttn")
    proto = lower_model(auto, "regenerate")
    counts = {}
    for label, so in (("adntn", session_options_for(proto)), ("default", ort.SessionOptions())):
        so.optimized_model_filepath = str(tmp_path / f"opt_{label}.onnx")
        ort.InferenceSession(proto.SerializeToString(), so)
        opt = onnx.load(so.optimized_model_filepath)
        counts[label] = sum(n.op_type == "Einsum" for n in opt.graph.node)
    assert counts["adntn"] > 0  # the tiles are regenerated on every call
    assert counts["default"] == 0  # what would happen without the declared options


def test_mobile_usability_no_unsupported_ops_without_einsum(tmp_path):
    model, shape = _build("model", "ttn")
    # NNAPI/CoreML want fixed shapes (a dynamic batch makes torch's Flatten emit Shape ops)
    path = export_onnx(
        model, torch.randn(1, *shape), tmp_path / "m.onnx", einsum=False, dynamic_batch=False
    )
    out = subprocess.run(
        [sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    log = out.stdout + out.stderr
    counts = [line for line in log.splitlines() if "Unsupported nodes due to operator=" in line]
    assert counts and all(line.rstrip().endswith("=0") for line in counts), log
    assert "Unsupported ops" not in log


# ------------------------------------------------------------------ split convolutions
#: (in, out, num_sites, stride, padding, dilation): 6 sites pad rows (15) and columns (64).
SPLIT_CONVS = [(7, 13, 6, 2, 1, 1), (5, 11, 2, 1, 2, 2), (7, 17, 5, 1, 0, 1)]


def _x_path(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes that depend on the graph input, in order."""
    live, out = {proto.graph.input[0].name}, []
    for node in proto.graph.node:
        if live & set(node.input):
            live.update(node.output)
            out.append(node)
    return out


@pytest.mark.parametrize("einsum", [True, False], ids=["einsum", "matmul"])
@pytest.mark.parametrize("shape", SPLIT_CONVS, ids=lambda s: f"{s[0]}-{s[1]}-k{s[2]}-s{s[3]}")
@pytest.mark.parametrize("network", NETWORKS)
def test_split_conv_fused_is_a_low_rank_conv(network, shape, einsum):
    """Fused split conv = Conv(x, K) then Conv1x1 with L (+ bias): no im2col, exactly two Conv
    nodes on the x path, matching torch's materialize in ORT and onnx.reference, with K and L
    built in-graph (lower_model) or precomputed from the fused constants (the runtime's way)."""
    from adntn_runtime.session import lower_for_runtime

    cin, cout, sites, stride, padding, dilation = shape
    torch.manual_seed(7)
    model = nn.Sequential(
        ADNTNConv2d(
            cin,
            cout,
            3,
            stride=stride,
            padding=padding,
            dilation=dilation,
            network=network,
            bond_dim=3,
            num_sites=sites,
            layout="split",
            bias="generated",
        )
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto = export_onnx_model(model, torch.randn(2, cin, 9, 9), mode="auto")
    for lowered in (
        lower_model(auto, "fused", einsum=einsum),
        lower_for_runtime(auto, "fused", einsum=einsum)[0],
    ):
        onnx.checker.check_model(lowered, full_check=True)
        assert [n.op_type for n in _x_path(lowered)] == ["Conv", "Conv"]
        assert not any("im2col" in n.name for n in lowered.graph.node)
        rank = model[0].plan.low_rank().rank
        for batch in (1, 3):
            x = torch.randn(batch, cin, 9, 9)
            with torch.no_grad():
                ref = model(x).numpy()
            for run in (_ort, _reference):
                y = run(lowered, x.numpy())
                assert y.shape == ref.shape and _rel(y, ref) <= TOL, (run.__name__, batch)
    inits = {t.name: tuple(t.dims) for t in lowered.graph.initializer}
    assert inits["0/lowrank/kernel"] == (rank, cin, 3, 3)
    assert inits["0/lowrank/mix"] == (cout, rank, 1, 1)


# ------------------------------------------------------------------ golden
@pytest.mark.parametrize("network", NETWORKS)
def test_golden(network):
    path = Path(__file__).parent / "golden" / f"fused_{network}.textproto"
    expected = path.read_text()
    assert make_golden.golden_text(make_golden.golden_model(network)) == expected, (
        "lowering changed; if intended, run tests/golden/make_golden.py and review the diff"
    )


# ------------------------------------------------------------------ errors
def test_fused_with_final_activation_is_refused(tmp_path):
    layer = ADNTNLinear(16, 8, num_sites=2, final_activation="tanh")
    with pytest.raises(ValueError, match=r"fused.*final_activation.*regenerate"):
        export_onnx(layer, torch.randn(1, 16), tmp_path / "m.onnx", mode="fused")
    assert list(tmp_path.iterdir()) == []
    path = export_onnx(layer, torch.randn(2, 16), tmp_path / "m.onnx", mode="regenerate")
    with torch.no_grad():
        ref = layer(torch.ones(2, 16)).numpy()
    assert _rel(_ort(onnx.load(str(path)), np.ones((2, 16), np.float32)), ref) <= TOL


def test_native_gelu_needs_opset_20(tmp_path):
    model, shape = _build("linear", "ttn")
    with pytest.raises(ValueError, match=r"Gelu.*opset >= 20.*opset 18"):
        export_onnx(model, torch.randn(1, *shape), tmp_path / "m.onnx", native_gelu=True)
    assert list(tmp_path.iterdir()) == []


def test_bad_mode_and_opset(tmp_path):
    model, shape = _build("linear", "ttn")
    with pytest.raises(ValueError, match=r"mode='fast' is not a valid mode; choose one of .*auto"):
        export_onnx(model, torch.randn(1, *shape), tmp_path / "m.onnx", mode="fast")
    with pytest.raises(ValueError, match=r"opset 11.*valid opsets: 18"):
        export_onnx(model, torch.randn(1, *shape), tmp_path / "m.onnx", opset=11)
    _, _, auto = _auto("model", "ttn")
    with pytest.raises(ValueError, match=r"missing \['3'\]"):
        lower_model(auto, {"0": "fused"})
    assert list(tmp_path.iterdir()) == []


def test_more_than_26_labels_is_refused():
    legs = tuple(f"l{n}" for n in range(27))
    out_legs = legs[:13] + legs[14:]
    step = Contract(("a", "b"), "out", (legs[:14], legs[13:]), out_legs, 1)
    builder = lowering.OnnxBuilder("fc", 18, einsum=True, native_gelu=False)
    with pytest.raises(ValueError, match=r"more than 26.*einsum=False"):
        builder.contract(step, "a", "b", "level1/out", dict.fromkeys(legs, 1))


def test_unwritable_path_leaves_nothing(tmp_path):
    model, shape = _build("linear", "ttn")
    if os.geteuid() == 0:  # root writes anywhere a directory exists: use a pseudo filesystem
        target = Path("/proc/adntn_test.onnx")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        target = locked / "m.onnx"
    with pytest.raises(PermissionError, match="not writable"):
        export_onnx(model, torch.randn(1, *shape), target)
    assert not target.exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(model, torch.randn(1, *shape), tmp_path / "missing" / "m.onnx")


# ------------------------------------------------------------------ checkpoint + CLI
def test_checkpoint_round_trip_and_cli(tmp_path, capsys):
    model, shape = _build("model", "mera")
    ckpt = save_model(model, tmp_path / "m.ckpt", example_input_shape=(1, *shape))
    loaded = load_checkpoint(ckpt)
    assert loaded.example_input_shape == (1, *shape)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        ref = model(x).numpy()
        assert _rel(loaded.model.eval()(x).numpy(), ref) == 0
    out = tmp_path / "m.onnx"
    code = cli_main(["export", str(ckpt), "-o", str(out), "--mode", "fused", "--no-einsum"])
    assert code == 0 and "wrote" in capsys.readouterr().out
    proto = onnx.load(str(out))
    assert "Einsum" not in {n.op_type for n in proto.graph.node}
    assert _rel(_ort(proto, x.numpy()), ref) <= TOL
    # a truncated file: clear error, exit code 2 from the CLI
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_model(bad)
    assert cli_main(["export", str(bad), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_checkpoint_with_builder(tmp_path):
    registry = pytest.importorskip("adntn_models.registry")
    model = registry.get_model("mlp")
    model.layers[3] = ADNTNLinear(256, 128, network="ttn", bond_dim=2)
    path = save_model(
        model,
        tmp_path / "mlp.ckpt",
        example_input_shape=(1, 1, 28, 28),
        builder="adntn_models.registry:get_model",
        builder_kwargs={"name": "mlp"},
    )
    loaded = load_model(path).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


# ------------------------------------------------------------------ 4096 x 4096 (slow)
@pytest.mark.slow
def test_4096_file_sizes_and_fused_accuracy(tmp_path):
    torch.manual_seed(0)
    layer = ADNTNLinear(4096, 4096, network="ttn", bond_dim=4).eval()
    spec = layer_spec(layer, "fc")
    sizes = {}
    for mode in ("fused", "regenerate", "materialize", "dense"):
        proto = layer_model(spec, mode, input_shape=["batch", 4096])
        sizes[mode] = len(proto.SerializeToString())
    for mode in ("fused", "regenerate", "materialize"):
        assert sizes[mode] <= 0.01 * sizes["dense"], sizes
    path = export_onnx(layer, torch.randn(1, 4096), tmp_path / "fc.onnx", mode="fused")
    x = torch.randn(1, 4096)
    with torch.no_grad():
        ref = layer(x).numpy()
    proto = onnx.load(str(path))
    assert _rel(_ort(proto, x.numpy()), ref) <= TOL
    assert _rel(_reference(proto, x.numpy()), ref) <= TOL


def test_layer_spec_matches_layer():
    layer = ADNTNLinear(24, 20, network="ttn", bond_dim=3, num_sites=4, bias="generated")
    spec = layer_spec(layer, "fc")
    assert isinstance(spec, LayerSpec)
    with torch.no_grad():
        assert _rel(spec.dense_weight(), layer.dense_weight().numpy()) <= TOL
        assert _rel(spec.dense_bias(), layer.get_bias().numpy()) <= TOL


# ---------------------------------------------------------------- broadcast MatMul form
def _random_spec(m: int, n: int, network: str, **kw) -> LayerSpec:
    plan = ADNTNPlan(m, n, network=network, **kw)
    rng = np.random.default_rng(0)
    cores = random_cores(plan, rng, fan_in=True, dtype=np.float32)
    bias = rng.standard_normal(m).astype(np.float32)
    return LayerSpec("fc", "linear", plan, cores, bias_kind="dense", bias=bias)


def _group_sizes(groups, dims) -> list[int]:
    return [int(np.prod([dims[x] for x in g])) for g in groups]


@pytest.mark.parametrize("network", NETWORKS)
def test_broadcast_matmul_form_matches_einsum(network):
    from adntn_runtime.schedule import BATCH

    plan = ADNTNPlan(256, 256, network=network, num_sites=4, bond_dim=3)
    rng = np.random.default_rng(0)
    for mode, batch in (("materialize", 1), ("fused", 3)):
        sch = plan.schedule(mode, batch=batch)
        dims = {**sch.dims, BATCH: batch}
        for step in sch.contractions:
            a, b = (rng.standard_normal([dims[x] for x in legs]) for legs in step.in_legs)
            ref = np.einsum(step.equation, a, b)
            orders = [step.out_legs, tuple(reversed(step.out_legs))]
            for out in orders:
                f = step.as_broadcast_matmul(sch.dims, batch, out_legs=out)
                first, second = (b, a) if f.swap else (a, b)
                fm = first.transpose(f.perm_first).reshape(_group_sizes(f.first_dims, dims))
                sm = second.transpose(f.perm_second).reshape(_group_sizes(f.second_dims, dims))
                got = (fm @ sm).reshape([dims[x] for x in out])
                want = np.transpose(ref, [step.out_legs.index(x) for x in out])
                np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
                assert [x for g in f.out_dims for x in g] == list(out)


def test_broadcast_matmul_form_of_a_regenerate_tile():
    """The last step of a tile is ``A[I_A,1,J_A,a] @ B[1,I_B,a,J_B]``: no output transpose."""
    plan = ADNTNPlan(4096, 4096, network="ttn", bond_dim=4)
    sch = plan.schedule("regenerate")
    dims = sch.tiles[0].dims(sch.dims, sch.row_legs)
    step = sch.contractions[-1]
    f = step.as_broadcast_matmul(dims)
    assert f.prefix == ("i0", "i1", "i2", "i3") and f.calls(dims) == 64
    assert f.rows == ("j0", "j1") and f.cols == ("j2", "j3") and f.inner == ("b_node1_1",)
    assert f.first_dims == (("i0", "i1"), (), ("j0", "j1"), ("b_node1_1",))
    assert f.second_dims == ((), ("i2", "i3"), ("b_node1_1",), ("j2", "j3"))


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("einsum", [True, False])
@pytest.mark.parametrize("mode,batch", [("regenerate", 2), ("fused", 5), ("fused", 1)])
def test_broadcast_lowering_matches_reference(network, einsum, mode, batch):
    """Layers big enough for the broadcast MatMul / re-laid-out intermediates stay exact."""
    spec = _random_spec(1024, 1024, network, bond_dim=3)
    model = layer_model(
        spec, mode, input_shape=("batch", 1024), einsum=einsum, batch_hint=batch, opset=18
    )
    ops = [n.op_type for n in model.graph.node]
    assert "MatMul" in ops  # the big steps use the broadcast MatMul form
    if mode == "regenerate":
        # no tile writes its weight through a Transpose
        tile_out = {n.input[0] for n in model.graph.node if n.name.endswith("/weight")}
        assert not any(
            n.op_type == "Transpose" and n.output[0] in tile_out for n in model.graph.node
        )
    x = np.random.default_rng(1).standard_normal((batch, 1024)).astype(np.float32)
    ref = x @ spec.dense_weight().T + spec.bias
    assert _rel(_ort(model, x), ref) < 1e-4
    # any batch runs, not only the one the lowering was laid out for
    x7 = np.random.default_rng(2).standard_normal((7, 1024)).astype(np.float32)
    assert _rel(_ort(model, x7), x7 @ spec.dense_weight().T + spec.bias) < 1e-4
