"""D2SA with the protocol of the paper's reference code (apchenstu/SLN-Amodal): an override
of configs/d2sa.py (the project's recommended recipe, 60 classes).

The protocol is configs/cocoa_reference.py's (start from a COCO-trained Mask R-CNN, frozen
ResNet, 15,000 images at lr 1e-3 per image then 1e-4, GT box jitter, no detection NMS, no
minimum confidence; see that file for where each choice comes from). D2SA specifics:

* class-agnostic, as the reference (amodal_train.py registers one 'foreground' class and
  sets NUM_CLASSES = 1 + 1; evaluate/amodalevalD2SA.py evaluates catIds = [1]): convert and
  evaluate class-agnostic copies of the annotation files made by
  ``python -m data_prep.class_agnostic`` (README, "Reproducing the paper").

  python -m sln_jax.main --config configs/d2sa_reference.py --workdir runs/d2sa_reference \
      --config.model.pretrained_maskrcnn=maskrcnn_r50_fpn_coco.npz --config.train.batch_size=8 \
      --config.eval.gt_json=D2S_amodal_validation_agnostic.json
"""

import importlib.util
import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """configs/d2sa.py with the reference protocol, class-agnostic."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cocoa_reference.py")
    spec = importlib.util.spec_from_file_location("sln_configs_cocoa_reference", path)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    config = reference.apply_reference_protocol(reference.load_config("d2sa"))
    config.data.dir = "data/d2sa_agnostic/records"  # converted from the class-agnostic copies
    config.data.num_classes = 1  # everything class 1 (see the module docstring)
    config.model.num_classes = 1
    config.model.class_agnostic_masks = True
    config.eval.format = "coco"  # one category after data_prep.class_agnostic
    return config
