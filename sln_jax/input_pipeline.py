"""tf.data input pipeline: TFRecords from ``data_prep.convert`` -> fixed-shape NumPy batches.

``config.data.source`` chooses the data: 'records' (default) reads ``data_prep.convert``'s
output in ``config.data.dir``; 'tfds' reads a dataset of ``data_prep.tfds_builders``
prepared in the version directory ``config.data.dir`` (``_tfds_source``), the same batches
for the same examples.

Per image: decode, resize keeping the aspect ratio to max side S, optional random
horizontal flip (image, global layering map, semantic map, boxes and the box-relative
layer / sem-dist crops together), ImageNet normalization, zero padding to S x S, instances
padded to M with a validity mask. Batches have leading dims ``[devices, per_device_batch]``;
the keys, dtypes and shapes are the table in ``docs/interfaces.md``, plus ``image_valid``.

Every per-pixel array (the image, the global layering map, the semantic map) goes through
one transform, ``_to_content`` (resize to the content size, flip) and is padded bottom /
right, so they stay aligned pixel for pixel. With ``data.semantic_channels`` = S_sem > 0 the
records' semantic map (class ids) becomes ``semantic`` float32 [S/4, S/4, S_sem], the class
fractions of ``sln_jax.canvas.class_fractions_tf`` (canvas padding: no class); records
without maps are refused at start-up (``records.read_metadata``), and so is
``source = 'tfds'``, whose datasets hold none.

Choices:
* more than M instances: the M with the largest amodal area are kept (in their record
  order); the global layering map still counts the others.
* host sharding: host i reads the shard files ``files[i::process_count]``.
* training is an endless stream of epochs; epoch e visits this host's files in an order
  and through a shuffle buffer both seeded by (seed, e), and example number t of the stream
  is flipped iff a stateless draw seeded by (seed, t) says so. The stream is thus a
  function of (seed, t): ``start_step`` jumps to example ``start_step * batch`` (skipping
  whole epochs without reading them) and yields exactly the batches an uninterrupted run
  would have yielded from that step on.
* GT box jitter (``data.box_jitter`` = j > 0, training only; the reference's
  ``utils.extract_bboxes`` adds U(-1, 1) x (h, w, h, w) / 15 to every GT box, i.e. j = 1/15):
  each coordinate of each kept box moves by U(-1, 1) x j x the box's height (y) or width (x),
  then the box is clipped to the image content. The jittered box is what the RPN and box
  targets see. The layer / sem-dist crops are relative to their box, so they are resampled
  (nearest cell) into the jittered box: where it grows, the new border is "outside"; where it
  shrinks, the object's pixels beyond it leave the targets (as Matterport's mini-masks would;
  the reference itself keeps full-image masks, which we do not store). The draws are
  stateless, seeded by (seed, example number) apart from the flip's, so the stream stays a
  function of (seed, t) and j = 0 leaves it bit-identical. Unlike the reference we neither
  round the jittered boxes to integers nor jitter evaluation.
* evaluation: one pass in file order without flips; the last batch is completed with
  padding images (``image_valid`` False, no valid instance), and every host yields the same
  number of batches (the largest host's), so multi-host evaluation stays in lockstep.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

from sln_jax import canvas
from sln_jax.records import SCHEMA_VERSION, parse_tf, read_metadata, split_files

__all__ = ["create_dataset", "PADDING_ORDER"]

PADDING_ORDER = 2 ** 30
# Epoch seeds: seed * _EPOCH_STRIDE + epoch, so (seed, epoch) pairs never collide.
_EPOCH_STRIDE = 1_000_003
_MAX_EPOCHS = 2 ** 40


def _host_files(metadata: dict, directory: str, split: str) -> tuple[list[str], list[int]]:
    """This host's shard files and their example counts."""
    import jax

    files, counts = split_files(metadata, directory, split)
    host, hosts = jax.process_index(), jax.process_count()
    if len(files) < hosts:
        raise ValueError(f"{directory}: split {split!r} has {len(files)} shard files for "
                         f"{hosts} hosts; convert with --num_shards >= {hosts}")
    return files[host::hosts], counts[host::hosts]


