"""The one image reader: any file -> RGB uint8, with one policy for training, conversion and
inference (so a file gives the model the same pixels in all three).

The policy, stated once:

* **Alpha** (RGBA, LA, PA, palette with a transparent colour): composited over white, as
  image viewers (and so annotators) show the image.
* **16-bit** (gray 'I;16*' / 'I', and 16-bit RGB PNGs): scaled by 255 / 65535 and rounded.
  Pillow reads a 16-bit RGB PNG as 8-bit by truncation, so those go through OpenCV.
  Float gray ('F'): values in [0, 1] are scaled by 255, others clipped to 0..255.
* **EXIF orientation: not applied.** Annotations refer to the stored pixel grid (the
  converter checks the file's stored size against the annotated one) and TensorFlow's
  decoder, which reads the records in training, ignores EXIF; rotating at inference only
  would hand the model other pixels than in training.
* Everything else (grayscale, 1-bit, CMYK, YCbCr, LAB, HSV): Pillow's conversion to RGB.

An 8-bit RGB JPEG or PNG (``is_plain_rgb``) decodes to the same pixels whichever decoder
reads it, so the converter stores its original bytes; anything else is stored as the PNG of
``decode``'s pixels (``data_prep.images``), and the input pipeline's PNG decode returns them.

Ground floor: NumPy, Pillow and OpenCV only.
"""

from __future__ import annotations

import io
import os
import warnings

import cv2
import numpy as np
from PIL import Image

__all__ = ["UnreadableImageError", "ALPHA_BACKGROUND", "is_sixteen_bit_png", "is_plain_rgb",
           "to_rgb", "decode", "load_image"]

# Transparent pixels are shown over white, as image viewers do.
ALPHA_BACKGROUND = (255, 255, 255)


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded; the message names the file and the reason."""


def is_sixteen_bit_png(data: bytes) -> bool:
    """Whether ``data`` is a PNG with 16-bit samples (IHDR byte 24 is the bit depth)."""
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24 and data[24] == 16


def is_plain_rgb(file_format: str | None, mode: str, data: bytes) -> bool:
    """Whether a file (Pillow's ``format`` and ``mode`` of it, its bytes) is an 8-bit RGB
    JPEG or PNG: every decoder gives its pixels as they are, so its bytes can be kept."""
    return file_format in ("JPEG", "PNG") and mode == "RGB" and not is_sixteen_bit_png(data)


def _gray_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """uint8 [H, W] from a single-channel image of mode 'I;16*', 'I' or 'F'."""
    values = values.astype(np.float64)
    if mode == "F":
        if values.size and values.min() >= 0 and values.max() <= 1:
            values = values * 255.0
    else:
        values = values * (255.0 / 65535.0)
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image, data: bytes | None = None) -> np.ndarray:
    """RGB uint8 pixels of an opened Pillow image of any mode (the module's policy).

    Args:
      image: an opened Pillow image (the first frame is used for animations).
      data: the file's bytes, needed to read 16-bit RGB PNGs at full depth.

    Returns:
      uint8 [H, W, 3], the stored pixel grid (no EXIF rotation).
    """
    mode = image.mode
    if data is not None and mode == "RGB" and is_sixteen_bit_png(data):
        bgr16 = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        return cv2.cvtColor(np.round(bgr16[:, :, :3] / 257.0).astype(np.uint8),
                            cv2.COLOR_BGR2RGB)
    if mode in ("I", "F") or mode.startswith("I;16"):
        gray = _gray_to_uint8(np.asarray(image), mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        image = Image.alpha_composite(background, rgba)
    return np.array(image.convert("RGB"), dtype=np.uint8)


def decode(data: bytes, where: str = "image") -> np.ndarray:
    """RGB uint8 pixels of an encoded image (see the module docstring for the policy).

    Args:
      data: the bytes of a file Pillow can decode (PNG, JPEG, BMP, GIF, TIFF, WebP, ...).
      where: names the image in error messages (a path, an image id).

    Returns:
      uint8 [H, W, 3].

    Raises:
      UnreadableImageError: naming ``where`` when the data is not an image, is truncated,
        empty or too large for Pillow's decompression-bomb limit.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                pixels = to_rgb(image, data)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        raise UnreadableImageError(f"{where}: cannot read image ({error})") from error
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise UnreadableImageError(f"{where}: image has no pixels ({pixels.shape[:2]})")
    return pixels


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as RGB uint8 [H, W, 3] (``decode``'s policy).

    Raises:
      UnreadableImageError: naming the file, when it is missing or ``decode`` fails.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise UnreadableImageError(f"{path}: cannot read image ({error})") from error
    return decode(data, str(path))
