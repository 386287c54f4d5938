"""COCOA (class-agnostic amodal regions on COCO images) with the paper's settings; for accelerators.

The base (``configs/base.py``) with COCOA's data and its class-agnostic amodalAPI protocol.
Convert the data first (data_prep.convert), then:
  python -m sln_jax.main --config configs/cocoa.py --workdir workdir/cocoa
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    """The COCOA run."""
    config = base.get_config()
    config.data.dir = "data/cocoa/records"
    config.data.max_instances = 48
    config.data.num_classes = 1  # COCOA is evaluated class-agnostic
    config.eval.format = "cocoa"
    return config