def _jitter_boxes(boxes, layer_crops, semdist_crops, draw, jitter: float, height, width):
    """Jittered boxes and their crops resampled into them (module docstring).

    Args:
      boxes: float32 [n, 4] (y1, x1, y2, x2) canvas pixels; layer_crops, semdist_crops:
        [n, P, P] relative to those boxes (0 = outside in both encodings).
      draw: float32 [n, 4] uniform in [-1, 1); jitter: j; height, width: image content size.
    """
    import tensorflow as tf

    h = boxes[:, 2] - boxes[:, 0]
    w = boxes[:, 3] - boxes[:, 1]
    sizes = tf.stack([h, w, h, w], axis=1)
    upper = tf.stack([height, width, height, width])
    new = tf.clip_by_value(boxes + draw * jitter * sizes, 0.0, upper[None, :])
    p = tf.shape(layer_crops)[1]
    centres = (tf.range(p, dtype=tf.float32) + 0.5) / tf.cast(p, tf.float32)  # [P]

    def cells(start, length, new_start, new_length):
        # Crop cell (in the old box) of each new cell centre; inside the old box or not.
        u = ((new_start[:, None] + centres[None, :] * new_length[:, None]) - start[:, None]) / (
            tf.maximum(length[:, None], 1e-6))
        inside = (u >= 0.0) & (u < 1.0)
        index = tf.clip_by_value(tf.cast(tf.floor(u * tf.cast(p, tf.float32)), tf.int32),
                                 0, p - 1)
        return index, inside

    rows, row_in = cells(boxes[:, 0], h, new[:, 0], new[:, 2] - new[:, 0])
    cols, col_in = cells(boxes[:, 1], w, new[:, 1], new[:, 3] - new[:, 1])
    inside = row_in[:, :, None] & col_in[:, None, :]

    def resample(crops):
        out = tf.gather(crops, rows, axis=1, batch_dims=1)
        out = tf.gather(out, cols, axis=2, batch_dims=1)
        return tf.where(inside, out, tf.zeros_like(out))

    return new, resample(layer_crops), resample(semdist_crops)


def _to_content(values, flip, new_h, new_w, *, nearest: bool):
    """[H, W, C] -> the canvas content [new_h, new_w, C], mirrored when ``flip``: the one
    geometric transform of the image (bilinear with antialiasing, float32) and of the maps
    of ids (nearest neighbour, dtype kept; ``canvas.resize_nearest`` is its NumPy twin)."""
    import tensorflow as tf

    if not nearest:
        values = tf.cast(values, tf.float32)  # what the bilinear resize returns
    # Already at the content size (the synthetic set, images converted at the canvas size):
    # the resize is the identity, and skipping it cut the pipeline's CPU by a third (main
    # job: ~24 -> ~16 ms per batch of 8).
    same = tf.logical_and(tf.equal(tf.shape(values)[0], new_h),
                          tf.equal(tf.shape(values)[1], new_w))
    values = tf.cond(same, lambda: values, lambda: tf.image.resize(
        values, [new_h, new_w], method="nearest" if nearest else "bilinear",
        antialias=not nearest))
    return tf.cond(flip, lambda: values[:, ::-1], lambda: values)


