"""Reading ``OUTDIR/manifest.json`` (written by ``adntn compile``) and checking the files.

An OUTDIR is untrusted data: :func:`verify_files` compares every file the manifest lists
with its sha256 before anything is loaded (a truncated ``model.so`` would otherwise be
memory-mapped by ``dlopen`` and kill the process with SIGBUS).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
#: The file the Relax VM executable lives in.
MODEL_FILE = "model.so"


@dataclass
class TensorInfo:
    """Name, shape and dtype of one model input or output."""

    name: str
    shape: list[int]
    dtype: str


@dataclass
class Manifest:
    """Contents of ``OUT/manifest.json``."""

    target: str
    target_config: dict[str, Any]
    kind: str
    arch: str
    mode: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    files: dict[str, str]
    tvm_version: str
    tvm_ffi_version: str
    created: str
    entry: str = "main"
    materialize: str | None = None
    tuned: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    #: ADNTN layer name -> ``{"mode": LoweringMode, "reason": why}`` (+ a regenerate layer's
    #: ``tile_rows``, when set, and ``row_tiles``).
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise to JSON text."""
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def load(cls, out_dir: str | os.PathLike[str]) -> Manifest:
        """Read ``OUT/manifest.json``; ``ValueError`` naming the file if it is malformed."""
        path = Path(out_dir) / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: is {out_dir} an `adntn compile` OUTDIR?")
        try:
            raw = json.loads(path.read_text())
            names = {f.name for f in fields(cls)}
            unknown = sorted(set(raw) - names)
            if unknown:
                raise ValueError(f"unknown keys {unknown}; valid keys: {sorted(names)}")
            raw["inputs"] = [TensorInfo(**t) for t in raw["inputs"]]
            raw["outputs"] = [TensorInfo(**t) for t in raw["outputs"]]
            return cls(**raw)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"{path} is not a valid adntn manifest: {exc}") from None


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_files(out_dir: str | os.PathLike[str], manifest: Manifest | None = None) -> Manifest:
    """Check every file listed in the manifest against its sha256; returns the manifest.

    Raises ``ValueError`` naming the first missing or altered file (and ``model.so`` must be
    listed), so a truncated or tampered artefact is refused before TVM maps it.
    """
    out = Path(out_dir)
    manifest = manifest or Manifest.load(out)
    if MODEL_FILE not in manifest.files:
        raise ValueError(
            f"{out / MANIFEST} lists no {MODEL_FILE} (files: {sorted(manifest.files)}); "
            "recompile with `adntn compile`"
        )
    for rel, want in manifest.files.items():
        path = (out / rel).resolve()
        if out.resolve() not in path.parents:
            raise ValueError(f"{out / MANIFEST} lists {rel!r}, a path outside {out}")
        if not path.is_file():
            raise ValueError(f"{path} is missing (listed in {out / MANIFEST}); recompile")
        got = sha256_of(path)
        if got != want:
            raise ValueError(
                f"{path} does not match {out / MANIFEST}: sha256 {got[:16]}... != "
                f"{want[:16]}... (truncated or altered; recompile with `adntn compile`)"
            )
    return manifest
