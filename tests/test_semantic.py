"""sln_jax.semantic: the semantic-map files (class ids) and their checks."""

import numpy as np
import pytest
from PIL import Image

from sln_jax import semantic


def _ids(h=6, w=9, top=5, seed=0):
    return np.random.default_rng(seed).integers(0, top, (h, w)).astype(np.uint8)


def test_map_path_is_the_image_stem_in_the_directory(tmp_path):
    assert semantic.map_path(tmp_path, "/data/images/000012.jpg") == str(tmp_path / "000012.png")
    assert semantic.map_path("maps", "a.b.png") == "maps/a.b.png"


@pytest.mark.parametrize("mode", ["L", "P", "I;16"])
def test_read_class_map_round_trip(tmp_path, mode):
    ids = _ids()
    path = tmp_path / "x.png"
    if mode == "P":  # VOC-style label PNG: the palette indices are the ids
        image = Image.fromarray(ids, mode="P")
        image.putpalette(list(range(256)) * 3)
    elif mode == "I;16":
        image = Image.fromarray(ids.astype(np.uint16))
    else:
        image = Image.fromarray(ids)
    image.save(path)
    assert Image.open(path).mode == mode
    out = semantic.read_class_map(path, 6, 9, 5)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, ids)


def test_read_class_map_errors_name_the_file(tmp_path):
    ids = _ids()
    Image.fromarray(ids).save(tmp_path / "ok.png")
    with pytest.raises(semantic.SemanticMapError, match=r"missing\.png: no semantic map"):
        semantic.read_class_map(tmp_path / "missing.png", 6, 9, 5)
    with pytest.raises(semantic.SemanticMapError,
                       match=r"ok\.png: semantic map of 6 x 9 pixels for an image of 9 x 6"):
        semantic.read_class_map(tmp_path / "ok.png", 9, 6, 5)
    with pytest.raises(semantic.SemanticMapError,
                       match=r"ok\.png: class id 4 outside \[0, 4\)"):
        semantic.read_class_map(tmp_path / "ok.png", 6, 9, 4)
    Image.fromarray(np.stack([ids] * 3, -1)).save(tmp_path / "rgb.png")
    with pytest.raises(semantic.SemanticMapError, match=r"rgb\.png: .*single-channel.*mode RGB"):
        semantic.read_class_map(tmp_path / "rgb.png", 6, 9, 5)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(semantic.SemanticMapError, match=r"junk\.png: unreadable"):
        semantic.read_class_map(tmp_path / "junk.png", 6, 9, 5)
    assert issubclass(semantic.SemanticMapError, ValueError)


def test_check_channels():
    assert semantic.check_channels(182) == 182
    for bad in (0, 1, 256):
        with pytest.raises(ValueError, match=r"semantic_channels must be in 2\.\.255"):
            semantic.check_channels(bad)
