"""The IDX file format (MNIST, Fashion-MNIST): read and write, gzipped or not.

An IDX file is a 4-byte magic number ``00 00 TT NN`` (``TT`` the element type,
``NN`` the number of dimensions), ``NN`` big-endian uint32 sizes, then the
elements in C order, big-endian. A gzipped file is recognised by its first two
bytes (``1f 8b``), not by its name.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IDX_DTYPES", "parse_idx", "read_idx", "write_idx"]

#: IDX element type code -> numpy dtype (big-endian as stored on disk).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an IDX file (gzipped or not) into a numpy array.

    Args:
        raw: The file's content.
        name: What to call the data in error messages (usually the file path).

    Returns:
        A writable array of the stored shape, in native byte order.

    Raises:
        ValueError: If the gzip stream is corrupt or truncated, the magic number or
            element type is invalid, or the payload length does not match the header.
    """
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{name}: corrupt or truncated gzip stream ({exc})") from exc
    if len(raw) < 4:
        raise ValueError(f"{name}: {len(raw)} bytes is too short for an IDX header (4 bytes)")
    if raw[:2] != b"\x00\x00":
        raise ValueError(
            f"{name}: bad IDX magic number 0x{raw[:4].hex()} (must start with 0x0000); "
            "not an IDX file"
        )
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        valid = ", ".join(f"0x{c:02x}" for c in IDX_DTYPES)
        raise ValueError(f"{name}: unknown IDX element type 0x{code:02x} (valid: {valid})")
    if ndim == 0:
        raise ValueError(f"{name}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(
            f"{name}: truncated IDX header: {ndim} dimensions need {header_len} bytes, "
            f"file has {len(raw)}"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(raw) - header_len
    if found != expected:
        what = "truncated payload" if found < expected else "trailing bytes after payload"
        raise ValueError(
            f"{name}: {what}: shape {tuple(shape)} of {dtype.name} needs {expected} bytes, "
            f"found {found}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, gzipped or not (detected by its first two bytes).

    Args:
        path: The file.

    Returns:
        A writable array of the stored shape and element type, in native byte order.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is corrupt or truncated; the message names the file.
    """
    path = Path(path)
    return parse_idx(path.read_bytes(), str(path))


def write_idx(
    path: str | os.PathLike[str], array: np.ndarray, *, compress: bool | None = None
) -> Path:
    """Write an array as an IDX file, reproducibly (a gzip header holds no time or name).

    Args:
        path: Destination; its parent directory must exist.
        array: Array of uint8, int8, int16, int32, float32 or float64, with at least
            one dimension and every size below 2**32.
        compress: Gzip the file; ``None`` means "if the name ends in ``.gz``".

    Returns:
        The path written.

    Raises:
        ValueError: If the array's dtype or shape cannot be stored in IDX.
    """
    path = Path(path)
    array = np.asarray(array)
    by_kind = {(d.kind, d.itemsize): (c, d) for c, d in IDX_DTYPES.items()}
    key = (array.dtype.kind, array.dtype.itemsize)
    if key not in by_kind:
        raise ValueError(f"IDX cannot store dtype {array.dtype} (writing {path})")
    if array.ndim == 0 or array.ndim > 255 or any(s >= 2**32 for s in array.shape):
        raise ValueError(f"IDX cannot store an array of shape {array.shape} (writing {path})")
    code, dtype = by_kind[key]
    payload = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += np.ascontiguousarray(array, dtype=dtype).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
            gz.write(payload)
        payload = buf.getvalue()
    path.write_bytes(payload)
    return path
