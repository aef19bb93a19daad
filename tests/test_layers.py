"""The torch layers: modes agree, gradients reach every core, caching is never stale, init scale."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import NETWORKS
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from adntn_export import (
    ADNTNConv2d,
    ADNTNLayer,
    ADNTNLinear,
    compression_report,
)
from adntn_runtime.plan import LAYOUTS
from adntn_runtime.reference import generate_weight

MODES = ["materialize", "regenerate", "fused"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm() / b.norm().clamp_min(1e-30)).detach())


def outputs_in_all_modes(layer: ADNTNLayer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    with torch.no_grad():
        for mode in MODES:
            layer.mode = mode
            out[mode] = layer(x)
    return out


# ---------------------------------------------------------------- the three modes agree
@given(
    network=st.sampled_from(NETWORKS),
    out_f=st.integers(1, 48),
    in_f=st.integers(1, 48),
    bond=st.integers(1, 4),
    activation=st.sampled_from(["identity", "tanh", "relu", "gelu", "sin"]),
    bias=st.sampled_from(["dense", "generated", "none"]),
    batch=st.integers(1, 5),
    tile_rows=st.integers(1, 16),
    layout=st.sampled_from(LAYOUTS),
)
@settings(max_examples=40, deadline=None)
def test_linear_modes_agree(network, out_f, in_f, bond, activation, bias, batch, tile_rows, layout):
    torch.manual_seed(0)
    layer = ADNTNLinear(
        in_f,
        out_f,
        network=network,
        layout=layout,
        bond_dim=bond,
        activation=activation,
        bias=bias,
        tile_rows=tile_rows,
        dtype=torch.float64,
    )
    x = torch.randn(batch, in_f, dtype=torch.float64)
    out = outputs_in_all_modes(layer, x)
    for mode in ("regenerate", "fused"):
        assert rel(out[mode], out["materialize"]) <= 1e-10
    assert out["fused"].shape == (batch, out_f)


@pytest.mark.parametrize("network", NETWORKS)
def test_float32_modes_agree_to_1e5(network):
    torch.manual_seed(1)
    layer = ADNTNLinear(300, 200, network=network, bond_dim=4, bias="generated")
    out = outputs_in_all_modes(layer, torch.randn(7, 300))
    assert rel(out["regenerate"], out["materialize"]) <= 1e-5
    assert rel(out["fused"], out["materialize"]) <= 1e-5


@pytest.mark.parametrize("network", NETWORKS)
def test_torch_weight_matches_numpy_reference(network):
    layer = ADNTNLinear(40, 36, network=network, bond_dim=3, dtype=torch.float64)
    cores = {k: v.detach().numpy() for k, v in layer.weight_generator.cores.items()}
    np.testing.assert_allclose(
        layer.dense_weight().detach().numpy(),
        generate_weight(layer.plan, cores),
        rtol=1e-12,
        atol=1e-14,
    )


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize(("stride", "padding", "dilation"), [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_conv_modes_agree_and_match_conv2d(network, stride, padding, dilation):
    torch.manual_seed(2)
    layer = ADNTNConv2d(
        5,
        12,
        3,
        stride=stride,
        padding=padding,
        dilation=dilation,
        network=network,
        bond_dim=3,
        tile_rows=4,
        dtype=torch.float64,
    )
    x = torch.randn(2, 5, 9, 9, dtype=torch.float64)
    out = outputs_in_all_modes(layer, x)
    ref = torch.nn.functional.conv2d(x, layer.dense_weight(), layer.bias, stride, padding, dilation)
    for mode in MODES:
        assert rel(out[mode], ref) <= 1e-10, mode


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize(
    ("cin", "cout", "num_sites", "stride", "padding", "dilation"),
    [(7, 13, 6, 2, 1, 1), (5, 11, 2, 1, 2, 2), (7, 17, 5, 1, 0, 1)],
)
def test_split_conv_fused_is_two_convolutions(
    network, cin, cout, num_sites, stride, padding, dilation, monkeypatch
):
    """A split plan's fused conv is Conv(x, K) then a 1x1 Conv with L (no unfold), equal to
    materialize; (7, 13, 6 sites) pads both rows (15) and columns (64)."""
    torch.manual_seed(6)
    layer = ADNTNConv2d(
        cin, cout, 3, stride=stride, padding=padding, dilation=dilation, network=network,
        bond_dim=3, num_sites=num_sites, layout="split", bias="generated", dtype=torch.float64,
    )  # fmt: skip
    x = torch.randn(2, cin, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        ref = layer(x)  # materialize
    calls = []
    conv2d = torch.nn.functional.conv2d
    monkeypatch.setattr(torch.nn.functional, "unfold", lambda *a, **k: 1 / 0)
    monkeypatch.setattr(
        torch.nn.functional, "conv2d", lambda *a, **k: calls.append(a[1].shape) or conv2d(*a, **k)
    )
    layer.mode = "fused"
    with torch.no_grad():
        y = layer(x)
    rank = layer.plan.low_rank().rank
    assert calls == [(rank, cin, 3, 3), (cout, rank, 1, 1)]
    assert rel(y, ref) <= 1e-10
    with torch.no_grad():
        left, right = layer.weight_generator.low_rank_factors()
        assert rel(left @ right, layer.weight_generator.weight()) <= 1e-12
    layer(x).sum().backward()  # with autograd: recomputed each call, gradients reach every core
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


# ---------------------------------------------------------------- the headline layer
@pytest.mark.parametrize("network", NETWORKS)
def test_4096_layer_compresses_1000x_and_modes_agree(network):
    torch.manual_seed(0)
    layer = ADNTNLinear(4096, 4096, network=network, bond_dim=4)
    report = compression_report(layer)
    assert report.layers[0].ratio >= 1000
    assert report.layers[0].weight_ratio >= 10_000
    out = outputs_in_all_modes(layer, torch.randn(3, 4096))
    assert rel(out["regenerate"], out["materialize"]) <= 1e-5
    assert rel(out["fused"], out["materialize"]) <= 1e-5


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_every_core(network, mode):
    torch.manual_seed(3)
    layer = ADNTNLinear(
        6,
        5,
        network=network,
        bond_dim=2,
        bias="generated",
        num_sites=3,
        tile_rows=2,
        mode=mode,
        dtype=torch.float64,
    )
    x = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    params = list(layer.parameters())

    def f(x, *ps):
        with torch.nn.utils.stateless._reparametrize_module(  # noqa: SLF001
            layer, dict(zip([n for n, _ in layer.named_parameters()], ps, strict=True))
        ):
            return layer(x)

    assert torch.autograd.gradcheck(
        f, (x, *[p.detach().requires_grad_() for p in params]), eps=1e-6, atol=1e-5
    )


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_every_core(network, mode):
    torch.manual_seed(4)
    layer = ADNTNLinear(
        64, 48, network=network, bond_dim=3, bias="generated", mode=mode, tile_rows=8
    )
    layer(torch.randn(4, 64)).pow(2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("mode", MODES)
def test_conv_gradients_reach_every_core(mode):
    layer = ADNTNConv2d(4, 8, 3, padding=1, network="attn", bond_dim=2, mode=mode, tile_rows=2)
    layer(torch.randn(2, 4, 6, 6)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


# ---------------------------------------------------------------- caching
@pytest.mark.parametrize("mode", ["materialize", "fused"])
def test_cache_is_never_stale(mode):
    torch.manual_seed(5)
    layer = ADNTNLinear(32, 32, bond_dim=3, mode=mode)
    x = torch.randn(2, 32)
    with torch.no_grad():
        y0 = layer(x)
        assert torch.equal(layer(x), y0)  # served from the cache
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(x).sum().backward()
    opt.step()
    with torch.no_grad():
        y1 = layer(x)
        layer.mode = "regenerate"
        fresh = layer(x)
    assert rel(y1, y0) > 1e-3
    assert rel(y1, fresh) <= 1e-5
    # load_state_dict changes the cores in place: the cache must follow.
    other = ADNTNLinear(32, 32, bond_dim=3, mode=mode)
    other.load_state_dict(layer.state_dict())
    with torch.no_grad():
        assert rel(other(x), fresh) <= 1e-5
        layer.load_state_dict(ADNTNLinear(32, 32, bond_dim=3).state_dict())
        layer.mode = mode
        assert rel(layer(x), fresh) > 1e-3


def test_materialize_caches_one_weight_in_inference():
    layer = ADNTNLinear(64, 64, bond_dim=2)
    with torch.no_grad():
        w1 = layer.weight_generator.weight()
        w2 = layer.weight_generator.weight()
    assert w1 is w2


# ---------------------------------------------------------------- initialisation and training
@pytest.mark.parametrize("network", NETWORKS)
def test_init_scale_matches_torch_default(network):
    torch.manual_seed(6)
    layer = ADNTNLinear(512, 256, network=network, bond_dim=4)
    expected = 1 / math.sqrt(3 * 512)  # nn.Linear's default init std
    assert float(layer.dense_weight().detach().std()) == pytest.approx(expected, rel=0.02)
    conv = ADNTNConv2d(16, 32, 3, network=network)
    assert float(conv.dense_weight().detach().std()) == pytest.approx(
        1 / math.sqrt(3 * 144), rel=0.02
    )


def test_network_of_adntn_layers_trains_from_scratch():
    torch.manual_seed(7)
    x = torch.randn(256, 64)
    teacher = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 4))
    y = teacher(x).argmax(1).detach()
    model = nn.Sequential(ADNTNLinear(64, 64, bond_dim=4), nn.ReLU(), ADNTNLinear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        first = first if first is not None else float(loss.detach())
        loss.backward()
        opt.step()
    acc = float((model(x).argmax(1) == y).float().mean())
    assert float(loss.detach()) < 0.6 * first
    assert acc > 0.6


# ---------------------------------------------------------------- fitting
@pytest.mark.parametrize("network", NETWORKS)
def test_from_linear_fits_a_realisable_weight(network):
    torch.manual_seed(8)
    source = ADNTNLinear(48, 40, network=network, bond_dim=3, activation="identity")
    dense = nn.Linear(48, 40)
    with torch.no_grad():
        dense.weight.copy_(source.dense_weight())
    layer, fit = ADNTNLinear.from_linear(
        dense,
        network=network,
        bond_dim=4,
        activation="identity",
        steps=400,
        lr=0.05,
        init="random",
    )
    # Gradient fitting of a realisable target from random cores: far below the start, not
    # exact (init="svd", the default, is exact here: tests/test_svd_init.py).
    assert fit.relative_error < 0.15 and fit.relative_error < fit.initial_relative_error / 4
    assert float(fit) == fit.relative_error
    assert torch.equal(layer.bias, dense.bias)
    x = torch.randn(5, 48)
    assert rel(layer(x), dense(x)) < 0.2


def test_from_linear_activation_aware_and_generated_bias():
    torch.manual_seed(9)
    dense = nn.Linear(32, 16)
    calib = torch.randn(64, 32)
    layer, fit = ADNTNLinear.from_linear(
        dense, bond_dim=4, steps=50, calibration=calib, bias="generated"
    )
    assert fit.activation_error is not None
    assert fit.objective <= fit.initial_objective
    assert layer.bias is None and layer.bias_generator is not None


def test_from_conv_fits_kernel():
    torch.manual_seed(10)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    layer, fit = ADNTNConv2d.from_conv(
        conv, bond_dim=4, steps=100, calibration=torch.randn(2, 4, 6, 6)
    )
    assert fit.objective <= fit.initial_objective
    assert layer.stride == (1, 1) and layer.padding == (1, 1)


# ---------------------------------------------------------------- config round trip
@pytest.mark.parametrize(
    "layer",
    [
        ADNTNLinear(30, 20, network="mera", bias="generated", mode="fused"),
        ADNTNConv2d(3, 8, 3, padding=1, stride=2, network="attn", bias="none"),
        ADNTNConv2d(4, 8, 3, layout="split", num_sites=2, bond_dim=3, core_lr=1e-3),
    ],
)
def test_config_round_trip(layer):
    again = ADNTNLayer.from_config(layer.config())
    again.load_state_dict(layer.state_dict())
    assert again.config() == layer.config()


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"network": "tree"}, ValueError, r"unknown network 'tree'; valid networks"),
        ({"activation": "softplus"}, ValueError, r"unknown activation 'softplus'"),
        ({"bond_dim": 0}, ValueError, r"bond_dim must be >= 1, got 0"),
        ({"bias": "shared"}, ValueError, r"unknown bias 'shared'; valid: \['dense'"),
        ({"mode": "lazy"}, ValueError, r"mode='lazy' is not a valid mode; choose one of materi"),
        (
            {"final_activation": "tanh", "mode": "fused"},
            ValueError,
            r"mode 'fused' needs a linear top step.*'tanh'",
        ),
        ({"core_lr": 0.0}, ValueError, r"core_lr must be None or a number in \(0, 1\], got 0.0"),
        ({"core_lr": float("nan")}, ValueError, r"core_lr must be None or a number.*got nan"),
        ({"core_lr": "fast"}, ValueError, r"core_lr must be None or a number.*got 'fast'"),
    ],
)
def test_bad_layer_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ADNTNLinear(16, 16, **kwargs)


def test_bad_shapes_and_inputs():
    with pytest.raises(ValueError, match=r"in_features must be >= 1, got 0"):
        ADNTNLinear(0, 4)
    with pytest.raises(TypeError, match=r"out_features must be an int"):
        ADNTNLinear(4, 2.5)
    with pytest.raises(ValueError, match=r"kernel_size must be >= 1"):
        ADNTNConv2d(3, 4, 0)
    layer = ADNTNLinear(8, 4, final_activation="tanh")
    with pytest.raises(ValueError, match=r"mode 'fused' needs a linear top step"):
        layer.mode = "fused"
    with pytest.raises(ValueError, match=r"input has 7 features.*in_features=8"):
        layer(torch.randn(2, 7))
    with pytest.raises(ValueError, match=r"input must have shape \(batch, 3, H, W\)"):
        ADNTNConv2d(3, 4, 3)(torch.randn(2, 4, 8, 8))
    with pytest.raises(TypeError, match=r"from_linear needs an nn.Linear, got Conv2d"):
        ADNTNLinear.from_linear(nn.Conv2d(2, 2, 1))


def test_final_activation_materialize_and_regenerate_agree():
    layer = ADNTNLinear(24, 20, final_activation="tanh", dtype=torch.float64)
    x = torch.randn(3, 24, dtype=torch.float64)
    with torch.no_grad():
        a = layer(x)
        layer.mode = "regenerate"
        assert rel(layer(x), a) < 1e-12


@pytest.mark.parametrize("mode", ["materialize", "regenerate", "fused"])
def test_autocast_generates_the_weight_in_float32(mode):
    """Under bf16 autocast only the product with the input is bf16: the generated weight is
    bit-identical to the float32 one, and gradients still reach every core in float32."""
    torch.manual_seed(0)
    layer = ADNTNLinear(64, 48, network="attn", bond_dim=3, bias="generated", mode=mode)
    x = torch.randn(5, 64)
    with torch.no_grad():
        w32 = layer.weight_generator._weight()
        tiles32 = torch.cat([t for _, _, t in layer.weight_generator.weight_tiles()])
        ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w_amp = layer.weight_generator._weight()
        y = layer(x)
        tiles = torch.cat([t for _, _, t in layer.weight_generator.weight_tiles()])
    assert w_amp.dtype == torch.float32 and torch.equal(w_amp, w32)
    assert tiles.dtype == torch.float32 and torch.equal(tiles, tiles32)
    assert y.dtype == torch.bfloat16
    # bf16 has 8 significant bits: the product is close, not equal
    assert torch.allclose(y.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())
    y.float().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
