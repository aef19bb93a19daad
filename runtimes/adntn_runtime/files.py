"""Files: atomic writes (a reader sees the old file or the whole new one, never a partial one)
and validated reads of ONNX files from anyone (:func:`read_onnx`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    import onnx

__all__ = ["ONNX_FORMAT", "ONNX_FORMAT_KEY", "atomic_write", "read_onnx"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; on success fsync it, give it
    the permissions a plainly created file would have (``0o666`` less the umask, not
    ``mkstemp``'s ``0o600``) and rename it over ``path``; on any error remove it.

    The temporary file is created on entry, so an unwritable directory fails (with a
    ``PermissionError`` naming it) before the caller does any expensive work.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise PermissionError(
            f"cannot write {str(target)!r}: directory {str(parent)!r} is not writable "
            f"({exc.strerror or exc})"
        ) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------- reading ONNX
#: Format of the adntn parts of an ONNX file (placeholder attributes, metadata), stored in
#: its ``adntn.format`` metadata entry; a file of a newer format is refused.
ONNX_FORMAT = 1
#: Metadata key holding :data:`ONNX_FORMAT`.
ONNX_FORMAT_KEY = "adntn.format"


def read_onnx(
    path: str | os.PathLike[str],
    *,
    allow_nonfinite: bool = False,
    load_external_data: bool = True,
) -> onnx.ModelProto:
    """Read and validate an ONNX file that may come from anyone; the one way adntn reads ONNX.

    Checks, in order, each failure naming the file and what is valid instead: the file exists
    and is not empty; it parses as an ONNX model with a graph, outputs and an IR version;
    its ``adntn.format`` (if any) is one this adntn reads; every external-data location is a
    relative path inside the model's folder (no absolute path, no ``..``, no link out of it)
    and its byte range lies in the data file; every ADNTN placeholder has a valid plan and
    parameters (:func:`adntn_runtime.onnx_lowering.spec_from_node`); the parameters of ADNTN
    layers are finite unless ``allow_nonfinite``.

    Raises:
        FileNotFoundError: ``path`` does not exist or is not a file.
        ValueError: any other check fails.
    """
    import onnx

    path = Path(path)
    where = f"{str(path)!r}"
    if not path.exists():
        raise FileNotFoundError(f"model file {where} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"model path {where} is not a file")
    if path.stat().st_size == 0:
        raise ValueError(
            f"{where} is not a valid ONNX model file: it is empty (0 bytes); valid: an .onnx "
            "file written by adntn export or another ONNX exporter"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ValueError(
            f"{where} is not a valid ONNX model file ({type(exc).__name__}: {exc})"
        ) from None
    if model.ir_version < 1 or not model.HasField("graph") or not model.graph.output:
        raise ValueError(
            f"{where} is not a valid ONNX model file (IR version {model.ir_version}, "
            f"{len(model.graph.node)} nodes, {len(model.graph.output)} outputs: corrupt or not "
            "ONNX); valid: an ONNX model with a graph and IR version >= 1"
        )
    _check_format(model, where)
    _check_external_data(model, path, where)
    if load_external_data:
        onnx.load_external_data_for_model(model, str(path.parent))
    _check_placeholders(model, where, allow_nonfinite)
    return model


def _check_format(model: onnx.ModelProto, where: str) -> None:
    value = next((p.value for p in model.metadata_props if p.key == ONNX_FORMAT_KEY), None)
    if value is None or value == str(ONNX_FORMAT):
        return
    newer = value.isdigit() and int(value) > ONNX_FORMAT
    raise ValueError(
        f"{where} has {'a newer' if newer else 'an unknown'} adntn ONNX format {value!r}; this "
        f"adntn reads adntn ONNX format {ONNX_FORMAT}" + (" (upgrade adntn)" if newer else "")
    )


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model that may hold external data (initializers, attributes)."""
    from onnx.external_data_helper import _get_all_tensors

    yield from _get_all_tensors(model)


def _check_external_data(model: onnx.ModelProto, path: Path, where: str) -> None:
    import onnx

    folder = path.parent.resolve()
    for tensor in _tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        rel = Path(location)
        target = (folder / rel).resolve()
        if (
            not location
            or rel.is_absolute()
            or ".." in rel.parts
            or (target != folder and folder not in target.parents)
        ):
            raise ValueError(
                f"{where}: tensor {tensor.name!r} keeps its data at {location!r}, outside the "
                f"model's folder {str(folder)!r}; valid: a relative path inside that folder "
                "(no absolute path, no '..', no link leading out)"
            )
        if not target.is_file():
            raise ValueError(
                f"{where}: tensor {tensor.name!r}: external data file {location!r} does not "
                f"exist in {str(folder)!r}"
            )
        size = target.stat().st_size
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else size - offset
        except ValueError:
            raise ValueError(
                f"{where}: tensor {tensor.name!r}: external data offset/length {info!r} are "
                "not integers"
            ) from None
        if offset < 0 or length < 0 or offset + length > size:
            raise ValueError(
                f"{where}: tensor {tensor.name!r}: external data bytes {offset}..{offset + length}"
                f" lie outside {location!r} ({size} bytes); valid: a range inside the file"
            )


def _check_placeholders(model: onnx.ModelProto, where: str, allow_nonfinite: bool) -> None:
    """Parse every ADNTN placeholder; check ADNTN parameters are finite."""
    import numpy as np
    from onnx import numpy_helper

    from adntn_runtime import onnx_lowering as lowering

    inits = {t.name: t for t in model.graph.initializer}
    checked: dict[str, str] = {}  # initializer -> its layer
    for node in model.graph.node:
        layer = next((p.value for p in node.metadata_props if p.key == "adntn.layer"), None)
        if node.domain == lowering.ADNTN_DOMAIN and node.op_type in ("ADNTNLinear", "ADNTNConv2d"):
            arrays = {n: numpy_helper.to_array(inits[n]) for n in node.input[1:] if n in inits}
            try:
                spec = lowering.spec_from_node(node, arrays)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                detail = f"missing attribute {exc}" if isinstance(exc, KeyError) else str(exc)
                raise ValueError(
                    f"{where}: ADNTN layer {node.name!r} cannot be read: {detail}"
                ) from None
            layer = spec.prefix
        if layer is not None:
            for name in node.input:
                if name in inits:
                    checked.setdefault(name, layer)
    if allow_nonfinite:
        return
    for name, layer in checked.items():
        tensor = inits[name]
        if tensor.data_type not in (1, 10, 11, 16):  # float, float16, double, bfloat16
            continue
        array = numpy_helper.to_array(tensor)
        bad = int(array.size - np.isfinite(array).sum())
        if bad:
            raise ValueError(
                f"{where}: ADNTN layer {layer!r}: tensor {name!r} holds {bad} NaN/Inf value(s); "
                "valid: finite values (pass allow_nonfinite=True, or --allow-nonfinite on the "
                "command line, to load it anyway)"
            )
