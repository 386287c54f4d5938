"""COCO RLE: checked NumPy decoding agrees with pycocotools; area, box and errors."""

import collections

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pycocotools import mask as mask_utils

from sln_jax import rle
from sln_jax import layering

_MASKS = st.tuples(st.integers(1, 40), st.integers(1, 40)).flatmap(
    lambda shape: hnp.arrays(bool, shape, elements=st.booleans()))
_BLOBS = st.tuples(st.integers(1, 60), st.integers(1, 60), st.integers(0, 2 ** 32 - 1)).map(
    lambda a: np.random.default_rng(a[2]).random((a[0], a[1])) < 0.1)


@settings(max_examples=150, deadline=None)
@given(st.one_of(_MASKS, _BLOBS))
def test_decode_area_box_match_pycocotools(mask):
    h, w = mask.shape
    encoded = mask_utils.encode(np.asfortranarray(mask, np.uint8))
    runs = rle.counts(encoded["counts"], h, w)
    np.testing.assert_array_equal(rle.decode(runs, h, w), mask)
    assert rle.area(runs) == int(mask_utils.area(encoded)) == int(mask.sum())
    y1, x1, y2, x2 = layering.masks_to_boxes(mask[None])[0]
    assert tuple(rle.boxes([encoded["counts"]], h, w)[0]) == (y1, x1, y2, x2)
    assert rle.encode(mask) == encoded["counts"]


@settings(max_examples=60, deadline=None)
@given(st.tuples(st.integers(1, 30), st.integers(1, 30), st.integers(0, 2 ** 32 - 1),
                 st.integers(1, 12)))
def test_counts_many_and_boxes_match_one_at_a_time(args):
    # Several masks of one image: empty, full, sparse and dense, so that the delta chains
    # of neighbouring masks have every length and parity.
    h, w, seed, m = args
    rng = np.random.default_rng(seed)
    masks = rng.random((m, h, w)) < rng.random((m, 1, 1))
    masks[rng.random(m) < 0.2] = False
    masks[rng.random(m) < 0.1] = True
    compressed = [rle.encode(mask) for mask in masks]
    many = rle.counts_many(compressed, h, w)
    assert len(many) == m
    for runs, data, mask in zip(many, compressed, masks):
        np.testing.assert_array_equal(runs, rle.counts(data, h, w))
        np.testing.assert_array_equal(rle.decode(runs, h, w), mask)
    want = layering.masks_to_boxes(masks).astype(np.int64)
    want[~masks.any(axis=(1, 2))] = 0
    np.testing.assert_array_equal(rle.boxes(compressed, h, w), want)


@pytest.mark.parametrize("bad, message", [
    (b"", "empty RLE counts"),
    (b"0 1", "outside the COCO alphabet"),
    (b"1P", "truncated"),
    (b"1" + b"o" * 8 + b"0", "too large"),
    (b"1@", "negative run length"),
    (b"12", "RLE runs cover 3 pixels"),
    (b"0", "RLE runs cover 0 pixels"),
])
def test_counts_many_names_the_first_bad_entry(bad, message):
    good = rle.encode(np.eye(4, dtype=bool))
    with pytest.raises(rle.RleError, match=message) as err:
        rle.counts_many([good, bad, b"", good], 4, 4)
    assert err.value.index == 1
    assert rle.counts_many([], 4, 4) == [] and rle.boxes([], 4, 4).shape == (0, 4)


def test_decode_into_writes_only_the_foreground_span():
    mask = np.zeros((6, 5), bool)
    mask[2:4, 1:3] = True
    runs = rle.counts(rle.encode(mask), 6, 5)
    out = np.full(30, False)
    rle.decode_into(runs, out)
    np.testing.assert_array_equal(out.reshape(5, 6).T, mask)
    sentinel = np.ones(30, bool)  # not zero: untouched pixels outside the span stay set
    rle.decode_into(runs, sentinel)
    assert sentinel[:8].all() and sentinel[16:].all()
    assert not rle.decode_into(rle.counts(rle.encode(np.zeros((6, 5), bool)), 6, 5), out)


def test_compress_polygons_and_uncompressed_counts():
    warnings = collections.Counter()
    poly = [1.0, 1.0, 8.0, 1.0, 8.0, 6.0, 1.0, 6.0]
    want = mask_utils.merge(mask_utils.frPyObjects([poly], 10, 12))["counts"]
    assert rle.compress(poly, 10, 12, warnings) == want
    assert rle.compress([poly], 10, 12, warnings) == want
    assert not warnings
    rle.compress([-2.0, 0.0, 5.0, 0.0, 5.0, 5.0], 10, 12, warnings)
    assert warnings["polygon_clipped"] == 1
    mask = rle.decode(rle.counts(rle.compress({"counts": [3, 2, 115], "size": [10, 12]},
                                              10, 12, warnings), 10, 12), 10, 12)
    assert mask.sum() == 2 and mask[3, 0] and mask[4, 0]
    assert rle.compress({"counts": "PPYo0"}, 10, 12, warnings) == b"PPYo0"
    assert rle.decode(rle.counts(rle.compress([], 4, 4, warnings), 4, 4), 4, 4).sum() == 0


@pytest.mark.parametrize("segmentation, message", [
    ({"counts": 5}, "must be a string or a list"),
    ({"counts": [3, -1]}, "non-negative integers"),
    ([1, 2, 3, "a", 5, 6], "polygon coordinates must be numbers"),
    ([1, 2, 3, 4, 5, 6, 7], "odd number of coordinates"),
    (7, "segmentation must be a polygon list or an RLE dict"),
])
def test_compress_errors(segmentation, message):
    with pytest.raises(rle.RleError, match=message):
        rle.compress(segmentation, 4, 4, collections.Counter())


@pytest.mark.parametrize("counts, message", [
    (b"", "empty RLE counts"),
    (b"0 1", "outside the COCO alphabet"),
    (b"0~", "outside the COCO alphabet"),
    (b"1P", "truncated"),
    (b"1" + b"o" * 8 + b"0", "too large"),
    (b"1@", "negative run length"),
    (b"12", "RLE runs cover 3 pixels but the image has 4 x 4 = 16"),
])
def test_counts_errors(counts, message):
    with pytest.raises(rle.RleError, match=message):
        rle.counts(counts, 4, 4)
