"""Inference on any image: ``Predictor`` (files or arrays -> detections) and its CLI.

Per image: read it with ``sln_jax.images`` (the reader and policy of training and
conversion); fit it, keeping its aspect, into the smallest of a few square canvas sizes
("buckets", ``sln_jax.canvas``) that holds it (images larger than every bucket are shrunk to
the largest; smaller ones are enlarged to the smallest, which is the training size S), pad it
bottom/right and normalize it as the input pipeline does; run the jitted model, which is
compiled once per bucket (``Predictor.compiled_shapes`` records every compiled input shape);
turn the fixed-size detections into instances on the host
(``sln_jax.postprocess.to_instances``).

Semantic maps: a model trained with ``config.model.semantic_channels`` = S_sem > 0 takes
each image's semantic map (class ids in [0, S_sem), from the segmentation model that made
its training records' maps) as an argument: ``Predictor.predict(image, semantic=ids)``
(``predict_batch`` / ``raw_outputs``: one map per image), and ``--semantic_dir DIR`` on the
command line (``DIR/<image file stem>.png``, the converter's layout, ``sln_jax.semantic``).
A plain image has no map, so the Predictor of such a model refuses to run without one
(ValueError naming S_sem) rather than guess; a model without the input refuses a map.

CLI::

  python -m sln_jax.infer --checkpoint WORKDIR --images DIR_OR_GLOB --output OUT \\
      [--config configs/synthetic.py] [--annotations GT.json] [--layers] \\
      [--score_threshold T] [--canvas_sizes 512,768,1024] [--batch_size B]
      [--evaluate [--format coco|cocoa]] [--semantic_dir DIR]

``--config`` defaults to the config the training run saved in WORKDIR; a given config must
match the checkpoint's model (``sln_jax.checkpoints.check_compatible``). Writes
``OUT/results.json`` (COCO results, ``docs/ARCHITECTURE.md``),
``OUT/images.json`` (the image id of every file, and the unreadable files with the reason),
``OUT/pictures/NAME.png`` per image and, with ``--layers``,
``OUT/layers/NAME/det<i>_layer<k>.png`` and ``det<i>_semdist.png`` per detection. Every
file is written under a temporary name and renamed, so no reader sees half a file. With
``--evaluate`` (and ``--annotations``) the detections are also scored by
``sln_jax.evaluation.Evaluator`` into ``OUT/metrics.json``. An image whose semantic map is
missing or bad is skipped and listed with the reason, as an unreadable image is.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from sln_jax import (atomic, canvas, checkpoints, evaluation, layering, postprocess, records,
                     semdist, train_state, visualize)
from sln_jax import semantic as semantic_maps
from sln_jax.detections import Detections
from sln_jax.evaluation import ground_truth
from sln_jax.images import UnreadableImageError, load_image
from sln_jax.models.sln import SLN, semantic_channels, semantic_head_on

__all__ = [
    "find_images",
    "Predictor",
    "layer_maps",
    "image_ids_from_annotations",
    "run",
]

# Extensions looked for when --images is a directory; a glob or a file list takes any file.
IMAGE_EXTENSIONS = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".tif", ".tiff",
    ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".avif", ".jp2", ".qoi",
})


def find_images(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The files named by ``--images``, sorted.

    Args:
      spec: a directory (every file below it with an image extension, recursively), a glob
        pattern (every matching file, whatever its extension, so that a bad file passed on
        purpose is reported rather than ignored), a single file, or a list of those.

    Returns:
      Sorted, de-duplicated paths.

    Raises:
      FileNotFoundError: when ``spec`` matches nothing.
    """
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    found: set[Path] = set()
    for item in specs:
        path = Path(item)
        if path.is_dir():
            found.update(p for p in path.rglob("*")
                         if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.add(path)
        else:
            matches = [Path(m) for m in glob.glob(str(item), recursive=True)]
            found.update(m for m in matches if m.is_file())
            if not matches:
                raise FileNotFoundError(f"--images {item}: no such file, directory or match")
    if not found:
        raise FileNotFoundError(f"--images {spec}: no image files found")
    return sorted(found)


# ----------------------------------------------------------------------- image ids


def image_ids_from_annotations(gt_path: str | os.PathLike) -> dict[str, int]:
    """Image ids of a COCO-style GT JSON, by file name.

    Args:
      gt_path: a JSON with an ``images`` list of ``{'id', 'file_name', ...}``.

    Returns:
      ``{file_name: id}`` holding each full ``file_name`` as written in the JSON and its
      base name (base names shared by several images are left out, as they are ambiguous).

    Raises:
      ValueError: naming the file when it has no ``images`` list.
    """
    with open(gt_path) as f:
        gt = json.load(f)
    images = gt.get("images") if isinstance(gt, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{gt_path}: no 'images' list; expected COCO-style annotations")
    ids: dict[str, int] = {}
    base_counts: dict[str, int] = {}
    for entry in images:
        name = str(entry["file_name"])
        ids[name] = int(entry["id"])
        base = os.path.basename(name)
        base_counts[base] = base_counts.get(base, 0) + 1
    for entry in images:
        base = os.path.basename(str(entry["file_name"]))
        if base_counts[base] == 1:
            ids.setdefault(base, int(entry["id"]))
    return ids


def _lookup_image_id(path: Path, root: Path | None, ids: dict[str, int]) -> int | None:
    """The GT id of ``path``: by its path relative to ``root``, else by its base name."""
    if root is not None:
        try:
            relative = path.relative_to(root).as_posix()
        except ValueError:
            relative = None
        if relative is not None and relative in ids:
            return ids[relative]
    return ids.get(path.name)


# ------------------------------------------------------------------------- predictor


class Predictor:
    """Detections of a trained SLN on images of any size.

    Images are fitted into square canvases of a few fixed sides (``canvas_sizes``) and run in
    batches of ``batch_size`` (short batches are padded with blank canvases), so the model is
    compiled at most once per canvas side, whatever the images' sizes.

    Attributes:
      config: the run's config, with ``model.score_threshold`` overridden when asked.
      canvas_sizes: increasing canvas sides (the buckets).
      batch_size: images per model call.
      step: the training step of the restored checkpoint (None for ``from_variables``).
      compiled_shapes: list of input shapes the model was traced and compiled for, one entry
        per compilation (so ``len(compiled_shapes) <= len(canvas_sizes)`` always holds).
    """

    def __init__(self, config, checkpoint_dir: str | os.PathLike, *,
                 canvas_sizes: Sequence[int] | None = None, batch_size: int = 1,
                 score_threshold: float | None = None, step: int | None = None):
        """Restores the latest checkpoint (or ``step``) of a training workdir.

        Args:
          config: the run's ``ml_collections.ConfigDict`` (``config.model``,
            ``config.data``), or None for the config saved in the workdir. A given config
            must match the checkpoint's model (``checkpoints.check_compatible``).
          checkpoint_dir: the training workdir (``WORKDIR/checkpoints`` holds the orbax
            checkpoints) or that ``checkpoints`` directory itself.
          canvas_sizes: canvas sides; default ``default_canvas_sizes(config.data.image_size)``.
          batch_size: images per model call.
          score_threshold: overrides ``config.model.score_threshold``.
          step: checkpoint step to restore; default the latest.
        """
        directory = checkpoints.find_workdir(checkpoint_dir)
        checkpoint = checkpoints.load_checkpoint(str(directory), step)
        if config is None:
            config = checkpoints.load_config(directory)
        checkpoints.check_compatible(config, checkpoint["config"], directory)
        variables = {"params": checkpoint["params"], "batch_stats": checkpoint["batch_stats"]}
        self._setup(config, variables, canvas_sizes, batch_size, score_threshold)
        self.step = checkpoint["step"]

    @classmethod
    def from_variables(cls, config, variables: dict[str, Any], *,
                       canvas_sizes: Sequence[int] | None = None, batch_size: int = 1,
                       score_threshold: float | None = None) -> "Predictor":
        """A predictor on given model variables (``{'params', 'batch_stats'}``), no checkpoint."""
        predictor = cls.__new__(cls)
        predictor._setup(config, variables, canvas_sizes, batch_size, score_threshold)
        predictor.step = None
        return predictor

    def _setup(self, config, variables, canvas_sizes, batch_size, score_threshold) -> None:
        config = config.copy_and_resolve_references()
        if score_threshold is not None:
            with config.unlocked():
                config.model.score_threshold = float(score_threshold)
        postprocess.check_config(config.model)
        self.config = config
        sizes = canvas_sizes or canvas.default_canvas_sizes(config.data.image_size)
        self.canvas_sizes = tuple(sorted(int(s) for s in sizes))
        if (any(s % canvas.CANVAS_MULTIPLE for s in self.canvas_sizes)
                or self.canvas_sizes[0] <= 0):
            raise ValueError(f"canvas sizes {self.canvas_sizes} must be positive multiples of "
                             f"{canvas.CANVAS_MULTIPLE} (the coarsest FPN stride)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.compiled_shapes: list[tuple[int, ...]] = []
        self._model = SLN(config.model)
        self._variables = jax.device_put(variables)
        self._forward = jax.jit(self._trace_forward)

    @property
    def semantic_channels(self) -> int:
        """S_sem: classes of the semantic map each image needs (0 = the model takes none,
        also when it predicts the map itself, ``config.model.semantic_head``)."""
        if semantic_head_on(self.config.model):
            return 0
        return semantic_channels(self.config.model)

    def _trace_forward(self, variables, images, semantic):
        """The model's inference outputs; the Python body runs once per compilation."""
        self.compiled_shapes.append(tuple(images.shape))
        return self._model.apply(variables, images, None, train=False, semantic=semantic)

    def _check_semantic(self, images: Sequence[np.ndarray],
                        semantic: Sequence[np.ndarray] | None) -> None:
        """ValueError unless ``semantic`` is one valid class map per image, or None for a
        model without the semantic input."""
        channels = self.semantic_channels
        if not channels:
            if semantic is not None:
                raise ValueError("this model takes no semantic map (config.model."
                                 "semantic_channels = 0); call it without `semantic`")
            return
        if semantic is None:
            raise ValueError(f"this model takes a semantic map per image (config.model."
                             f"semantic_channels = {channels}): pass semantic=[uint8 [H, W] "
                             f"class ids in [0, {channels}) per image], e.g. "
                             "sln_jax.semantic.read_class_map of the maps its records used")
        if len(semantic) != len(images):
            raise ValueError(f"{len(semantic)} semantic maps for {len(images)} images")
        for index, (ids, image) in enumerate(zip(semantic, images)):
            ids = np.asarray(ids)
            if ids.shape != image.shape[:2] or ids.dtype.kind not in "iu":
                raise ValueError(f"semantic map {index}: expected integer class ids "
                                 f"[{image.shape[0]}, {image.shape[1]}] (its image's size), "
                                 f"got {ids.dtype} {ids.shape}")
            if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= channels):
                raise ValueError(f"semantic map {index}: class ids must be in [0, {channels}),"
                                 f" got {int(ids.min())}..{int(ids.max())}")

    def raw_outputs(self, images: Sequence[np.ndarray],
                    semantic: Sequence[np.ndarray] | None = None
                    ) -> list[tuple[dict[str, np.ndarray], tuple[int, int]]]:
        """The model's fixed-size outputs for each image, before postprocessing.

        Args:
          images: uint8 [H_i, W_i, 3] RGB images of any sizes.
          semantic: when the model takes semantic maps (``semantic_channels`` > 0, and only
            then): per image, its class ids, int [H_i, W_i] in [0, S_sem).

        Returns:
          Per image, in order: (outputs of that image (the train=False keys of
          docs/interfaces.md without the batch axis, NumPy), (h, w) of the image's content
          in its canvas).
        """
        for index, image in enumerate(images):
            if not (isinstance(image, np.ndarray) and image.dtype == np.uint8
                    and image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) > 0):
                raise ValueError(
                    f"image {index}: expected uint8 [H, W, 3] RGB, got "
                    f"{getattr(image, 'dtype', type(image).__name__)} "
                    f"{getattr(image, 'shape', '')}; use load_image / to_rgb")
        self._check_semantic(images, semantic)
        channels = self.semantic_channels
        by_canvas: dict[int, list[int]] = {}
        for index, image in enumerate(images):
            side = canvas.choose_canvas(image.shape[0], image.shape[1], self.canvas_sizes)
            by_canvas.setdefault(side, []).append(index)
        results: list[Any] = [None] * len(images)
        for side, indices in by_canvas.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                batch = np.zeros((self.batch_size, side, side, 3), np.float32)
                maps = None
                if channels:
                    cells = side // canvas.SEMANTIC_STRIDE
                    maps = np.zeros((self.batch_size, cells, cells, channels), np.float32)
                sizes = []
                for slot, index in enumerate(chunk):
                    batch[slot], size = canvas.fit_to_canvas(images[index], side)
                    if channels:
                        maps[slot] = canvas.semantic_canvas(np.asarray(semantic[index]), side,
                                                            channels)
                    sizes.append(size)
                outputs = jax.device_get(self._forward(self._variables, batch, maps))
                for slot, index in enumerate(chunk):
                    results[index] = ({k: np.asarray(v[slot]) for k, v in outputs.items()},
                                      sizes[slot])
        return results

    def to_instances(self, outputs: dict[str, np.ndarray], content_size: tuple[int, int],
                     orig_size: tuple[int, int]) -> list[dict[str, Any]]:
        """Instances of one image from its ``raw_outputs`` entry (see ``predict_batch``)."""
        return postprocess.to_instances(outputs, content_size, orig_size,
                                              self.config.model)

    def predict_batch(self, images: Sequence[np.ndarray],
                      semantic: Sequence[np.ndarray] | None = None
                      ) -> list[list[dict[str, Any]]]:
        """Detections of several images (grouped by canvas and batched internally).

        Args:
          images: uint8 [H_i, W_i, 3] RGB images of any sizes.
          semantic: their semantic maps, required when the model takes them (``raw_outputs``).

        Returns:
          Per image, the instances of ``sln_jax.postprocess.to_instances`` in the
          image's own pixels: ``box`` (x, y, w, h), ``category_id``, ``score``, ``amodal`` and
          ``visible`` bool [H_i, W_i], ``layers`` int32 [H_i, W_i], ``occlude_rate``,
          ``depth_order`` {index of another detection: +1 in front of it / -1 behind}.
        """
        return [self.to_instances(outputs, size, image.shape[:2])
                for (outputs, size), image in zip(self.raw_outputs(images, semantic), images)]

    def predict(self, image: np.ndarray,
                semantic: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Detections of one uint8 [H, W, 3] RGB image (see ``predict_batch``); ``semantic``:
        its int [H, W] class ids, required when the model takes semantic maps."""
        return self.predict_batch([image], None if semantic is None else [semantic])[0]


# ------------------------------------------------------------------------ layer maps


def layer_maps(outputs: dict[str, np.ndarray], content_size: tuple[int, int],
               orig_size: tuple[int, int], instances: Sequence[dict[str, Any]],
               model_config) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each detection's K layer maps and its sem-dist map at the image's resolution.

    Head 'layers': the layer maps are the pasted per-layer probabilities
    (``postprocess.layer_probs``)
    and the sem-dist map is ``sln_jax.semdist.encode`` of the decoded layers. Head 'semdist':
    the sem-dist map is the pasted regression and the layer maps are the decoded layers
    (1 on layer c, 0 elsewhere).

    Args:
      outputs: the model's outputs of one image (no batch axis; ``Predictor.raw_outputs``).
      content_size: (h, w) of the image's content in its canvas.
      orig_size: (H, W) of the image.
      instances: ``to_instances`` of these outputs (one per valid detection, in order).
      model_config: ``config.model`` (``head``, ``num_layers``).

    Returns:
      Per instance: (layer maps float32 [K, H, W] in [0, 1], sem-dist float32 [H, W] in
      [0, K + 1)).
    """
    k = int(model_config.num_layers)
    height, width = int(orig_size[0]), int(orig_size[1])
    detections = np.flatnonzero(np.asarray(outputs["valid"], bool))
    if len(detections) != len(instances):
        raise ValueError(f"{len(instances)} instances for {len(detections)} valid detections")
    boxes = canvas.boxes_to_original(np.asarray(outputs["boxes"])[detections], content_size,
                                     (height, width))
    maps = []
    for index, (detection, instance) in enumerate(zip(detections, instances)):
        if model_config.head == "layers":
            # The probabilities postprocess decodes, so the maps decode to its instances.
            probs = postprocess.layer_probs(outputs["layer_logits"][detection])
            layer_probs = layering.paste(probs[None], boxes[index][None], (height, width))[0]
            layer_probs = np.moveaxis(layer_probs, -1, 0)
            sem = semdist.encode(instance["layers"][None], k)[0]
        else:
            sem = layering.paste(np.asarray(outputs["semdist"][detection])[None],
                                 boxes[index][None], (height, width))[0]
            layer_probs = (instance["layers"][None] == np.arange(k)[:, None, None])
        maps.append((np.asarray(layer_probs, np.float32), np.asarray(sem, np.float32)))
    return maps


def _write_layer_maps(directory: Path, outputs: dict[str, np.ndarray],
                      content_size: tuple[int, int], orig_size: tuple[int, int],
                      instances: Sequence[dict[str, Any]], model_config) -> None:
    """PNGs of ``layer_maps``: ``det<i>_layer<c>.png`` (uint8 = round(255 p)) and
    ``det<i>_semdist.png`` (uint8 = round(255 M / (K + 1)), the records' encoding)."""
    k = int(model_config.num_layers)
    for index, (layer_probs, sem) in enumerate(
            layer_maps(outputs, content_size, orig_size, instances, model_config)):
        for channel in range(k):
            atomic.write_png(directory / f"det{index}_layer{channel}.png",
                             np.round(255 * np.clip(layer_probs[channel], 0, 1)).astype(np.uint8))
        atomic.write_png(directory / f"det{index}_semdist.png",
                         np.round(255 * np.clip(sem / (k + 1), 0, 1)).astype(np.uint8))


# ----------------------------------------------------------------------------- CLI


def _output_names(paths: Sequence[Path], root: Path) -> list[str]:
    """A unique output file stem per input: its path below ``root``, '/' -> '__'."""
    def flat(path: Path, keep_suffix: bool) -> str:
        try:
            relative = path.resolve().relative_to(root)
        except ValueError:
            relative = Path(path.name)
        if not keep_suffix:
            relative = relative.with_suffix("")
        return relative.as_posix().replace("/", "__")

    stems = [flat(p, keep_suffix=False) for p in paths]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    # 'a.png' and 'a.jpg' side by side: keep the extension in the name to tell them apart.
    return [flat(p, keep_suffix=True).replace(".", "_") if counts[s] > 1 else s
            for p, s in zip(paths, stems)]


def _common_root(paths: Sequence[Path]) -> Path:
    """The deepest directory holding every path."""
    return Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))


