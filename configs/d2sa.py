"""D2SA (MVTec D2S amodal, 60 supermarket categories) with the paper's settings; for accelerators.

The base (``configs/base.py``) with D2SA's data. Convert the data first (data_prep.convert),
then:
  python -m sln_jax.main --config configs/d2sa.py --workdir workdir/d2sa
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    """The D2SA run."""
    config = base.get_config()
    config.data.dir = "data/d2sa/records"
    config.data.max_instances = 32
    config.data.num_classes = 60
    return config
