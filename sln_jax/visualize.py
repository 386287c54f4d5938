"""Pictures of amodal scenes and predictions: masks, layers, sem-dist maps, depth order.

* ``draw_instances`` paints instances over an image (NumPy + OpenCV, no matplotlib): a
  translucent fill on each visible part, diagonal hatching on each occluded part, an outline
  of each amodal mask, and a label per instance. Works for ground truth and for predictions.
* ``depth_order_graph`` draws who is in front of whom on a matplotlib axis.
* ``save_scene_preview`` writes one PNG: the image, the drawn instances, the global layering
  map, the depth-order graph and each instance's sem-dist map (cropped to its box).
* ``draw_picture`` is the picture of one image's predictions (training's val pictures and
  inference): the image with its detections beside their depth-order graph.

Matplotlib is used through ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state), so it
never needs a screen and is safe in worker threads.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.figure import Figure

from sln_jax import depth_order, layering, semdist

__all__ = ["instance_colors", "draw_instances", "draw_instances_enlarged", "depth_order_graph",
           "level_colormap", "show_global_layers", "save_scene_preview", "picture_size",
           "draw_picture", "draw_comparison", "match_to_truth", "PICTURE_MIN_SCORE"]

# Distinct, saturated colors (matplotlib's tab10 then tab20's lighter shades), cycled.
_PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
], np.uint8)


def instance_colors(n: int) -> np.ndarray:
    """uint8 [n, 3] RGB colors, one per instance index (cycled after 20)."""
    return _PALETTE[np.arange(n) % len(_PALETTE)]


def _check_scene(image: np.ndarray, amodal: np.ndarray, visible: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.asarray(image)
    amodal = np.asarray(amodal, bool)
    visible = np.asarray(visible, bool)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if amodal.ndim != 3 or amodal.shape[1:] != image.shape[:2]:
        raise ValueError(f"amodal must be [N, H, W] with (H, W) = {image.shape[:2]}, "
                         f"got {amodal.shape}")
    if visible.shape != amodal.shape:
        raise ValueError(f"visible {visible.shape} and amodal {amodal.shape} differ")
    return image, amodal, visible


def draw_instances(image: np.ndarray, amodal: np.ndarray, visible: np.ndarray,
                   labels: Sequence[str] | None = None,
                   scores: Sequence[float] | None = None,
                   alpha: float = 0.45) -> np.ndarray:
    """Instances painted over an image.

    Visible parts get a translucent fill in the instance's color, occluded parts
    (amodal minus visible) get diagonal hatching in that color, and each amodal mask gets an
    outline drawn just inside it. Without labels and scores every changed pixel lies inside
    an amodal mask. Colors follow ``instance_colors`` by instance index.

    Args:
      image: uint8 [H, W, 3] RGB.
      amodal: bool [N, H, W] amodal masks.
      visible: bool [N, H, W] visible masks.
      labels: N strings (e.g. class names), each written with the instance index on a tag
        centered on the instance's visible part.
      scores: N floats appended to the labels (detections).
      alpha: opacity of the visible fills.

    Returns:
      uint8 [H, W, 3] RGB.
    """
    image, amodal, visible = _check_scene(image, amodal, visible)
    n, h, w = amodal.shape
    for name, values in (("labels", labels), ("scores", scores)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries for {n} instances")
    colors = instance_colors(n).astype(np.float32)
    out = image.astype(np.float32)
    # Visible fills: each pixel is visible for at most one instance in a consistent scene;
    # where predictions overlap, the later instance wins.
    for i in range(n):
        out[visible[i]] = (1 - alpha) * out[visible[i]] + alpha * colors[i]
    # Hatching over the occluded parts, drawn after the fills so it shows on the occluders.
    period = max(4, h // 48)
    yy, xx = np.mgrid[:h, :w]
    stripe = (xx + yy) % period < (period + 1) // 2
    for i in range(n):
        hidden = amodal[i] & ~visible[i]
        out[hidden & stripe] = 0.35 * out[hidden & stripe] + 0.65 * colors[i]
        out[hidden & ~stripe] = 0.8 * out[hidden & ~stripe] + 0.2 * colors[i]
    # Outlines inside the masks: mask minus its erosion.
    width = max(1, h // 200)
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    for i in range(n):
        mask = amodal[i].astype(np.uint8)
        edge = amodal[i] & ~cv2.erode(mask, kernel, borderValue=0).astype(bool)
        out[edge] = colors[i]
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if labels is not None or scores is not None:
        _draw_labels(out, amodal, visible, labels, scores, colors)
    return out


def _label_anchor(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of ``mask`` farthest from its border: a label there sits on
    the region it names."""
    dist = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x) - 1, int(y) - 1


