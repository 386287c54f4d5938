"""The canvas: how an image is fitted, keeping its aspect, into a square S x S model input.

An image of size (H, W) is resized so that its longer side is S (``content_size``: the
scale is S / max(H, W) in float32 and sides are rounded half to even, clipped to [1, S]),
placed in the top-left corner, normalized with the ImageNet mean / std and zero-padded
bottom / right. Detections come back to the image's pixels by the inverse scale
(``boxes_to_original``). The same maths runs in TensorFlow in the input pipeline
(``content_size_tf``) and in NumPy at inference (``fit_to_canvas``); tests check both give
the same sizes and pixels.

Inference fits each image into the smallest of a few canvas sides ("buckets",
``default_canvas_sizes``) that holds it, so the model is compiled once per side.

The optional semantic map (uint8 [H, W] class ids, ``sln_jax.semantic``) is fitted as the
image is (the same content size; nearest neighbour, ``resize_nearest`` being the NumPy twin
of the input pipeline's ``tf.image.resize(method='nearest')``), padded with "no class", and
handed to the model as class fractions of 4 x 4 cells (``SEMANTIC_STRIDE``,
``class_fractions`` and ``class_fractions_tf``): float32 [S/4, S/4, S_sem], S_sem =
``config.model.semantic_channels``. Why stride 4 and not 1: the map is a dense float input
of S_sem channels, 16x smaller at stride 4 (at the paper's 1024 px and DeepLab's 182
classes, 48 MB per image instead of 763 MB); the layering head ROI-aligns it with a fixed
number of samples per ROI, so its cost does not depend on the stride; and the head's finest
other inputs (P2, the GLM map) are at stride 4 too.

Ground floor: NumPy, Pillow and OpenCV (TensorFlow only inside ``content_size_tf``).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "CANVAS_MULTIPLE", "SEMANTIC_STRIDE",
           "content_size", "content_size_tf", "default_canvas_sizes", "choose_canvas",
           "fit_to_canvas", "canvas_to_image", "boxes_to_original", "resize_nearest",
           "class_fractions", "class_fractions_tf", "semantic_canvas"]

# Per-channel normalization of RGB in [0, 1] (torchvision's ImageNet statistics).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Canvas sides are multiples of this: the coarsest FPN level (P6) has stride 64.
CANVAS_MULTIPLE = 64

# The semantic map reaches the model as class fractions of SEMANTIC_STRIDE^2-pixel cells.
SEMANTIC_STRIDE = 4


def content_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(h, w) of an (height, width) image resized so its longer side fits a side-S canvas.

    Float32 maths and round-half-to-even, exactly as ``content_size_tf``.
    """
    scale = np.float32(side) / np.float32(max(height, width))
    new_h = int(np.clip(np.round(np.float32(height) * scale), 1, side))
    new_w = int(np.clip(np.round(np.float32(width) * scale), 1, side))
    return new_h, new_w


def content_size_tf(height, width, side: int):
    """``content_size`` on TensorFlow int32 scalars: (scale float32, new_h, new_w int32)."""
    import tensorflow as tf

    scale = tf.cast(side, tf.float32) / tf.cast(tf.maximum(height, width), tf.float32)
    new_h = tf.clip_by_value(tf.cast(tf.round(tf.cast(height, tf.float32) * scale), tf.int32),
                             1, side)
    new_w = tf.clip_by_value(tf.cast(tf.round(tf.cast(width, tf.float32) * scale), tf.int32),
                             1, side)
    return scale, new_h, new_w


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


