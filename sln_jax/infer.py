"""Inference on any image: files -> detections -> COCO results JSON, pictures, layer maps.

Per image: load it whatever its mode (grayscale, RGBA, palette, 16-bit, CMYK; EXIF
orientation applied) as RGB uint8; fit it, keeping its aspect, into the smallest of a few
square canvas sizes ("buckets") that holds it (images larger than every bucket are shrunk to
the largest; smaller ones are enlarged to the smallest, which is the training size S), pad it
bottom/right and normalize it as the input pipeline does; run the jitted model, which is
compiled once per bucket (``Predictor.compiled_shapes`` records every compiled input shape);
turn the fixed-size detections into instances on the host
(``sln_jax.models.postprocess.to_instances``).

CLI::

  python -m sln_jax.infer --config configs/synthetic.py --checkpoint WORKDIR \\
      --images DIR_OR_GLOB --output OUT [--annotations GT.json] [--layers] \\
      [--score_threshold T] [--canvas_sizes 512,768,1024] [--batch_size B]

writes ``OUT/results.json`` (COCO results, ``docs/ARCHITECTURE.md``),
``OUT/images.json`` (the image id of every file, and the unreadable files with the reason),
``OUT/pictures/NAME.png`` per image and, with ``--layers``,
``OUT/layers/NAME/det<i>_layer<k>.png`` and ``det<i>_semdist.png`` per detection. Every
file is written under a temporary name and renamed, so no reader sees half a file.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "UnreadableImageError",
    "load_image",
    "to_rgb",
    "find_images",
    "default_canvas_sizes",
    "choose_canvas",
    "fit_to_canvas",
    "Predictor",
    "picture_size",
    "depth_order_matrix",
    "draw_picture",
    "layer_maps",
    "image_ids_from_annotations",
    "write_json_atomic",
    "write_png_atomic",
    "run",
]

# Extensions looked for when --images is a directory; a glob or a file list takes any file.
IMAGE_EXTENSIONS = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".tif", ".tiff",
    ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".avif", ".jp2", ".qoi",
})

# Canvas sides are multiples of this: the coarsest FPN level (P6) has stride 64.
CANVAS_MULTIPLE = 64

# Transparent pixels are shown over white, as image viewers do.
ALPHA_BACKGROUND = (255, 255, 255)


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded; the message names the file and the reason."""


# ----------------------------------------------------------------------- image loading


