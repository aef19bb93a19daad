"""Model zoo: canonical parameter counts, FC layer names and shapes, 32x32 and small nets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import adntn_models as am
from adntn_models.alexnet import FC_LAYERS as ALEXNET_MODULE_FC_LAYERS
from adntn_models.vgg import FC_LAYERS as VGG_MODULE_FC_LAYERS


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def canonical() -> dict[str, nn.Module]:
    # Meta tensors: shapes and counts without allocating 800 MB or running init.
    with torch.device("meta"):
        return {"alexnet": am.alexnet(), "vgg16": am.vgg16()}


@pytest.mark.parametrize(
    ("name", "total", "fc6_path", "fc6_total"),
    [
        ("alexnet", 61_100_840, "classifier.1", 37_752_832),
        ("vgg16", 138_357_544, "classifier.0", 102_764_544),
    ],
)
def test_canonical_parameter_counts(canonical, name, total, fc6_path, fc6_total):
    model = canonical[name]
    assert n_params(model) == total
    assert n_params(model.get_submodule(fc6_path)) == fc6_total
    assert model.input_shape == (3, 224, 224)
    assert model.variant == "imagenet"


def test_canonical_fc_shapes_match_models(canonical):
    shapes = am.canonical_fc_shapes()
    assert shapes == {
        "alexnet": {"fc6": (4096, 9216), "fc7": (4096, 4096), "fc8": (1000, 4096)},
        "vgg16": {"fc6": (4096, 25088), "fc7": (4096, 4096), "fc8": (1000, 4096)},
    }
    for name, model in canonical.items():
        assert set(model.fc_layers) == {"fc6", "fc7", "fc8"}
        for fc, path in model.fc_layers.items():
            layer = model.get_submodule(path)
            assert isinstance(layer, nn.Linear)
            assert tuple(layer.weight.shape) == shapes[name][fc]


def test_fc_layer_names_are_torchvisions():
    assert am.ALEXNET_FC_LAYERS == {
        "fc6": "classifier.1",
        "fc7": "classifier.4",
        "fc8": "classifier.6",
    }
    assert am.VGG16_FC_LAYERS == {
        "fc6": "classifier.0",
        "fc7": "classifier.3",
        "fc8": "classifier.6",
    }
    # ``adntn_models.alexnet`` is the factory function (it shadows the submodule, as in
    # torchvision); ``from adntn_models.alexnet import ...`` still reaches the module.
    assert callable(am.alexnet)
    assert am.AlexNet.FC_LAYERS is ALEXNET_MODULE_FC_LAYERS is am.ALEXNET_FC_LAYERS
    assert am.VGG.FC_LAYERS is VGG_MODULE_FC_LAYERS is am.VGG16_FC_LAYERS


def test_state_dict_keys_are_torchvisions(canonical):
    def weights(model: nn.Module) -> list[str]:
        return [k[: -len(".weight")] for k in model.state_dict() if k.endswith(".weight")]

    assert weights(canonical["alexnet"]) == [
        *(f"features.{i}" for i in (0, 3, 6, 8, 10)),
        *(f"classifier.{i}" for i in (1, 4, 6)),
    ]
    vgg_convs = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    assert weights(canonical["vgg16"]) == [
        *(f"features.{i}" for i in vgg_convs),
        *(f"classifier.{i}" for i in (0, 3, 6)),
    ]


@pytest.mark.parametrize(
    ("factory", "alias", "fc_shapes", "fc6_in"),
    [
        (am.alexnet, am.alexnet32, am.alexnet_fc_shapes, 2304),
        (am.vgg16, am.vgg16_32, am.vgg16_fc_shapes, 512),
    ],
)
def test_32x32_variants_forward(factory, alias, fc_shapes, fc6_in):
    torch.manual_seed(0)
    model = factory(variant="cifar", num_classes=10, in_channels=3).eval()
    assert model.input_shape == (3, 32, 32)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    expected = {"fc6": (4096, fc6_in), "fc7": (4096, 4096), "fc8": (10, 4096)}
    assert fc_shapes("cifar") == expected
    for fc, path in model.fc_layers.items():
        assert tuple(model.get_submodule(path).weight.shape) == expected[fc]
    # The alias builds the same architecture.
    aliased = alias()
    assert [(k, v.shape) for k, v in aliased.state_dict().items()] == [
        (k, v.shape) for k, v in model.state_dict().items()
    ]


@pytest.mark.parametrize("factory", [am.alexnet32, am.vgg16_32])
def test_32x32_variants_other_channels_and_classes(factory):
    model = factory(num_classes=7, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_vgg16_batch_norm_keeps_classifier_names():
    model = am.vgg16_32(batch_norm=True).eval()
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.features)
    assert isinstance(model.get_submodule(am.VGG16_FC_LAYERS["fc6"]), nn.Linear)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(("factory", "label"), [(am.alexnet, "AlexNet"), (am.vgg16, "VGG-16")])
def test_unknown_variant(factory, label):
    with pytest.raises(ValueError, match=rf"unknown {label} variant 'cifar100'.*imagenet, cifar"):
        factory(variant="cifar100")


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"in_channels": -1}])
def test_bad_sizes(kwargs):
    with pytest.raises(ValueError, match="positive integer"):
        am.alexnet32(**kwargs)
    with pytest.raises(ValueError, match="positive integer"):
        am.vgg16_32(**kwargs)


def test_mlp():
    model = am.mlp().eval()
    assert [tuple(model.get_submodule(p).weight.shape) for p in model.fc_layers.values()] == [
        (256, 784),
        (128, 256),
        (10, 128),
    ]
    assert model.fc_layers == {"fc1": "layers.0", "fc2": "layers.3", "fc3": "layers.6"}
    assert n_params(model) == 235_146
    assert model.input_shape == (1, 28, 28)
    assert model(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    deep = am.mlp((64, 32, 16), num_classes=3, dropout=0.1)
    assert list(deep.fc_layers) == ["fc1", "fc2", "fc3", "fc4"]
    assert deep(torch.randn(2, 784)).shape == (2, 3)
    assert am.MLP(784, (), 10)(torch.randn(2, 784)).shape == (2, 10)


def test_small_cnn():
    model = am.small_cnn().eval()
    assert n_params(model) == 421_642
    assert model.fc_layers == {"fc1": "classifier.0", "fc2": "classifier.3"}
    assert tuple(model.get_submodule("classifier.0").weight.shape) == (128, 3136)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    rgb32 = am.small_cnn(in_channels=3, image_size=32, num_classes=5)
    assert rgb32(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_registry_builds_every_small_model():
    assert am.MODEL_NAMES == ("alexnet", "alexnet32", "vgg16", "vgg16_32", "mlp", "small_cnn")
    for name in ("alexnet32", "vgg16_32", "mlp", "small_cnn"):
        model = am.get_model(name, num_classes=4).eval()
        with torch.no_grad():
            assert model(torch.randn(1, *model.input_shape)).shape == (1, 4)


def test_registry_passes_kwargs_to_canonical():
    with torch.device("meta"):
        model = am.get_model("alexnet", variant="cifar")
    assert model.input_shape == (3, 32, 32)


def test_registry_unknown_name():
    with pytest.raises(ValueError, match=r"unknown model 'resnet50'; valid names: alexnet, "):
        am.get_model("resnet50")
    with pytest.raises(ValueError, match="small_cnn"):
        am.get_model("VGG16")


@pytest.mark.parametrize("batch_norm", [False, True])
def test_conv_layer_aliases_name_every_conv_in_order(batch_norm):
    vgg = am.vgg16_32(batch_norm=batch_norm)
    convs = [n for n, m in vgg.named_modules() if isinstance(m, nn.Conv2d)]
    blocks = [2, 2, 3, 3, 3]
    names = [f"conv{b}_{i}" for b, n in enumerate(blocks, 1) for i in range(1, n + 1)]
    assert list(vgg.conv_layers) == names
    assert list(vgg.conv_layers.values()) == convs
    assert vgg.get_submodule(vgg.conv_layers["conv5_3"]).weight.shape == (512, 512, 3, 3)
    for factory in (am.alexnet, am.alexnet32):
        model = factory()
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        assert list(model.conv_layers) == [f"conv{i}" for i in range(1, 6)]
        assert list(model.conv_layers.values()) == convs == list(am.ALEXNET_CONV_LAYERS.values())