def _class_names(config, annotations: str | None) -> dict[int, str]:
    """Category names by id: the GT JSON's ``categories`` when given, else the ``classes``
    the converter recorded in the dataset's metadata.json; empty when neither is there."""
    if annotations:
        with open(annotations) as f:
            categories = json.load(f).get("categories")
        if isinstance(categories, list):
            return {int(c["id"]): str(c["name"]) for c in categories}
    try:
        classes = records.read_metadata(str(config.data.dir)).get("classes", {})
    except (FileNotFoundError, ValueError):
        return {}
    return {int(k): str(v) for k, v in classes.items()}


def run(config, checkpoint_dir: str | os.PathLike, images: str | Sequence[str],
        output_dir: str | os.PathLike, *, annotations: str | None = None,
        layers: bool = False, score_threshold: float | None = None,
        canvas_sizes: Sequence[int] | None = None, batch_size: int = 1,
        pictures: bool = True, picture_min_score: float = visualize.PICTURE_MIN_SCORE,
        progress: bool = True, evaluate: bool = False, annotations_format: str = "coco",
        predictor: Predictor | None = None, semantic_dir: str | None = None) -> dict[str, Any]:
    """Runs inference on image files and writes results, pictures and layer maps.

    Args:
      config: the run's config, or None for the one saved in ``checkpoint_dir``.
      checkpoint_dir: the training workdir (see ``Predictor``).
      images: a directory, glob, file or list of those (``find_images``).
      output_dir: where ``results.json``, ``images.json``, ``pictures/`` and ``layers/`` go.
      annotations: a COCO-style GT JSON; image ids are taken from it by file name (images
        it does not list are skipped and counted), else ids are 1, 2, ... in file order.
      layers: also write per detection its K layer maps and its sem-dist map as PNGs.
      score_threshold: overrides ``config.model.score_threshold``.
      canvas_sizes, batch_size: see ``Predictor``.
      pictures: write one picture per image (with ``annotations``: the ground truth above
        the prediction, ``visualize.draw_comparison``).
      picture_min_score: the pictures show detections scoring at least this.
      progress: show a tqdm progress bar.
      evaluate: also score the detections against ``annotations`` (``evaluation.Evaluator``)
        and write ``metrics.json`` (the flat metrics of ``python -m sln_jax.evaluate``).
      annotations_format: 'coco' or 'cocoa', the format of ``annotations``.
      predictor: reuse an existing predictor (then checkpoint_dir, score_threshold,
        canvas_sizes and batch_size are not used).
      semantic_dir: the images' semantic maps (``sln_jax.semantic``), needed exactly when
        the model takes them; an image whose map is missing or bad is skipped and listed
        in ``unreadable``.

    Returns:
      A summary: ``num_images`` (predicted), ``num_detections``, ``num_unreadable``,
      ``unreadable`` [{'file', 'error'}], ``num_unmatched`` and ``unmatched`` (files not in
      ``annotations``), ``results`` (path of results.json) and, with ``evaluate``,
      ``metrics`` (the flat metrics).
    """
    from tqdm import tqdm

    paths = find_images(images)
    root = _common_root(paths)
    names = _output_names(paths, root)
    gt_ids = image_ids_from_annotations(annotations) if annotations else None
    if evaluate and not annotations:
        raise ValueError("evaluate needs annotations (the GT JSON to score against)")
    evaluator = evaluation.Evaluator(annotations, annotations_format) if evaluate else None
    if predictor is None:
        predictor = Predictor(config, checkpoint_dir, canvas_sizes=canvas_sizes,
                              batch_size=batch_size, score_threshold=score_threshold)
    channels = predictor.semantic_channels
    if bool(channels) != bool(semantic_dir):
        raise ValueError(f"the model takes semantic maps (semantic_channels = {channels}): "
                         "pass --semantic_dir" if channels else
                         "--semantic_dir given but the model takes no semantic map "
                         "(semantic_channels = 0)")
    class_names = _class_names(predictor.config, annotations)
    truths: dict[int, Any] = {}  # image id -> ImageGT, for pictures beside the ground truth
    if annotations and pictures:
        try:
            gt_images = (evaluator.images if evaluator is not None
                         else ground_truth.load(annotations, annotations_format)[0])
            truths = {gt.image_id: gt for gt in gt_images}
        except ValueError as error:
            print(f"pictures without the ground truth: {error}", file=sys.stderr)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    results: list[dict[str, Any]] = []
    image_records: list[dict[str, Any]] = []
    unreadable: list[dict[str, str]] = []
    unmatched: list[str] = []
    next_id = 1
    # Images wait per canvas side until a full batch of that side is there.
    pending: dict[int, list[tuple[str, int, np.ndarray, np.ndarray | None]]] = {}

    def flush(side: int) -> None:
        items = pending.pop(side)
        raw = predictor.raw_outputs([item[2] for item in items],
                                    [item[3] for item in items] if channels else None)
        for (name, image_id, image, _), (outputs, size) in zip(items, raw):
            instances = predictor.to_instances(outputs, size, image.shape[:2])
            detections = Detections.from_instances(instances, *image.shape[:2])
            results.extend(detections.to_results(image_id))
            if evaluator is not None:
                evaluator.add(image_id, detections)
            if pictures:
                truth = truths.get(image_id)
                picture = (visualize.draw_comparison(image, instances, truth.instances(),
                                                     class_names, picture_min_score)
                           if truth is not None and (truth.height, truth.width) == image.shape[:2]
                           else visualize.draw_picture(image, instances, class_names,
                                                       picture_min_score))
                atomic.write_png(output_dir / "pictures" / f"{name}.png", picture)
            if layers:
                _write_layer_maps(output_dir / "layers" / name, outputs, size,
                                  image.shape[:2], instances, predictor.config.model)

    bar = tqdm(paths, desc="infer", unit="img", disable=not progress, file=sys.stderr)
    for path, name in zip(bar, names):
        file_name = path.resolve().relative_to(root).as_posix()
        if gt_ids is not None:
            image_id = _lookup_image_id(path.resolve(), root, gt_ids)
            if image_id is None:
                unmatched.append(str(path))
                bar.write(f"skipped {path}: not listed in {annotations}")
                continue
        try:
            image = load_image(path)
            class_ids = None
            if channels:
                class_ids = semantic_maps.read_class_map(
                    semantic_maps.map_path(semantic_dir, path), *image.shape[:2], channels)
        except (UnreadableImageError, semantic_maps.SemanticMapError) as error:
            unreadable.append({"file": str(path), "error": str(error)})
            bar.write(f"skipped {path}: {error}" if isinstance(
                error, semantic_maps.SemanticMapError) else f"skipped {error}")
            continue
        if gt_ids is None:
            image_id, next_id = next_id, next_id + 1
        image_records.append({"id": image_id, "file_name": file_name,
                              "height": int(image.shape[0]), "width": int(image.shape[1])})
        side = canvas.choose_canvas(image.shape[0], image.shape[1], predictor.canvas_sizes)
        pending.setdefault(side, []).append((name, image_id, image, class_ids))
        if len(pending[side]) == predictor.batch_size:
            flush(side)
    for side in sorted(pending):
        flush(side)
    bar.close()

    results_path = output_dir / "results.json"
    atomic.write_json(results_path, results)
    atomic.write_json(output_dir / "images.json", {
        "images": image_records, "unreadable": unreadable, "unmatched": unmatched,
        "annotations": str(annotations) if annotations else None,
    })
    summary = {
        "num_images": len(image_records), "num_detections": len(results),
        "num_unreadable": len(unreadable), "unreadable": unreadable,
        "num_unmatched": len(unmatched), "unmatched": unmatched,
        "results": str(results_path),
    }
    if evaluator is not None:
        summary["metrics"] = evaluator.compute()
        evaluation.write_metrics(output_dir / "metrics.json", summary["metrics"])
        print(evaluation.format_table(summary["metrics"]))
    print(f"{summary['num_images']} images, {summary['num_detections']} detections -> "
          f"{results_path}; {summary['num_unreadable']} unreadable file(s) skipped"
          + (f", {summary['num_unmatched']} not in {annotations}" if annotations else ""))
    return summary