def _gray_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """uint8 [H, W] from a single-channel image of integer or float mode ('I;16', 'I', 'F')."""
    values = values.astype(np.float64)
    if mode.startswith("I;16"):
        top = 65535.0
    elif mode == "F" and values.size and values.min() >= 0 and values.max() <= 1:
        top = 1.0
    elif values.size and values.min() >= 0 and values.max() <= 255:
        top = 255.0
    elif values.size and values.min() >= 0 and values.max() <= 65535:
        top = 65535.0  # 16-bit data that Pillow opened as 32-bit 'I'
    else:
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        values = values - lo
        top = max(hi - lo, 1e-12)
    return np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> np.ndarray:
    """RGB uint8 pixels of a Pillow image of any mode, EXIF orientation applied.

    Grayscale and 16-bit / 32-bit / float single-channel images are scaled to 0..255 and
    repeated over three channels; images with transparency (RGBA, LA, palette with a
    transparent colour) are composited over white; CMYK, YCbCr, LAB, HSV and 1-bit images go
    through Pillow's conversion.

    Args:
      image: an opened Pillow image (the first frame is used for animations).

    Returns:
      uint8 [H, W, 3], H and W after EXIF rotation.
    """
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        gray = _gray_to_uint8(np.asarray(image), mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        image = Image.alpha_composite(background, rgba)
    return np.array(image.convert("RGB"), dtype=np.uint8)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as RGB uint8 (see ``to_rgb`` for the modes handled).

    Args:
      path: an image file Pillow can decode (PNG, JPEG, BMP, GIF, TIFF, WebP, ...).

    Returns:
      uint8 [H, W, 3].

    Raises:
      UnreadableImageError: naming the file, when it is missing, not an image, truncated,
        empty or too large for Pillow's decompression-bomb limit.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                pixels = to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        raise UnreadableImageError(f"{path}: cannot read image ({error})") from error
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise UnreadableImageError(f"{path}: image has no pixels ({pixels.shape[:2]})")
    return pixels


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


# ------------------------------------------------------------------ canvases (buckets)


def default_canvas_sizes(image_size: int) -> tuple[int, ...]:
    """The default square canvas sides for a model trained at side S: S, 1.5 S and 2 S.

    Sides are rounded up to a multiple of 64, so larger images keep more of their detail
    while the number of compiled shapes stays at three.

    Args:
      image_size: S, ``config.data.image_size``.

    Returns:
      Increasing canvas sides, the first one S.
    """
    def round_up(side: float) -> int:
        return int(-(-side // CANVAS_MULTIPLE) * CANVAS_MULTIPLE)

    sides = [int(image_size)] + [round_up(f * image_size) for f in (1.5, 2.0)]
    return tuple(sorted(set(sides)))


def choose_canvas(height: int, width: int, canvas_sizes: Sequence[int]) -> int:
    """The canvas side an image of size (height, width) is fitted into.

    The smallest canvas that holds the image's longer side; the largest canvas when none
    does (the image is then shrunk).

    Args:
      height, width: original image size in pixels.
      canvas_sizes: increasing canvas sides.

    Returns:
      One of ``canvas_sizes``.
    """
    longest = max(height, width)
    for side in canvas_sizes:
        if longest <= side:
            return int(side)
    return int(canvas_sizes[-1])


def fit_to_canvas(image: np.ndarray, canvas: int, mean: Sequence[float],
                  std: Sequence[float]) -> tuple[np.ndarray, tuple[int, int]]:
    """Resizes an image keeping its aspect so its longer side is ``canvas``, pads, normalizes.

    Args:
      image: uint8 [H, W, 3] RGB.
      canvas: the canvas side C.
      mean, std: per-channel normalization in 0..255 units (the input pipeline's).

    Returns:
      (canvas float32 [C, C, 3] normalized, zero on the padding; (h, w) int of the resized
      content in its top-left corner).
    """
    height, width = image.shape[:2]
    scale = canvas / max(height, width)
    new_h = min(canvas, max(1, int(round(height * scale))))
    new_w = min(canvas, max(1, int(round(width * scale))))
    # Pillow's bilinear filter widens its support when shrinking, as the input pipeline's
    # tf.image.resize(antialias=True) does: both give the same pixels within rounding.
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    out = np.zeros((canvas, canvas, 3), np.float32)
    out[:new_h, :new_w] = (resized.astype(np.float32) - np.asarray(mean, np.float32)) / \
        np.asarray(std, np.float32)
    return out, (new_h, new_w)


# --------------------------------------------------------------------------- writing


def _write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Calls ``write(temporary_path)`` in ``path``'s directory, then renames it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    """JSON encoding of NumPy scalars and arrays, and of RLE ``bytes`` counts."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("ascii")
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Writes ``payload`` as JSON to ``path`` atomically (NumPy values and bytes allowed)."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(payload, f, default=_json_default)

    _write_atomic(path, write)


def write_png_atomic(path: str | os.PathLike, pixels: np.ndarray) -> None:
    """Writes uint8 [H, W] or [H, W, 3|4] pixels as a PNG atomically."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"{path}: PNG pixels must be uint8, got {pixels.dtype}")
    _write_atomic(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


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


def _normalization() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input pipeline's per-channel (mean, std), converted to 0..255 units."""
    from sln_jax import input_pipeline
    return (tuple(255.0 * m for m in input_pipeline.IMAGENET_MEAN),
            tuple(255.0 * s for s in input_pipeline.IMAGENET_STD))


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
          config: the run's ``ml_collections.ConfigDict`` (``config.model``, ``config.data``).
          checkpoint_dir: the training workdir (``WORKDIR/checkpoints`` holds the orbax
            checkpoints) or that ``checkpoints`` directory itself.
          canvas_sizes: canvas sides; default ``default_canvas_sizes(config.data.image_size)``.
          batch_size: images per model call.
          score_threshold: overrides ``config.model.score_threshold``.
          step: checkpoint step to restore; default the latest.
        """
        from sln_jax import train
        directory = Path(checkpoint_dir)
        nested = directory / train.CHECKPOINT_DIR
        if directory.name == train.CHECKPOINT_DIR and not nested.exists():
            directory = directory.parent
        checkpoint = train.load_checkpoint(str(directory), step)
        _check_checkpoint_config(config, checkpoint["config"], directory)
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
        import jax
        from sln_jax.models import postprocess
        from sln_jax.models.sln import SLN

        config = config.copy_and_resolve_references()
        if score_threshold is not None:
            with config.unlocked():
                config.model.score_threshold = float(score_threshold)
        self.config = config
        sizes = canvas_sizes or default_canvas_sizes(config.data.image_size)
        self.canvas_sizes = tuple(sorted(int(s) for s in sizes))
        if any(s % CANVAS_MULTIPLE for s in self.canvas_sizes) or self.canvas_sizes[0] <= 0:
            raise ValueError(f"canvas sizes {self.canvas_sizes} must be positive multiples of "
                             f"{CANVAS_MULTIPLE} (the coarsest FPN stride)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.mean, self.std = _normalization()
        self.compiled_shapes: list[tuple[int, ...]] = []
        self._postprocess = postprocess
        self._model = SLN(config.model)
        self._variables = jax.device_put(variables)
        self._forward = jax.jit(self._trace_forward)

    def _trace_forward(self, variables, images):
        """The model's inference outputs; the Python body runs once per compilation."""
        self.compiled_shapes.append(tuple(images.shape))
        return self._model.apply(variables, images, None, train=False)

    def raw_outputs(self, images: Sequence[np.ndarray]) -> list[tuple[dict[str, np.ndarray],
                                                                       tuple[int, int]]]:
        """The model's fixed-size outputs for each image, before postprocessing.

        Args:
          images: uint8 [H_i, W_i, 3] RGB images of any sizes.

        Returns:
          Per image, in order: (outputs of that image (the train=False keys of
          docs/interfaces.md without the batch axis, NumPy), (h, w) of the image's content
          in its canvas).
        """
        import jax
        for index, image in enumerate(images):
            if not (isinstance(image, np.ndarray) and image.dtype == np.uint8
                    and image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) > 0):
                raise ValueError(
                    f"image {index}: expected uint8 [H, W, 3] RGB, got "
                    f"{getattr(image, 'dtype', type(image).__name__)} "
                    f"{getattr(image, 'shape', '')}; use load_image / to_rgb")
        by_canvas: dict[int, list[int]] = {}
        for index, image in enumerate(images):
            side = choose_canvas(image.shape[0], image.shape[1], self.canvas_sizes)
            by_canvas.setdefault(side, []).append(index)
        results: list[Any] = [None] * len(images)
        for side, indices in by_canvas.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                batch = np.zeros((self.batch_size, side, side, 3), np.float32)
                sizes = []
                for slot, index in enumerate(chunk):
                    batch[slot], size = fit_to_canvas(images[index], side, self.mean, self.std)
                    sizes.append(size)
                outputs = jax.device_get(self._forward(self._variables, batch))
                for slot, index in enumerate(chunk):
                    results[index] = ({k: np.asarray(v[slot]) for k, v in outputs.items()},
                                      sizes[slot])
        return results

    def to_instances(self, outputs: dict[str, np.ndarray], content_size: tuple[int, int],
                     orig_size: tuple[int, int]) -> list[dict[str, Any]]:
        """Instances of one image from its ``raw_outputs`` entry (see ``predict_batch``)."""
        return self._postprocess.to_instances(outputs, content_size, orig_size,
                                              self.config.model)

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[list[dict[str, Any]]]:
        """Detections of several images (grouped by canvas and batched internally).

        Args:
          images: uint8 [H_i, W_i, 3] RGB images of any sizes.

        Returns:
          Per image, the instances of ``sln_jax.models.postprocess.to_instances`` in the
          image's own pixels: ``box`` (x, y, w, h), ``category_id``, ``score``, ``amodal`` and
          ``visible`` bool [H_i, W_i], ``layers`` int32 [H_i, W_i], ``occlude_rate``,
          ``depth_order`` {index of another detection: +1 in front of it / -1 behind}.
        """
        return [self.to_instances(outputs, size, image.shape[:2])
                for (outputs, size), image in zip(self.raw_outputs(images), images)]

    def predict(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Detections of one uint8 [H, W, 3] RGB image (see ``predict_batch``)."""
        return self.predict_batch([image])[0]


def _check_checkpoint_config(config, saved: dict, directory: Path) -> None:
    """Raises when the checkpoint was trained with a different model config."""
    saved_model = saved.get("model", {}) if isinstance(saved, dict) else {}
    current = config.model.to_dict()
    differences = []
    for key, value in saved_model.items():
        if key in ("score_threshold", "nms_threshold", "max_detections"):
            continue  # inference-time settings, free to change
        here = current.get(key)
        if isinstance(value, list):
            value, here = tuple(value), tuple(here) if isinstance(here, (list, tuple)) else here
        if here != value:
            differences.append(f"model.{key}: checkpoint {value!r}, config {here!r}")
    if differences:
        raise ValueError(f"{directory}: checkpoint does not match --config ("
                         + "; ".join(differences) + ")")


# -------------------------------------------------------------------------- pictures

# Pictures are drawn at a legible size: small images are enlarged by an integer factor until
# their longer side reaches PICTURE_MIN_SIDE, large ones shrunk to PICTURE_MAX_SIDE.
PICTURE_MIN_SIDE = 384
PICTURE_MAX_SIDE = 1600
# The depth-order graph panel to the right of the image: at least this tall, this wide,
# and wide enough for a row of every detection's node.
GRAPH_MIN_HEIGHT = 320
GRAPH_WIDTH_RANGE = (300, 960)
GRAPH_NODE_WIDTH = 36


def picture_size(height: int, width: int, num_detections: int = 0
                 ) -> tuple[int, int, int, int]:
    """Layout of ``draw_picture``'s output for an image of size (height, width).

    Args:
      height, width: the image's size.
      num_detections: how many detections the graph panel shows.

    Returns:
      (picture height, picture width, drawn image height, drawn image width): the drawn
      image sits in the top-left corner, the depth-order graph panel to its right.
    """
    longest = max(height, width)
    if longest < PICTURE_MIN_SIDE:
        scale = float(-(-PICTURE_MIN_SIDE // longest))
    else:
        scale = min(1.0, PICTURE_MAX_SIDE / longest)
    drawn_h = max(1, int(round(height * scale)))
    drawn_w = max(1, int(round(width * scale)))
    total_h = max(drawn_h, GRAPH_MIN_HEIGHT)
    graph_w = int(np.clip(max(0.6 * total_h, GRAPH_NODE_WIDTH * (num_detections + 2)),
                          *GRAPH_WIDTH_RANGE))
    return total_h, drawn_w + graph_w, drawn_h, drawn_w


def _resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """bool [N, height, width] nearest-neighbour resize of bool [N, H, W] masks."""
    if masks.shape[1:] == (height, width):
        return masks
    return np.stack([cv2.resize(m.astype(np.uint8), (width, height),
                                interpolation=cv2.INTER_NEAREST).astype(bool) for m in masks]
                    ) if len(masks) else np.zeros((0, height, width), bool)


def depth_order_matrix(instances: Sequence[dict[str, Any]]) -> np.ndarray:
    """int8 [N, N] pairwise order of instances from their ``depth_order`` dicts.

    Entry [i, j] is +1 when detection i is in front of detection j, -1 behind, 0 unknown.
    """
    n = len(instances)
    order = np.zeros((n, n), np.int8)
    for i, instance in enumerate(instances):
        for j, relation in instance.get("depth_order", {}).items():
            j = int(j)
            if 0 <= j < n and j != i:
                order[i, j] = int(np.sign(relation))
    return order


def _render_graph(order: np.ndarray, height: int, width: int, caption: str) -> np.ndarray:
    """uint8 [height, width, 3] picture of the depth-order graph (matplotlib, Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from sln_jax import visualize

    dpi = 100
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    axis = figure.add_axes((0.04, 0.2, 0.92, 0.72))
    # Nodes carry the detection index and color of the tags in the picture, which also
    # name the class; class names under the nodes would collide when a row is full.
    visualize.depth_order_graph(axis, order)
    figure.text(0.5, 0.02, caption, ha="center", va="bottom", fontsize=8, color="0.25")
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[:, :, :3]
    if pixels.shape[:2] != (height, width):
        pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(pixels)


PICTURE_MIN_SCORE = 0.5


def _confident(instances: Sequence[dict[str, Any]], min_score: float) -> list[dict[str, Any]]:
    """The instances scoring >= min_score, their depth_order re-indexed to the kept list."""
    keep = [i for i, d in enumerate(instances) if float(d["score"]) >= min_score]
    new_index = {old: new for new, old in enumerate(keep)}
    return [dict(instances[i], depth_order={
        new_index[int(j)]: v for j, v in instances[i]["depth_order"].items()
        if int(j) in new_index}) for i in keep]


def draw_picture(image: np.ndarray, instances: Sequence[dict[str, Any]],
                 class_names: dict[int, str] | None = None,
                 min_score: float = PICTURE_MIN_SCORE) -> np.ndarray:
    """The picture of one image's detections, for a person to read.

    Left: the image (enlarged when small, shrunk when huge; ``picture_size``) with each
    detection's visible part filled translucently, its occluded part hatched, its amodal
    outline, and a tag "index class score" (``sln_jax.visualize.draw_instances``). Right: the
    depth-order graph, an arrow from each detection to the ones it is in front of.

    Args:
      image: uint8 [H, W, 3] RGB.
      instances: the detections of ``Predictor.predict`` (``amodal``, ``visible`` bool
        [H, W], ``category_id``, ``score``, ``depth_order``).
      class_names: category id -> name (ids are shown otherwise).
      min_score: only detections scoring at least this are drawn (results files keep the
        low-scoring ones that COCO AP needs; a picture of them is unreadable). Tags and the
        graph number the drawn detections 0, 1, ...

    Returns:
      uint8 [picture height, picture width, 3] RGB, sizes from ``picture_size(H, W, N)``
      with N the number drawn.
    """
    from sln_jax import visualize

    instances = _confident(instances, min_score)
    height, width = image.shape[:2]
    total_h, total_w, drawn_h, drawn_w = picture_size(height, width, len(instances))
    names = [(class_names or {}).get(int(d["category_id"]), f"class {int(d['category_id'])}")
             for d in instances]
    scores = [float(d["score"]) for d in instances]
    empty = np.zeros((0, height, width), bool)
    amodal = np.stack([d["amodal"] for d in instances]) if instances else empty
    visible = np.stack([d["visible"] for d in instances]) if instances else empty
    interpolation = cv2.INTER_NEAREST if drawn_h >= height else cv2.INTER_AREA
    shown = cv2.resize(image, (drawn_w, drawn_h), interpolation=interpolation)
    drawn = visualize.draw_instances(shown, _resize_masks(amodal, drawn_h, drawn_w),
                                     _resize_masks(visible, drawn_h, drawn_w),
                                     labels=names, scores=scores)
    picture = np.full((total_h, total_w, 3), 255, np.uint8)
    picture[:drawn_h, :drawn_w] = drawn
    caption = (f"{len(instances)} detections with score >= {min_score:g}\n"
               "fill: visible part, hatched: occluded part,\n"
               "outline: amodal mask")
    picture[:, drawn_w:] = _render_graph(depth_order_matrix(instances), total_h,
                                         total_w - drawn_w, caption)
    return picture


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
    from sln_jax import layering, semdist
    from sln_jax.models import postprocess

    k = int(model_config.num_layers)
    height, width = int(orig_size[0]), int(orig_size[1])
    detections = np.flatnonzero(np.asarray(outputs["valid"], bool))
    if len(detections) != len(instances):
        raise ValueError(f"{len(instances)} instances for {len(detections)} valid detections")
    factor = np.array([height / content_size[0], width / content_size[1]] * 2, np.float64)
    boxes = np.clip(np.asarray(outputs["boxes"], np.float64)[detections] * factor, 0,
                    [height, width, height, width])
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
            write_png_atomic(directory / f"det{index}_layer{channel}.png",
                             np.round(255 * np.clip(layer_probs[channel], 0, 1)).astype(np.uint8))
        write_png_atomic(directory / f"det{index}_semdist.png",
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
    metadata = os.path.join(str(config.data.dir), "metadata.json")
    if os.path.isfile(metadata):
        with open(metadata) as f:
            classes = json.load(f).get("classes", {})
        return {int(k): str(v) for k, v in classes.items()}
    return {}


def run(config, checkpoint_dir: str | os.PathLike, images: str | Sequence[str],
        output_dir: str | os.PathLike, *, annotations: str | None = None,
        layers: bool = False, score_threshold: float | None = None,
        canvas_sizes: Sequence[int] | None = None, batch_size: int = 1,
        pictures: bool = True, picture_min_score: float = PICTURE_MIN_SCORE,
        progress: bool = True,
        predictor: Predictor | None = None) -> dict[str, Any]:
    """Runs inference on image files and writes results, pictures and layer maps.

    Args:
      config: the run's config.
      checkpoint_dir: the training workdir (see ``Predictor``).
      images: a directory, glob, file or list of those (``find_images``).
      output_dir: where ``results.json``, ``images.json``, ``pictures/`` and ``layers/`` go.
      annotations: a COCO-style GT JSON; image ids are taken from it by file name (images
        it does not list are skipped and counted), else ids are 1, 2, ... in file order.
      layers: also write per detection its K layer maps and its sem-dist map as PNGs.
      score_threshold: overrides ``config.model.score_threshold``.
      canvas_sizes, batch_size: see ``Predictor``.
      pictures: write one picture per image.
      picture_min_score: the pictures show detections scoring at least this.
      progress: show a tqdm progress bar.
      predictor: reuse an existing predictor (then checkpoint_dir, score_threshold,
        canvas_sizes and batch_size are not used).

    Returns:
      A summary: ``num_images`` (predicted), ``num_detections``, ``num_unreadable``,
      ``unreadable`` [{'file', 'error'}], ``num_unmatched`` and ``unmatched`` (files not in
      ``annotations``), ``results`` (path of results.json).
    """
    from tqdm import tqdm

    from sln_jax.models import postprocess

    paths = find_images(images)
    root = _common_root(paths)
    names = _output_names(paths, root)
    gt_ids = image_ids_from_annotations(annotations) if annotations else None
    if predictor is None:
        predictor = Predictor(config, checkpoint_dir, canvas_sizes=canvas_sizes,
                              batch_size=batch_size, score_threshold=score_threshold)
    class_names = _class_names(predictor.config, annotations)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    results: list[dict[str, Any]] = []
    image_records: list[dict[str, Any]] = []
    unreadable: list[dict[str, str]] = []
    unmatched: list[str] = []
    next_id = 1
    # Images wait per canvas side until a full batch of that side is there.
    pending: dict[int, list[tuple[str, int, np.ndarray]]] = {}

    def flush(side: int) -> None:
        items = pending.pop(side)
        raw = predictor.raw_outputs([item[2] for item in items])
        for (name, image_id, image), (outputs, size) in zip(items, raw):
            instances = predictor.to_instances(outputs, size, image.shape[:2])
            results.extend(postprocess.to_coco_results(instances, image_id))
            if pictures:
                write_png_atomic(output_dir / "pictures" / f"{name}.png",
                                 draw_picture(image, instances, class_names,
                                              picture_min_score))
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
        except UnreadableImageError as error:
            unreadable.append({"file": str(path), "error": str(error)})
            bar.write(f"skipped {error}")
            continue
        if gt_ids is None:
            image_id, next_id = next_id, next_id + 1
        image_records.append({"id": image_id, "file_name": file_name,
                              "height": int(image.shape[0]), "width": int(image.shape[1])})
        side = choose_canvas(image.shape[0], image.shape[1], predictor.canvas_sizes)
        pending.setdefault(side, []).append((name, image_id, image))
        if len(pending[side]) == predictor.batch_size:
            flush(side)
    for side in sorted(pending):
        flush(side)
    bar.close()

    results_path = output_dir / "results.json"
    write_json_atomic(results_path, results)
    write_json_atomic(output_dir / "images.json", {
        "images": image_records, "unreadable": unreadable, "unmatched": unmatched,
        "annotations": str(annotations) if annotations else None,
    })
    summary = {
        "num_images": len(image_records), "num_detections": len(results),
        "num_unreadable": len(unreadable), "unreadable": unreadable,
        "num_unmatched": len(unmatched), "unmatched": unmatched,
        "results": str(results_path),
    }
    print(f"{summary['num_images']} images, {summary['num_detections']} detections -> "
          f"{results_path}; {summary['num_unreadable']} unreadable file(s) skipped"
          + (f", {summary['num_unmatched']} not in {annotations}" if annotations else ""))
    return summary


def _define_flags():
    """The CLI's flags (defined only when run as a program, so importing stays side-effect free)."""
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file of the run (configs/*.py).",
                                    lock_config=True)
    flags.DEFINE_string("checkpoint", None, "Training workdir holding checkpoints/.")
    flags.DEFINE_string("images", None, "Image directory, glob pattern or file.")
    flags.DEFINE_string("output", None, "Output directory.")
    flags.DEFINE_string("annotations", None,
                        "COCO-style GT JSON: take image ids from it by file name.")
    flags.DEFINE_bool("layers", False, "Also write each detection's layer and sem-dist maps.")
    flags.DEFINE_bool("pictures", True, "Write one picture per image.")
    flags.DEFINE_float("picture_min_score", PICTURE_MIN_SCORE,
                       "Pictures show detections scoring at least this.")
    flags.DEFINE_float("score_threshold", None, "Overrides config.model.score_threshold.")
    flags.DEFINE_list("canvas_sizes", None,
                      "Canvas sides, multiples of 64 (default: S, 1.5 S, 2 S).")
    flags.DEFINE_integer("batch_size", 1, "Images per model call.")
    flags.mark_flags_as_required(["config", "checkpoint", "images", "output"])
    return flags.FLAGS


def main(argv: Sequence[str]) -> None:
    """``python -m sln_jax.infer``: see the module docstring."""
    del argv
    from sln_jax import runtime
    runtime.configure_cpu()  # before JAX starts a backend
    from absl import flags, logging
    FLAGS = flags.FLAGS
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every restore step at INFO
    canvas_sizes = [int(s) for s in FLAGS.canvas_sizes] if FLAGS.canvas_sizes else None
    run(FLAGS.config, FLAGS.checkpoint, FLAGS.images, FLAGS.output,
        annotations=FLAGS.annotations, layers=FLAGS.layers,
        score_threshold=FLAGS.score_threshold, canvas_sizes=canvas_sizes,
        batch_size=FLAGS.batch_size, pictures=FLAGS.pictures,
        picture_min_score=FLAGS.picture_min_score)


if __name__ == "__main__":
    from absl import app
    _define_flags()
    app.run(main)
