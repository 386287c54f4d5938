"""CLI: annotation file + images -> sharded TFRecords with precomputed layering targets.

    python -m data_prep.convert --dataset {synthetic,cocoa,cocoa_cls,d2sa,kins} \\
        --annotations FILE --images DIR --output DIR [--num_shards N] [--workers W] \\
        [--num_layers K] [--split NAME] [--mask_target_size P] [--overwrite]
        [--semantic_dir DIR --semantic_channels S]

Writes ``OUTPUT/{split}.tfrecord-{i:05d}-of-{N:05d}`` (schema: ``sln_jax.records``) and
merges the split into ``OUTPUT/metadata.json`` (classes, K, P, schema version, the semantic
maps' class count, shard files and example counts, statistics and every warning counter). Each shard is written by one
worker process under ``<shard>.incomplete`` and renamed when complete, after its statistics
(``OUTPUT/shard_stats/<shard>.json``); a re-run skips complete shards (resume) unless
``--overwrite``. Bad input stops the run with one line naming the file and the image /
annotation id (exit status 1) and leaves no partial shard behind; repairable problems are
counted in the metadata instead (see ``data_prep.scene``).

Images are split into shards contiguously in the annotation file's order.

Semantic maps (the optional input of the layering head, ``config.data.semantic_channels``):
with ``--semantic_dir DIR --semantic_channels S`` every record also holds the image's class
ids from ``DIR/<image file stem>.png`` (format and checks: ``sln_jax.semantic``), and
``metadata.json`` records ``semantic_channels`` = S (0 without them). Every image needs its
map: a missing one stops the run before anything is written; one of another size than the
image or with an id outside [0, S) stops it with the file named, as bad images do.
"""

from __future__ import annotations

import collections
import dataclasses
import fcntl
import glob
import hashlib
import json
import multiprocessing
import os
import queue as queue_lib
import sys
import time
from typing import Callable

import cv2
import numpy as np
from absl import flags

from data_prep import coco_style, cocoa, d2sa, kins
from data_prep.images import EncodedImage, read_image
from data_prep.records import serialize
from data_prep.scene import AnnotationSet, DataError, Scene, SceneSource, load_scene
from data_prep.targets import Targets, build_targets
from sln_jax import atomic, cli, records, tfrecord
from sln_jax import semantic as semantic_maps
from sln_jax.records import SCHEMA_VERSION

__all__ = ["READERS", "ConversionSettings", "shard_name", "load_example", "convert", "main"]

READERS: dict[str, Callable[[str, str], AnnotationSet]] = {
    "synthetic": d2sa.read,
    "d2sa": d2sa.read,
    "cocoa": cocoa.read,
    "cocoa_cls": cocoa.read_cls,
    "kins": kins.read,
}

DEFAULT_NUM_SHARDS = 8
INCOMPLETE_SUFFIX = ".incomplete"
STATS_DIR = "shard_stats"
METADATA = records.METADATA
PROGRESS_INTERVAL = 0.25  # seconds between a worker's progress reports


@dataclasses.dataclass(frozen=True)
class ConversionSettings:
    """What a shard depends on; a resumed run must match it."""

    dataset: str
    annotations: str
    split: str
    num_layers: int
    mask_target_size: int
    num_shards: int
    schema_version: int = SCHEMA_VERSION
    semantic_channels: int = 0  # S of the semantic maps, 0 = none
    semantic_dir: str = ""


# Shards converted before a settings field existed match its default.
_SETTINGS_DEFAULTS = {"semantic_channels": 0, "semantic_dir": ""}


def _same_settings(stored: dict, settings: ConversionSettings) -> bool:
    """Whether a shard's recorded settings are ``settings``."""
    return {**_SETTINGS_DEFAULTS, **stored} == dataclasses.asdict(settings)


def shard_name(split: str, index: int, num_shards: int) -> str:
    """``train.tfrecord-00003-of-00008``."""
    return f"{split}.tfrecord-{index:05d}-of-{num_shards:05d}"


