"""The common Scene record every annotation reader produces, and how it is assembled.

Readers (``data_prep.cocoa``, ``data_prep.d2sa``) only parse their JSON into light,
picklable ``SceneSource`` descriptions (raw segmentations, no decoded masks), so the
conversion can ship them to worker processes. ``load_scene`` then decodes the masks and
applies the same repairs to every format, counting each in a ``warnings`` Counter:

* polygons reaching outside the image are clipped (``polygon_clipped``); annotated boxes
  outside it are counted (``box_clipped``) - boxes are always rebuilt from the masks;
* visible masks reaching outside the amodal mask are intersected with it
  (``visible_outside_amodal``);
* instances with an empty amodal mask are dropped (``empty_amodal_skipped``);
* annotated depth orders that tie overlapping instances, contradict the visible masks, or
  contradict the image's depth constraints fall back to the order derived from the visible
  masks (``order_contradicts_masks``, ``order_tie``, ``depth_constraint_conflict``); a cycle
  in the visible masks keeps the annotated order, or the index order without one
  (``visibility_order_cycle``).

Errors that make an annotation unusable raise ``DataError`` with one line naming the
annotation file, the image id and the annotation id.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np
from sln_jax import layering, rle

__all__ = [
    "DataError",
    "InstanceSource",
    "SceneSource",
    "AnnotationSet",
    "Scene",
    "decode_segmentation",
    "check_rle_size",
    "load_scene",
    "ORDER_EVIDENCE_FRACTION",
    "ORDER_EVIDENCE_MIN_PIXELS",
]

# Visible masks and amodal polygons are drawn separately in COCOA, so their borders disagree
# by a few pixels; only evidence larger than this is taken as "i is seen where j is hidden".
ORDER_EVIDENCE_MIN_PIXELS = 16
ORDER_EVIDENCE_FRACTION = 0.02


class DataError(ValueError):
    """An annotation or image that cannot be converted; the message is one line."""


@dataclasses.dataclass(frozen=True)
class InstanceSource:
    """One annotated instance, still in its file's raw form.

    ``amodal`` / ``visible`` / ``invisible`` are COCO segmentations: a flat polygon
    ``[x1, y1, ...]``, a list of polygons, or an RLE dict (compressed or uncompressed
    counts). ``visible`` None means "not given" (COCOA omits it on unoccluded regions).
    ``order`` is the annotated depth rank (smaller = nearer) or None.
    ``bbox`` is the annotated ``[x, y, w, h]`` or None (only checked, never used).
    ``label`` names the instance in messages when ``ann_id`` alone does not
    (e.g. "annotation 377, region 2" for COCOA).
    """

    ann_id: int
    class_id: int
    amodal: Any
    visible: Any = None
    invisible: Any = None
    order: int | None = None
    is_stuff: bool = False
    bbox: tuple[float, float, float, float] | None = None
    label: str = ""


@dataclasses.dataclass(frozen=True)
class SceneSource:
    """One image with its instances, as parsed from an annotation file (picklable).

    ``depth_constraints`` are pairs ``(a, b)`` of annotated ``order`` values: the instance
    with order a is in front of the instance with order b.
    """

    image_id: int
    image_path: str
    height: int
    width: int
    instances: tuple[InstanceSource, ...]
    annotation_file: str
    depth_constraints: tuple[tuple[int, int], ...] = ()


@dataclasses.dataclass
class AnnotationSet:
    """What a reader returns for one annotation file.

    ``classes`` maps contiguous class ids 1..C to names; ``category_ids`` maps them to the
    dataset's own category ids; ``warnings`` counts what the reader skipped or noted.
    """

    sources: list[SceneSource]
    classes: dict[int, str]
    category_ids: dict[int, int]
    warnings: collections.Counter
    annotation_file: str


@dataclasses.dataclass
class Scene:
    """One image with decoded, repaired instances (N may be 0).

    Attributes:
      image_id: id in the annotation file.
      image_path: path of the image file.
      height, width: image size H, W in pixels.
      ann_ids: int64 [N] annotation ids.
      classes: int32 [N] contiguous class ids 1..C.
      amodal: bool [N, H, W] amodal masks (non-empty); ``load_scene`` makes each [H, W]
        slice column-major, the layout of COCO RLE (NumPy operations are layout-agnostic).
      visible: bool [N, H, W] visible masks, inside the amodal masks, same layout.
      order: int32 [N] strict depth rank 0..N-1, 0 = front.
      is_stuff: bool [N] COCOA stuff regions.
      boxes: float32 [N, 4] tight amodal boxes (y1, x1, y2, x2), pixel edges.
      occlusion: float32 [N] occlusion rate 1 - |visible| / |amodal|.
      amodal_rle, visible_rle: optional [N] compressed COCO RLE counts of the masks, kept
        from the annotations so the records need not re-encode them.
      area: optional int64 [N] amodal areas.
    """

    image_id: int
    image_path: str
    height: int
    width: int
    ann_ids: np.ndarray
    classes: np.ndarray
    amodal: np.ndarray
    visible: np.ndarray
    order: np.ndarray
    is_stuff: np.ndarray
    boxes: np.ndarray
    occlusion: np.ndarray
    amodal_rle: list[bytes] | None = None
    visible_rle: list[bytes] | None = None
    area: np.ndarray | None = None

    @property
    def num_instances(self) -> int:
        return int(self.ann_ids.shape[0])

    def areas(self) -> np.ndarray:
        """int64 [N] amodal mask areas (``area`` when set, else counted)."""
        if self.area is not None:
            return np.asarray(self.area, np.int64)
        return np.count_nonzero(self.amodal, axis=(1, 2)).astype(np.int64)

    def amodal_rle_counts(self) -> list[bytes]:
        """[N] compressed COCO RLE counts of the amodal masks (``amodal_rle`` when set)."""
        if self.amodal_rle is not None:
            return list(self.amodal_rle)
        return [rle.encode(m) for m in self.amodal]

    def visible_rle_counts(self) -> list[bytes]:
        """[N] compressed COCO RLE counts of the visible masks (``visible_rle`` when set)."""
        if self.visible_rle is not None:
            return list(self.visible_rle)
        return [rle.encode(m) for m in self.visible]


def _where(source: SceneSource, inst: InstanceSource) -> str:
    return (f"{source.annotation_file}: image {source.image_id}, "
            f"{inst.label or f'annotation {inst.ann_id}'}")


def check_rle_size(rle: Any, height: int, width: int, where: str) -> None:
    """Raise DataError when an RLE dict's ``size`` is not ``[height, width]``."""
    if isinstance(rle, dict):
        size = rle.get("size")
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise DataError(f"{where}: RLE without a valid 'size'")
        if [int(size[0]), int(size[1])] != [height, width]:
            raise DataError(f"{where}: RLE size {list(size)} differs from the image size "
                            f"[{height}, {width}]")


