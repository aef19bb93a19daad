"""compress(): exactly the named layers are replaced; globs, aliases, recipes and errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import NETWORKS
from torch import nn

from adntn_export import ADNTNConv2d, ADNTNLinear, compression_report
from adntn_export.compress import compress, list_recipes, load_recipe, resolve_layers
from adntn_models import alexnet32, get_model, input_shape, mlp, small_cnn, vgg16_32


def _kinds(model: nn.Module) -> dict[str, str]:
    return {
        n: type(m).__name__
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv2d | ADNTNLinear | ADNTNConv2d)
    }


def test_replaces_exactly_the_named_layers():
    torch.manual_seed(0)
    model = mlp()
    before = _kinds(model)
    out = compress(model, layers=["layers.3"], bond_dim=2, fit_steps=5)
    assert out is model
    after = _kinds(model)
    assert after["layers.3"] == "ADNTNLinear"
    assert {k: v for k, v in after.items() if k != "layers.3"} == {
        k: v for k, v in before.items() if k != "layers.3"
    }
    assert set(model.adntn_fit_report) == {"layers.3"}
    assert model.adntn_fit_report["layers.3"].steps == 5
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_aliases_glob_and_default():
    model = small_cnn()
    compress(model, layers="features.*", bond_dim=2, fit=False)
    assert _kinds(model) == {
        "features.0": "ADNTNConv2d",
        "features.3": "ADNTNConv2d",
        "classifier.0": "Linear",
        "classifier.3": "Linear",
    }
    assert model.adntn_fit_report == {}
    compress(model, layers=["fc1"], bond_dim=2, fit=False)
    assert _kinds(model)["classifier.0"] == "ADNTNLinear"
    # default: every nn.Linear
    other = mlp()
    compress(other, bond_dim=2, fit=False)
    assert set(_kinds(other).values()) == {"ADNTNLinear"}
    # conv aliases of the zoo models, alone and in patterns
    vgg = vgg16_32()
    compress(vgg, layers=["conv5_3", "conv4_*"], bond_dim=2, fit=False)
    replaced = {n for n, k in _kinds(vgg).items() if k == "ADNTNConv2d"}
    assert replaced == {vgg.conv_layers[c] for c in ("conv5_3", "conv4_1", "conv4_2", "conv4_3")}


def test_per_layer_overrides_and_kwargs():
    model = mlp()
    compress(
        model,
        layers={"layers.0": {"bond_dim": 3, "network": "attn"}, "layers.*": {"bias": "generated"}},
        bond_dim=2,
        fit=False,
    )
    first, second = model.layers[0], model.layers[3]
    assert first.plan.network == "attn" and max(first.plan.bond_dims) == 3
    assert second.plan.network == "ttn" and max(second.plan.bond_dims) == 2
    assert first.bias_kind == second.bias_kind == "generated"


def test_calibration_fit_records_activation_error():
    torch.manual_seed(0)
    model = mlp()
    x = torch.randn(32, 1, 28, 28)
    compress(model, layers=["fc1"], bond_dim=2, fit_steps=10, calibration=x)
    fit = model.adntn_fit_report["layers.0"]
    assert fit.activation_error is not None and fit.objective <= fit.initial_objective
    assert model.adntn_layer_configs["layers.0"]["type"] == "ADNTNLinear"


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        (["classifier.9"], r"unknown layer 'classifier.9'; candidates: .*classifier.0"),
        (["fc9"], r"unknown layer 'fc9'; candidates: .*fc1=classifier.0"),
        (["conv*"], r"pattern 'conv\*' matches no Linear/Conv2d layer; candidates: features.0"),
        (["features.1"], r"'features.1' is a ReLU, not nn.Linear or nn.Conv2d; candidates"),
        (["classifier"], r"'classifier' is a Sequential"),
        (3, r"layers must be None, a name/pattern"),
    ],
)
def test_selection_errors(layers, match):
    model = small_cnn()
    with pytest.raises(ValueError, match=match):
        compress(model, layers=layers, fit=False)
    assert _kinds(model)["classifier.0"] == "Linear"  # untouched


def test_recipes_load_and_apply():
    names = list_recipes()
    for expected in (
        "alexnet32_ttn",
        "alexnet32_attn",
        "alexnet32_mera",
        "vgg16_32_ttn",
        "vgg16_32_attn",
        "vgg16_32_mera",
        "alexnet_ttn",
        "vgg16_ttn",
    ):
        assert expected in names
    recipe = load_recipe("alexnet32_ttn")
    assert recipe["model"] == "alexnet32"
    assert set(recipe["layers"]) == {"conv5", "fc6", "fc7", "fc8"}
    model = compress(alexnet32(), recipe="alexnet32_ttn", fit=False)
    report = {r.name: r for r in compression_report(model).layers}
    assert set(report) == {
        "features.10",
        "classifier.1",
        "classifier.4",
        "classifier.6",
    }
    assert report["classifier.4"].ratio >= 50_000
    assert report["classifier.1"].ratio >= 10_000
    assert report["classifier.6"].ratio >= 100
    assert report["features.10"].ratio >= 100
    assert all(r.bias == "generated" for r in report.values())
    # explicit arguments override the recipe's defaults
    model = compress(mlp(), recipe="alexnet32_ttn", layers=["fc2"], network="attn", fit=False)
    assert model.layers[3].plan.network == "attn" and model.layers[3].bias_kind == "generated"


@pytest.mark.parametrize("name", ["alexnet32", "vgg16_32"])
@pytest.mark.parametrize("network", NETWORKS)
def test_benchmark_recipes_meet_the_ratio_targets(name, network):
    """The compression table's recipes: fc7 >= 50,000x, fc8 >= 100x, every conv >= 100x and
    fc6 >= 10,000x, counting every stored number; the one documented miss is VGG-16-32's
    512->4096 fc6 under aTTN/MERA (disentanglers alone cost more than its 210-number budget
    leaves: measured ~8,000x)."""
    model = get_model(name)
    compress(model, recipe=f"{name}_{network}", fit=False)
    aliases = {path: a for a, path in {**model.conv_layers, **model.fc_layers}.items()}
    ratios = {aliases[r.name]: r.ratio for r in compression_report(model).layers}
    assert ratios["fc7"] >= 50_000 and ratios["fc8"] >= 100
    convs = [a for a in ratios if a.startswith("conv")]
    assert convs and all(ratios[c] >= 100 for c in convs)
    if name == "vgg16_32" and network != "ttn":
        assert 7_500 <= ratios["fc6"] < 10_000
    else:
        assert ratios["fc6"] >= 10_000


@pytest.mark.parametrize(("name", "fc6_target"), [("alexnet32", 100_000), ("vgg16_32", 20_000)])
def test_target_recipes_meet_the_per_layer_targets(name, fc6_target):
    """``<model>_ttn_target`` (issue 13's per-layer targets, every stored number counted):
    fc6 >= 100,000x on AlexNet-32 and >= 20,000x on VGG-16-32, fc7 >= 150,000x, fc8 >= 100x;
    the convolutions stay dense; the model still runs."""
    model = get_model(name)
    compress(model, recipe=f"{name}_ttn_target", fit=False)
    aliases = {path: a for a, path in {**model.conv_layers, **model.fc_layers}.items()}
    ratios = {aliases[r.name]: r.ratio for r in compression_report(model).layers}
    assert set(ratios) == {"fc6", "fc7", "fc8"}
    assert ratios["fc6"] >= fc6_target and ratios["fc7"] >= 150_000 and ratios["fc8"] >= 100
    with torch.no_grad():
        out = model.eval()(torch.randn(2, *input_shape(name)[-3:]))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_unknown_recipe():
    with pytest.raises(ValueError, match=r"unknown recipe 'nope'; valid recipes: .*alexnet32_ttn"):
        load_recipe("nope")


def test_resolve_layers_is_in_model_order():
    model = alexnet32()
    assert list(resolve_layers(model, ["fc8", "fc6"])) == ["classifier.1", "classifier.6"]


def test_conv_layers_fit_with_calibration():
    torch.manual_seed(0)
    model = small_cnn()
    compress(
        model, layers="features.*", bond_dim=2, fit_steps=3, calibration=torch.randn(4, 1, 28, 28)
    )
    assert set(model.adntn_fit_report) == {"features.0", "features.3"}
    assert all(r.activation_error is not None for r in model.adntn_fit_report.values())
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_useless_fit_is_discarded_and_reported():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(256, 128))  # random weight: nothing for 60 cores to capture
    model = compress(dense, layers=["0"], bond_dim=2, num_sites=4, fit_steps=20)
    fit = model.adntn_fit_report["0"]
    assert fit.relative_error > 0.9 and fit.discarded
    std = float(model[0].dense_weight().detach().std())
    assert std == pytest.approx(1 / (3 * 256) ** 0.5, rel=0.05)  # back to the init scale
    kept = compress(
        nn.Sequential(nn.Linear(256, 128)),
        layers=["0"],
        bond_dim=2,
        num_sites=4,
        fit_steps=20,
        discard_fit_above=2.0,
    )
    assert not kept.adntn_fit_report["0"].discarded


def test_a_recipe_layer_can_keep_its_fit_whatever_its_error():
    """A recipe's per-layer ``discard_fit_above`` (null: never) overrides compress's rule for
    that layer only: a split layer's start is the truncated SVD of the trained weight, which
    a restart from the Kaiming-scale init can only lose."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(256, 128), nn.Linear(128, 64))  # random: errors above 0.9
    layer = {"bond_dim": 2, "num_sites": 4, "fit_steps": 5}
    model = compress(
        dense,
        recipe={"layers": {"0": {**layer, "discard_fit_above": None}, "1": layer}},
    )
    report = model.adntn_fit_report
    assert report["0"].relative_error > 0.9 and not report["0"].discarded
    assert report["1"].relative_error > 0.9 and report["1"].discarded
    for bad in (0, -1.0, "never", True):
        with pytest.raises(ValueError, match=rf"layer '0': discard_fit_above {bad!r} is not "):
            compress(
                nn.Sequential(nn.Linear(16, 8)),
                layers={"0": {"discard_fit_above": bad}},
                bond_dim=2,
                fit_steps=1,
            )


@pytest.mark.parametrize(
    ("name", "dense_convs"),
    [("vgg16_32_whole_lowrank", set()), ("vgg16_32_whole_deep", {"conv1_2", "conv2_1", "conv2_2"})],
)
def test_vgg16_32_whole_recipes_keep_every_split_start_at_20x(name, dense_convs):
    recipe = load_recipe(name)
    split = {k for k, v in recipe["layers"].items() if v.get("layout") == "split"}
    convs = {
        f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)
    }
    assert split == {"fc6", "fc7"} | (convs - {"conv1_1"} - dense_convs)
    assert all(recipe["layers"][k]["discard_fit_above"] is None for k in split)
    dense = vgg16_32()
    model = compress(vgg16_32(), recipe=recipe, fit=False)
    stored = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in dense.parameters()) / stored >= 20


