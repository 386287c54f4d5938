"""The five builders: COCOA, COCOA-cls, D2SA, KINS (manual download) and the synthetic set."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from data_prep import synthetic
from data_prep.tfds_builders.common import AmodalBuilder, AmodalConfig, manual_file

__all__ = ["CocoaAmodal", "CocoaClsAmodal", "D2saAmodal", "KinsAmodal", "SlnSynthetic",
           "SyntheticConfig"]


class _ManualBuilder(AmodalBuilder, skip_registration=True):
    """A real dataset: ``SPLITS`` = {split: (annotation file, images dir)} in the manual
    directory; splits in ``OPTIONAL_SPLITS`` are built only when their file is there."""

    SPLITS: dict[str, tuple[str, str]] = {}
    OPTIONAL_SPLITS: tuple[str, ...] = ()

    def _annotation_sets(self, dl_manager) -> dict[str, tuple[str, str]]:
        name = type(self).name
        sets = {}
        for split, (annotations, images) in self.SPLITS.items():
            path = os.path.join(os.fspath(dl_manager.manual_dir), annotations)
            if split in self.OPTIONAL_SPLITS and not os.path.exists(path):
                continue
            sets[split] = (manual_file(dl_manager, annotations, name),
                           manual_file(dl_manager, images, name))
        return sets


_COCOA_CITATION = """@inproceedings{zhu2017semantic,
  title={Semantic Amodal Segmentation},
  author={Zhu, Yan and Tian, Yuandong and Metaxas, Dimitris and Doll{\\'a}r, Piotr},
  booktitle={CVPR}, year={2017}}"""


class CocoaAmodal(_ManualBuilder):
    """COCOA (Zhu et al. 2017), the per-image amodal format, class-agnostic."""

    DATASET = "cocoa"
    DESCRIPTION = ("COCO amodal (COCOA): amodal and visible masks and depth order of COCO "
                   "2014 images; class-agnostic (one class 'object'), stuff regions kept "
                   "and flagged, first annotator (data_prep.cocoa.read).")
    HOMEPAGE = "https://github.com/Wakeupbuddy/amodalAPI"
    CITATION = _COCOA_CITATION
    SPLITS = {
        "train": ("COCO_amodal_train2014.json", "train2014"),
        "val": ("COCO_amodal_val2014.json", "val2014"),
        "test": ("COCO_amodal_test2014.json", "val2014"),
    }
    OPTIONAL_SPLITS = ("test",)
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put into the manual directory (`--manual_dir`, default `<data_dir>/downloads/manual`):
      COCO_amodal_train2014.json   COCOA train annotations (per-image format)
      COCO_amodal_val2014.json     COCOA val annotations
      COCO_amodal_test2014.json    COCOA test annotations (optional: split `test`)
      train2014/                   COCO 2014 train images (images of the train split)
      val2014/                     COCO 2014 val images (images of the val and test splits)
    The annotations are in cocoa_annotations.tar.gz of the COCOA release
    (https://github.com/Wakeupbuddy/amodalAPI); the images at https://cocodataset.org.
    """


class CocoaClsAmodal(_ManualBuilder):
    """COCOA-cls (Follmann et al. 2019): COCOA in COCO style with the 80 COCO classes."""

    DATASET = "cocoa_cls"
    DESCRIPTION = ("COCOA-cls: COCOA's amodal masks with the 80 COCO classes, COCO-style "
                   "JSON (data_prep.cocoa.read_cls).")
    HOMEPAGE = "https://www.mvtec.com/company/research/datasets/mvtec-d2s"
    CITATION = """@inproceedings{follmann2019learning,
  title={Learning to See the Invisible: End-to-End Trainable Amodal Instance Segmentation},
  author={Follmann, Patrick and K{\\"o}nig, Rebecca and H{\\"a}rtinger, Philipp and
          Klostermann, Michael and B{\\"o}ttger, Tobias},
  booktitle={WACV}, year={2019}}"""
    SPLITS = {
        "train": ("COCO_amodal_train2014_with_classes.json", "train2014"),
        "val": ("COCO_amodal_val2014_with_classes.json", "val2014"),
        "test": ("COCO_amodal_test2014_with_classes.json", "val2014"),
    }
    OPTIONAL_SPLITS = ("test",)
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put into the manual directory (`--manual_dir`, default `<data_dir>/downloads/manual`):
      COCO_amodal_train2014_with_classes.json   COCOA-cls train annotations
      COCO_amodal_val2014_with_classes.json     COCOA-cls val annotations
      COCO_amodal_test2014_with_classes.json    COCOA-cls test annotations (optional)
      train2014/                                COCO 2014 train images
      val2014/                                  COCO 2014 val images (val and test splits)
    The COCOA-cls annotations come with the ORCNN release of Follmann et al.; the images
    from https://cocodataset.org.
    """


class D2saAmodal(_ManualBuilder):
    """D2S amodal (D2SA, Follmann et al. 2019): 60 grocery classes."""

    DATASET = "d2sa"
    DESCRIPTION = ("D2S amodal (D2SA): MVTec D2S images with amodal and visible masks and "
                   "depth order, 60 classes (data_prep.d2sa.read).")
    HOMEPAGE = "https://www.mvtec.com/company/research/datasets/mvtec-d2s"
    CITATION = CocoaClsAmodal.CITATION
    SPLITS = {
        "train": ("D2S_amodal_training_rot0.json", "images"),
        "val": ("D2S_amodal_validation.json", "images"),
        "train_augmented": ("D2S_amodal_augmented.json", "images"),
    }
    OPTIONAL_SPLITS = ("train_augmented",)
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put into the manual directory (`--manual_dir`, default `<data_dir>/downloads/manual`):
      D2S_amodal_training_rot0.json   D2SA train annotations
      D2S_amodal_validation.json      D2SA validation annotations
      D2S_amodal_augmented.json       D2SA augmented train annotations (optional: split
                                      `train_augmented`)
      images/                         the D2SA images (every split's)
    From https://www.mvtec.com/company/research/datasets/mvtec-d2s (after registration):
    d2s_amodal_annotations_v1.tar.xz holds the JSON files, d2s_amodal_images_v1.tar.xz the
    images/ directory.
    """


class KinsAmodal(_ManualBuilder):
    """KINS (Qi et al. 2019): KITTI object images, 7 classes, depth order from ico_id."""

    DATASET = "kins"
    DESCRIPTION = ("KINS: amodal instance annotations of KITTI object images, 7 classes, "
                   "depth order from the occlusion clusters (data_prep.kins.read).")
    HOMEPAGE = "https://github.com/qqlu/Amodal-Instance-Segmentation-through-KINS-Dataset"
    CITATION = """@inproceedings{qi2019amodal,
  title={Amodal Instance Segmentation with KINS Dataset},
  author={Qi, Lu and Jiang, Li and Liu, Shu and Shen, Xiaoyong and Jia, Jiaya},
  booktitle={CVPR}, year={2019}}"""
    SPLITS = {
        "train": ("update_train_2020.json", os.path.join("training", "image_2")),
        "test": ("update_test_2020.json", os.path.join("testing", "image_2")),
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put into the manual directory (`--manual_dir`, default `<data_dir>/downloads/manual`):
      update_train_2020.json    KINS train annotations
      update_test_2020.json     KINS test annotations
      training/image_2/         KITTI object "left color images" of the training set
      testing/image_2/          KITTI object "left color images" of the testing set
    Annotations: https://github.com/qqlu/Amodal-Instance-Segmentation-through-KINS-Dataset;
    images: data_object_image_2.zip from https://www.cvlibs.net/datasets/kitti/.
    """


@dataclasses.dataclass(eq=False)
class SyntheticConfig(AmodalConfig):
    """The synthetic set's scenes (``data_prep.synthetic``) and targets."""

    image_size: int = 128
    num_train: int = 1000
    num_val: int = 100
    seed: int = 0
    min_objects: int = 2
    max_objects: int = 6

    def scene_config(self) -> synthetic.SceneConfig:
        return synthetic.SceneConfig(image_size=self.image_size, min_objects=self.min_objects,
                                     max_objects=self.max_objects)

    def fingerprint(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in ("name", "description", "release_notes", "tags",
                                    "supported_versions", "version")}
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


class SlnSynthetic(AmodalBuilder):
    """The built-in synthetic amodal shapes (``data_prep.synthetic``); nothing to download."""

    DATASET = "synthetic"
    DESCRIPTION = ("sln-jax synthetic amodal shapes: overlapping objects of 5 classes on "
                   "textured backgrounds, drawn by data_prep.synthetic (D2SA-style JSON, "
                   "read by data_prep.d2sa.read).")
    HOMEPAGE = "https://arxiv.org/abs/1905.12898"
    BUILDER_CONFIGS = [
        SyntheticConfig(name="default", num_layers=4, mask_target_size=28,
                        description="configs/synthetic.py: 128 px, 1000 train / 100 val"),
    ]

    def _annotation_sets(self, dl_manager) -> dict[str, tuple[str, str]]:
        config = self.builder_config
        # Drawn deterministically from the config; a re-run redraws the same files.
        root = os.path.join(os.fspath(dl_manager.download_dir), "sln_synthetic",
                            f"{config.name}-{config.fingerprint()}")
        sets = {}
        for split, count in (("train", config.num_train), ("val", config.num_val)):
            if count <= 0:
                continue
            synthetic.write_split(root, split, count, config.seed, config.scene_config(),
                                  progress=False)
            sets[split] = (os.path.join(root, "annotations", f"{split}.json"),
                           os.path.join(root, "images", split))
        return sets