def _compressed(segmentation: Any, height: int, width: int, where: str,
                warnings: collections.Counter) -> bytes:
    """Compressed RLE counts of a segmentation (DataError on bad input)."""
    check_rle_size(segmentation, height, width, where)
    try:
        return rle.compress(segmentation, height, width, warnings)
    except rle.RleError as err:
        raise DataError(f"{where}: {err}") from None


def _runs(compressed: list[bytes], wheres: list[str], height: int,
          width: int) -> list[np.ndarray]:
    """Checked run lengths of each compressed counts (DataError naming the bad one)."""
    try:
        return rle.counts_many(compressed, height, width)
    except rle.RleError as err:
        raise DataError(f"{wheres[err.index]}: {err}") from None


def _same_rle(a: Any, b: Any) -> bool:
    """Both segmentations are RLE dicts with the same size and compressed counts."""
    return (isinstance(a, dict) and isinstance(b, dict) and isinstance(a.get("counts"), str)
            and a.get("counts") == b.get("counts") and a.get("size") == b.get("size"))


def decode_segmentation(segmentation: Any, height: int, width: int, where: str,
                        warnings: collections.Counter) -> np.ndarray:
    """Rasterize a COCO segmentation.

    Args:
      segmentation: flat polygon, list of polygons, or RLE dict (``counts`` a compressed
        string / bytes or an uncompressed list of run lengths, ``size`` [H, W]).
      height, width: image size.
      where: "file: image i, annotation a" for error messages.
      warnings: counter; ``polygon_clipped`` is incremented when a polygon reaches outside
        the image (the rasterization clips it).

    Returns:
      bool [height, width] (column-major).

    Raises:
      DataError: on a wrong RLE size, malformed polygons or corrupt counts.
    """
    compressed = _compressed(segmentation, height, width, where, warnings)
    return rle.decode(_runs([compressed], [where], height, width)[0], height, width)