def _preprocess(features: dict, flip, *, image_size: int, max_instances: int,
                num_layers: int, box_jitter: float = 0.0, jitter_draw=None,
                semantic_channels: int = 0):
    """One parsed record -> fixed-shape tensors (see the module docstring).

    ``jitter_draw``: float32 [max_instances, 4] uniform in [-1, 1) when ``box_jitter`` > 0
    (training), else None. ``semantic_channels`` > 0: ``features`` holds ``semantic``.
    """
    import tensorflow as tf

    s, m, k = image_size, max_instances, num_layers
    image = features["image"]
    orig_h, orig_w = tf.shape(image)[0], tf.shape(image)[1]
    scale, new_h, new_w = canvas.content_size_tf(orig_h, orig_w, s)
    padding = [[0, s - new_h], [0, s - new_w]]
    image = _to_content(image, flip, new_h, new_w, nearest=False)
    global_layers = _to_content(features["global_layers"][:, :, None], flip, new_h, new_w,
                                nearest=True)[:, :, 0]
    image = (image / 255.0 - tf.constant(canvas.IMAGENET_MEAN)) / tf.constant(canvas.IMAGENET_STD)
    image = tf.pad(image, padding + [[0, 0]])
    global_layers = tf.pad(tf.cast(global_layers, tf.int8), padding)

    # Keep the M largest instances, in record order.
    n = tf.shape(features["classes"])[0]
    kept = tf.sort(tf.math.top_k(features["area"], k=tf.minimum(n, m)).indices)
    count = tf.shape(kept)[0]
    pad = m - count

    def take(key):
        return tf.gather(features[key], kept)

    sy = tf.cast(new_h, tf.float32) / tf.cast(orig_h, tf.float32)
    sx = tf.cast(new_w, tf.float32) / tf.cast(orig_w, tf.float32)
    boxes = take("boxes") * tf.stack([sy, sx, sy, sx])
    width = tf.cast(new_w, tf.float32)
    boxes = tf.cond(
        flip,
        lambda: tf.stack([boxes[:, 0], width - boxes[:, 3], boxes[:, 2], width - boxes[:, 1]],
                         axis=1),
        lambda: boxes)
    layer_crops, semdist_crops = take("layer_crops"), take("semdist_crops")
    layer_crops = tf.cond(flip, lambda: layer_crops[:, :, ::-1], lambda: layer_crops)
    semdist_crops = tf.cond(flip, lambda: semdist_crops[:, :, ::-1], lambda: semdist_crops)
    if box_jitter > 0 and jitter_draw is not None:
        boxes, layer_crops, semdist_crops = _jitter_boxes(
            boxes, layer_crops, semdist_crops, jitter_draw[:count], float(box_jitter),
            tf.cast(new_h, tf.float32), width)
    layers = tf.cast(layer_crops, tf.int8) - 1  # stored as layer + 1, 0 outside
    semdist = tf.cast(semdist_crops, tf.float32) * ((k + 1) / 255.0)
    p = layer_crops.shape[-1]
    out = {
        "image": tf.ensure_shape(image, [s, s, 3]),
        "image_id": tf.cast(features["image_id"], tf.int32),
        "image_size": tf.stack([new_h, new_w]),
        "orig_size": features["orig_size"],
        "scale": scale,
        "boxes": tf.ensure_shape(tf.pad(boxes, [[0, pad], [0, 0]]), [m, 4]),
        "classes": tf.ensure_shape(tf.pad(take("classes"), [[0, pad]]), [m]),
        "valid": tf.ensure_shape(tf.range(m) < count, [m]),
        "order": tf.ensure_shape(
            tf.pad(take("order"), [[0, pad]], constant_values=PADDING_ORDER), [m]),
        "occlusion": tf.ensure_shape(tf.pad(take("occlusion"), [[0, pad]]), [m]),
        "layers": tf.ensure_shape(
            tf.pad(layers, [[0, pad], [0, 0], [0, 0]], constant_values=-1), [m, p, p]),
        "semdist": tf.ensure_shape(tf.pad(semdist, [[0, pad], [0, 0], [0, 0]]), [m, p, p]),
        "global_layers": tf.ensure_shape(global_layers, [s, s]),
        "image_valid": tf.constant(True),
    }
    if semantic_channels:
        ids = _to_content(features["semantic"][:, :, None], flip, new_h, new_w,
                          nearest=True)[:, :, 0]
        ids = tf.ensure_shape(tf.pad(tf.cast(ids, tf.int32), padding, constant_values=-1),
                              [s, s])
        out["semantic"] = canvas.class_fractions_tf(ids, semantic_channels)
    return out


