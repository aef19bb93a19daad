"""adntn_models: the model zoo (AlexNet, VGG-16, small demo nets) and the data they train on."""

from .alexnet import CONV_LAYERS as ALEXNET_CONV_LAYERS
from .alexnet import FC_LAYERS as ALEXNET_FC_LAYERS
from .alexnet import AlexNet, alexnet, alexnet32, alexnet_fc_shapes
from .datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    as_tensor_dataset,
    load_fashion_mnist,
    load_shipped_subset,
    read_idx,
    write_idx,
)
from .registry import FASHION_MNIST_MODELS, MODEL_NAMES, canonical_fc_shapes, get_model, input_shape
from .small import MLP, SmallCNN, mlp, small_cnn
from .vgg import FC_LAYERS as VGG16_FC_LAYERS
from .vgg import VGG, vgg16, vgg16_32, vgg16_fc_shapes

__all__ = [
    "ALEXNET_CONV_LAYERS",
    "ALEXNET_FC_LAYERS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MODELS",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "MLP",
    "MODEL_NAMES",
    "VGG",
    "VGG16_FC_LAYERS",
    "AlexNet",
    "SmallCNN",
    "alexnet",
    "alexnet32",
    "alexnet_fc_shapes",
    "as_tensor_dataset",
    "canonical_fc_shapes",
    "get_model",
    "input_shape",
    "load_fashion_mnist",
    "load_shipped_subset",
    "mlp",
    "read_idx",
    "small_cnn",
    "vgg16",
    "vgg16_32",
    "vgg16_fc_shapes",
    "write_idx",
]