def _image_digest(sources: list[SceneSource]) -> str:
    ids = ",".join(str(s.image_id) for s in sources)
    return hashlib.sha1(ids.encode()).hexdigest()


def load_example(source: SceneSource, num_classes: int, num_layers: int,
                 mask_target_size: int, warnings: collections.Counter
                 ) -> tuple[Scene, EncodedImage, Targets]:
    """One image's scene, image bytes and layering targets: what a record holds.

    The one path from an annotation to an example, shared by the shards written here and
    the TFDS builders (``data_prep.tfds_builders``). Raises DataError on bad input.
    """
    scene = load_scene(source, num_classes, warnings)
    image = read_image(source.image_path, source.image_id, source.height, source.width)
    if image.converted_from is not None:
        warnings["image_converted"] += 1
    return scene, image, build_targets(scene, num_layers, mask_target_size, warnings)


def load_semantic(source: SceneSource, settings: ConversionSettings) -> np.ndarray:
    """uint8 [H, W] class ids of an image's semantic map; DataError naming the file."""
    path = semantic_maps.map_path(settings.semantic_dir, source.image_path)
    try:
        return semantic_maps.read_class_map(path, source.height, source.width,
                                            settings.semantic_channels)
    except semantic_maps.SemanticMapError as err:
        raise DataError(f"{err} (image id {source.image_id}, {source.image_path})") from None


def _check_semantic_dir(sources: list[SceneSource], directory: str) -> None:
    """DataError unless every image has its own map file (before anything is written)."""
    if not os.path.isdir(directory):
        raise DataError(f"--semantic_dir {directory}: not a directory")
    owners: dict[str, SceneSource] = {}
    for source in sources:
        path = semantic_maps.map_path(directory, source.image_path)
        if path in owners:
            raise DataError(f"{path}: would be the semantic map of two images, "
                            f"{owners[path].image_path} and {source.image_path} (maps are "
                            "named after the image file's stem)")
        owners[path] = source
        if not os.path.isfile(path):
            raise DataError(f"{path}: no semantic map for image id {source.image_id} "
                            f"({source.image_path}); --semantic_dir needs one PNG of class "
                            "ids per image, named after the image file's stem")


_progress_queue = None


def _init_worker(progress_queue) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _convert_shard(job: tuple) -> dict:
    """Write one shard (worker process); returns its statistics (also saved as JSON)."""
    sources, output, name, num_classes, settings = job
    k, p = settings.num_layers, settings.mask_target_size
    path = os.path.join(output, name)
    tmp = path + INCOMPLETE_SUFFIX
    warnings: collections.Counter = collections.Counter()
    stats = {"settings": dataclasses.asdict(settings), "images": _image_digest(sources),
             "num_examples": 0, "instances": 0, "occluded_instances": 0,
             "stuff_instances": 0, "instance_layer_pixels": [0] * k,
             "global_layer_pixels": [0] * k,
             "semantic_class_pixels": [0] * settings.semantic_channels}
    start, start_cpu = time.perf_counter(), time.process_time()
    # Progress goes to the parent a few times a second, not per image: every put wakes the
    # queue's feeder thread here and the parent there.
    unreported, report_at = 0, start + PROGRESS_INTERVAL
    # Parallelism comes from the worker processes; OpenCV's own threads only spin (measured:
    # 10-15 % more CPU per image).
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with tfrecord.TFRecordWriter(tmp) as writer:
            for source in sources:
                scene, image, targets = load_example(source, num_classes, k, p, warnings)
                semantic = None
                if settings.semantic_channels:
                    semantic = load_semantic(source, settings)
                    stats["semantic_class_pixels"] = (np.add(
                        stats["semantic_class_pixels"],
                        np.bincount(semantic.ravel(), minlength=settings.semantic_channels))
                        .tolist())
                writer.write(serialize(scene, image, targets, semantic))
                stats["num_examples"] += 1
                stats["instances"] += scene.num_instances
                stats["occluded_instances"] += int((scene.occlusion > 0).sum())
                stats["stuff_instances"] += int(scene.is_stuff.sum())
                stats["instance_layer_pixels"] = (
                    np.add(stats["instance_layer_pixels"], targets.layer_pixels).tolist())
                # One histogram pass (np.bincount would convert the map to int64 first).
                levels = cv2.calcHist([targets.global_layers], [0], None, [k], [0, k])
                stats["global_layer_pixels"] = [
                    total + int(count)
                    for total, count in zip(stats["global_layer_pixels"], levels.ravel())]
                unreported += 1
                if _progress_queue is not None and time.perf_counter() >= report_at:
                    _progress_queue.put(unreported)
                    unreported, report_at = 0, time.perf_counter() + PROGRESS_INTERVAL
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        cv2.setNumThreads(cv2_threads)
    if _progress_queue is not None and unreported:
        _progress_queue.put(unreported)
    stats["warnings"] = dict(warnings)
    stats["seconds"] = time.perf_counter() - start
    stats["cpu_seconds"] = time.process_time() - start_cpu
    atomic.write_bytes(os.path.join(output, STATS_DIR, name + ".json"),
                  json.dumps(stats).encode())
    os.replace(tmp, path)
    return stats


