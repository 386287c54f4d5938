"""Reading, checking and (when needed) re-encoding image files for the records.

An 8-bit RGB JPEG or PNG is stored as its original bytes. Anything else the pipeline's
``decode_image(channels=3)`` would read differently or not at all (grayscale, gray+alpha,
RGBA, palette, 1-bit, 16-bit, CMYK, or another container such as BMP / TIFF / WebP) is
converted to 8-bit RGB by ``sln_jax.images.to_rgb`` (the one policy for alpha, 16-bit and
EXIF, shared with inference) and stored as PNG.
"""

from __future__ import annotations

import dataclasses
import io

import cv2
from PIL import Image, UnidentifiedImageError

from data_prep.scene import DataError
from sln_jax import images

__all__ = ["EncodedImage", "read_image"]


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    """Image bytes ready for a record.

    Attributes:
      data: JPEG or PNG bytes of an 8-bit RGB image.
      format: "jpeg" or "png".
      height, width: size in pixels.
      converted_from: None when ``data`` is the original file, else the original PIL mode
        and format (e.g. "L/JPEG", "I;16/PNG").
    """

    data: bytes
    format: str
    height: int
    width: int
    converted_from: str | None


def _check_complete(image: Image.Image) -> None:
    """Raise if the file behind an opened image is truncated or corrupt.

    Decoding every pixel of a 512 x 512 PNG costs about 8 ms, more than the rest of its
    conversion; cheaper checks catch the same damage: a PNG's chunk CRCs and end marker are
    checked without inflating the pixels (``verify``), and a JPEG's entropy-coded scan is
    decoded in full at 1/8 scale (DCT scaling, about 40 % of a full decode). Other formats
    are decoded fully.
    """
    if image.format == "PNG":
        image.verify()
    elif image.format == "JPEG":
        image.draft("RGB", (max(image.size[0] // 8, 1), max(image.size[1] // 8, 1)))
        image.load()
    else:
        image.load()


def read_image(path: str, image_id: int, height: int, width: int) -> EncodedImage:
    """Read and check an image file, converting it to 8-bit RGB when needed.

    Args:
      path: image file.
      image_id: id for error messages.
      height, width: the size the annotation file gives; the file must match it.

    Returns:
      EncodedImage.

    Raises:
      DataError: one line naming the file and image id when the file is missing,
        unreadable, truncated, corrupt, or of another size than annotated.
    """
    where = f"{path} (image {image_id})"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"{where}: image file not found") from None
    except OSError as err:
        raise DataError(f"{where}: cannot read image ({err.strerror})") from None
    try:
        image = Image.open(io.BytesIO(data))
        size, mode, file_format = image.size, image.mode, image.format
        _check_complete(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{where}: unreadable or truncated image ({err})") from None
    if size != (width, height):
        raise DataError(f"{where}: image is {size[1]}x{size[0]} but the "
                        f"annotations say {height}x{width}")
    if images.is_plain_rgb(file_format, mode, data):
        return EncodedImage(data, file_format.lower(), height, width, None)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        rgb = images.to_rgb(image, data)
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{where}: unreadable or truncated image ({err})") from None
    sixteen_bit_png = images.is_sixteen_bit_png(data)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise DataError(f"{where}: could not re-encode the image as PNG")
    mode = f"{mode}16" if sixteen_bit_png and mode == "RGB" else mode
    return EncodedImage(png.tobytes(), "png", height, width, f"{mode}/{file_format}")
