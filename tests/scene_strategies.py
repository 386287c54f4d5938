"""Hypothesis strategies for random layered scenes (shapes painted back to front)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


def paint(amodal: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Visible masks by painting instances back to front (the painter's algorithm).

    Args:
      amodal: bool [N, H, W].
      order: int [N] distinct depth ranks, smaller = nearer.

    Returns:
      bool [N, H, W] visible masks.
    """
    n, h, w = amodal.shape
    owner = np.full((h, w), -1)
    for i in np.argsort(-np.asarray(order), kind="stable"):  # farthest first
        owner[amodal[i]] = i
    return owner[None] == np.arange(n)[:, None, None]


@st.composite
def scenes(draw, max_instances: int = 6, min_size: int = 4, max_size: int = 32):
    """A random scene: dict(amodal bool [N,H,W], order int [N], visible bool [N,H,W]).

    Shapes are rectangles and ellipses that may touch the border; N may be 0.
    """
    h = draw(st.integers(min_size, max_size))
    w = draw(st.integers(min_size, max_size))
    n = draw(st.integers(0, max_instances))
    yy, xx = np.mgrid[:h, :w]
    masks = []
    for _ in range(n):
        cy = draw(st.integers(-2, h + 1))
        cx = draw(st.integers(-2, w + 1))
        ry = draw(st.integers(1, max(1, h // 2)))
        rx = draw(st.integers(1, max(1, w // 2)))
        if draw(st.booleans()):
            m = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        else:
            m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        masks.append(m)
    amodal = np.array(masks, bool).reshape(n, h, w)
    order = np.array(draw(st.permutations(list(range(n)))), np.int64).reshape(n)
    return {"amodal": amodal, "order": order, "visible": paint(amodal, order)}