def _load_stats(output: str, name: str) -> dict | None:
    path = os.path.join(output, STATS_DIR, name + ".json")
    if not os.path.isfile(os.path.join(output, name)) or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _remove_split(output: str, split: str) -> None:
    pattern = f"{split}.tfrecord-*"
    for path in glob.glob(os.path.join(output, pattern)):
        os.remove(path)
    for path in glob.glob(os.path.join(output, STATS_DIR, pattern)):
        os.remove(path)


def _summarize(shard_stats: list[dict], reader_warnings: collections.Counter) -> dict:
    """Split-level statistics from per-shard statistics."""
    warnings = collections.Counter(reader_warnings)
    total = collections.Counter()
    k = len(shard_stats[0]["instance_layer_pixels"]) if shard_stats else 0
    layer_pixels, global_pixels = np.zeros(k, np.int64), np.zeros(k, np.int64)
    semantic_pixels = np.zeros(len(shard_stats[0].get("semantic_class_pixels", []))
                               if shard_stats else 0, np.int64)
    for stats in shard_stats:
        semantic_pixels += np.asarray(stats.get("semantic_class_pixels", []), np.int64)
        warnings.update(stats["warnings"])
        for key in ("num_examples", "instances", "occluded_instances", "stuff_instances"):
            total[key] += stats[key]
        layer_pixels += np.asarray(stats["instance_layer_pixels"], np.int64)
        global_pixels += np.asarray(stats["global_layer_pixels"], np.int64)
    order_keys = ("order_contradicts_masks", "order_tie", "depth_constraint_conflict",
                  "visibility_order_cycle")
    return {
        "images": total["num_examples"],
        "instances": total["instances"],
        "occluded_instances": total["occluded_instances"],
        "occluded_fraction": total["occluded_instances"] / max(total["instances"], 1),
        "stuff_instances": total["stuff_instances"],
        "shard_seconds": [round(float(s.get("seconds", 0.0)), 3) for s in shard_stats],
        "shard_cpu_seconds": [round(float(s.get("cpu_seconds", 0.0)), 3) for s in shard_stats],
        "instance_layer_pixels": layer_pixels.tolist(),
        "global_layer_pixels": global_pixels.tolist(),
        # Pixels of each class in the semantic maps (empty without them).
        "semantic_class_pixels": semantic_pixels.tolist(),
        "conflicts": {
            "order": int(sum(warnings[key] for key in order_keys)),
            "visible_layer": int(warnings["visible_layer_conflict"]),
        },
        "warnings": dict(sorted((key, n) for key, n in warnings.items() if n)),
    }