def define_flags():
    """The CLI's flags (defined only when run as a program, so importing stays side-effect free)."""
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "Config file of the run (configs/*.py); default: the config saved "
        "in the --checkpoint workdir.", lock_config=True)
    flags.DEFINE_string("checkpoint", None, "Training workdir holding checkpoints/.")
    flags.DEFINE_string("images", None, "Image directory, glob pattern or file.")
    flags.DEFINE_string("output", None, "Output directory.")
    flags.DEFINE_string("annotations", None,
                        "COCO-style GT JSON: take image ids from it by file name.")
    flags.DEFINE_bool("layers", False, "Also write each detection's layer and sem-dist maps.")
    flags.DEFINE_bool("pictures", True, "Write one picture per image.")
    flags.DEFINE_float("picture_min_score", visualize.PICTURE_MIN_SCORE,
                       "Pictures show detections scoring at least this.")
    flags.DEFINE_float("score_threshold", None, "Overrides config.model.score_threshold.")
    flags.DEFINE_list("canvas_sizes", None,
                      "Canvas sides, multiples of 64 (default: S, 1.5 S, 2 S).")
    flags.DEFINE_integer("batch_size", 1, "Images per model call.")
    flags.DEFINE_bool("evaluate", False, "Score the detections against --annotations and "
                      "write OUTPUT/metrics.json.")
    flags.DEFINE_enum("format", "coco", ["coco", "cocoa"], "Format of --annotations.")
    flags.DEFINE_string("semantic_dir", None,
                        "The images' semantic maps, DIR/<image file stem>.png (class ids; "
                        "sln_jax/semantic.py): needed when the model was trained with "
                        "config.model.semantic_channels > 0.")
    flags.mark_flags_as_required(["checkpoint", "images", "output"])
    return flags.FLAGS


