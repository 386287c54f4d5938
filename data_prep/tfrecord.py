"""TFRecord files of tf.train.Example protos, written without importing TensorFlow.

Importing TensorFlow takes about 9 s of CPU per process on this project's machines, and
every conversion worker would pay it just to frame bytes: the Example wire format and the
TFRecord framing are both small, stable, published formats, so they are written here.
``tests/test_tfrecord.py`` checks the bytes against ``tf.train.Example.SerializeToString(
deterministic=True)`` and that ``tf.data.TFRecordDataset`` reads the files back.

Example (``tensorflow/core/example/{example,feature}.proto``)::

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }        # entries sorted by key
    Feature  { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                            Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed = true]; }
    Int64List { repeated int64 value = 1 [packed = true]; }

TFRecord framing per record: ``uint64 length | uint32 masked_crc32c(length) | data |
uint32 masked_crc32c(data)``, little-endian.
"""

from __future__ import annotations

import os
import struct
from typing import Iterator, Union

import google_crc32c
import numpy as np

__all__ = ["BytesFeature", "FloatFeature", "Int64Feature", "Feature", "example",
           "masked_crc32c", "TFRecordWriter", "read_records"]


class BytesFeature(tuple):
    """A ``bytes_list`` feature: a sequence of bytes values."""


class FloatFeature(tuple):
    """A ``float_list`` feature: values stored as float32."""


class Int64Feature(tuple):
    """An ``int64_list`` feature: values stored as int64."""


Feature = Union[BytesFeature, FloatFeature, Int64Feature]


_SMALL = [bytes((v,)) for v in range(128)]


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int (< 2**64)."""
    if value < 128:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2) with a field number below 16."""
    return _SMALL[number << 3 | 2] + _varint(len(payload)) + payload


def _feature(value: Feature) -> bytes:
    if isinstance(value, BytesFeature):
        return _field(1, b"".join(_field(1, bytes(v)) for v in value))
    if isinstance(value, FloatFeature):
        packed = np.asarray(value, "<f4").tobytes()
        return _field(2, _field(1, packed) if packed else b"")
    if isinstance(value, Int64Feature):
        # int64 varints are two's complement: negatives take 10 bytes.
        packed = b"".join(_varint(int(v) & 0xFFFFFFFFFFFFFFFF) for v in value)
        return _field(3, _field(1, packed) if packed else b"")
    raise TypeError(f"feature values must be BytesFeature, FloatFeature or Int64Feature, "
                    f"got {type(value).__name__}")


def _map_order(key: str) -> bytes:
    # protobuf (upb) orders string map keys bytewise, except that a key that is a prefix of
    # another comes after it; 0xFF never occurs in UTF-8, so it works as the sentinel.
    return key.encode() + b"\xff"


def example(features: dict[str, Feature]) -> bytes:
    """A serialized tf.train.Example, byte-identical to TensorFlow's deterministic output.

    Args:
      features: name -> feature; map entries are written in the order of protobuf's
        deterministic serialization, so the bytes do not depend on dict order.

    Returns:
      bytes of the Example proto.
    """
    entries = b"".join(
        _field(1, _field(1, key.encode()) + _field(2, _feature(features[key])))
        for key in sorted(features, key=_map_order))
    return _field(1, entries)


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data`` (uint32)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordWriter:
    """Writes records to a TFRecord file (uncompressed); a context manager.

    Args:
      path: output file, created or truncated.
    """

    def __init__(self, path: str | os.PathLike):
        self._file = open(path, "wb")

    def write(self, record: bytes) -> None:
        """Append one record (bytes, e.g. from ``example``)."""
        length = struct.pack("<Q", len(record))
        self._file.write(length + struct.pack("<I", masked_crc32c(length)) + record
                         + struct.pack("<I", masked_crc32c(record)))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "TFRecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_records(path: str | os.PathLike) -> Iterator[bytes]:
    """Yield the records of a TFRecord file, checking both CRCs.

    Raises:
      ValueError: naming the file and byte offset on a truncated file or a CRC mismatch.
    """
    with open(path, "rb") as f:
        offset = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise ValueError(f"{path}: truncated record header at byte {offset}")
            length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
            if masked_crc32c(length_bytes) != length_crc:
                raise ValueError(f"{path}: corrupt record length at byte {offset}")
            (length,) = struct.unpack("<Q", length_bytes)
            data, footer = f.read(length), f.read(4)
            if len(data) < length or len(footer) < 4:
                raise ValueError(f"{path}: truncated record at byte {offset}")
            if masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise ValueError(f"{path}: corrupt record data at byte {offset}")
            offset += 16 + length
            yield data
