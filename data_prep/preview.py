"""Pictures of converted records: what the TFRecords hold, drawn for a person to check.

    python -m data_prep.preview --records DIR [--split NAME] [--num 8] [--output DIR]

For each of the first ``--num`` records of a split (default: ``train`` when it was converted,
else the first split in ``DIR/metadata.json``), one PNG (``OUTPUT/{split}_{image id}.png``,
``OUTPUT`` defaulting to ``DIR/previews``) shows what training will read, not a
recomputation: the image with the stored amodal and visible masks (visible parts filled,
occluded parts hatched, amodal outlines), the stored global layering map, the depth-order
graph of the stored order, and each instance's stored P x P layer and sem-dist crops. It is
the quickest check that a real dataset (COCOA's quirks, D2SA's large images) converted as
intended. Records are read without TensorFlow (``sln_jax.tfrecord``), checking their CRCs;
each picture is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from typing import Iterator, Mapping

import cv2
import numpy as np
from absl import flags

from data_prep.scene import DataError
from data_prep.targets import dequantize_semdist
from sln_jax import atomic, cli, depth_order, records, tfrecord

__all__ = ["read_split", "render", "preview", "main"]

PER_ROW = 4  # instances per row of crop panels (each instance: layer and sem-dist crop)


def read_split(records_dir: str, split: str | None = None
               ) -> tuple[dict, str, Iterator[tuple[str, dict]]]:
    """The metadata of a converted directory and its split's parsed records, in file order.

    Args:
      records_dir: output directory of ``data_prep.convert``.
      split: split name; None: ``train`` if converted, else the metadata's first split.

    Returns:
      (metadata dict, split name, iterator of (shard file name, ``records.parse`` dict)).

    Raises:
      DataError: without metadata, for an unknown split or a missing shard.
    """
    path = os.path.join(records_dir, records.METADATA)
    try:
        metadata = records.read_metadata(records_dir)
    except FileNotFoundError:
        raise DataError(f"{path}: not found; is {records_dir} a data_prep.convert output?") \
            from None
    except ValueError as err:
        raise DataError(str(err)) from None
    splits = metadata.get("splits", {})
    if not splits:
        raise DataError(f"{path}: no converted split")
    if split is None:
        split = "train" if "train" in splits else next(iter(splits))
    if split not in splits:
        raise DataError(f"{path}: no split {split!r}; converted splits: {sorted(splits)}")
    files = splits[split]["files"]
    for name in files:
        if not os.path.isfile(os.path.join(records_dir, name)):
            raise DataError(f"{os.path.join(records_dir, name)}: shard listed in the metadata "
                            "is missing")

    def parsed() -> Iterator[tuple[str, dict]]:
        for name in files:
            for data in tfrecord.read_records(os.path.join(records_dir, name)):
                yield name, records.parse(data, metadata["mask_target_size"])

    return metadata, split, parsed()


def _image(record: dict) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(record["image"], np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(f"image {record['image_id']}: stored image bytes do not decode")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def render(path: str, record: dict, num_layers: int, class_names: Mapping[int, str],
           source: str = "") -> None:
    """Write the picture of one parsed record (see the module docstring).

    Args:
      path: output PNG; written to ``path + '.tmp'`` first, then renamed.
      record: a ``records.parse`` dict.
      num_layers: K of the conversion.
      class_names: class id -> name.
      source: shard name shown in the title.
    """
    from matplotlib.figure import Figure

    from sln_jax import visualize  # matplotlib is only needed for pictures

    image = _image(record)
    amodal, visible = record["amodal"], record["visible"]
    n, k = amodal.shape[0], num_layers
    names = [class_names.get(int(c), str(int(c))) for c in record["classes"]]
    drawn = visualize.draw_instances_enlarged(image, amodal, visible, labels=names)

    rows = math.ceil(n / PER_ROW)
    fig = Figure(figsize=(16, 4.6 + 2.2 * rows), dpi=100, layout="constrained")
    fig.suptitle(f"image {record['image_id']} ({record['height']}x{record['width']}), {n} "
                 f"instances, {int((record['occlusion'] > 0).sum())} occluded"
                 + (f"  [{source}]" if source else ""), fontsize=11)
    top, bottom = fig.subfigures(2, 1, height_ratios=[4.4, max(2.2 * rows, 0.01)])
    axes = top.subplots(1, 3, width_ratios=[1, 1.2, 1])
    axes[0].imshow(drawn, interpolation="nearest")
    axes[0].set_title("stored masks: visible filled, occluded hatched", fontsize=10)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    visualize.show_global_layers(top, axes[1], record["global_layers"], k,
                                 f"stored global layers (objects per pixel, K = {k})")
    visualize.depth_order_graph(axes[2], depth_order.from_rank(amodal, record["order"]), names)
    axes[2].set_title("stored depth order (arrow: in front of)", fontsize=10)

    if n:
        crop_colors = visualize.level_colormap(k, reverse=True)
        grid = bottom.subplots(rows, 2 * PER_ROW, squeeze=False)
        colors = visualize.instance_colors(n) / 255.0
        semdist = dequantize_semdist(record["semdist_crops"], k)
        for slot, ax in enumerate(grid.flat):
            ax.set_xticks([])
            ax.set_yticks([])
            i, which = divmod(slot, 2)
            if i >= n:
                ax.set_axis_off()
                continue
            if which == 0:
                layers = ax.imshow(record["layer_crops"][i], cmap=crop_colors, vmin=-0.5,
                                   vmax=k + 0.5, interpolation="nearest")
                ax.set_title(f"{i} {names[i]} layers", fontsize=8)
            else:
                sem = ax.imshow(semdist[i], cmap="magma", vmin=0, vmax=k + 1,
                                interpolation="nearest")
                ax.set_title(f"occ {record['occlusion'][i]:.0%} sem-dist", fontsize=8)
            for side in ax.spines.values():
                side.set_edgecolor(colors[i])
                side.set_linewidth(3)
        for shown, ticks, label in ((layers, range(k + 1), "layer + 1 (0: outside)"),
                                    (sem, range(k + 2), "sem-dist")):
            bar = bottom.colorbar(shown, ax=grid, shrink=0.8, ticks=ticks, pad=0.01)
            bar.set_label(label, fontsize=8)
            bar.ax.tick_params(labelsize=8)
    atomic.write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


def preview(records_dir: str, split: str | None = None, num: int = 8,
            output: str | None = None, progress: bool = True) -> list[str]:
    """Pictures of the first ``num`` records of a split (None: see ``read_split``); returns
    the written paths (``OUTPUT/{split}_{image id}.png``).

    Raises:
      DataError: see ``read_split``; ValueError on a corrupt shard or record.
    """
    from tqdm import tqdm

    if num < 1:
        raise DataError(f"--num must be >= 1, got {num}")
    metadata, split, parsed = read_split(records_dir, split)
    output = output or os.path.join(records_dir, "previews")
    os.makedirs(output, exist_ok=True)
    class_names = {int(c): name for c, name in metadata.get("classes", {}).items()}
    count = min(num, sum(metadata["splits"][split]["examples_per_file"]))
    paths = []
    for name, record in tqdm(itertools.islice(parsed, count), total=count,
                             desc=f"preview {split}", unit="img", disable=not progress):
        path = os.path.join(output, f"{split}_{record['image_id']}.png")
        render(path, record, metadata["num_layers"], class_names, source=name)
        paths.append(path)
    return paths


def _define_flags(values: flags.FlagValues) -> None:
    flags.DEFINE_string("records", None, "data_prep.convert output directory",
                        flag_values=values)
    flags.DEFINE_string("split", None, "split to draw (default: train if converted, else "
                        "the first split in metadata.json)", flag_values=values)
    flags.DEFINE_integer("num", 8, "records to draw, from the start", flag_values=values)
    flags.DEFINE_string("output", None, "default: RECORDS/previews", flag_values=values)
    flags.DEFINE_bool("no_progress", False, "no progress bar", flag_values=values)
    flags.mark_flag_as_required("records", flag_values=values)


def _parse_args(argv: list[str] | None) -> flags.FlagValues:
    """The command line (``sln_jax.cli``: absl flags, parsed per call)."""
    return cli.parse(_define_flags, argv, "python -m data_prep.preview")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        paths = preview(args.records, args.split, args.num, args.output,
                        progress=not args.no_progress)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{len(paths)} pictures -> {os.path.dirname(paths[0]) if paths else args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
