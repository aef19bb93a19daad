"""The device half of the TVM backend (optional extra: ``pip install './runtimes[tvm]'``).

* :mod:`.manifest` - read ``OUTDIR/manifest.json`` and check every file's sha256 before use.
* :mod:`.rpc` - TVM RPC client: tracker checks and sessions, every call under a timeout.
* :mod:`.run` - load a compiled OUTDIR here or over RPC, run it and time it.

Nothing here imports ``adntn_export`` (the host toolchain) or torch; :mod:`tvm` is imported
lazily, inside functions, so ``import adntn_runtime.tvm`` works without TVM installed.
"""

from __future__ import annotations

from adntn_runtime.tvm.manifest import MANIFEST, Manifest, TensorInfo, verify_files

__all__ = ["MANIFEST", "Manifest", "TensorInfo", "verify_files"]