def test_a_fit_is_kept_when_it_reproduces_the_weight_or_the_outputs():
    """compress's discard rule: a low-rank fit of a trained layer (weight error above 0.9, but
    the outputs on the calibration inputs kept) is kept; a fit that captures neither (a
    weight shrunk towards zero lowers the output error only a little) is discarded."""
    from adntn_export.fitting import ACTIVATION_KEEP_BELOW, FitResult

    def fit(weight: float, act: float | None) -> FitResult:
        return FitResult(weight, 1.0, 10, 0.1, activation_error=act)

    assert not fit(0.5, None).learned_nothing(0.9)
    assert fit(0.95, None).learned_nothing(0.9)
    assert not fit(0.95, 0.14).learned_nothing(0.9)  # fc6 at 100x, split layout
    assert fit(0.9987, 0.879).learned_nothing(0.9)  # fc8 of alexnet32_ttn
    assert fit(0.99, ACTIVATION_KEEP_BELOW).learned_nothing(0.9)
    assert not fit(1.0001, 0.99).learned_nothing(math.inf)


def test_select_by_output_keeps_the_candidate_closest_to_the_dense_predictions():
    """compress(select="output"): fit, start and fresh are each scored by the KL divergence of
    the model's predictions on the calibration inputs; the layer kept is the argmin, and the
    compressed model's divergence is the one recorded."""
    from adntn_export.compress import output_divergence

    torch.manual_seed(0)
    dense = get_model("small_cnn").train()  # train flags are restored after scoring
    x = torch.randn(40, 1, 28, 28)
    model = compress(
        copy.deepcopy(dense),
        layers=["classifier.0", "features.3"],
        bond_dim=2,
        calibration=x,
        fit_steps=10,
        select="output",
    )
    assert all(m.training for m in model.modules())
    model.eval()
    dense.eval()
    for name, fit in model.adntn_fit_report.items():
        assert set(fit.output_errors) == {"fit", "start", "fresh"}
        assert fit.selected == min(fit.output_errors, key=fit.output_errors.__getitem__)
        assert fit.discarded == (fit.selected == "fresh")
        one = copy.deepcopy(dense)  # only this layer compressed: the score's setting
        parent, _, child = name.rpartition(".")
        setattr(one.get_submodule(parent), child, model.get_submodule(name))
        with torch.no_grad():
            kl = output_divergence(one(x), dense(x))
        assert kl == pytest.approx(fit.output_errors[fit.selected], rel=1e-4, abs=1e-7)


