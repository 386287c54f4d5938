"""TFRecord writing without TensorFlow: bytes identical to TensorFlow's, readable by tf.data."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from sln_jax import tfrecord

_INT64 = st.integers(-(2 ** 63), 2 ** 63 - 1)
_FLOAT32 = st.floats(allow_nan=False, width=32)
_FEATURES = st.dictionaries(
    st.text(min_size=0, max_size=12),
    st.one_of(
        st.lists(st.binary(max_size=40), max_size=4).map(tfrecord.BytesFeature),
        st.lists(_FLOAT32, max_size=6).map(tfrecord.FloatFeature),
        st.lists(_INT64, max_size=6).map(tfrecord.Int64Feature),
    ),
    max_size=6,
)


def _tf_example(features: dict) -> bytes:
    feature = {}
    for key, value in features.items():
        if isinstance(value, tfrecord.BytesFeature):
            feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=list(value)))
        elif isinstance(value, tfrecord.FloatFeature):
            feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=list(value)))
        else:
            feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=list(value)))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


@settings(max_examples=200, deadline=None)
@given(_FEATURES)
def test_example_bytes_equal_tensorflow(features):
    assert tfrecord.example(features) == _tf_example(features)


def test_example_with_large_payload_and_float_rounding():
    features = {
        "image/encoded": tfrecord.BytesFeature([bytes(range(256)) * 1000]),
        "boxes": tfrecord.FloatFeature([0.1, 1e-40, -3.5, 1e30]),
        "ids": tfrecord.Int64Feature(np.array([0, -1, 2 ** 40], np.int64).tolist()),
        "empty": tfrecord.BytesFeature([b""]),
    }
    assert tfrecord.example(features) == _tf_example(features)
    parsed = tf.train.Example.FromString(tfrecord.example(features)).features.feature
    np.testing.assert_array_equal(parsed["boxes"].float_list.value,
                                  np.float32([0.1, 1e-40, -3.5, 1e30]))
    assert list(parsed["ids"].int64_list.value) == [0, -1, 2 ** 40]


def test_bad_feature_type():
    with pytest.raises(TypeError, match="BytesFeature, FloatFeature or Int64Feature"):
        tfrecord.example({"x": [1, 2]})


def test_writer_is_read_by_tf_data_and_read_records(tmp_path):
    records = [tfrecord.example({"i": tfrecord.Int64Feature([i]),
                                 "b": tfrecord.BytesFeature([bytes(i * 37)])})
               for i in range(5)] + [b""]
    path = tmp_path / "x.tfrecord"
    with tfrecord.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    got = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
    assert got == records
    assert list(tfrecord.read_records(path)) == records
    # TensorFlow's own writer produces the same file.
    tf_path = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(tf_path)) as writer:
        for record in records:
            writer.write(record)
    assert tf_path.read_bytes() == path.read_bytes()


def test_read_records_detects_corruption_and_truncation(tmp_path):
    path = tmp_path / "x.tfrecord"
    with tfrecord.TFRecordWriter(path) as writer:
        writer.write(b"hello world")
        writer.write(b"second")
    data = path.read_bytes()
    bad = bytearray(data)
    bad[14] ^= 0xFF  # inside the first record's data
    (tmp_path / "bad").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="corrupt record data at byte 0"):
        list(tfrecord.read_records(tmp_path / "bad"))
    (tmp_path / "short").write_bytes(data[:-3])
    with pytest.raises(ValueError, match="truncated record at byte 27"):
        list(tfrecord.read_records(tmp_path / "short"))
    bad = bytearray(data)
    bad[0] ^= 0x01
    (tmp_path / "len").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="corrupt record length at byte 0"):
        list(tfrecord.read_records(tmp_path / "len"))


def _same_features(parsed: dict, features: dict) -> None:
    assert sorted(parsed) == sorted(features)
    for key, value in features.items():
        assert type(parsed[key]) is type(value)
        if isinstance(value, tfrecord.FloatFeature):
            assert list(parsed[key]) == np.float32(list(value)).tolist()
        else:
            assert list(parsed[key]) == list(value)


@settings(max_examples=200, deadline=None)
@given(_FEATURES)
def test_parse_example_inverts_example(features):
    _same_features(tfrecord.parse_example(tfrecord.example(features)), features)


def test_parse_example_reads_any_protobuf_writer():
    # Unpacked lists, fields out of order, unknown fields, a key given twice and a list
    # split in two: what TensorFlow's own parser makes of these bytes, ours must too.
    def field(number, payload):
        return tfrecord._field(number, payload)

    def varint_field(number, value):
        return tfrecord._varint(number << 3) + tfrecord._varint(value % (1 << 64))

    unpacked_ints = varint_field(1, 5) + varint_field(1, -7)
    unpacked_floats = b"".join(tfrecord._varint(1 << 3 | 5) + np.float32(v).tobytes()
                               for v in (0.5, -2.25))
    entries = [
        field(2, field(3, unpacked_ints)) + field(1, b"ints"),  # value before key
        field(1, b"floats") + field(2, field(2, unpacked_floats)),
        field(1, b"twice") + field(2, field(1, field(1, b"old"))),
        field(1, b"twice") + field(2, field(1, field(1, b"new"))),
        field(1, b"split") + field(2, field(1, field(1, b"a")) + field(1, field(1, b"b"))),
        field(1, b"unknown") + field(2, field(1, field(1, b"x")) + varint_field(9, 1)),
    ]
    data = field(1, b"".join(field(1, e) for e in entries)) + varint_field(7, 3)
    want = tf.train.Example.FromString(data).features.feature
    parsed = tfrecord.parse_example(data)
    assert list(parsed["ints"]) == list(want["ints"].int64_list.value) == [5, -7]
    assert list(parsed["floats"]) == list(want["floats"].float_list.value) == [0.5, -2.25]
    assert list(parsed["twice"]) == list(want["twice"].bytes_list.value) == [b"new"]
    assert list(parsed["split"]) == list(want["split"].bytes_list.value) == [b"a", b"b"]
    assert list(parsed["unknown"]) == [b"x"]


@settings(max_examples=100, deadline=None)
@given(_FEATURES.filter(bool), st.data())
def test_parse_example_rejects_truncated_bytes(features, data):
    serialized = tfrecord.example(features)
    cut = data.draw(st.integers(1, len(serialized) - 1))
    with pytest.raises(ValueError, match="malformed protobuf"):
        tfrecord.parse_example(serialized[:cut])
