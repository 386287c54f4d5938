"""TFRecord files of tf.train.Example protos, written and read without importing TensorFlow.

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
           "parse_example", "masked_crc32c", "TFRecordWriter", "read_records"]


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


class _Reader:
    """Protobuf wire-format fields of one message (``ValueError`` on malformed bytes)."""

    def __init__(self, data: memoryview):
        self.data, self.pos = data, 0

    def varint(self) -> int:
        value = shift = 0
        while True:
            if self.pos >= len(self.data) or shift > 63:
                raise ValueError("malformed protobuf: truncated or overlong varint")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    def take(self, size: int) -> memoryview:
        if size < 0 or self.pos + size > len(self.data):
            raise ValueError("malformed protobuf: field runs past the end of its message")
        self.pos += size
        return self.data[self.pos - size:self.pos]

    def fields(self) -> Iterator[tuple[int, int, int | memoryview]]:
        """(field number, wire type, value): an int for varints, bytes for the others."""
        while self.pos < len(self.data):
            key = self.varint()
            number, wire = key >> 3, key & 7
            if wire == 0:
                yield number, wire, self.varint()
            elif wire == 1:
                yield number, wire, self.take(8)
            elif wire == 2:
                yield number, wire, self.take(self.varint())
            elif wire == 5:
                yield number, wire, self.take(4)
            else:
                raise ValueError(f"malformed protobuf: unsupported wire type {wire}")


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _parse_feature(data: memoryview) -> Feature | None:
    """One Feature message; repeated occurrences of a list merge, as protobuf's parser does."""
    kind, values = None, []
    for number, wire, value in _Reader(data).fields():
        if number not in (1, 2, 3) or wire != 2:
            continue  # unknown fields are skipped, as protobuf does
        if number != kind:  # another member of the oneof replaces the current one
            kind, values = number, []
        for item_number, item_wire, item in _Reader(value).fields():
            if item_number != 1:
                continue
            if number == 1 and item_wire == 2:
                values.append(bytes(item))
            elif number == 2 and item_wire == 2:  # packed
                if len(item) % 4:
                    raise ValueError("malformed protobuf: packed floats not a multiple of "
                                     "4 bytes")
                values.extend(np.frombuffer(item, "<f4").tolist())
            elif number == 2 and item_wire == 5:
                values.append(struct.unpack("<f", item)[0])
            elif number == 3 and item_wire == 2:  # packed
                packed = _Reader(item)
                while packed.pos < len(item):
                    values.append(_int64(packed.varint()))
            elif number == 3 and item_wire == 0:
                values.append(_int64(item))
            else:
                raise ValueError("malformed protobuf: a list value of the wrong wire type")
    return None if kind is None else (BytesFeature, FloatFeature, Int64Feature)[kind - 1](values)


def parse_example(serialized: bytes) -> dict[str, Feature]:
    """Features of a serialized tf.train.Example, parsed without TensorFlow.

    Reads what any protobuf writer produces (packed or unpacked lists, any field and map
    order, unknown fields), with protobuf's rules: a repeated map key keeps its last value.

    Args:
      serialized: bytes of an Example proto.

    Returns:
      name -> BytesFeature (bytes values), FloatFeature (Python floats of the stored
      float32) or Int64Feature (ints); a feature with no kind set is left out.

    Raises:
      ValueError: on malformed bytes (truncated fields, bad varints, invalid UTF-8 keys).
    """
    features: dict[str, Feature] = {}
    for number, wire, value in _Reader(memoryview(serialized)).fields():
        if number != 1 or wire != 2:
            continue
        for entry_number, entry_wire, entry in _Reader(value).fields():
            if entry_number != 1 or entry_wire != 2:
                continue
            key, feature = "", None
            for item_number, item_wire, item in _Reader(entry).fields():
                if item_number == 1 and item_wire == 2:
                    try:
                        key = bytes(item).decode()
                    except UnicodeDecodeError:
                        raise ValueError("malformed protobuf: feature name is not UTF-8") from None
                elif item_number == 2 and item_wire == 2:
                    feature = _parse_feature(item)
            if feature is None:
                features.pop(key, None)
            else:
                features[key] = feature
    return features


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
