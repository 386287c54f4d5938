"""COCOA with the protocol of the paper's reference code (apchenstu/SLN-Amodal): an override
of configs/cocoa.py (the project's recommended recipe) for comparing with the paper.

Every change below names where it comes from in the reference (files of apchenstu/SLN-Amodal:
amodal_train.py, config.py, model.py, utils.py, modal/Functions.py). Run (README, "Reproducing
the paper"):

  python -m sln_jax.main --config configs/cocoa_reference.py --workdir runs/cocoa_reference \
      --config.model.pretrained_maskrcnn=maskrcnn_r50_fpn_coco.npz --config.train.batch_size=8

The reference trains one image per step (config.py BATCH_SIZE = 1) for 15,000 steps. Here the
batch is ``train.batch_size`` images (e.g. one per accelerator) and the schedule is the
reference's per image: learning rate x batch (the linear scaling rule, Goyal et al. 2017,
"Accurate, Large Minibatch SGD"), steps / batch, the decay at the same image count. Both
follow ``--config.train.batch_size`` (ml_collections field references).

Not set here: the reference's GLM input, a frozen DeepLab-v2 (COCO-Stuff, 182 classes) whose
class probabilities are ROI-aligned into the mask head (amodal_train.py GLM_modual). sln-jax
ships no DeepLab; with the class maps of one (or of any segmentation model), converted with
``--semantic_dir DIR --semantic_channels 182``, ``--config.data.semantic_channels=182`` feeds
them to the layering head the same way (as class fractions of the argmax, not the softmax).
Our GLM, the learned layering head, trains with its own loss either way.
"""

import importlib.util
import os

import ml_collections

REFERENCE_STEPS = 15000  # 6 epochs x config.py STEPS_PER_EPOCH = 2500, at batch 1
REFERENCE_DECAY_STEP = 12500  # after stages 'heads' (2 epochs) and '4+' (3 epochs)
REFERENCE_LEARNING_RATE = 1e-3  # config.py LEARNING_RATE, per image (batch 1)


def load_config(name: str) -> ml_collections.ConfigDict:
    """``get_config()`` of configs/NAME.py (configs/ is not a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"sln_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def apply_reference_protocol(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The reference's start, frozen layers, schedule, jitter and evaluation post-processing
    (shared by cocoa_reference and d2sa_reference)."""
    # Start: the reference loads a whole COCO-trained Mask R-CNN (amodal_train.py
    # COCO_MODEL_PATH = mask_rcnn_coco.pth, a ResNet-101-FPN: model.py ResNet("resnet101")),
    # then replaces the class-specific layers (linear_class, linear_bbox, mask conv5). The
    # COCO Mask R-CNN torchvision publishes is ResNet-50-FPN (maskrcnn_resnet50_fpn), which
    # sln_jax.models.torchvision_import loads: set pretrained_maskrcnn to its exported file.
    config.model.backbone = "resnet50"
    config.model.norm = "frozen_bn"  # model.py set_bn_fix: BatchNorm never trains
    config.model.pretrained_backbone = ""
    config.model.pretrained_maskrcnn = ""  # required: --config.model.pretrained_maskrcnn=FILE
    # What trains: model.py train_model(layers='heads') sets requires_grad = False on the
    # ResNet (fpn.C1..C5 are not in the 'heads' regex) and set_trainable never sets it back,
    # so stages '4+' and 'all' leave C1-C5 frozen too: FPN, RPN, box and mask heads train.
    config.train.frozen = ("^backbone/",)
    # Schedule per image (see the module docstring): SGD momentum 0.9, weight decay 1e-4
    # (config.py), gradient clipping at norm 5 (model.py train_epoch), no warmup.
    batch = config.train.get_ref("batch_size")
    config.optim.name = "sgd"
    config.optim.learning_rate = ml_collections.FieldReference(REFERENCE_LEARNING_RATE) * batch
    config.train.num_steps = ml_collections.FieldReference(REFERENCE_STEPS) // batch
    config.optim.schedule = "step"
    config.optim.decay_at = (REFERENCE_DECAY_STEP / REFERENCE_STEPS,)
    config.optim.decay_factor = 0.1  # amodal_train.py stage 'all': LEARNING_RATE / 10
    config.optim.warmup_steps = 0
    config.optim.momentum = 0.9
    config.optim.weight_decay = 1e-4  # (the reference also decays biases; we do not)
    config.optim.clip_norm = 5.0
    # GT boxes jittered by U(-1, 1) x (h, w, h, w) / 15 (utils.py extract_bboxes).
    config.data.box_jitter = 1.0 / 15
    config.data.flip = True  # modal/Functions.py load_image_gt: random fliplr
    config.data.image_size = 1024  # config.py IMAGE_MAX_DIM, padded square
    config.data.max_instances = 50  # config.py MAX_GT_INSTANCES
    # RPN / ROI sampling as config.py (most equal the base config already).
    config.model.rpn_pre_nms_topk = 6000  # modal/Functions.py proposal_layer pre_nms_limit
    config.model.rpn_post_nms_topk = 1000  # POST_NMS_ROIS_TRAINING / _INFERENCE
    config.model.rpn_nms_threshold = 0.7  # RPN_NMS_THRESHOLD
    config.model.rpn_batch_per_image = 256  # RPN_TRAIN_ANCHORS_PER_IMAGE
    config.model.roi_batch_per_image = 100  # TRAIN_ROIS_PER_IMAGE
    config.model.roi_positive_fraction = 0.7  # ROI_POSITIVE_RATIO
    config.model.mask_rois_per_image = 70  # the mask loss sees every positive ROI (<= 100 x 0.7)
    config.model.box_pool_size = 7  # POOL_SIZE
    config.model.mask_pool_size = 16  # MASK_POOL_SIZE
    config.model.mask_size = 32  # MASK_SHAPE
    # Evaluation post-processing: no detection NMS (config.py USE_NMS = False; an IoU
    # threshold of 1 suppresses nothing) and no minimum confidence (amodal_train.py
    # InferenceConfig DETECTION_MIN_CONFIDENCE = 0). The reference keeps up to 1000
    # detections (DETECTION_MAX_INSTANCES); COCO-style AP / AR count at most 100 per image
    # (maxDets 100) and without NMS those are the same 100, so 100 gives the same metrics.
    config.model.score_threshold = 0.0
    config.model.nms_threshold = 1.0
    config.model.max_detections = 100
    # The reference's mask head is four convs on the ROI features (model.py Mask): no
    # instance context (our addition, configs/base.py).
    config.model.instance_context = False
    config.model.order_head = False
    config.model.order_rule = "soft"
    return config


def get_config() -> ml_collections.ConfigDict:
    """configs/cocoa.py with the reference protocol."""
    config = apply_reference_protocol(load_config("cocoa"))
    # config.data.dir: the base's (the same conversion serves both recipes).
    config.data.num_classes = 1  # class-agnostic, as the base (amodal_train.py: 'foreground')
    config.model.num_classes = 1
    config.eval.format = "cocoa"  # evaluate/amodalevalCOCOA.py: catIds = [1]
    return config
