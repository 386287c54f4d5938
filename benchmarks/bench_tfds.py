"""TFDS generation throughput beside the process-pool conversion, on the same drawn images.

Synthetic 512 x 512 scenes with 10 instances (as ``bench_convert.py``) are drawn once, then
converted by:
* ``data_prep.convert`` (the process pool) with 1 and 2 workers;
* the ``sln_synthetic`` TFDS builder generating in this process;
* the same builder on Apache Beam's DirectRunner, ``--direct_num_workers`` 2
  (multi_processing), when apache_beam is installed.

Each figure is images/s of the whole run's wall clock (TFDS: including its shuffle and
writing; Beam: including the pipeline's start-up), the median of ``--repeats``, after one
untimed run of each (the first TFDS build in a process imports TensorFlow, ~20 s here).
The Beam start-up alone is printed too: the wall clock of a 2-image run.

    python benchmarks/bench_tfds.py [--images 96] [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# Beam's worker processes unpickle functions of data_prep.
os.environ["PYTHONPATH"] = REPO + (os.pathsep + os.environ["PYTHONPATH"]
                                   if os.environ.get("PYTHONPATH") else "")

import tensorflow_datasets as tfds  # noqa: E402
from etils import epath  # noqa: E402

from data_prep import convert, synthetic  # noqa: E402
from data_prep.tfds_builders import SlnSynthetic, SyntheticConfig  # noqa: E402

K, P = 4, 28  # configs/synthetic.py


class _Drawn(SlnSynthetic, skip_registration=True):
    """sln_synthetic reading already drawn files (the drawing is not what is measured)."""

    name = "sln_synthetic"
    raw = ""
    pkg_dir_path = epath.Path(os.path.dirname(os.path.abspath(__file__)))  # not __main__

    def _annotation_sets(self, dl_manager):
        return {"train": (os.path.join(self.raw, "annotations", "train.json"),
                          os.path.join(self.raw, "images", "train"))}


def _pool(raw: str, out: str, workers: int, images: int) -> float:
    start = time.perf_counter()
    convert.convert("synthetic", os.path.join(raw, "annotations", "train.json"),
                    os.path.join(raw, "images", "train"), out, split="train",
                    num_shards=max(2, workers), workers=workers, num_layers=K,
                    mask_target_size=P, overwrite=True, progress=False)
    return images / (time.perf_counter() - start)


def _tfds(raw: str, data_dir: str, images: int, beam_workers: int = 0) -> float:
    shutil.rmtree(data_dir, ignore_errors=True)
    _Drawn.raw = raw
    config = SyntheticConfig(name="bench", num_layers=K, mask_target_size=P,
                             image_size=512, num_train=images, num_val=0)
    builder = _Drawn(data_dir=data_dir, config=config)
    download_config = tfds.download.DownloadConfig()
    if beam_workers:
        import apache_beam as beam

        download_config = tfds.download.DownloadConfig(
            beam_options=beam.options.pipeline_options.PipelineOptions([
                "--runner=DirectRunner", f"--direct_num_workers={beam_workers}",
                "--direct_running_mode=multi_processing"]))
    start = time.perf_counter()
    builder.download_and_prepare(download_config=download_config)
    seconds = time.perf_counter() - start
    assert builder.info.splits["train"].num_examples == images
    return images / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="pool / Beam workers")
    args = parser.parse_args()
    try:
        import apache_beam  # noqa: F401
        have_beam = True
    except ImportError:
        have_beam = False
    tfds.disable_progress_bar()
    with tempfile.TemporaryDirectory() as root:
        raw = os.path.join(root, "raw")
        config = synthetic.SceneConfig(image_size=512, min_objects=10, max_objects=10)
        synthetic.write_split(raw, "train", args.images, seed=0, config=config, workers=2,
                              progress=False)
        runs = {
            "process pool, 1 worker": lambda: _pool(raw, os.path.join(root, "r1"), 1,
                                                    args.images),
            f"process pool, {args.workers} workers": lambda: _pool(
                raw, os.path.join(root, "r2"), args.workers, args.images),
            "TFDS builder, in process": lambda: _tfds(raw, os.path.join(root, "t"),
                                                      args.images),
        }
        if have_beam:
            runs[f"TFDS builder, Beam DirectRunner, {args.workers} workers"] = (
                lambda: _tfds(raw, os.path.join(root, "b"), args.images, args.workers))
        print(f"{args.images} synthetic 512x512 scenes, 10 instances, K = {K}, P = {P}; "
              f"images/s, median of {args.repeats} (min - max)")
        for label, run in runs.items():
            run()  # warm-up
            rates = [run() for _ in range(args.repeats)]
            print(f"  {label:<45s} {statistics.median(rates):7.1f}  "
                  f"({min(rates):.1f} - {max(rates):.1f})", flush=True)
        if have_beam:
            small = os.path.join(root, "raw2")
            synthetic.write_split(small, "train", 2, seed=0, config=config, progress=False)
            seconds = 2 / _tfds(small, os.path.join(root, "b2"), 2, args.workers)
            print(f"  Beam DirectRunner start-up (a 2-image run): {seconds:.1f} s")
        else:
            print("  (Beam DirectRunner: apache_beam is not installed)")


if __name__ == "__main__":
    main()