def main(argv: Sequence[str]) -> None:
    """``python -m sln_jax.infer``: see the module docstring."""
    del argv
    from sln_jax import runtime
    runtime.configure_cpu()  # before JAX starts a backend
    from absl import flags, logging
    FLAGS = flags.FLAGS
    train_state.use_classic_prng()
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every restore step at INFO
    checkpoints.quiet_orbax_logs()  # and warns three times on every read-only restore
    runtime.quiet_jax_logs()
    from sln_jax import cli
    prog = "python -m sln_jax.infer"
    canvas_sizes = [int(s) for s in FLAGS.canvas_sizes] if FLAGS.canvas_sizes else None
    try:
        find_images(FLAGS.images)
    except FileNotFoundError as error:
        raise cli.error(prog, error, status=2) from None
    if FLAGS.evaluate and not FLAGS.annotations:
        raise cli.error(prog, "--evaluate needs --annotations (the GT JSON to score against)",
                        status=2)
    try:  # the user's files: checkpoint, its config, annotations
        predictor = Predictor(FLAGS.config, FLAGS.checkpoint, canvas_sizes=canvas_sizes,
                              batch_size=FLAGS.batch_size, score_threshold=FLAGS.score_threshold)
        if FLAGS.annotations:
            image_ids_from_annotations(FLAGS.annotations)
    except (FileNotFoundError, ValueError) as error:
        raise cli.error(prog, error) from None
    if bool(predictor.semantic_channels) != bool(FLAGS.semantic_dir):
        raise cli.error(prog, f"the model takes semantic maps (semantic_channels = "
                        f"{predictor.semantic_channels}): pass --semantic_dir DIR"
                        if predictor.semantic_channels else
                        "--semantic_dir given but the model takes no semantic map", status=2)
    summary = run(FLAGS.config, FLAGS.checkpoint, FLAGS.images, FLAGS.output,
                  annotations=FLAGS.annotations, layers=FLAGS.layers,
                  pictures=FLAGS.pictures, picture_min_score=FLAGS.picture_min_score,
                  evaluate=FLAGS.evaluate, annotations_format=FLAGS.format,
                  predictor=predictor, semantic_dir=FLAGS.semantic_dir)
    if summary["num_images"] == 0:
        raise cli.error(prog, f"no image predicted: {summary['num_unreadable']} unreadable, "
                        f"{summary['num_unmatched']} not in --annotations (see above)")


if __name__ == "__main__":
    from absl import app
    define_flags()
    app.run(main)