def _update_metadata(output: str, settings: ConversionSettings, annotations: AnnotationSet,
                     files: list[str], counts: list[int], statistics: dict) -> dict:
    path = os.path.join(output, METADATA)
    # Conversions of several splits into one directory may run at once: merge under a lock
    # on the directory itself, so no lock file is left in the output.
    lock = os.open(output, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        metadata = {}
        if os.path.isfile(path):
            with open(path) as f:
                metadata = json.load(f)
        return _merge_metadata(path, metadata, settings, annotations, files, counts,
                               statistics)
    finally:
        os.close(lock)  # releases the lock


def _common_metadata(settings: ConversionSettings, annotations: AnnotationSet) -> dict:
    """The fields every split of one output directory shares."""
    return {
        "schema_version": SCHEMA_VERSION,
        "num_layers": settings.num_layers,
        "mask_target_size": settings.mask_target_size,
        "num_classes": len(annotations.classes),
        "classes": {str(k): v for k, v in annotations.classes.items()},
        "category_ids": {str(k): v for k, v in annotations.category_ids.items()},
        "semantic_channels": settings.semantic_channels,
    }


def _check_metadata(path: str, metadata: dict, common: dict, split: str) -> None:
    """DataError when the directory's other splits were made with other settings."""
    if not set(metadata.get("splits", {})) - {split}:
        return  # only this split (or none): it is being redone, its old fields go
    for key, value in common.items():
        if key in metadata and metadata[key] != value:
            raise DataError(f"{path}: {key} = {metadata[key]!r} from an earlier conversion "
                            f"differs from {value!r}; convert every split of a directory "
                            "with the same settings, or use another --output")


def _merge_metadata(path: str, metadata: dict, settings: ConversionSettings,
                    annotations: AnnotationSet, files: list[str], counts: list[int],
                    statistics: dict) -> dict:
    common = _common_metadata(settings, annotations)
    _check_metadata(path, metadata, common, settings.split)
    metadata.update(common)
    metadata.setdefault("splits", {})[settings.split] = {
        "dataset": settings.dataset,
        "annotations": settings.annotations,
        "num_examples": int(sum(counts)),
        "files": files,
        "examples_per_file": counts,
        "statistics": statistics,
    }
    atomic.write_bytes(path, json.dumps(metadata, indent=1).encode())
    return metadata


def convert(dataset: str, annotations: str, images: str, output: str, *, split: str,
            num_shards: int | None = None, workers: int = 1, num_layers: int = 4,
            mask_target_size: int = 32, overwrite: bool = False,
            progress: bool = True, semantic_dir: str = "", semantic_channels: int = 0) -> dict:
    """Convert one split; see the module docstring.

    Args:
      dataset: a key of ``READERS``.
      annotations: annotation JSON file.
      images: image directory.
      output: output directory (created).
      split: split name used in file names and metadata.
      num_shards: shard count (default: min(8, number of images), at least 1).
      workers: worker processes (1 = in this process).
      num_layers: K.
      mask_target_size: P.
      overwrite: delete this split's shards first instead of resuming.
      progress: show a tqdm progress bar.
      semantic_dir, semantic_channels: store each image's semantic map, read from
        ``semantic_dir`` with S = ``semantic_channels`` classes (both or neither).

    Returns:
      the updated metadata dict (also written to ``OUTPUT/metadata.json``).

    Raises:
      DataError: bad input, or an output made with other settings (without overwrite).
    """
    from tqdm import tqdm

    if dataset not in READERS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {sorted(READERS)}")
    if not 2 <= num_layers <= 254:
        raise DataError(f"--num_layers must be in 2..254, got {num_layers}")
    if mask_target_size < 1:
        raise DataError(f"--mask_target_size must be >= 1, got {mask_target_size}")
    if bool(semantic_dir) != bool(semantic_channels):
        raise DataError("--semantic_dir and --semantic_channels go together: the maps' "
                        "directory and their number of classes S")
    if semantic_channels:
        try:
            semantic_channels = semantic_maps.check_channels(semantic_channels)
        except ValueError as err:
            raise DataError(f"--{err}") from None
    try:
        annotation_set = READERS[dataset](annotations, images)
    except DataError as err:
        guess = guess_dataset(annotations)
        if guess is None or dataset in guess:
            raise
        raise DataError(f"{err}; the file looks like --dataset {' or '.join(guess)}, "
                        f"not {dataset}") from None
    sources = annotation_set.sources
    if semantic_channels:
        _check_semantic_dir(sources, semantic_dir)
    if num_shards is None:
        num_shards = max(1, min(DEFAULT_NUM_SHARDS, len(sources)))
    if num_shards < 1:
        raise DataError(f"--num_shards must be >= 1, got {num_shards}")
    if num_shards > max(1, len(sources)):
        print(f"warning: --num_shards {num_shards} exceeds the {len(sources)} images of "
              f"split {split!r}: writing {max(1, len(sources))} shard(s), one image each",
              file=sys.stderr)
        num_shards = max(1, len(sources))
    settings = ConversionSettings(
        dataset, os.path.abspath(annotations), split, num_layers, mask_target_size, num_shards,
        semantic_channels=int(semantic_channels),
        semantic_dir=os.path.abspath(semantic_dir) if semantic_dir else "")
    metadata_path = os.path.join(output, METADATA)
    if os.path.isfile(metadata_path):  # fail before writing anything that would not fit
        with open(metadata_path) as f:
            _check_metadata(metadata_path, json.load(f),
                            _common_metadata(settings, annotation_set), split)
    os.makedirs(os.path.join(output, STATS_DIR), exist_ok=True)
    if overwrite:
        _remove_split(output, split)
    names = [shard_name(split, i, num_shards) for i in range(num_shards)]
    stale = {os.path.basename(p) for p in glob.glob(os.path.join(output, f"{split}.tfrecord-*"))
             if not p.endswith(INCOMPLETE_SUFFIX)} - set(names)
    if stale:
        raise DataError(f"{output}: holds shards of split {split!r} with another shard count "
                        f"({sorted(stale)[0]}); use --overwrite")
    bounds = np.linspace(0, len(sources), num_shards + 1).round().astype(int)
    jobs, done = [], {}
    for i, name in enumerate(names):
        part = sources[bounds[i]:bounds[i + 1]]
        stats = _load_stats(output, name)
        if stats is not None:
            if (not _same_settings(stats["settings"], settings)
                    or stats["images"] != _image_digest(part)):
                raise DataError(f"{os.path.join(output, name)}: made with other settings or "
                                "annotations; use --overwrite")
            done[i] = stats
        else:
            jobs.append((i, (part, output, name, len(annotation_set.classes), settings)))
    results = dict(done)
    with tqdm(total=len(sources), desc=f"convert {split}", unit="img",
              disable=not progress) as bar:
        bar.update(sum(s["num_examples"] for s in done.values()))
        if workers <= 1 or len(jobs) <= 1:
            _init_worker(None)
            for i, job in jobs:
                results[i] = _convert_shard(job)
                bar.update(results[i]["num_examples"])
        else:
            results.update(_run_pool(jobs, workers, bar, output, split))
    shard_stats = [results[i] for i in range(num_shards)]
    statistics = _summarize(shard_stats, annotation_set.warnings)
    return _update_metadata(output, settings, annotation_set, names,
                            [s["num_examples"] for s in shard_stats], statistics)


def guess_dataset(path: str) -> tuple[str, ...] | None:
    """The ``--dataset`` values whose reader fits the annotation file's layout, or None.

    Only the layout is looked at (the first annotation's fields): COCOA's per-image entries
    hold ``regions``; KINS names its masks ``a_segm`` / ``i_segm`` / ``inmodal_seg``; other
    COCO-style files (one entry per instance with ``segmentation``) are D2SA-style.
    """
    try:
        data = coco_style.read_json(path)
    except DataError:
        return None
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not annotations or not isinstance(annotations[0], dict):
        return None
    first = annotations[0]
    if "regions" in first:
        return ("cocoa",)
    if {"a_segm", "i_segm", "inmodal_seg"} & set(first):
        return ("kins",)
    if "segmentation" in first and "categories" in data:
        return ("d2sa", "synthetic", "cocoa_cls")
    return None


def _run_pool(jobs: list, workers: int, bar, output: str, split: str) -> dict[int, dict]:
    """Run shard jobs in a process pool, feeding the progress bar; clean up on failure."""
    # spawn: the parent may hold threads (BLAS, OpenCV) that make fork unsafe.
    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue()
    pool = context.Pool(min(workers, len(jobs)), initializer=_init_worker,
                        initargs=(progress_queue,))
    try:
        pending = {i: pool.apply_async(_convert_shard, (job,)) for i, job in jobs}
        results = {}
        while pending:
            try:
                while True:
                    bar.update(progress_queue.get(timeout=0.2))
            except queue_lib.Empty:
                pass
            for i in [i for i, r in pending.items() if r.ready()]:
                results[i] = pending.pop(i).get()  # re-raises a worker's DataError
        pool.close()
        return results
    except BaseException:
        pool.terminate()
        pool.join()
        # Workers killed mid-shard leave their temporary file behind.
        for path in glob.glob(os.path.join(output, f"{split}.tfrecord-*{INCOMPLETE_SUFFIX}")):
            os.remove(path)
        raise
    finally:
        pool.join()


def _default_split(annotations: str) -> str:
    stem = os.path.splitext(os.path.basename(annotations))[0].lower()
    for split in ("train", "val", "test"):
        if split in stem:
            return split
    raise DataError(f"{annotations}: cannot tell the split from the file name; pass --split")


def _define_flags(values: flags.FlagValues) -> None:
    def define(kind, name, default, help_):
        kind(name, default, help_, flag_values=values)

    flags.DEFINE_enum("dataset", None, sorted(READERS), "annotation format", flag_values=values)
    define(flags.DEFINE_string, "annotations", None, "annotation JSON file")
    define(flags.DEFINE_string, "images", None, "image directory")
    define(flags.DEFINE_string, "output", None, "output directory")
    define(flags.DEFINE_integer, "num_shards", None,
           f"shards (default: min({DEFAULT_NUM_SHARDS}, images))")
    define(flags.DEFINE_integer, "workers", min(2, os.cpu_count() or 1), "worker processes")
    define(flags.DEFINE_integer, "num_layers", 4, "K, layer classes")
    define(flags.DEFINE_string, "split", None,
           "split name (default: train/val/test from the file name)")
    define(flags.DEFINE_integer, "mask_target_size", 32,
           "P, side of the per-instance target crops")
    define(flags.DEFINE_bool, "overwrite", False, "redo this split instead of resuming")
    define(flags.DEFINE_bool, "no_progress", False, "no progress bar")
    define(flags.DEFINE_string, "semantic_dir", "",
           "semantic maps: one PNG of class ids per image, named after the image file's "
           "stem (sln_jax/semantic.py); needs --semantic_channels")
    define(flags.DEFINE_integer, "semantic_channels", 0,
           "S, the semantic maps' number of classes (ids 0..S-1); 0 = no maps")
    flags.mark_flags_as_required(["dataset", "annotations", "images", "output"],
                                 flag_values=values)


def _parse_args(argv: list[str] | None) -> flags.FlagValues:
    """The command line (``sln_jax.cli``: absl flags, parsed per call)."""
    return cli.parse(_define_flags, argv, "python -m data_prep.convert")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 with a one-line message on bad input)."""
    args = _parse_args(argv)
    try:
        split = args.split or _default_split(args.annotations)
        metadata = convert(args.dataset, args.annotations, args.images, args.output,
                           split=split, num_shards=args.num_shards, workers=args.workers,
                           num_layers=args.num_layers, mask_target_size=args.mask_target_size,
                           overwrite=args.overwrite, progress=not args.no_progress,
                           semantic_dir=args.semantic_dir,
                           semantic_channels=args.semantic_channels)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    stats = metadata["splits"][split]["statistics"]
    print(f"{split}: {stats['images']} images, {stats['instances']} instances "
          f"({stats['occluded_fraction']:.1%} occluded) -> {args.output}")
    if stats["warnings"]:
        print("warnings: " + ", ".join(f"{k}={v}" for k, v in stats["warnings"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
