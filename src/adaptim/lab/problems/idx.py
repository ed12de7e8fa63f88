"""A reader for the IDX format of the MNIST files (LeCun, Cortes & Burges).

An IDX file is a big-endian header followed by the values, row-major::

    offset  bytes   meaning
    0       2       zero
    2       1       type code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                    0x0D float32, 0x0E float64
    3       1       number of dimensions, n
    4       4·n     the size of each dimension, uint32
    4+4·n   ...     the values, big-endian, exactly prod(sizes) of them

Files may be gzip-compressed (recognised by their content, not their name).
Every way a file can be unreadable, truncated or corrupt is reported as one
:class:`~adaptim.lab.errors.LabError` line naming the file.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from adaptim.lab.errors import LabError

#: IDX type code → NumPy dtype (big-endian).
IDX_TYPES: dict[int, np.dtype[np.generic]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Path) -> np.ndarray:
    """The array stored in the IDX file ``path`` (optionally gzip-compressed), in native byte order."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LabError(f"cannot read IDX file {str(path)!r}: {exc.strerror or exc}") from exc
    if raw.startswith(_GZIP_MAGIC):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise LabError(f"IDX file {str(path)!r} is not valid gzip data: {exc}") from exc
    return parse_idx(raw, source=str(path))


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """The array encoded in the (uncompressed) IDX bytes ``data``; ``source`` names it in errors."""

    def corrupt(reason: str) -> LabError:
        return LabError(f"IDX file {source!r} is corrupt: {reason}")

    if len(data) < 4:
        raise corrupt(f"{len(data)} bytes is shorter than the 4-byte header")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise corrupt(f"magic number 0x{data[:4].hex()} does not start with two zero bytes")
    if type_code not in IDX_TYPES:
        known = ", ".join(f"0x{code:02X}" for code in IDX_TYPES)
        raise corrupt(f"unknown type code 0x{type_code:02X} (known: {known})")
    if ndim == 0:
        raise corrupt("it declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise corrupt(
            f"truncated in its header: {ndim} dimensions need {header} bytes, got {len(data)}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_TYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - header
    if found < expected:
        raise corrupt(f"truncated: shape {shape} needs {expected} bytes of data, found {found}")
    if found > expected:
        raise corrupt(f"{found - expected} unexpected bytes after the data of shape {shape}")
    values = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header)
    return values.reshape(shape).astype(dtype.newbyteorder("="))
