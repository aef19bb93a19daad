"""adntn_runtime: the device-side half of adntn. Imports numpy (and onnxruntime), never torch.

It also holds the framework-free ADNTN plan (:mod:`adntn_runtime.plan`), because
the device must be able to lower a layer in the mode its policy picks without
the host toolchain installed.
"""
