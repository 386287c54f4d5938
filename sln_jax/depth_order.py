"""The pairwise depth-order matrix: its one owner, whatever it is built from.

A depth order of N instances is an int8 [N, N] matrix: [i, j] = +1 where i is in front of
j, -1 where it is behind, 0 where they do not overlap, tie or are unknown; the matrix is
antisymmetric. ``sln_jax.semdist.depth_order`` defines it on layering maps; this module
builds it from everything else the project holds, and converts it to and from the
results-JSON form (``depth_order``: {index of another detection: +1 / -1} per detection).

Ground floor: NumPy only (with ``layering`` and ``semdist``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from sln_jax import layering, semdist

__all__ = ["from_relations", "to_relations", "from_rank", "from_masks", "from_layer_windows",
           "from_probability_windows"]


def from_relations(relations: Sequence[Mapping[Any, Any] | None], n: int | None = None
                   ) -> np.ndarray:
    """int8 [N, N] from per-detection ``depth_order`` dicts (keys int or str indices).

    Entry [i, j] is the sign of ``relations[i][j]``; keys that are not indices 0..N-1
    other than i, and detections without a dict, give 0.

    Args:
      relations: [N] dicts {index of another detection: +1 in front / -1 behind}, or None.
      n: N (default ``len(relations)``).
    """
    n = len(relations) if n is None else n
    order = np.zeros((n, n), np.int8)
    for i, relation in enumerate(relations[:n]):
        if not isinstance(relation, Mapping):
            continue
        for key, value in relation.items():
            try:
                j = int(key)
            except (TypeError, ValueError):
                continue  # not a detection index: says nothing about the order
            if 0 <= j < n and j != i:
                order[i, j] = int(np.sign(value))
    return order


def to_relations(order: np.ndarray) -> list[dict[int, int]]:
    """Per detection {index of another detection: +1 / -1} of the non-zero entries."""
    order = np.asarray(order)
    return [{int(j): int(order[i, j]) for j in np.flatnonzero(order[i])}
            for i in range(order.shape[0])]


def from_rank(amodal: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """int8 [N, N] of overlapping instances from a depth rank (smaller = nearer).

    Args:
      amodal: bool [N, H, W] amodal masks.
      rank: int [N] depth rank.

    Returns:
      +1 where i is in front of j and their amodal masks overlap, -1 for the reverse,
      0 otherwise.
    """
    n = amodal.shape[0]
    flat = amodal.reshape(n, amodal[0].size if n else 0).astype(np.float32)
    overlap = (flat @ flat.T) > 0
    rank = np.asarray(rank)
    graph = np.sign(rank[None, :] - rank[:, None]) * overlap
    np.fill_diagonal(graph, 0)
    return graph.astype(np.int8)


def from_masks(amodal: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """int8 [N, N] from amodal and visible masks (predictions without a depth order).

    The rank consistent with the masks (``layering.order_from_visibility``) gives the
    layers and their order; when the masks hold a cycle, the pairwise evidence decides
    (i in front of j where i is seen on more of j's hidden part than the reverse).

    Args:
      amodal: bool [N, H, W] amodal masks.
      visible: bool [N, H, W] visible masks (outside the amodal mask ignored).
    """
    amodal = np.asarray(amodal, bool)
    visible = np.asarray(visible, bool) & amodal
    n = amodal.shape[0]
    # Only pixels under two or more amodal masks carry order evidence: keep those, as a
    # [N, 1, P] image, so that full-resolution masks stay cheap.
    flat_amodal = amodal.reshape(n, -1)
    shared = flat_amodal.sum(axis=0) >= 2
    amodal = flat_amodal[:, shared][:, None, :]
    visible = visible.reshape(n, -1)[:, shared][:, None, :]
    try:
        rank = layering.order_from_visibility(amodal, visible)
        return semdist.depth_order(layering.instance_layers(amodal, rank))
    except ValueError:
        seen = visible.reshape(n, -1).astype(np.float64)
        hidden = (amodal & ~visible).reshape(n, -1).astype(np.float64)
        evidence = seen @ hidden.T
        return np.sign(evidence - evidence.T).astype(np.int8)


def _box_overlaps(boxes: np.ndarray, n: int, image_size: tuple[int, int]):
    """(i, j, (top, left, bottom, right)) for each pair i < j of the first n boxes whose
    pixel-rounded overlap window is not empty, i then j ascending; the window is clipped to
    the image (``image_size`` (H, W)), so it slices image-sized maps as it reads (a negative
    start would slice from the far end) and may be empty where the boxes meet outside it."""
    boxes = np.asarray(boxes, np.float64)[:n].reshape(-1, 4)
    height, width = image_size
    # All pairs at once: a Python double loop over 100 detections (4950 pairs) cost ~20 ms
    # per image in post-processing.
    top = np.floor(np.maximum.outer(boxes[:, 0], boxes[:, 0])).astype(np.int64)
    left = np.floor(np.maximum.outer(boxes[:, 1], boxes[:, 1])).astype(np.int64)
    bottom = np.ceil(np.minimum.outer(boxes[:, 2], boxes[:, 2])).astype(np.int64)
    right = np.ceil(np.minimum.outer(boxes[:, 3], boxes[:, 3])).astype(np.int64)
    pairs = np.triu((bottom > top) & (right > left), k=1)
    # Clipped after the pairs are found: boxes meeting outside the image stay a pair.
    top, bottom = np.clip(top, 0, height), np.clip(bottom, 0, height)
    left, right = np.clip(left, 0, width), np.clip(right, 0, width)
    for i, j in zip(*np.nonzero(pairs)):
        i, j = int(i), int(j)
        yield i, j, (int(top[i, j]), int(left[i, j]), int(bottom[i, j]), int(right[i, j]))


def from_layer_windows(layers: Sequence[np.ndarray], boxes: np.ndarray,
                       learned: np.ndarray | None = None) -> np.ndarray:
    """int8 [N, N] from full-image layering maps, each pair read on its boxes' overlap.

    Args:
      layers: [N] int32 [H, W] layering maps (-1 outside the amodal mask).
      boxes: float [N, 4] (y1, x1, y2, x2) boxes holding each map's amodal mask.
      learned: optional int8 [N, N] orders of a pairwise order head (+1 / -1, 0 = not
        scored): they decide the pairs they score whose amodal masks overlap.
    """
    n = len(layers)
    order = np.zeros((n, n), np.int8)
    if n == 0:
        return order
    for i, j, (top, left, bottom, right) in _box_overlaps(boxes, n, layers[0].shape):
        window = np.stack([layers[i][top:bottom, left:right],
                           layers[j][top:bottom, left:right]])
        if learned is not None and learned[i, j] and np.any((window >= 0).all(axis=0)):
            order[i, j], order[j, i] = learned[i, j], -learned[i, j]
            continue
        pair = semdist.depth_order(window)
        order[i, j], order[j, i] = pair[0, 1], pair[1, 0]
    return order


PROBABILITY_RULES = ("soft", "hidden_else_score")


def from_probability_windows(windows: list[tuple[int, int, np.ndarray]], amodal: list[np.ndarray],
                             boxes: np.ndarray, learned: np.ndarray | None = None,
                             rule: str = "soft", scores: np.ndarray | None = None
                             ) -> np.ndarray:
    """int8 [N, N] from per-layer probabilities (head 'layers'): i is in front of j when the
    evidence that i is seen where j is hidden, sum_p P_i(visible) P_j(hidden), exceeds the
    converse, for pairs whose amodal masks overlap.

    Hard argmax layers leave a pair unordered (a tie) whenever both heads call the overlap
    visible, which an unsure head does often; the joint probabilities order nearly every
    overlapping pair and, on the main job, raised order accuracy from 0.41 to 0.56 with no
    retraining (``benchmarks/diagnose.py``, "seen vs hidden (soft)").

    Args:
      windows: per detection (top, left, probs float32 [h, w, K]) ``layer_probs`` pasted on
        its box window of the original image.
      amodal: per detection bool [H, W] amodal mask.
      boxes: float [N, 4] (y1, x1, y2, x2) original pixels.
      learned: optional int8 [N, N] orders of a pairwise order head (+1 / -1, 0 = not
        scored): they decide the pairs they score; the probabilities decide the rest.
      rule: 'soft' (above) or 'hidden_else_score': i is in front of j when its mean
        P(hidden | object) over the pair's amodal overlap is lower; when that ties, or when
        their boxes overlap but their amodal masks do not, when its detection score is
        higher (``scores`` float [N] needed): the less surely detected object is more
        often the occluded one.
    """
    if rule not in PROBABILITY_RULES:
        raise ValueError(f"depth order rule must be one of {PROBABILITY_RULES}, got {rule!r}")
    if rule == "hidden_else_score" and scores is None:
        raise ValueError("depth order rule 'hidden_else_score' needs the detection scores")
    n = len(windows)
    order = np.zeros((n, n), np.int8)
    if n == 0:
        return order
    # Per detection, once: P(visible), P(hidden) and (for 'hidden_else_score') P(hidden |
    # object) on its window; each pair then reads views of them on its overlap. Cutting
    # zero-padded copies per pair made the depth order ~80 % of post-processing (100
    # detections at 256 px: ~300 of ~400 ms on overlapping random boxes).
    seen, hidden, conditional = [], [], []
    for _, _, probs in windows:
        seen.append(probs[..., 0])
        hidden.append(probs[..., 1:].sum(axis=-1))
        if rule == "hidden_else_score":
            conditional.append(_conditional_hidden(seen[-1], hidden[-1]))

    def view(maps, k, top, left, bottom, right):
        t, l, probs = windows[k]
        if t <= top and l <= left and bottom <= t + probs.shape[0] and right <= l + probs.shape[1]:
            return maps[k][top - t:bottom - t, left - l:right - l]
        # A window smaller than the pair's overlap (not one ``layering.paste_window``
        # made for these boxes): outside it the detection's probabilities are 0.
        out = np.zeros((bottom - top, right - left), np.float32)
        cut = maps[k][max(top - t, 0):max(bottom - t, 0), max(left - l, 0):max(right - l, 0)]
        oy, ox = max(t - top, 0), max(l - left, 0)
        out[oy:oy + cut.shape[0], ox:ox + cut.shape[1]] = cut[:out.shape[0] - oy,
                                                              :out.shape[1] - ox]
        return out

    for i, j, (top, left, bottom, right) in _box_overlaps(boxes, n, amodal[0].shape):
        both = amodal[i][top:bottom, left:right] & amodal[j][top:bottom, left:right]
        if not both.any():
            if rule == "hidden_else_score":  # boxes overlap, masks do not: the score
                sign = np.sign(float(scores[i]) - float(scores[j]))
                order[i, j], order[j, i] = sign, -sign
            continue
        if learned is not None and learned[i, j]:
            order[i, j], order[j, i] = learned[i, j], -learned[i, j]
            continue
        rect = (top, left, bottom, right)
        if rule == "soft":
            sign = np.sign(float(np.sum(view(seen, i, *rect) * view(hidden, j, *rect)))
                           - float(np.sum(view(seen, j, *rect) * view(hidden, i, *rect))))
        else:
            sign = np.sign(float(view(conditional, j, *rect)[both].mean())
                           - float(view(conditional, i, *rect)[both].mean()))
            if sign == 0:
                sign = np.sign(float(scores[i]) - float(scores[j]))
        order[i, j], order[j, i] = sign, -sign
    return order


def _conditional_hidden(seen: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """P(hidden | object) = hidden / (seen + hidden), 0 where the object has probability 0."""
    total = seen + hidden
    return np.where(total > 0, hidden / np.where(total > 0, total, 1.0), 0.0)
