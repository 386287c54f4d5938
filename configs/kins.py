"""KINS (amodal KITTI, 7 classes, depth order from ``ico_id``) with the paper's settings.

The base (``configs/base.py``) with KINS's data. Convert the data first:
  python -m data_prep.convert --dataset kins --annotations update_train_2020.json \
      --images training/image_2 --output data/kins/records --split train
then:
  python -m sln_jax.main --config configs/kins.py --workdir workdir/kins
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    """The KINS run (KITTI frames are 1242 x 375: the long side fits the 1024 canvas)."""
    config = base.get_config()
    config.data.dir = "data/kins/records"
    config.data.max_instances = 48
    config.data.num_classes = 7
    return config
