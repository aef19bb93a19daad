"""ONNX lowering of ADNTN layers: the public names of the four modules that implement it.

Kept so that ``from adntn_runtime.onnx_lowering import ...`` goes on working; new code may
import from the module that owns each concept:

* :mod:`adntn_runtime.layer_spec`: :class:`LayerSpec`, :class:`ConvSpec` (one layer,
  framework-free);
* :mod:`adntn_runtime.onnx_format`: the placeholder node, its parameters and the metadata
  an ONNX file with ADNTN layers carries;
* :mod:`adntn_runtime.layer_lowering` (with :mod:`adntn_runtime.onnx_builder`): one layer
  lowered to ONNX nodes in one mode;
* :mod:`adntn_runtime.substitution`: the one pass that substitutes every placeholder of a
  model (:func:`lower_model`, and the runtime's ``lower_for_runtime``).

Each name is imported ``as`` itself: a re-export, so this module keeps no list of its own.
"""

from __future__ import annotations

from adntn_runtime.layer_lowering import (
    GELU_OPSET as GELU_OPSET,
)
from adntn_runtime.layer_lowering import (
    LOWERING_MODES as LOWERING_MODES,
)
from adntn_runtime.layer_lowering import (
    MIN_OPSET as MIN_OPSET,
)
from adntn_runtime.layer_lowering import (
    LoweredLayer as LoweredLayer,
)
from adntn_runtime.layer_lowering import (
    lower_layer as lower_layer,
)
from adntn_runtime.layer_spec import ConvSpec as ConvSpec
from adntn_runtime.layer_spec import LayerSpec as LayerSpec
from adntn_runtime.onnx_builder import OnnxBuilder as OnnxBuilder
from adntn_runtime.onnx_format import (
    ADNTN_DOMAIN as ADNTN_DOMAIN,
)
from adntn_runtime.onnx_format import (
    IR_VERSION as IR_VERSION,
)
from adntn_runtime.onnx_format import (
    NO_FOLDING_SESSION_OPTIONS as NO_FOLDING_SESSION_OPTIONS,
)
from adntn_runtime.onnx_format import (
    SESSION_OPTIONS_KEY as SESSION_OPTIONS_KEY,
)
from adntn_runtime.onnx_format import (
    placeholder_layers as placeholder_layers,
)
from adntn_runtime.onnx_format import (
    placeholder_node as placeholder_node,
)
from adntn_runtime.onnx_format import (
    placeholder_param_names as placeholder_param_names,
)
from adntn_runtime.onnx_format import (
    record_layer_metadata as record_layer_metadata,
)
from adntn_runtime.onnx_format import (
    register_schemas as register_schemas,
)
from adntn_runtime.onnx_format import (
    session_options_for as session_options_for,
)
from adntn_runtime.onnx_format import (
    set_metadata as set_metadata,
)
from adntn_runtime.onnx_format import (
    spec_from_node as spec_from_node,
)
from adntn_runtime.substitution import layer_model as layer_model
from adntn_runtime.substitution import lower_model as lower_model
