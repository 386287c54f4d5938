"""A class-agnostic copy of a COCO-style annotation file: every category becomes 1 "object".

The paper's D2SA protocol (reference code: one 'foreground' class, evaluation with
``catIds = [1]``) trains and evaluates D2SA class-agnostically. Rewrite the train and val files
once, then convert and evaluate the copies as usual (``configs/d2sa_reference.py``)::

    python -m data_prep.class_agnostic --input D2S_amodal_training_rot0.json \
        --output D2S_amodal_training_rot0_agnostic.json

Only ``categories`` and each annotation's ``category_id`` change; everything else (ids,
masks, order, extra fields) is copied as it is. Writes atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

__all__ = ["make_class_agnostic", "main"]

OBJECT = {"id": 1, "name": "object", "supercategory": "object"}


def make_class_agnostic(data: dict) -> dict:
    """A copy of a parsed COCO-style file with one category (id 1) for every annotation."""
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError("not a COCO-style annotation file (no 'annotations' list)")
    out = dict(data)
    out["categories"] = [dict(OBJECT)]
    out["annotations"] = [dict(ann, category_id=1) for ann in data["annotations"]]
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 with a one-line message on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.class_agnostic",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="COCO-style annotation JSON")
    parser.add_argument("--output", required=True, help="where to write the copy")
    args = parser.parse_args(argv)
    try:
        with open(args.input) as f:
            data = make_class_agnostic(json.load(f))
    except (OSError, ValueError) as err:
        print(f"error: {args.input}: {err}", file=sys.stderr)
        return 1
    directory = os.path.dirname(os.path.abspath(args.output))
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as f:
        json.dump(data, f)
    os.replace(f.name, args.output)
    print(f"{args.output}: {len(data['annotations'])} annotations, 1 category")
    return 0


if __name__ == "__main__":
    sys.exit(main())
