"""D2SA amodal annotations (and the built-in synthetic dataset, which uses the same format).

D2SA (Follmann et al. 2019) is COCO-style with one entry per instance: ``segmentation`` is
the amodal mask as RLE, ``visible_mask`` and optional ``invisible_mask`` the visible and
occluded parts, ``occlude_rate``, ``occl_depth`` (a depth layer, not used: the layering
targets are rebuilt from the masks), ``amodal_region`` ({name, area, isStuff, bbox, order}),
``iscrowd`` as a JSON boolean, 60 categories; images up to 1440 x 1920. The synthetic
dataset (``data_prep.synthetic``) writes the same fields with the depth rank as a top-level
``order`` (1 = front). Parsing is shared with COCOA-cls in ``data_prep.coco_style``.
"""

from __future__ import annotations

from data_prep.coco_style import read_flat
from data_prep.scene import AnnotationSet

__all__ = ["read"]


def read(path: str, images_dir: str) -> AnnotationSet:
    """Read a D2SA-style annotation file (classes: the file's categories, contiguous 1..C).

    Args:
      path: ``*.json`` annotation file.
      images_dir: directory the images' ``file_name`` are relative to.

    Returns:
      AnnotationSet (see ``data_prep.scene``); crowd annotations skipped and counted.

    Raises:
      DataError: one line naming the file and the image / annotation id.
    """
    return read_flat(path, images_dir, class_agnostic=False)
