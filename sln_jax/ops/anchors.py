"""FPN anchors for a square input canvas, built once on the host in NumPy.

One anchor size per pyramid level. On a level of stride s the feature map has
ceil(image_size / s) cells per side (what 'SAME'-padded stride-2 convolutions produce) and the
anchors of cell (i, j) are centred at ((i + 0.5) * s, (j + 0.5) * s), the centre of the image
patch the cell covers. For an aspect ratio r = height / width an anchor of size z has area z^2,
height z * sqrt(r) and width z / sqrt(r).

Order of the rows: level by level (finest first), then row-major cell position (i, then j),
then ratio in the given order; the RPN head's outputs are flattened the same way.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["generate_anchors", "feature_size"]


def feature_size(image_size: int, stride: int) -> int:
    """Cells per side of the feature map of a given stride: ceil(image_size / stride)."""
    return -(-int(image_size) // int(stride))


def generate_anchors(image_size: int,
                     strides: Sequence[int] = (4, 8, 16, 32, 64),
                     sizes: Sequence[float] = (32, 64, 128, 256, 512),
                     ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> tuple[np.ndarray, list[int]]:
    """Anchors of every FPN level for an ``image_size`` x ``image_size`` canvas.

    Args:
      image_size: side S of the square input canvas in pixels.
      strides: stride of each level (P2..P6: 4, 8, 16, 32, 64).
      sizes: anchor side (sqrt of the area) of each level, one per stride.
      ratios: aspect ratios height / width.

    Returns:
      (anchors float32 [A, 4] (y1, x1, y2, x2) pixels, level_sizes list[int] with the number
      of anchors of each level, summing to A: ceil(S / stride)^2 * len(ratios)).
    """
    if len(strides) != len(sizes):
        raise ValueError(f"generate_anchors: one size per stride needed, got strides "
                         f"{tuple(strides)} and sizes {tuple(sizes)}")
    if image_size <= 0 or any(s <= 0 for s in strides) or any(r <= 0 for r in ratios):
        raise ValueError(f"generate_anchors: image_size, strides and ratios must be positive, "
                         f"got {image_size}, {tuple(strides)}, {tuple(ratios)}")
    ratios = np.asarray(ratios, np.float64)
    levels, level_sizes = [], []
    for stride, size in zip(strides, sizes):
        cells = feature_size(image_size, stride)
        centers = (np.arange(cells, dtype=np.float64) + 0.5) * stride
        cy, cx = np.meshgrid(centers, centers, indexing="ij")  # [cells, cells], row-major
        half_h = 0.5 * size * np.sqrt(ratios)  # [R]
        half_w = 0.5 * size / np.sqrt(ratios)
        cy = cy.reshape(-1, 1)
        cx = cx.reshape(-1, 1)
        level = np.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], axis=-1)
        levels.append(level.reshape(-1, 4))
        level_sizes.append(cells * cells * len(ratios))
    return np.concatenate(levels).astype(np.float32), level_sizes

