"""Tiny config for tests: 64-px images, a minimal backbone and few ROIs; one step in seconds.

The synthetic config (``configs/synthetic.py``) shrunk. Used by tests/test_train.py and
tests/test_main.py on a small synthetic dataset they generate.
"""

import ml_collections

from configs import synthetic


def get_config() -> ml_collections.ConfigDict:
    """The tiny test run."""
    config = synthetic.get_config()
    del config.synthetic  # the tests generate their own data

    config.data.dir = "data/tiny/records"
    config.data.image_size = 64
    config.data.max_instances = 4
    config.data.mask_target_size = 14
    config.data.num_layers = 3
    config.data.shuffle_buffer = 16

    config.model.backbone_width = 4
    config.model.fpn_dim = 8
    config.model.mask_head_dim = 8
    config.model.anchor_sizes = (8, 16, 32, 64)
    config.model.rpn_pre_nms_topk = 64
    config.model.rpn_post_nms_topk = 16
    config.model.rpn_batch_per_image = 32
    config.model.roi_batch_per_image = 8
    config.model.mask_rois_per_image = 4
    config.model.mask_pool_size = 7
    config.model.mask_size = 14
    config.model.glm_dim = 8
    config.model.score_threshold = 0.0
    config.model.max_detections = 4

    config.train.num_steps = 4
    config.train.batch_size = 2
    config.train.log_every = 1

    config.optim.warmup_steps = 1

    config.eval.batch_size = 2
    config.eval.num_pictures = 1

    config.checkpoint.every_steps = 2
    return config
