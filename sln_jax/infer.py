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

writes ``OUT/results.json`` (COCO results, ``../shared/design/ARCHITECTURE.md``),
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
from typing import Any, Callable, Iterable, Sequence

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
    # Area averaging when shrinking avoids aliasing; bilinear when enlarging.
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
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
