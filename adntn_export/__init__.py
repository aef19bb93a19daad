"""adntn_export: the host toolchain of adntn.

Train ADNTN layers (:class:`ADNTNLinear`, :class:`ADNTNConv2d`), fit them to
dense layers, account for their size (:func:`compression_report`), and export
them (ONNX, TVM). The framework-free plan (:class:`ADNTNPlan`) lives in
:mod:`adntn_runtime.plan` so that the device runtime can use it without torch.
"""

from adntn_export.compress import compress, list_recipes, load_recipe
from adntn_export.fitting import FitResult, fit_layer
from adntn_export.generator import WeightGenerator
from adntn_export.layers import BIAS_KINDS, ADNTNConv2d, ADNTNLayer, ADNTNLinear
from adntn_export.report import CompressionReport, LayerReport, compression_report
from adntn_runtime.activations import ACTIVATIONS
from adntn_runtime.plan import MODES, NETWORKS, ADNTNPlan

# ``compress`` (the function) shadows its module's name on purpose, so that
# ``adntn_export.compress(model, ...)`` works; ``from adntn_export.compress import ...`` still does.

__version__ = "0.1.0"

__all__ = [
    # layers
    "ADNTNLinear",
    "ADNTNConv2d",
    "ADNTNLayer",
    "WeightGenerator",
    "BIAS_KINDS",
    # plan
    "ADNTNPlan",
    "NETWORKS",
    "MODES",
    "ACTIVATIONS",
    # fitting and accounting
    "FitResult",
    "fit_layer",
    "compression_report",
    "CompressionReport",
    "LayerReport",
    # whole models
    "compress",
    "load_recipe",
    "list_recipes",
    "export_onnx",
]


def __getattr__(name: str) -> object:
    # ONNX is an optional extra (adntn[onnx]): import the exporter only when asked for.
    if name == "export_onnx":
        from adntn_export.onnx_export import export_onnx

        return export_onnx
    raise AttributeError(f"module 'adntn_export' has no attribute {name!r}")
