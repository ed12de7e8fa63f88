"""The IDX reader on small files written here, byte by byte, with struct."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from adaptim.lab.errors import LabError
from adaptim.lab.problems.idx import IDX_TYPES, parse_idx, read_idx

CODES = {np.dtype(dtype).newbyteorder("="): code for code, dtype in IDX_TYPES.items()}


def idx_bytes(array: np.ndarray, *, type_code: int | None = None) -> bytes:
    """An IDX encoding of ``array``, written from the format's definition."""
    code = CODES[array.dtype] if type_code is None else type_code
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_every_type_code_round_trips(dtype: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    if dtype == "u1":
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    decoded = parse_idx(idx_bytes(array))
    assert decoded.dtype == array.dtype and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, array)
    assert decoded.flags.writeable


@given(
    hnp.arrays(
        dtype=st.sampled_from([np.dtype(t) for t in ("u1", "i2", "i4", "f4", "f8")]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    )
)
def test_any_array_round_trips(array: np.ndarray) -> None:
    np.testing.assert_array_equal(parse_idx(idx_bytes(array)), array)


def test_mnist_like_files_plain_and_gzipped(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    (tmp_path / "images").write_bytes(idx_bytes(images))
    (tmp_path / "labels.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(tmp_path / "images"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "labels.gz"), labels)
    # Compression is recognised by content, not by name.
    (tmp_path / "labels").write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(tmp_path / "labels"), labels)


GOOD = idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "0 bytes is shorter than the 4-byte header"),
        (b"\x00\x00\x08", "3 bytes is shorter than the 4-byte header"),
        (b"\x12\x34" + GOOD[2:], "magic number 0x12340802 does not start with two zero bytes"),
        (
            b"\x00\x00\x0a\x02" + GOOD[4:],
            "unknown type code 0x0A (known: 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E)",
        ),
        (b"\x00\x00\x08\x00", "it declares 0 dimensions"),
        (GOOD[:9], "truncated in its header: 2 dimensions need 12 bytes, got 9"),
        (GOOD[:-1], "truncated: shape (2, 3) needs 6 bytes of data, found 5"),
        (GOOD + b"\x00\x00", "2 unexpected bytes after the data of shape (2, 3)"),
        (
            idx_bytes(np.zeros(3, np.float32))[:-2],
            "truncated: shape (3,) needs 12 bytes of data, found 10",
        ),
    ],
    ids=[
        "empty",
        "short-header",
        "bad-magic",
        "bad-type",
        "no-dims",
        "cut-dims",
        "cut-data",
        "trailing",
        "cut-float",
    ],
)
def test_corrupt_bytes_are_one_clear_line(data: bytes, message: str) -> None:
    with pytest.raises(LabError) as error:
        parse_idx(data, source="x.idx")
    assert str(error.value) == f"IDX file 'x.idx' is corrupt: {message}"


def test_corrupt_and_truncated_gzip(tmp_path: Path) -> None:
    compressed = gzip.compress(GOOD)
    (tmp_path / "cut.gz").write_bytes(compressed[:-10])
    (tmp_path / "garbage.gz").write_bytes(b"\x1f\x8b" + b"not gzip at all")
    for name in ("cut.gz", "garbage.gz"):
        with pytest.raises(LabError, match="is not valid gzip data") as error:
            read_idx(tmp_path / name)
        assert len(str(error.value).splitlines()) == 1
        assert name in str(error.value)
    # A gzip stream that is fine but holds a truncated IDX file.
    (tmp_path / "short.gz").write_bytes(gzip.compress(GOOD[:-2]))
    with pytest.raises(LabError, match=r"short\.gz' is corrupt: truncated"):
        read_idx(tmp_path / "short.gz")


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(LabError, match=r"cannot read IDX file '.*nope': No such file"):
        read_idx(tmp_path / "nope")
    with pytest.raises(LabError, match="cannot read IDX file") as error:
        read_idx(tmp_path)  # a directory
    assert len(str(error.value).splitlines()) == 1