def _order_conflicts(annotated: np.ndarray, amodal: np.ndarray, visible: np.ndarray,
                     boxes: np.ndarray, area: np.ndarray) -> tuple[bool, bool]:
    """Whether an annotated depth order ties or contradicts the masks.

    Only pairs whose boxes meet are looked at, each on its box intersection, and only for
    what the order needs: overlap for pairs of equal order, and for the others whether the
    one annotated behind is seen where the one in front is hidden.

    Args:
      annotated: int [N] annotated orders (smaller = nearer).
      amodal, visible: bool [N, H, W] masks.
      boxes: float [N, 4] tight amodal boxes (y1, x1, y2, x2).
      area: int [N] amodal areas.

    Returns:
      (tie, contradiction): some overlapping pair has equal orders; some pair has the
      one annotated behind seen on enough pixels where the other is hidden.
    """
    windows = boxes.astype(np.int64)
    lo = np.maximum(windows[:, None, :2], windows[None, :, :2])  # [N, N, 2] intersections
    hi = np.minimum(windows[:, None, 2:], windows[None, :, 2:])
    meet = (lo < hi).all(axis=-1)
    tie = contradiction = False
    for i, j in zip(*np.nonzero(np.triu(meet, 1))):
        (y1, x1), (y2, x2) = lo[i, j], hi[i, j]
        if annotated[i] == annotated[j]:
            tie = tie or bool((amodal[i, y1:y2, x1:x2] & amodal[j, y1:y2, x1:x2]).any())
        elif not contradiction:
            back, front = (i, j) if annotated[i] > annotated[j] else (j, i)
            threshold = max(ORDER_EVIDENCE_MIN_PIXELS,
                            ORDER_EVIDENCE_FRACTION * min(area[back], area[front]))
            seen = np.count_nonzero(visible[back, y1:y2, x1:x2] & amodal[front, y1:y2, x1:x2]
                                    & ~visible[front, y1:y2, x1:x2])
            contradiction = seen >= threshold
        if tie and contradiction:
            break
    return tie, contradiction


def _strict_rank(order: np.ndarray) -> np.ndarray:
    """int32 [N] ranks 0..N-1 sorting by ``order`` then index."""
    rank = np.empty(order.shape[0], np.int32)
    rank[np.lexsort((np.arange(order.shape[0]), order))] = np.arange(order.shape[0])
    return rank


def _resolve_order(source: SceneSource, given: list[int | None], amodal: np.ndarray,
                   visible: np.ndarray, boxes: np.ndarray, area: np.ndarray,
                   warnings: collections.Counter) -> np.ndarray:
    """int32 [N] strict depth rank 0..N-1 (0 = front); see the module docstring."""
    n = amodal.shape[0]
    if n == 0:
        return np.zeros((0,), np.int32)
    annotated = None
    if all(o is not None for o in given):
        annotated = np.asarray(given, np.int64)
        consistent = True
        by_order = {int(o): i for i, o in enumerate(annotated)}
        for a, b in source.depth_constraints:
            if a not in by_order or b not in by_order:
                warnings["depth_constraint_unknown_order"] += 1
            elif not a < b:
                warnings["depth_constraint_conflict"] += 1
                consistent = False
        tie, contradiction = _order_conflicts(annotated, amodal, visible, boxes, area)
        if tie:
            warnings["order_tie"] += 1
            consistent = False
        if contradiction:
            warnings["order_contradicts_masks"] += 1
            consistent = False
        if consistent:
            return _strict_rank(annotated)
    else:
        warnings["order_from_visibility"] += 1
    try:
        return layering.order_from_visibility(
            amodal, visible, min_pixels=ORDER_EVIDENCE_MIN_PIXELS).astype(np.int32)
    except ValueError:
        warnings["visibility_order_cycle"] += 1
        fallback = annotated if annotated is not None else np.arange(n)
        return _strict_rank(fallback)