def _check_version(features: dict) -> dict:
    import tensorflow as tf

    tf.debugging.assert_equal(features["schema_version"], tf.constant(SCHEMA_VERSION, tf.int64),
                              message="record schema version differs; convert again")
    return features


def _tfds_source(data_config: Any, split: str):
    """``config.data.source = 'tfds'``: a dataset prepared by ``data_prep.tfds_builders``.

    ``data_config.dir`` is its version directory (``DATA_DIR/NAME/CONFIG/VERSION``), read
    with ``tfds.builder_from_directory`` (no builder code needed). Its shard files are read
    as the records' are (same host sharding, shuffling and flips), and each example is
    turned into what ``parse_tf`` returns, so the same examples give the same batches.

    Returns:
      (this host's files, their example counts, every host's counts, K, P, parse).
    """
    import jax
    import tensorflow as tf
    import tensorflow_datasets as tfds

    directory = data_config.dir
    semantic = int(data_config.get("semantic_channels", 0) or 0)
    if semantic:
        raise ValueError(f"{directory}: config.data.semantic_channels = {semantic} but the "
                         "TFDS datasets hold no semantic maps; use records converted with "
                         "--semantic_dir (config.data.source = 'records')")
    info = tfds.builder_from_directory(directory).info
    metadata = dict(info.metadata or {})
    for field in ("num_layers", "mask_target_size", "num_classes"):
        want, have = int(getattr(data_config, field)), metadata.get(field)
        if have is None or want != int(have):
            raise ValueError(f"{directory}: the TFDS dataset has {field} = {have} but the "
                             f"config says {want}; build another config or fix "
                             f"config.data.{field}")
    if split not in info.splits:
        raise ValueError(f"{directory}: no split {split!r} (have {sorted(info.splits)})")
    all_files = [os.fspath(path) for path in info.splits[split].filepaths]
    all_counts = [int(n) for n in info.splits[split].shard_lengths]
    host, hosts = jax.process_index(), jax.process_count()
    if len(all_files) < hosts:
        raise ValueError(f"{directory}: split {split!r} has {len(all_files)} shard files "
                         f"for {hosts} hosts")
    features = info.features

    def parse(serialized):
        example = features.deserialize_example(serialized)
        instances, image = example["instances"], example["image"]
        return {
            "schema_version": tf.constant(SCHEMA_VERSION, tf.int64),
            "image": image,
            "image_id": example["image_id"],
            "orig_size": tf.shape(image)[:2],
            "boxes": instances["box"],
            "classes": tf.cast(instances["label"], tf.int32),
            "order": tf.cast(instances["order"], tf.int32),
            "occlusion": instances["occlusion"],
            "area": tf.cast(instances["area"], tf.float32),
            "global_layers": example["global_layers"][:, :, 0],
            "layer_crops": instances["layers"],
            "semdist_crops": instances["semdist"],
        }

    return (all_files[host::hosts], all_counts[host::hosts], all_counts,
            int(metadata["num_layers"]), int(metadata["mask_target_size"]), parse)


