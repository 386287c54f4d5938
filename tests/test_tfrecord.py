"""TFRecord writing without TensorFlow: bytes identical to TensorFlow's, readable by tf.data."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from data_prep import tfrecord

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