def fit_to_canvas(image: np.ndarray, canvas: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Resizes an image keeping its aspect so its longer side is ``canvas``, pads, normalizes.

    Args:
      image: uint8 [H, W, 3] RGB.
      canvas: the canvas side C.

    Returns:
      (canvas float32 [C, C, 3] normalized, zero on the padding; (h, w) int of the resized
      content in its top-left corner).
    """
    new_h, new_w = content_size(image.shape[0], image.shape[1], canvas)
    # Pillow's bilinear filter widens its support when shrinking, as the input pipeline's
    # tf.image.resize(antialias=True) does: both give the same pixels within rounding.
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    mean = 255.0 * np.asarray(IMAGENET_MEAN, np.float32)
    std = 255.0 * np.asarray(IMAGENET_STD, np.float32)
    out = np.zeros((canvas, canvas, 3), np.float32)
    out[:new_h, :new_w] = (resized.astype(np.float32) - mean) / std
    return out, (new_h, new_w)


def canvas_to_image(image: np.ndarray, content: Sequence[int],
                    orig_size: Sequence[int]) -> np.ndarray:
    """uint8 [H, W, 3] original-size RGB from a normalized float32 [S, S, 3] canvas.

    Args:
      image: the normalized canvas.
      content: (h, w) of the content in the canvas's top-left corner.
      orig_size: (H, W) of the original image.
    """
    h, w = (int(v) for v in content)
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    rgb = np.clip((image[:h, :w] * std + mean) * 255.0, 0, 255).astype(np.uint8)
    oh, ow = (int(v) for v in orig_size)
    return np.asarray(cv2.resize(rgb, (ow, oh), interpolation=cv2.INTER_LINEAR))


def boxes_to_original(boxes: np.ndarray, content: Sequence[int],
                      orig_size: Sequence[int]) -> np.ndarray:
    """float64 [D, 4] (y1, x1, y2, x2) boxes in original pixels, clipped to the image.

    Args:
      boxes: [D, 4] boxes in canvas pixels.
      content: (h, w) of the image's content in the canvas.
      orig_size: (H, W) of the original image.
    """
    (h, w), (oh, ow) = content, orig_size
    factor = np.array([oh / h, ow / w, oh / h, ow / w], np.float64)
    boxes = np.asarray(boxes, np.float64) * factor
    return np.clip(boxes, 0.0, np.array([oh, ow, oh, ow], np.float64))


def resize_nearest(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W, ...] resized to [height, width, ...] with nearest neighbour, pixel for pixel as
    ``tf.image.resize(method='nearest')`` (half-pixel centres: source index
    floor((i + 0.5) * H / height) in float32, clipped), the input pipeline's resize."""
    def source(size: int, out: int) -> np.ndarray:
        scale = np.float32(size) / np.float32(out)
        index = np.floor((np.arange(out, dtype=np.float32) + np.float32(0.5)) * scale)
        return np.minimum(index.astype(np.int64), size - 1)

    values = np.asarray(values)
    return values[source(values.shape[0], int(height))][:, source(values.shape[1], int(width))]


def _cell_index(side: int) -> np.ndarray:
    """int [side, side]: the SEMANTIC_STRIDE x SEMANTIC_STRIDE cell of each canvas pixel."""
    cells = np.arange(side) // SEMANTIC_STRIDE
    return cells[:, None] * (side // SEMANTIC_STRIDE) + cells[None, :]


def class_fractions(class_ids: np.ndarray, channels: int) -> np.ndarray:
    """The model's semantic input from a canvas of class ids.

    Args:
      class_ids: int [C, C] class ids in [0, S_sem) on the canvas, -1 where there is no class
        (the canvas padding); C divisible by ``SEMANTIC_STRIDE``.
      channels: S_sem.

    Returns:
      float32 [C / 4, C / 4, S_sem]: per 4 x 4 cell, the fraction of its 16 pixels of each
      class (exact multiples of 1/16; they sum to 1 inside the image content, to less where
      a cell covers padding).
    """
    side = class_ids.shape[0]
    cells, channels = side // SEMANTIC_STRIDE, int(channels)
    valid = class_ids >= 0
    index = _cell_index(side)[valid] * channels + class_ids[valid].astype(np.int64)
    counts = np.bincount(index, minlength=cells * cells * channels)
    return (counts.astype(np.float32) / np.float32(SEMANTIC_STRIDE ** 2)).reshape(
        cells, cells, channels)


def class_fractions_tf(class_ids, channels: int):
    """``class_fractions`` in TensorFlow (the input pipeline): int32 [C, C] (static C) ->
    float32 [C / 4, C / 4, S_sem], equal to the NumPy function."""
    import tensorflow as tf

    side = int(class_ids.shape[0])
    cells, channels = side // SEMANTIC_STRIDE, int(channels)
    ids = tf.cast(class_ids, tf.int32)
    # Pixels without a class get segment -1, which unsorted_segment_sum drops.
    segments = tf.where(ids >= 0, tf.constant(_cell_index(side), tf.int32) * channels + ids, -1)
    counts = tf.math.unsorted_segment_sum(tf.ones_like(segments), segments,
                                          cells * cells * channels)
    return tf.reshape(tf.cast(counts, tf.float32) / float(SEMANTIC_STRIDE ** 2),
                      [cells, cells, channels])


def semantic_canvas(class_ids: np.ndarray, canvas: int, channels: int) -> np.ndarray:
    """An image's semantic map as the model takes it, fitted as ``fit_to_canvas`` fits the image.

    Args:
      class_ids: uint8 / int [H, W] class ids in [0, S_sem) of an [H, W] image
        (``sln_jax.semantic.read_class_map``).
      canvas: the canvas side C (a multiple of ``SEMANTIC_STRIDE``).
      channels: S_sem.

    Returns:
      float32 [C / 4, C / 4, S_sem] class fractions (``class_fractions``).
    """
    new_h, new_w = content_size(class_ids.shape[0], class_ids.shape[1], canvas)
    ids = np.full((canvas, canvas), -1, np.int64)
    ids[:new_h, :new_w] = resize_nearest(class_ids, new_h, new_w)
    return class_fractions(ids, channels)
