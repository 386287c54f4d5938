"""sln_jax.atomic: the one atomic writer (temporary file, then rename)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from sln_jax import atomic


def _random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_write_json_atomic_handles_numpy_and_leaves_no_temp(tmp_path):
    payload = {"a": np.int64(3), "b": np.float32(0.5), "c": np.arange(3), "d": b"rle"}
    atomic.write_json(tmp_path / "out" / "r.json", payload)
    assert json.loads((tmp_path / "out" / "r.json").read_text()) == {
        "a": 3, "b": 0.5, "c": [0, 1, 2], "d": "rle"}
    assert os.listdir(tmp_path / "out") == ["r.json"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "r.json"
    atomic.write_json(target, [1])
    with pytest.raises(TypeError):
        atomic.write_json(target, [object()])
    assert json.loads(target.read_text()) == [1]
    assert os.listdir(tmp_path) == ["r.json"]


def test_write_png_atomic_round_trip(tmp_path):
    pixels = _random_rgb(5, 6)
    atomic.write_png(tmp_path / "p.png", pixels)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "p.png")), pixels)
    with pytest.raises(ValueError, match="q.png"):
        atomic.write_png(tmp_path / "q.png", pixels.astype(np.float32))




def test_write_bytes_replaces_and_json_indent_ends_with_newline(tmp_path):
    atomic.write_bytes(tmp_path / "a" / "b.bin", b"old")
    atomic.write_bytes(tmp_path / "a" / "b.bin", b"new")
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"new"
    atomic.write_json(tmp_path / "m.json", {"b": 1, "a": 2}, indent=2, sort_keys=True)
    assert (tmp_path / "m.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