def load_scene(source: SceneSource, class_count: int,
               warnings: collections.Counter) -> Scene:
    """Decode and repair one image's annotations (see the module docstring).

    Args:
      source: the parsed image entry.
      class_count: C; every ``class_id`` must be in 1..C.
      warnings: counter the repairs are counted in.

    Returns:
      the Scene; instances keep the file's order, minus the skipped ones.

    Raises:
      DataError: on RLE of the wrong size, undecodable segmentations or bad class ids.
    """
    h, w = source.height, source.width
    # Every mask of the image is compressed first and parsed in one call (per-call overhead
    # dominates for typical masks): the amodal masks, then the visible or invisible masks of
    # the instances that are kept.
    wheres, amodal_rles = [], []
    for inst in source.instances:
        where = _where(source, inst)
        if not 1 <= inst.class_id <= class_count:
            raise DataError(f"{where}: class id {inst.class_id} outside 1..{class_count}")
        wheres.append(where)
        amodal_rles.append(_compressed(inst.amodal, h, w, where, warnings))
        if inst.bbox is not None:
            x, y, bw, bh = inst.bbox
            if x < -0.5 or y < -0.5 or x + bw > w + 0.5 or y + bh > h + 0.5:
                warnings["box_clipped"] += 1
    amodal_runs = _runs(amodal_rles, wheres, h, w)
    areas = [rle.area(runs) for runs in amodal_runs]
    keep = [i for i, area in enumerate(areas) if area > 0]
    if len(keep) < len(amodal_runs):
        warnings["empty_amodal_skipped"] += len(amodal_runs) - len(keep)
    # The visible mask of a kept instance comes from its own RLE ("visible"), from the
    # complement of an invisible mask in the amodal mask ("invisible"), or is the amodal mask
    # (no RLE, or the amodal RLE stored again, as unoccluded instances often do).
    pending = []  # (instance index, kind, compressed counts)
    for i in keep:
        inst = source.instances[i]
        if inst.visible is not None and not _same_rle(inst.visible, inst.amodal):
            pending.append((i, "visible", _compressed(inst.visible, h, w, wheres[i], warnings)))
        elif inst.visible is None and inst.invisible is not None:
            pending.append((i, "invisible",
                            _compressed(inst.invisible, h, w, wheres[i], warnings)))
    parsed = _runs([c for _, _, c in pending], [wheres[i] for i, _, _ in pending], h, w)
    other = {i: (kind, c, runs) for (i, kind, c), runs in zip(pending, parsed)}
    n = len(keep)
    # [N, W, H] C-order = [N, H, W] with column-major slices, the layout of COCO RLE.
    amodal_store = np.zeros((n, w, h), bool)
    visible_store = np.zeros((n, w, h), bool)
    boxes = rle.boxes([amodal_rles[i] for i in keep], h, w)
    visible_rles, visible_areas = [], []
    for slot, i in enumerate(keep):
        runs, area = amodal_runs[i], areas[i]
        rle.decode_into(runs, amodal_store[slot].reshape(-1))
        amodal, visible = amodal_store[slot].T, visible_store[slot].T
        kind, visible_rle, other_runs = other.get(i, ("same", amodal_rles[i], runs))
        if kind == "same":
            rle.decode_into(runs, visible_store[slot].reshape(-1))
            visible_area = area
        elif kind == "visible":
            rle.decode_into(other_runs, visible_store[slot].reshape(-1))
            visible_area = rle.area(other_runs)
            y1, x1, y2, x2 = boxes[slot]
            window = (slice(y1, y2), slice(x1, x2))
            # Inside the amodal mask iff every visible pixel is in its intersection with it.
            if np.count_nonzero(visible[window] & amodal[window]) < visible_area:
                warnings["visible_outside_amodal"] += 1
                visible[...] = visible & amodal
                visible_rle = rle.encode(visible)
                visible_area = int(np.count_nonzero(visible[window]))
        else:
            visible[...] = amodal & ~rle.decode(other_runs, h, w)
            visible_rle = rle.encode(visible)
            visible_area = int(np.count_nonzero(visible))
        visible_rles.append(visible_rle)
        visible_areas.append(visible_area)
    kept = [source.instances[i] for i in keep]
    amodal_rles = [amodal_rles[i] for i in keep]
    areas = [areas[i] for i in keep]
    n = len(kept)
    amodal, visible = amodal_store[:n].transpose(0, 2, 1), visible_store[:n].transpose(0, 2, 1)
    area = np.asarray(areas, np.int64).reshape(n)
    boxes = np.asarray(boxes, np.float32).reshape(n, 4)
    order = _resolve_order(source, [inst.order for inst in kept], amodal, visible, boxes,
                           area, warnings)
    if n == 0:
        warnings["image_without_instances"] += 1
    occlusion = 1.0 - np.asarray(visible_areas, np.float64).reshape(n) / np.maximum(area, 1)
    return Scene(
        image_id=source.image_id,
        image_path=source.image_path,
        height=h,
        width=w,
        ann_ids=np.asarray([inst.ann_id for inst in kept], np.int64).reshape(n),
        classes=np.asarray([inst.class_id for inst in kept], np.int32).reshape(n),
        amodal=amodal,
        visible=visible,
        order=order,
        is_stuff=np.asarray([inst.is_stuff for inst in kept], bool).reshape(n),
        boxes=boxes,
        occlusion=occlusion.astype(np.float32),
        amodal_rle=amodal_rles,
        visible_rle=visible_rles,
        area=area,
    )
