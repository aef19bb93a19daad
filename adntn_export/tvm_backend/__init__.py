"""Apache TVM backend: compile, tune, deploy and run ADNTN-compressed ONNX models.

Modules (one concept each; all import :mod:`tvm` lazily, inside functions):

* :mod:`.targets` - named device targets (host, rpi4, rpi5, jetson-orin-*, mali, adreno).
* :mod:`.layer_modes` - each ADNTN layer's mode on TVM (the device policy, or the export's).
* :mod:`.normalize` - make an exported ONNX file readable by TVM's importer (onnxscript).
* :mod:`.compile` - ``compile_onnx``: ONNX -> Relax -> ``OUT/model.so`` + ``manifest.json``
  (per-layer modes ``dense`` / ``materialize`` / ``regenerate`` / ``fused``).
* :mod:`.tune` - ``tune_onnx``: MetaSchedule tuning with a persistent, resumable database.
* :mod:`.measure` - how trials are measured on a device (inputs filled on the host) and
  what they measured (valid/total per task).
* :mod:`.rpc` - local tracker/server helpers and the ``serve-device`` recipe.
* :mod:`.run` - the C++ runner; re-exports the device half.

The device half (loading an OUTDIR, the RPC client, the manifest reading) lives in the
torch-free runtime, :mod:`adntn_runtime.tvm`; :mod:`.run` and :mod:`.rpc` re-export it.
* :mod:`.device_runtime` - aarch64 TVM runtime libraries (from the aarch64 wheels, cached).
* :mod:`.runner_build` - build the C++ ``tvm_runner`` (``runtimes/tvm_runner/runner.cc``).
* :mod:`.emulated` - emulated Raspberry Pis: aarch64 ``tvm.exec.rpc_server`` processes under
  qemu-user at a TVM tracker (``adntn serve-device --emulate``; built on first use by
  ``runtimes/tvm_runner/build_arm64_python.sh``).
"""

from __future__ import annotations

from adntn_export.tvm_backend.targets import TargetSpec, get_target, target_names

__all__ = ["TargetSpec", "get_target", "target_names"]
