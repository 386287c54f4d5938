"""TensorFlow Datasets builders of every dataset sln-jax reads, registered on import.

    import data_prep.tfds_builders  # registers the builders below
    builder = tfds.builder("sln_synthetic", data_dir="~/tensorflow_datasets")
    builder.download_and_prepare()

or, from the repository root, ``PYTHONPATH=. tfds build sln_synthetic --imports
data_prep.tfds_builders [--config NAME_OR_JSON] [--beam_pipeline_options=...]``.

| name               | data                                   | reader                     |
|--------------------|----------------------------------------|----------------------------|
| ``cocoa_amodal``   | COCOA, per-image format, class-agnostic| ``data_prep.cocoa.read``   |
| ``cocoa_cls_amodal``| COCOA-cls, 80 COCO classes            | ``data_prep.cocoa.read_cls``|
| ``d2sa_amodal``    | D2S amodal, 60 classes                 | ``data_prep.d2sa.read``    |
| ``kins_amodal``    | KINS on KITTI, 7 classes               | ``data_prep.kins.read``    |
| ``sln_synthetic``  | the built-in synthetic set (generated) | ``data_prep.d2sa.read``    |

The real datasets use the manual download (``MANUAL_DOWNLOAD_INSTRUCTIONS`` of each class
names the files). Features, configs and Beam generation: ``data_prep.tfds_builders.common``.
"""

from data_prep.tfds_builders.common import (AmodalBuilder, AmodalConfig, make_example,
                                            to_example)
from data_prep.tfds_builders.datasets import (CocoaAmodal, CocoaClsAmodal, D2saAmodal,
                                              KinsAmodal, SlnSynthetic, SyntheticConfig)

__all__ = ["AmodalBuilder", "AmodalConfig", "SyntheticConfig", "CocoaAmodal",
           "CocoaClsAmodal", "D2saAmodal", "KinsAmodal", "SlnSynthetic", "make_example",
           "to_example", "NAMES"]

NAMES = ("cocoa_amodal", "cocoa_cls_amodal", "d2sa_amodal", "kins_amodal", "sln_synthetic")