def _padding_example(image_size: int, max_instances: int, p: int,
                     semantic_channels: int = 0) -> dict[str, np.ndarray]:
    """An all-invalid image (used to complete the last evaluation batch)."""
    s, m = image_size, max_instances
    example = {
        "image": np.zeros((s, s, 3), np.float32),
        "image_id": np.zeros((), np.int32),
        "image_size": np.zeros((2,), np.int32),
        "orig_size": np.zeros((2,), np.int32),
        "scale": np.zeros((), np.float32),
        "boxes": np.zeros((m, 4), np.float32),
        "classes": np.zeros((m,), np.int32),
        "valid": np.zeros((m,), bool),
        "order": np.full((m,), PADDING_ORDER, np.int32),
        "occlusion": np.zeros((m,), np.float32),
        "layers": np.full((m, p, p), -1, np.int8),
        "semdist": np.zeros((m, p, p), np.float32),
        "global_layers": np.zeros((s, s), np.int8),
        "image_valid": np.zeros((), bool),
    }
    if semantic_channels:
        cells = s // canvas.SEMANTIC_STRIDE
        example["semantic"] = np.zeros((cells, cells, semantic_channels), np.float32)
    return example


def create_dataset(data_config: Any, split: str, *, batch_dims: tuple[int, int],
                   train: bool, seed: int, start_step: int = 0) -> Iterator[dict]:
    """Batches of preprocessed images for this host.

    Args:
      data_config: ``config.data`` (source: 'records' (default) or 'tfds', dir,
        image_size S, max_instances M, mask_target_size P, num_layers K, num_classes,
        shuffle_buffer, flip, box_jitter (optional, default 0), semantic_channels S_sem
        (optional, default 0)).
      split: split name in the dataset's metadata (e.g. ``config.data.train_split``).
      batch_dims: (local devices D, per-device batch B).
      train: endless shuffled and flipped stream (``data_config.flip``) if True, else one
        ordered pass with padding (see the module docstring).
      seed: shuffle and flip seed.
      start_step: training step to start at (the batches a run resumed there needs).

    Returns:
      iterator of dicts of NumPy arrays with leading dims [D, B]: ``image`` float32
      [S, S, 3], ``image_id`` int32 [], ``image_size`` int32 [2], ``orig_size`` int32 [2],
      ``scale`` float32 [], ``boxes`` float32 [M, 4] (y1, x1, y2, x2) canvas pixels,
      ``classes`` int32 [M], ``valid`` bool [M], ``order`` int32 [M] (padding 2**30),
      ``occlusion`` float32 [M], ``layers`` int8 [M, P, P] (-1 outside),
      ``semdist`` float32 [M, P, P], ``global_layers`` int8 [S, S], ``image_valid`` bool [],
      and when S_sem > 0 ``semantic`` float32 [S/4, S/4, S_sem] (class fractions).
    """
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")  # tf.data must leave accelerators to JAX
    except RuntimeError:  # TF already initialized its devices; nothing left to change
        pass
    directory = data_config.dir
    source = getattr(data_config, "source", "records")
    semantic = int(data_config.get("semantic_channels", 0) or 0)
    if source == "records":
        metadata = read_metadata(directory, data_config)  # also: the maps are there
        files, counts = _host_files(metadata, directory, split)
        all_counts = metadata["splits"][split]["examples_per_file"]
        k, p = int(metadata["num_layers"]), int(metadata["mask_target_size"])

        def parse(serialized):
            return _check_version(parse_tf(serialized, p, semantic=bool(semantic)))
    elif source == "tfds":
        files, counts, all_counts, k, p, parse = _tfds_source(data_config, split)
    else:
        raise ValueError(f"config.data.source is {source!r}; use 'records' or 'tfds'")
    devices, per_device = batch_dims
    batch = devices * per_device
    host_examples = int(sum(counts))
    preprocess_args = dict(image_size=int(data_config.image_size),
                           max_instances=int(data_config.max_instances), num_layers=k,
                           semantic_channels=semantic)

    options = tf.data.Options()
    options.deterministic = True
    # Elements run in parallel (num_parallel_calls), each op on one thread: on a CPU host the
    # train step's XLA threads share the cores, and multi-threaded small ops stalled them
    # (main job's config: ~295 vs ~255 ms per step fed live vs from memory; with this and
    # the identity resize skipped in _to_content, ~260 vs ~260).
    options.threading.max_intra_op_parallelism = 1
    # No autotuning model thread: destroying the train iterator at the end of training
    # waited for it, 3 to 60 s of the main job's wall time (py-spy: the main thread in
    # RootDataset::Iterator's destructor); without it, ~0.5 s. With autotuning off, the
    # AUTOTUNE parallelism below stays at tf.data's initial value, min(16, the host's
    # cores), and the pipeline keeps its speed (main job's records: 8 ms per batch of 8
    # either way, ~30x faster than the step).
    options.autotune.enabled = False
    if train:
        if host_examples == 0:
            raise ValueError(f"{directory}: split {split!r} has no examples for this host")
        start = int(start_step) * batch
        start_epoch, offset = divmod(start, host_examples)
        file_paths = tf.constant(files)
        buffer = int(data_config.shuffle_buffer)

        def epoch(e):
            epoch_seed = tf.cast(seed, tf.int64) * _EPOCH_STRIDE + e
            order = tf.random.experimental.stateless_shuffle(
                file_paths, seed=tf.stack([tf.cast(seed, tf.int64), e]))
            return tf.data.TFRecordDataset(order).shuffle(
                buffer, seed=epoch_seed, reshuffle_each_iteration=False)

        ds = tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(epoch).skip(offset)
        ds = ds.enumerate(start=start)
        do_flip = bool(data_config.flip)
        box_jitter = float(data_config.get("box_jitter", 0.0))
        if box_jitter < 0:
            raise ValueError(f"config.data.box_jitter must be >= 0, got {box_jitter}")
        max_instances = preprocess_args["max_instances"]

        def example(index, serialized):
            example_seed = tf.stack([tf.cast(seed, tf.int64), index])
            draw = tf.random.stateless_uniform([], seed=example_seed)
            flip = tf.logical_and(tf.constant(do_flip), draw < 0.5)
            jitter_draw = None
            if box_jitter > 0:
                jitter_seed = tf.random.experimental.stateless_fold_in(example_seed, 1)
                jitter_draw = tf.random.stateless_uniform([max_instances, 4], seed=jitter_seed,
                                                          minval=-1.0, maxval=1.0)
            return _preprocess(parse(serialized), flip, box_jitter=box_jitter,
                               jitter_draw=jitter_draw, **preprocess_args)

        ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(batch, drop_remainder=True)
    else:
        ds = tf.data.TFRecordDataset(files)
        ds = ds.map(lambda x: _preprocess(parse(x), tf.constant(False), **preprocess_args),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(batch, drop_remainder=False)
    ds = ds.prefetch(tf.data.AUTOTUNE).with_options(options)

    def reshape(arrays: dict) -> dict:
        return {key: value.reshape((devices, per_device) + value.shape[1:])
                for key, value in arrays.items()}

    if train:
        return map(reshape, ds.as_numpy_iterator())
    return _eval_batches(ds, all_counts, batch,
                         _padding_example(int(data_config.image_size),
                                          int(data_config.max_instances), p, semantic),
                         reshape)


def _eval_batches(ds, all_counts: list[int], batch: int, padding: dict,
                  reshape) -> Iterator[dict]:
    """Complete the last batch with padding images and pad every host to the same count."""
    import jax

    hosts = jax.process_count()
    per_host = [sum(all_counts[h::hosts]) for h in range(hosts)]
    num_batches = -(-max(per_host) // batch) if per_host else 0
    yielded = 0
    for arrays in ds.as_numpy_iterator():
        missing = batch - next(iter(arrays.values())).shape[0]
        if missing:
            arrays = {key: np.concatenate([value, np.stack([padding[key]] * missing)])
                      for key, value in arrays.items()}
        yielded += 1
        yield reshape(arrays)
    for _ in range(num_batches - yielded):
        yield reshape({key: np.stack([value] * batch) for key, value in padding.items()})