def _draw_labels(out: np.ndarray, amodal: np.ndarray, visible: np.ndarray,
                 labels: Sequence[str] | None, scores: Sequence[float] | None,
                 colors: np.ndarray) -> None:
    """Write each instance's label on a filled tag centered on its visible part (its
    amodal mask when nothing is visible), in place."""
    h, w = out.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.3, min(h, w) / 900)
    thickness = 1
    for i in range(amodal.shape[0]):
        region = visible[i] if visible[i].any() else amodal[i]
        if not region.any():
            continue
        parts = [f"{i}"]
        if labels is not None:
            parts.append(str(labels[i]))
        if scores is not None:
            parts.append(f"{float(scores[i]):.2f}")
        text = " ".join(parts)
        (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
        cx, cy = _label_anchor(region)
        # Keep the whole tag inside the image.
        x = min(max(cx - tw // 2, 0), max(w - tw - 2, 0))
        y = min(max(cy + th // 2, th + base + 2), h - 1)
        color = tuple(int(c) for c in colors[i])
        cv2.rectangle(out, (x, y - th - base - 2), (x + tw + 2, y), color, cv2.FILLED)
        ink = (0, 0, 0) if colors[i] @ (0.299, 0.587, 0.114) > 140 else (255, 255, 255)
        cv2.putText(out, text, (x + 1, y - base - 1), font, scale, ink, thickness,
                    cv2.LINE_AA)


def _depth_levels(front: np.ndarray) -> np.ndarray:
    """int [N] length of the longest "in front of" chain ending at each node (0 = front).

    Relaxation for at most N rounds, so predicted orders with cycles still get levels.
    """
    n = front.shape[0]
    level = np.zeros(n, np.int64)
    for _ in range(n):
        reach = np.where(front, level[:, None] + 1, 0).max(axis=0, initial=0)
        new = np.minimum(np.maximum(level, reach), n - 1)
        if np.array_equal(new, level):
            break
        level = new
    return level


def depth_order_graph(ax, depth_order: np.ndarray, labels: Sequence[str] | None = None):
    """Draw the depth-order graph on a matplotlib axis: an arrow i -> j for "i is in front
    of j"; nodes are arranged in rows by depth (front row on top).

    Args:
      ax: a matplotlib ``Axes``.
      depth_order: int [N, N], +1 where i is in front of j (``semdist.depth_order``).
      labels: N node captions (e.g. class names); node i shows its index i.

    Returns:
      The axis.
    """
    depth_order = np.asarray(depth_order)
    n = depth_order.shape[0]
    if depth_order.shape != (n, n):
        raise ValueError(f"depth_order must be [N, N], got {depth_order.shape}")
    front = depth_order > 0
    levels = _depth_levels(front)
    xs = np.zeros(n)
    label_drop = np.full(n, 0.28)
    for lv in np.unique(levels):
        members = np.flatnonzero(levels == lv)
        xs[members] = np.linspace(0, 1, len(members) + 2)[1:-1]
        if len(members) > 5:  # crowded row: stagger the captions so neighbours don't overlap
            label_drop[members[1::2]] = 0.46
    ys = -levels.astype(np.float64)
    colors = instance_colors(n) / 255.0
    radius = 0.045
    for i, j in zip(*np.nonzero(front)):
        ax.annotate("", xy=(xs[j], ys[j]), xytext=(xs[i], ys[i]),
                    arrowprops=dict(arrowstyle="-|>", color="0.3", lw=1.2,
                                    shrinkA=12, shrinkB=12))
    for i in range(n):
        ax.scatter([xs[i]], [ys[i]], s=380, color=colors[i], edgecolors="black", zorder=3)
        ax.text(xs[i], ys[i], str(i), ha="center", va="center", fontsize=9, zorder=4,
                color="black" if colors[i] @ (0.299, 0.587, 0.114) > 0.55 else "white")
        if labels is not None:
            ax.text(xs[i], ys[i] - label_drop[i], str(labels[i]), ha="center", va="top",
                    fontsize=7)
    depth = int(levels.max()) if n else 0
    ax.set_xlim(-radius, 1 + radius)
    ax.set_ylim(-depth - 0.6, 0.5)
    ax.set_axis_off()
    ax.set_title("depth order (arrow: in front of)" if n else "depth order (no instances)",
                 fontsize=10)
    return ax


def _upscale(array: np.ndarray, factor: int, axes: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer ``factor`` along the two image ``axes``."""
    return np.repeat(np.repeat(array, factor, axes[0]), factor, axes[1])


def draw_instances_enlarged(image: np.ndarray, amodal: np.ndarray, visible: np.ndarray,
                            labels: Sequence[str] | None = None,
                            min_side: int = 384) -> np.ndarray:
    """``draw_instances`` on the image enlarged by an integer factor (nearest neighbour)
    so its longer side is at least ``min_side``: outlines, hatching and labels stay legible
    on small images.

    Args:
      image: uint8 [H, W, 3] RGB; amodal, visible: bool [N, H, W]; labels: N strings.

    Returns:
      uint8 [f * H, f * W, 3].
    """
    factor = max(1, math.ceil(min_side / max(image.shape[:2])))
    return draw_instances(_upscale(image, factor, (0, 1)), _upscale(amodal, factor, (1, 2)),
                          _upscale(visible, factor, (1, 2)), labels=labels)


def level_colormap(count: int, reverse: bool = False) -> mcolors.ListedColormap:
    """Near-black for 0, then ``count`` colors from blue to yellow (yellow to blue when
    ``reverse``): for global layering maps (levels 1..K-1) and layer codes (1..K)."""
    ends = [(0.25, 0.45, 0.85), (1.0, 0.85, 0.2)]
    if reverse:
        ends.reverse()
    return mcolors.ListedColormap([(0.1, 0.1, 0.1)] + [
        tuple(c) for c in np.linspace(ends[0], ends[1], count)])


def show_global_layers(fig, ax, global_map: np.ndarray, num_layers: int, title: str):
    """Draw a global layering map (uint8 [H, W], 0..K-1) with its colorbar on ``ax``;
    ``fig`` is the figure or subfigure that holds the colorbar."""
    shown = ax.imshow(global_map, cmap=level_colormap(num_layers - 1), vmin=-0.5,
                      vmax=num_layers - 0.5, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(shown, ax=ax, ticks=range(num_layers), shrink=0.85).ax.tick_params(
        labelsize=8)


def save_scene_preview(path: str, image: np.ndarray, amodal: np.ndarray,
                       visible: np.ndarray, classes: Sequence[int], num_layers: int,
                       order: np.ndarray | None = None,
                       class_names: Mapping[int, str] | None = None) -> None:
    """Write a PNG summarising a scene.

    Top row: the image; its instances (``draw_instances``: fills on visible parts,
    hatching on occluded parts, amodal outlines, labels); the global layering map; the
    depth-order graph. Below: each instance's sem-dist map cropped to its amodal box, titled
    with index, class and occlusion rate.

    Args:
      path: output PNG file.
      image: uint8 [H, W, 3] RGB.
      amodal: bool [N, H, W] amodal masks.
      visible: bool [N, H, W] visible masks.
      classes: int [N] class ids.
      num_layers: K for the global layering map and the sem-dist levels.
      order: int [N] depth rank (smaller = nearer); derived from the masks when None.
      class_names: class id -> name for the labels (ids are shown otherwise).
    """
    image, amodal, visible = _check_scene(image, amodal, visible)
    n, h, w = amodal.shape
    classes = np.asarray(classes)
    if classes.shape != (n,):
        raise ValueError(f"classes must have shape ({n},), got {classes.shape}")
    if order is None:
        order = layering.order_from_visibility(amodal, visible)
    names = [class_names.get(int(c), str(int(c))) if class_names else str(int(c))
             for c in classes]
    layers = layering.instance_layers(amodal, order)
    sem = semdist.encode(layers, num_layers)
    global_map = layering.global_layers(amodal, num_layers)
    occlusion = [float((amodal[i] & ~visible[i]).sum()) / max(int(amodal[i].sum()), 1)
                 for i in range(n)]

    drawn = draw_instances_enlarged(image, amodal, visible, labels=names)

    per_row = 6
    rows = math.ceil(n / per_row)
    fig = Figure(figsize=(16, 4.4 + 2.5 * rows), dpi=100, layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[4.4, max(2.5 * rows, 0.01)])
    axes = top.subplots(1, 4, width_ratios=[1, 1, 1.2, 1])
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title(f"image {w}x{h}", fontsize=10)
    axes[1].imshow(drawn, interpolation="nearest")
    axes[1].set_title("visible: fill, occluded: hatched, amodal: outline", fontsize=10)
    show_global_layers(top, axes[2], global_map, num_layers,
                       f"global layers (objects per pixel, K = {num_layers})")
    for ax in axes[:2]:
        ax.set_xticks([])
        ax.set_yticks([])
    depth_order_graph(axes[3], semdist.depth_order(layers), names)

    if n:
        grid = bottom.subplots(rows, per_row, squeeze=False)
        boxes = layering.masks_to_boxes(amodal).astype(int)
        for k, ax in enumerate(grid.flat):
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= n:
                ax.set_axis_off()
                continue
            y1, x1, y2, x2 = boxes[k]
            pad = max(2, (max(y2 - y1, x2 - x1)) // 10)
            window = (slice(max(y1 - pad, 0), min(y2 + pad, h)),
                      slice(max(x1 - pad, 0), min(x2 + pad, w)))
            shown = ax.imshow(sem[k][window], cmap="magma", vmin=0, vmax=num_layers + 1,
                              interpolation="nearest")
            for side in ax.spines.values():
                side.set_edgecolor(instance_colors(n)[k] / 255.0)
                side.set_linewidth(3)
            ax.set_title(f"{k} {names[k]}  occ {occlusion[k]:.1%}", fontsize=9)
        bar = bottom.colorbar(shown, ax=grid, shrink=0.8, ticks=range(num_layers + 2))
        bar.set_label("sem-dist (K - layer + distance)", fontsize=8)
        bar.ax.tick_params(labelsize=8)
    fig.savefig(path, format="png")


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


def _render_graph(order: np.ndarray, height: int, width: int, caption: str) -> np.ndarray:
    """uint8 [height, width, 3] picture of the depth-order graph (matplotlib, Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    dpi = 100
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    axis = figure.add_axes((0.04, 0.2, 0.92, 0.72))
    # Nodes carry the detection index and color of the tags in the picture, which also
    # name the class; class names under the nodes would collide when a row is full.
    depth_order_graph(axis, order)
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
                 min_score: float = PICTURE_MIN_SCORE, *,
                 labels: Sequence[str] | None = None, caption: str | None = None,
                 show_scores: bool = True) -> np.ndarray:
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
      labels: one tag text per drawn detection instead of the class names.
      caption: the text under the graph instead of the default one.
      show_scores: add the score to each tag.

    Returns:
      uint8 [picture height, picture width, 3] RGB, sizes from ``picture_size(H, W, N)``
      with N the number drawn.
    """
    instances = _confident(instances, min_score)
    height, width = image.shape[:2]
    total_h, total_w, drawn_h, drawn_w = picture_size(height, width, len(instances))
    names = list(labels) if labels is not None else [
        (class_names or {}).get(int(d["category_id"]), f"class {int(d['category_id'])}")
        for d in instances]
    if len(names) != len(instances):
        raise ValueError(f"{len(names)} labels for {len(instances)} drawn detections")
    scores = [float(d["score"]) for d in instances] if show_scores else None
    empty = np.zeros((0, height, width), bool)
    amodal = np.stack([d["amodal"] for d in instances]) if instances else empty
    visible = np.stack([d["visible"] for d in instances]) if instances else empty
    interpolation = cv2.INTER_NEAREST if drawn_h >= height else cv2.INTER_AREA
    shown = cv2.resize(image, (drawn_w, drawn_h), interpolation=interpolation)
    drawn = draw_instances(shown, _resize_masks(amodal, drawn_h, drawn_w),
                           _resize_masks(visible, drawn_h, drawn_w),
                           labels=names, scores=scores)
    picture = np.full((total_h, total_w, 3), 255, np.uint8)
    picture[:drawn_h, :drawn_w] = drawn
    if caption is None:
        caption = (f"{len(instances)} detections with score >= {min_score:g}\n"
                   "fill: visible part, hatched: occluded part,\n"
                   "outline: amodal mask")
    picture[:, drawn_w:] = _render_graph(depth_order.from_relations([d.get("depth_order") for d in instances]),
                                         total_h,
                                         total_w - drawn_w, caption)
    return picture


def match_to_truth(instances: Sequence[dict[str, Any]], truths: Sequence[dict[str, Any]],
                   iou: float = 0.5) -> list[int | None]:
    """For each instance, the index of the ground-truth instance it matches, or None.

    Greedy by decreasing score, as COCO matching: an instance takes the unmatched truth of
    the highest amodal-mask IoU, if that IoU is at least ``iou`` (classes are not compared,
    so a mislabelled detection still shows which object it found).
    """
    if not instances or not truths:
        return [None] * len(instances)
    a = np.stack([d["amodal"] for d in instances]).reshape(len(instances), -1)
    b = np.stack([t["amodal"] for t in truths]).reshape(len(truths), -1)
    a, b = a.astype(np.float32), b.astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    ious = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    matches: list[int | None] = [None] * len(instances)
    taken: set[int] = set()
    for i in sorted(range(len(instances)), key=lambda k: -float(instances[k]["score"])):
        candidates = [(ious[i, g], g) for g in range(len(truths)) if g not in taken]
        if candidates:
            best, g = max(candidates)
            if best >= iou:
                matches[i] = g
                taken.add(g)
    return matches


def draw_comparison(image: np.ndarray, instances: Sequence[dict[str, Any]],
                    truths: Sequence[dict[str, Any]], class_names: dict[int, str] | None = None,
                    min_score: float = PICTURE_MIN_SCORE) -> np.ndarray:
    """The ground truth above the prediction, matched pairs named, each with its depth order.

    Top: the ground truth as ``draw_picture`` draws detections, tags "k class" (k: its GT
    index; "missed" when no drawn detection matches it) and the ground-truth depth-order graph. Bottom: the
    drawn detections (score >= ``min_score``), tags "class score =GTk" for a detection
    matching ground-truth instance k (``match_to_truth``, amodal IoU >= 0.5) or "class
    score  no match", and the predicted depth-order graph.

    Args:
      image: uint8 [H, W, 3] RGB.
      instances: the detections (as ``draw_picture``).
      truths: the ground-truth instances: ``amodal``, ``visible`` bool [H, W],
        ``category_id`` and ``depth_order`` ({GT index: +1 in front / -1 behind}).
      class_names: category id -> name.
      min_score: as ``draw_picture``.

    Returns:
      uint8 [H', W', 3] RGB.
    """
    shown = _confident(instances, min_score)
    matches = match_to_truth(shown, truths)
    matched = {g for g in matches if g is not None}

    def name(d: dict[str, Any]) -> str:
        return (class_names or {}).get(int(d["category_id"]), f"class {int(d['category_id'])}")

    gt_labels = [name(t) + ("" if g in matched else " missed") for g, t in enumerate(truths)]
    pred_labels = [f"{name(d)} {float(d['score']):.2f} "
                   + (f"=GT{m}" if m is not None else " no match")
                   for d, m in zip(shown, matches)]
    truth = draw_picture(image, [dict(t, score=1.0) for t in truths], class_names, 0.0,
                         labels=gt_labels, show_scores=False,
                         caption=f"ground truth (k = GTk): {len(truths)} instances,\n"
                                 f"{len(truths) - len(matched)} missed\n"
                                 "graph: ground-truth depth order")
    prediction = draw_picture(image, shown, class_names, min_score, labels=pred_labels,
                              show_scores=False,
                              caption=f"prediction: {len(shown)} detections\n"
                                      f"with score >= {min_score:g}, "
                                      f"{len(shown) - len(matched)} unmatched\n"
                                      "graph: predicted depth order")
    gap = 8
    width = max(truth.shape[1], prediction.shape[1])
    out = np.full((truth.shape[0] + gap + prediction.shape[0], width, 3), 255, np.uint8)
    out[:truth.shape[0], :truth.shape[1]] = truth
    out[truth.shape[0]:truth.shape[0] + gap] = 128
    out[truth.shape[0] + gap:, :prediction.shape[1]] = prediction
    return out
