"""What every sln-jax TFDS builder shares: the config, the features and example generation.

An example holds what a record of ``data_prep.records`` holds, made by the same code
(``data_prep.convert.load_example``: the dataset's reader, ``load_scene``, ``read_image``
and ``build_targets``):

| feature                   | type                    | content                                 |
|---------------------------|-------------------------|-----------------------------------------|
| ``image``                 | Image uint8 [H, W, 3]   | original JPEG / PNG bytes (``read_image``)|
| ``image_id``              | int64                   | image id in the annotation file         |
| ``image_format``          | text                    | "jpeg" or "png"                         |
| ``instances/ann_id``      | int64 [N]               | annotation ids                          |
| ``instances/box``         | float32 [N, 4]          | amodal boxes (y1, x1, y2, x2), pixels   |
| ``instances/label``       | int64 [N]               | class ids 1..C (``metadata['classes']``)|
| ``instances/order``       | int64 [N]               | strict depth rank, 0 = front            |
| ``instances/occlusion``   | float32 [N]             | 1 - visible / amodal area               |
| ``instances/area``        | int64 [N]               | amodal area in pixels                   |
| ``instances/is_stuff``    | bool [N]                | COCOA stuff regions                     |
| ``instances/amodal_rle``  | string [N]              | compressed COCO RLE counts, size [H, W] |
| ``instances/visible_rle`` | string [N]              | same for the visible masks              |
| ``instances/layers``      | uint8 [N, P, P] (zlib)  | layer + 1 crops, 0 outside              |
| ``instances/semdist``     | uint8 [N, P, P] (zlib)  | round(M / (K + 1) * 255) crops          |
| ``global_layers``         | Image uint8 [H, W, 1]   | global layering map 0..K-1 (PNG)        |

K (``num_layers``) and P (``mask_target_size``) are the builder config's; they, the class
names, the dataset's category ids, each split's annotation file and the repair counts are in
``info.metadata`` (the version directory's ``metadata.json``, with the fields of the
records' ``metadata.json`` that training and inference read). Examples are stored in the
annotation file's order (``disable_shuffling``), so the TFDS dataset and the converted
records list the same images in the same order.

Generation runs in this process, or on Apache Beam when the download config names a Beam
runner or Beam options (``tfds build --beam_pipeline_options=...``, or
``tfds.download.DownloadConfig(beam_runner=..., beam_options=...)``); both give the same
examples. Bad input raises ``DataError`` with one line naming the file and the image /
annotation id; TFDS writes into a temporary directory and removes it on failure, so no
half-written version is left behind.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_prep import convert, records
from sln_jax.records import SCHEMA_VERSION
from data_prep.scene import AnnotationSet, DataError, SceneSource

__all__ = ["AmodalConfig", "AmodalBuilder", "to_example", "make_example",
           "STANDARD_CONFIGS", "RELEASE_NOTES"]

RELEASE_NOTES = {
    "1.0.0": "Initial release: the content of data_prep.records schema version "
             f"{SCHEMA_VERSION} (image, boxes, labels, amodal / visible RLE masks, "
             "depth order, occlusion, layer and sem-dist crops, global layering map).",
}


@dataclasses.dataclass(eq=False)
class AmodalConfig(tfds.core.BuilderConfig):
    """Target settings: K = ``num_layers`` layer classes, P x P ``mask_target_size`` crops."""

    num_layers: int = 4
    mask_target_size: int = 32

    def __post_init__(self):
        if not 2 <= self.num_layers <= 254:
            raise ValueError(f"num_layers must be in 2..254, got {self.num_layers}")
        if self.mask_target_size < 1:
            raise ValueError(f"mask_target_size must be >= 1, got {self.mask_target_size}")


def _standard(k: int, p: int, what: str) -> AmodalConfig:
    return AmodalConfig(name=f"k{k}_p{p}", num_layers=k, mask_target_size=p,
                        description=f"K = {k} layers, {p} x {p} target crops ({what})")


# k4_p32: the paper's settings (configs/cocoa.py, configs/d2sa.py); k4_p28: configs/synthetic.py.
STANDARD_CONFIGS = [_standard(4, 32, "the paper's settings"),
                    _standard(4, 28, "configs/synthetic.py")]


def to_example(scene, image, targets) -> dict[str, Any]:
    """The TFDS example of one converted image (``convert.load_example``'s output)."""
    n = scene.num_instances
    return {
        "image": image.data,
        "image_id": int(scene.image_id),
        "image_format": image.format,
        "instances": {
            "ann_id": np.asarray(scene.ann_ids, np.int64),
            "box": np.asarray(scene.boxes, np.float32).reshape(n, 4),
            "label": np.asarray(scene.classes, np.int64),
            "order": np.asarray(scene.order, np.int64),
            "occlusion": np.asarray(scene.occlusion, np.float32),
            "area": np.asarray(scene.areas(), np.int64),
            "is_stuff": np.asarray(scene.is_stuff, bool),
            "amodal_rle": np.asarray(scene.amodal_rle_counts(), object).reshape(n),
            "visible_rle": np.asarray(scene.visible_rle_counts(), object).reshape(n),
            "layers": np.ascontiguousarray(targets.layer_crops, np.uint8),
            "semdist": np.ascontiguousarray(targets.semdist_crops, np.uint8),
        },
        "global_layers": records.encode_png(targets.global_layers),
    }


def make_example(item: tuple[int, SceneSource], num_classes: int, num_layers: int,
                 mask_target_size: int, warnings: collections.Counter
                 ) -> tuple[int, dict[str, Any]]:
    """(index in the annotation file, source) -> (key, example); DataError on bad input."""
    index, source = item
    scene, image, targets = convert.load_example(source, num_classes, num_layers,
                                                 mask_target_size, warnings)
    return index, to_example(scene, image, targets)


def _beam_example(item, num_classes: int, num_layers: int, mask_target_size: int,
                  namespace: str):
    """``make_example`` in a Beam worker; repairs counted as Beam counters."""
    from apache_beam.metrics import Metrics

    warnings: collections.Counter = collections.Counter()
    result = make_example(item, num_classes, num_layers, mask_target_size, warnings)
    for key, count in warnings.items():
        Metrics.counter(namespace, key).inc(count)
    return result


_BEAM_NAMESPACE = "sln_jax/"


class AmodalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the sln-jax builders; subclasses give ``DATASET`` (a ``convert.READERS``
    key) and ``_annotation_sets(dl_manager) -> {split: (annotation file, images dir)}``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = RELEASE_NOTES
    BUILDER_CONFIGS = STANDARD_CONFIGS
    DATASET = ""
    DESCRIPTION = ""
    HOMEPAGE = ""
    CITATION = ""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """The file of the builder class (where TFDS looks for a checksums file).

        TFDS 4.9.10's own lookup needs ``importlib_resources``, which it only declares as a
        dependency before Python 3.9; this is what it computes for a module on disk.
        """
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        p = self.builder_config.mask_target_size
        crops = dict(shape=(None, p, p), dtype=np.uint8,
                     encoding=tfds.features.Encoding.ZLIB)
        features = tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image_id": tfds.features.Scalar(np.int64),
            "image_format": tfds.features.Text(),
            "instances": tfds.features.FeaturesDict({
                "ann_id": tfds.features.Tensor(shape=(None,), dtype=np.int64),
                "box": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                "label": tfds.features.Tensor(shape=(None,), dtype=np.int64),
                "order": tfds.features.Tensor(shape=(None,), dtype=np.int64),
                "occlusion": tfds.features.Tensor(shape=(None,), dtype=np.float32),
                "area": tfds.features.Tensor(shape=(None,), dtype=np.int64),
                "is_stuff": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
                "amodal_rle": tfds.features.Tensor(shape=(None,), dtype=np.object_),
                "visible_rle": tfds.features.Tensor(shape=(None,), dtype=np.object_),
                "layers": tfds.features.Tensor(**crops),
                "semdist": tfds.features.Tensor(**crops),
            }),
            "global_layers": tfds.features.Image(shape=(None, None, 1),
                                                 encoding_format="png"),
        })
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION,
            features=features,
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # the annotation file's order, as the records
        )

    # -- generation ---------------------------------------------------------------------

    def _annotation_sets(self, dl_manager) -> dict[str, tuple[str, str]]:
        raise NotImplementedError

    def _generate_splits(self, dl_manager, download_config):
        # "Asked for Beam": a runner or options in the download config (tfds build
        # --beam_pipeline_options / --beam_runner, or DownloadConfig(beam_...)).
        self._use_beam = (download_config.beam_runner is not None
                          or download_config.beam_options is not None)
        self._warnings: dict[str, collections.Counter] = {}
        return super()._generate_splits(dl_manager, download_config)

    def _split_generators(self, dl_manager):
        splits, sources = {}, {}
        common = None
        for split, (annotations, images) in self._annotation_sets(dl_manager).items():
            annotation_set = convert.READERS[self.DATASET](annotations, images)
            info = self._common_metadata(annotation_set)
            if common is not None and info != common:
                raise DataError(f"{annotations}: its classes differ from the other splits'")
            common = info
            self._warnings[split] = collections.Counter(annotation_set.warnings)
            sources[split] = {"dataset": self.DATASET,
                              "annotations": os.path.abspath(annotations)}
            splits[split] = self._generate_examples(annotation_set, split)
        self.info.metadata.update(common or {})
        # As in the records' metadata.json (what training reads for the val annotations).
        self.info.metadata["splits"] = sources
        self.info.metadata["warnings"] = {}
        return splits

    def _common_metadata(self, annotation_set: AnnotationSet) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "dataset": self.DATASET,
            "num_layers": self.builder_config.num_layers,
            "mask_target_size": self.builder_config.mask_target_size,
            "num_classes": len(annotation_set.classes),
            "classes": {str(k): v for k, v in annotation_set.classes.items()},
            "category_ids": {str(k): v for k, v in annotation_set.category_ids.items()},
        }

    def _generate_examples(self, annotation_set: AnnotationSet, split: str):
        k = self.builder_config.num_layers
        p = self.builder_config.mask_target_size
        num_classes = len(annotation_set.classes)
        items = list(enumerate(annotation_set.sources))
        if getattr(self, "_use_beam", False):
            beam = tfds.core.lazy_imports.apache_beam
            return (beam.Create(items)
                    | "Spread" >> beam.Reshuffle()
                    | "Examples" >> beam.Map(_beam_example, num_classes, k, p,
                                             _BEAM_NAMESPACE + split))
        return self._generate_here(items, num_classes, k, p, split)

    def _generate_here(self, items, num_classes, k, p, split):
        warnings = self._warnings.setdefault(split, collections.Counter())
        for item in items:
            yield make_example(item, num_classes, k, p, warnings)
        self.info.metadata["warnings"][split] = dict(sorted(
            (key, int(n)) for key, n in warnings.items() if n))

    def _process_pipeline_result(self, pipeline_result) -> None:
        """Beam counters -> ``info.metadata['warnings']`` (the reader's counts added)."""
        from apache_beam.metrics.metric import MetricsFilter

        counts = {split: collections.Counter(w) for split, w in self._warnings.items()}
        query = pipeline_result.metrics().query(MetricsFilter())
        for counter in query["counters"]:
            namespace = counter.key.metric.namespace
            if namespace.startswith(_BEAM_NAMESPACE):
                split = namespace[len(_BEAM_NAMESPACE):]
                counts.setdefault(split, collections.Counter())[
                    counter.key.metric.name] += counter.committed or counter.attempted or 0
        self.info.metadata["warnings"] = {
            split: dict(sorted((key, int(n)) for key, n in c.items() if n))
            for split, c in counts.items()}


def manual_file(dl_manager, name: str, builder: str) -> str:
    """Path of a file or directory of the manual download; DataError naming it if absent."""
    path = os.path.join(os.fspath(dl_manager.manual_dir), name)
    if not os.path.exists(path):
        raise DataError(f"{path}: not found; {builder} needs it in the manual download "
                        f"directory (see {builder}.MANUAL_DOWNLOAD_INSTRUCTIONS)")
    return path
