"""data_prep.preview: pictures of converted records, read without TensorFlow."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from amodal_files import layered_scene, write_d2sa
from data_prep import convert, preview
from sln_jax import depth_order, records, tfrecord
from data_prep.scene import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K, P = 3, 10


def _convert(root, split, scenes):
    path, images = write_d2sa(str(root / "d2sa"), scenes, split=split)
    output = str(root / "records")
    assert convert.main(["--dataset", "d2sa", "--annotations", path, "--images", images,
                         "--output", output, "--num_layers", str(K), "--mask_target_size",
                         str(P), "--workers", "1", "--no_progress", "--num_shards", "2"]) == 0
    return output


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    scenes = [layered_scene(seed=s, count=3) for s in range(3)] + [layered_scene(seed=9,
                                                                                  count=0)]
    return _convert(tmp_path_factory.mktemp("preview"), "train", scenes)


def test_pictures_of_the_first_records(converted, tmp_path, capsys):
    out = str(tmp_path / "pictures")
    assert preview.main(["--records", converted, "--num", "3", "--output", out,
                         "--no_progress"]) == 0
    assert "3 pictures" in capsys.readouterr().out
    # Records in file order, across shards; nothing left under a temporary name.
    assert sorted(os.listdir(out)) == ["train_1.png", "train_2.png", "train_3.png"]
    for name in os.listdir(out):
        picture = cv2.imread(os.path.join(out, name))
        assert picture is not None and picture.shape[0] > 300 and picture.shape[1] > 1000
        assert picture.std() > 10  # drawn, not blank
    # Asking for more than there is draws every record, the image without instances too.
    paths = preview.preview(converted, num=50, output=out, progress=False)
    assert [os.path.basename(p) for p in paths] == [f"train_{i}.png" for i in range(1, 5)]


def test_without_a_train_split_draws_the_first_converted_one(tmp_path, capsys):
    records_dir = _convert(tmp_path, "val", [layered_scene(seed=s, count=2) for s in range(2)])
    _convert(tmp_path, "test", [layered_scene(seed=5, count=2)])
    # No --split: the first split of metadata.json (val, converted first), to RECORDS/previews.
    assert preview.main(["--records", records_dir, "--no_progress"]) == 0
    assert "2 pictures" in capsys.readouterr().out
    assert sorted(os.listdir(os.path.join(records_dir, "previews"))) == ["val_1.png",
                                                                         "val_2.png"]
    assert preview.main(["--records", records_dir, "--split", "test", "--no_progress"]) == 0
    assert "test_1.png" in os.listdir(os.path.join(records_dir, "previews"))
    # A split that was not converted: one line naming the ones that were.
    assert preview.main(["--records", records_dir, "--split", "train", "--no_progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no split 'train'; converted splits: ['test', 'val']" in err


def test_runs_without_tensorflow(converted, tmp_path):
    script = ("import sys\n"
              "from data_prep import preview\n"
              f"assert preview.main(['--records', {converted!r}, '--num', '1', '--output', "
              f"{str(tmp_path)!r}, '--no_progress']) == 0\n"
              "assert 'tensorflow' not in sys.modules and 'jax' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)


def test_order_graph_from_rank():
    amodal = np.zeros((3, 8, 8), bool)
    amodal[0, :4, :4] = amodal[1, 2:6, 2:6] = amodal[2, 6:, 6:] = True  # 2 touches nobody
    graph = depth_order.from_rank(amodal, np.array([1, 0, 2]))
    np.testing.assert_array_equal(graph, [[0, -1, 0], [1, 0, 0], [0, 0, 0]])
    assert graph.dtype == np.int8
    assert depth_order.from_rank(np.zeros((0, 8, 8), bool), np.zeros(0)).shape == (0, 0)


def test_errors_name_the_problem(converted, tmp_path, capsys):
    assert preview.main(["--records", str(tmp_path), "--no_progress"]) == 1
    assert "metadata.json: not found" in capsys.readouterr().err
    assert preview.main(["--records", converted, "--split", "val", "--no_progress"]) == 1
    assert "no split 'val'; converted splits: ['train']" in capsys.readouterr().err
    assert preview.main(["--records", converted, "--num", "0", "--no_progress"]) == 1
    assert "--num must be >= 1" in capsys.readouterr().err


def test_undecodable_image_leaves_no_file(converted, tmp_path):
    name = convert.shard_name("train", 0, 2)
    record = records.parse(next(tfrecord.read_records(os.path.join(converted, name))), P)
    record["image"] = b"not an image"
    path = str(tmp_path / "bad.png")
    with pytest.raises(DataError, match="stored image bytes do not decode"):
        preview.render(path, record, K, {})
    assert os.listdir(tmp_path) == []
