"""adntn_export: the host toolchain of adntn.

Train ADNTN layers (:class:`ADNTNLinear`, :class:`ADNTNConv2d`), fit them to
dense layers, account for their size (:func:`compression_report`), and export
them (ONNX, TVM). The framework-free plan (:class:`ADNTNPlan`) lives in
:mod:`adntn_runtime.plan` so that the device runtime can use it without torch.
"""

from adntn_export.fitting import FitResult, fit_layer
from adntn_export.generator import WeightGenerator
from adntn_export.layers import BIAS_KINDS, ADNTNConv2d, ADNTNLayer, ADNTNLinear
from adntn_export.report import CompressionReport, LayerReport, compression_report
from adntn_runtime.activations import ACTIVATIONS
from adntn_runtime.plan import MODES, NETWORKS, ADNTNPlan

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
]
