"""Semantic maps: the per-pixel class ids a segmentation model gives an image, as files.

The optional semantic input of the layering head (``config.model.semantic_channels`` = S > 0,
``docs/SLN.md`` section 3) comes from any segmentation model the user has: its per-pixel
classes, saved once per image as

  ``DIR/<image file stem>.png``: one single-channel PNG of integer class ids in [0, S),
  the image's size (8-bit gray, palette indices as VOC-style label PNGs hold them, or
  16-bit gray).

Class ids, not probabilities, because they are what records can hold compactly (one uint8
PNG per image, like the global layering map) and what every segmentation model can save;
the model sees them as class fractions (``sln_jax.canvas.semantic_canvas``), the soft
one-hot of the ids. A model's probability map [H, W, S] is saved as its argmax. The same
files serve the converter (``python -m data_prep.convert --semantic_dir DIR``) and inference
(``python -m sln_jax.infer --semantic_dir DIR``), both through ``read_class_map``.

Ground floor: NumPy and Pillow only.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

__all__ = ["MAX_CHANNELS", "SemanticMapError", "check_channels", "map_path", "read_class_map"]

# Class ids are stored as uint8 PNGs (records) and S classes need ids 0..S-1.
MAX_CHANNELS = 255

# Pillow modes that hold one integer per pixel: gray, palette indices, 16 / 32-bit gray.
_INTEGER_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I")


class SemanticMapError(ValueError):
    """A semantic map that cannot be used; the message is one line naming the file."""


def check_channels(channels: int) -> int:
    """S as an int, or ValueError: S classes must be 2..MAX_CHANNELS."""
    channels = int(channels)
    if not 2 <= channels <= MAX_CHANNELS:
        raise ValueError(f"semantic_channels must be in 2..{MAX_CHANNELS} (class ids are "
                         f"stored as uint8), got {channels}")
    return channels


def map_path(directory: str | os.PathLike, image_file: str | os.PathLike) -> str:
    """``DIRECTORY/<stem of image_file>.png``: where the semantic map of an image is."""
    stem = os.path.splitext(os.path.basename(os.fspath(image_file)))[0]
    return os.path.join(os.fspath(directory), stem + ".png")


def read_class_map(path: str | os.PathLike, height: int, width: int,
                   channels: int) -> np.ndarray:
    """The class ids of one image's semantic map, checked.

    Args:
      path: the PNG (``map_path``).
      height, width: the image's size; the map must have it.
      channels: S; every id must be in [0, S).

    Returns:
      uint8 [height, width] class ids.

    Raises:
      SemanticMapError: one line naming the file: missing, not a single-channel integer
        PNG, another size than the image, or an id outside [0, S).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SemanticMapError(f"{path}: no semantic map for this image (expected a PNG of "
                               "class ids named after the image file)")
    try:
        with Image.open(path) as file:
            file_format, mode = file.format, file.mode
            ids = np.asarray(file)
    except (OSError, ValueError, SyntaxError) as error:
        raise SemanticMapError(f"{path}: unreadable semantic map ({error})") from None
    if file_format != "PNG" or mode not in _INTEGER_MODES or ids.ndim != 2:
        raise SemanticMapError(f"{path}: a semantic map must be a single-channel PNG of class "
                               f"ids (8-bit gray, palette or 16-bit gray), got a "
                               f"{file_format} of mode {mode}")
    if ids.shape != (int(height), int(width)):
        raise SemanticMapError(f"{path}: semantic map of {ids.shape[0]} x {ids.shape[1]} "
                               f"pixels for an image of {int(height)} x {int(width)}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= int(channels)):
        bad = int(ids.max()) if int(ids.max()) >= int(channels) else int(ids.min())
        raise SemanticMapError(f"{path}: class id {bad} outside [0, {int(channels)}), the "
                               "semantic_channels classes")
    return ids.astype(np.uint8)