def test_select_by_output_keeps_an_exact_start():
    """A rank-3 weight in a two-site split plan of bond 3 (truncated SVD): the start is exact,
    its divergence is zero and it is kept, whatever the fit did."""
    torch.manual_seed(1)
    lin = nn.Linear(24, 10)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(10, 3) @ torch.randn(3, 24))
    model = nn.Sequential(nn.Linear(8, 24), nn.ReLU(), lin)
    out = compress(
        copy.deepcopy(model),
        layers=["2"],
        layout="split",
        num_sites=2,
        bond_dim=3,
        calibration=torch.randn(32, 8),
        fit_steps=5,
        select="output",
    )
    fit = out.adntn_fit_report["2"]
    assert fit.output_errors["start"] < 1e-8
    assert fit.output_errors[fit.selected] == min(fit.output_errors.values())
    assert fit.output_errors["fresh"] > 1e-3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"select": "accuracy"}, r"unknown select 'accuracy'; valid: \['objective', 'output'\]"),
        ({"select": "output"}, r"select='output' needs calibration inputs and fit=True"),
        (
            {"select": "output", "fit": False, "calibration": torch.randn(2, 8)},
            r"select='output' needs calibration inputs and fit=True",
        ),
    ],
)
def test_select_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compress(nn.Sequential(nn.Linear(8, 4)), layers=["0"], **kwargs)
