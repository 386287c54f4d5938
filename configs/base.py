"""The paper's settings (docs/SLN.md section 3): the base every run's config overrides.

ResNet-101-FPN with frozen BatchNorm, images resized to max side 1024, K = 4 layers, SGD
momentum 0.9, lr 0.001 with warmup and step decay, weight decay 1e-4, gradient clipping at
global norm 5. ``cocoa.py``, ``d2sa.py``, ``kins.py``, ``synthetic.py`` and ``tiny_test.py``
import it and change only what differs (as flax's ``configs/default.py``):

  python -m sln_jax.main --config configs/d2sa.py --workdir workdir/d2sa

K, the class count and the semantic map's class count are stated once, in ``config.data``;
``config.model`` refers to them (``FieldReference``), and the records' ``metadata.json`` is
checked against them when a run starts (``sln_jax.records.read_metadata``).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The paper's run; every field of a run is here (no hidden defaults)."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.multihost = False

    config.data = ml_collections.ConfigDict()
    config.data.dir = ""  # set by each dataset's config
    config.data.image_size = 1024
    config.data.max_instances = 32
    config.data.mask_target_size = 32
    config.data.num_layers = 4
    config.data.num_classes = 1  # set by each dataset's config
    config.data.train_split = "train"
    config.data.eval_split = "val"
    config.data.shuffle_buffer = 2048
    config.data.flip = True
    config.data.source = "records"  # or "tfds": dir is a data_prep.tfds_builders version dir
    config.data.box_jitter = 0.0  # GT boxes += U(-1, 1) x j x size (input_pipeline)
    # S_sem > 0: a per-pixel S_sem-class map from the records (a segmentation model's class
    # ids, data_prep.convert --semantic_dir DIR --semantic_channels S_sem) is ROI-aligned
    # and concatenated to the layering head's input, as the reference feeds DeepLab's 182
    # COCO-Stuff classes (docs/SLN.md section 3). 0 = off. Read by the input pipeline and,
    # through config.model.semantic_channels below, by the model.
    config.data.semantic_channels = 0

    config.model = ml_collections.ConfigDict()
    config.model.backbone = "resnet101"
    config.model.backbone_width = 64  # used by resnet_tiny only
    config.model.norm = "frozen_bn"
    # ImageNet ResNet weights, .npz or .safetensors (sln_jax/models/pretrained.py); the
    # paper starts from them: set it with --config.model.pretrained_backbone=FILE.
    config.model.pretrained_backbone = ""
    # Or a whole torchvision Mask R-CNN state dict (sln_jax/models/torchvision_import.py).
    config.model.pretrained_maskrcnn = ""
    config.model.fpn_dim = 256
    config.model.mask_head_dim = 256
    # Stated once, in config.data: the model's fields are references to it, so an override
    # of either (--config.data.num_layers=6 or --config.model.num_layers=6) changes both,
    # and training checks them against the records' metadata.json at start-up.
    config.model.num_classes = config.data.get_ref("num_classes")
    config.model.num_layers = config.data.get_ref("num_layers")
    config.model.semantic_channels = config.data.get_ref("semantic_channels")
    # Our addition: the GLM also predicts that S_sem-class map (its softmax feeds the layering
    # head) and the records' maps are only its training target, so inference needs no map
    # (sln_jax/models/glm.py). Off: the map is an input, as the reference's DeepLab output.
    config.model.semantic_head = False
    config.model.anchor_sizes = (32, 64, 128, 256, 512)
    config.model.anchor_ratios = (0.5, 1.0, 2.0)
    config.model.rpn_pre_nms_topk = 2000
    config.model.rpn_post_nms_topk = 1000
    config.model.rpn_nms_threshold = 0.7
    config.model.rpn_batch_per_image = 256
    config.model.rpn_positive_fraction = 0.5
    config.model.roi_batch_per_image = 100
    config.model.roi_positive_fraction = 0.7
    # Layering-head slots per image: a random subset of the (up to 70) positive ROIs, as TPU
    # Mask R-CNNs sample a fixed number of masks; the head is the costliest part of the step
    # (benchmarks/bench_vs_torchvision.py) and the reference trains it on every positive.
    config.model.mask_rois_per_image = 32
    config.model.roi_positive_iou = 0.5
    config.model.box_pool_size = 7
    config.model.mask_pool_size = 16
    config.model.mask_size = 32
    config.model.head = "layers"
    config.model.class_agnostic_masks = True
    config.model.glm = True
    # Our addition (sln_jax/models/roi_heads.py InstanceContext): the layering head compares
    # each pixel with a descriptor of its ROI's object, the asymmetric cue that orders two
    # overlapping objects (the reference configs turn it off).
    config.model.instance_context = True
    # Our addition (sln_jax/models/roi_heads.py OrderHead): a pairwise head scores which of
    # two overlapping ROIs is in front from the pair's union box and both ROIs' layering
    # probabilities; postprocessing orders those pairs by it (the reference configs turn it
    # off and read the order off the layering maps, as the paper does). Pairs per image:
    # order_pairs in training (random positive pairs with overlapping GT masks),
    # order_pairs_eval at inference (overlapping detections of highest score product).
    config.model.order_head = True
    config.model.order_dim = 64
    config.model.order_pool_size = 14
    config.model.order_pairs = 32
    config.model.order_pairs_eval = 64
    # How a detection's hidden part is decoded (sln_jax/postprocess.py): 'layers' (its
    # layering head's hidden pixels, the paper), 'layers_and_order' (those covered by a
    # detection in front of it scoring >= occluder_score) or 'order' (every pixel such a
    # detection covers).
    config.model.occlusion = "layers"
    # How the depth order of two overlapping detections is decoded (sln_jax/depth_order.py):
    # 'soft' (i in front when sum P_i(seen) P_j(hidden) exceeds the converse),
    # 'hidden_else_score' (the lower mean P(hidden | object) over the overlap in front; on a
    # tie the higher score), or 'head' (the order head's sign where it scored the pair).
    # Measured on the main job (README): 'hidden_else_score' orders 0.698 of the matched
    # pairs, 'head' 0.640, 'soft' 0.619 (same checkpoint, trained with the order head).
    config.model.order_rule = "hidden_else_score"
    config.model.occluder_score = 0.5
    # A predicted hidden part under this fraction of its amodal mask is called visible
    # (sln_jax/postprocess.py): stray hidden pixels at a mask's rim otherwise make an
    # unoccluded object "occluded". 0 keeps them (the paper's decoding).
    config.model.min_hidden_fraction = 0.0
    # 128 as Panoptic FPN's semantic head (Kirillov et al. 2019), whose design the GLM follows
    # (docs/SLN.md: the reference's GLM is a frozen DeepLab): its 3x3 convs at stride 4 are
    # its whole cost, and at 256 it cost as much as a ResNet-50 at 512 px
    # (benchmarks/bench_vs_torchvision.py, the step by part).
    config.model.glm_dim = 128
    config.model.score_threshold = 0.7
    config.model.nms_threshold = 0.3
    config.model.max_detections = 100
    config.model.dtype = "float32"  # "bfloat16" for mixed precision on TPU / recent GPUs

    config.loss = ml_collections.ConfigDict()
    config.loss.rpn_cls = 1.0
    config.loss.rpn_box = 1.0
    config.loss.box_cls = 1.0
    config.loss.box_reg = 1.0
    config.loss.layers = 1.0
    config.loss.amodal = 1.0
    config.loss.semdist = 1.0
    config.loss.glm = 1.0
    config.loss.semantic = 1.0
    config.loss.order = 1.0
    config.loss.occluded_pixel_weight = 1.0  # layers CE weight of hidden pixels
    # 'softmax': the K layers and background exclusive per pixel (ours); 'sigmoid': the
    # reference's per-layer binary cross-entropies (sln_jax/losses.py).
    config.loss.layers_form = "softmax"

    config.train = ml_collections.ConfigDict()
    config.train.num_steps = 20000
    # 1 image per device as in the reference, on 8 accelerators: set to your device count.
    config.train.batch_size = 8
    config.train.log_every = 100
    # Regex patterns over parameter paths that are not trained (sln_jax/frozen.py).
    config.train.frozen = ()

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "sgd"
    config.optim.learning_rate = 1e-3
    config.optim.momentum = 0.9
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.weight_decay = 1e-4
    config.optim.schedule = "step"
    config.optim.warmup_steps = 500
    config.optim.warmup_factor = 0.001
    config.optim.decay_at = (0.67, 0.89)
    config.optim.decay_factor = 0.1
    config.optim.clip_norm = 5.0

    config.eval = ml_collections.ConfigDict()
    config.eval.every_steps = 5000
    config.eval.batch_size = 8
    config.eval.gt_json = ""
    config.eval.format = "coco"
    config.eval.num_pictures = 8

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 1000
    config.checkpoint.keep = 3
    return config
