"""Default config: the built-in synthetic dataset on CPU (2 cores, ~10 minutes end to end).

Small ResNet, 128-px images, K = 4 layers. The whole job (generate + convert the data, train,
evaluate) is ``python -m sln_jax.demo --workdir DIR``; on already converted records:
  python -m sln_jax.main --config configs/synthetic.py --workdir DIR --config.data.dir=RECORDS
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The synthetic / CPU run; every field of the run is here (no hidden defaults)."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.multihost = False

    # The generated dataset (python -m sln_jax.demo writes it, then sets data.dir and
    # eval.gt_json to its records and val annotations).
    config.synthetic = ml_collections.ConfigDict()
    config.synthetic.seed = 0
    config.synthetic.image_size = 128
    config.synthetic.min_objects = 2
    config.synthetic.max_objects = 6
    config.synthetic.num_train = 1000
    config.synthetic.num_val = 100
    config.synthetic.num_shards = 4
    config.synthetic.workers = 2

    config.data = ml_collections.ConfigDict()
    config.data.source = "records"  # or "tfds": dir is a data_prep.tfds_builders version dir
    config.data.dir = "data/synthetic/records"
    config.data.image_size = 128
    config.data.max_instances = 8
    config.data.mask_target_size = 28
    config.data.num_layers = 4
    config.data.num_classes = 5  # data_prep.synthetic.CATEGORIES
    config.data.train_split = "train"
    config.data.eval_split = "val"
    config.data.shuffle_buffer = 512
    config.data.flip = True
    config.data.box_jitter = 0.0  # GT boxes += U(-1, 1) x j x size (input_pipeline)

    config.model = ml_collections.ConfigDict()
    config.model.backbone = "resnet_tiny"
    config.model.backbone_width = 16
    config.model.norm = "group_norm"
    config.model.pretrained_backbone = ""  # .npz / .safetensors ResNet (needs frozen_bn)
    # Or a whole torchvision Mask R-CNN state dict (sln_jax/models/torchvision_import.py).
    config.model.pretrained_maskrcnn = ""
    config.model.fpn_dim = 64
    config.model.mask_head_dim = 32
    config.model.num_classes = config.data.num_classes
    config.model.num_layers = config.data.num_layers
    config.model.anchor_sizes = (16, 32, 64, 128)
    config.model.anchor_ratios = (0.5, 1.0, 2.0)
    config.model.rpn_pre_nms_topk = 400
    config.model.rpn_post_nms_topk = 100
    config.model.rpn_nms_threshold = 0.7
    config.model.rpn_batch_per_image = 128
    config.model.rpn_positive_fraction = 0.5
    config.model.roi_batch_per_image = 32
    config.model.roi_positive_fraction = 0.5
    config.model.mask_rois_per_image = 8
    config.model.mask_slot_buckets = 3  # head cost follows the positives (models/sln.py)
    config.model.roi_positive_iou = 0.5
    config.model.box_pool_size = 7
    config.model.mask_pool_size = 14
    config.model.mask_size = 28
    config.model.head = "layers"
    config.model.class_agnostic_masks = True
    config.model.glm = True
    config.model.glm_dim = 32
    config.model.score_threshold = 0.05  # COCO-style evaluation keeps low scores
    config.model.nms_threshold = 0.5
    config.model.max_detections = 32
    config.model.dtype = "float32"

    config.loss = ml_collections.ConfigDict()
    config.loss.rpn_cls = 1.0
    config.loss.rpn_box = 1.0
    config.loss.box_cls = 1.0
    config.loss.box_reg = 1.0
    config.loss.layers = 1.0
    config.loss.amodal = 1.0
    config.loss.semdist = 1.0
    config.loss.glm = 0.5
    config.loss.occluded_pixel_weight = 4.0  # layers CE weight of hidden pixels

    config.train = ml_collections.ConfigDict()
    config.train.num_steps = 600
    config.train.batch_size = 8
    config.train.log_every = 25
    # Regex patterns over parameter paths that are not trained (sln_jax/frozen.py).
    config.train.frozen = ()

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adamw"
    config.optim.learning_rate = 2e-3
    config.optim.momentum = 0.9
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.weight_decay = 1e-4
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 50
    config.optim.warmup_factor = 0.01
    config.optim.decay_at = (0.67, 0.89)
    config.optim.decay_factor = 0.1
    config.optim.clip_norm = 5.0

    config.eval = ml_collections.ConfigDict()
    config.eval.every_steps = 0
    config.eval.batch_size = 8
    config.eval.gt_json = ""
    config.eval.format = "coco"
    config.eval.num_pictures = 4

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 200
    config.checkpoint.keep = 2
    return config
