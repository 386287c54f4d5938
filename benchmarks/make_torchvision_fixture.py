"""Makes the fixture of tests/test_torchvision_import.py with torchvision (run once, where
torch and torchvision are installed; they are not dependencies of sln-jax):

    python benchmarks/make_torchvision_fixture.py [--output tests/fixtures/torchvision_maskrcnn]

It builds torchvision's Mask R-CNN from torchvision's own pieces with the structure of
``maskrcnn_resnet50_fpn`` (ResNet-50 bottleneck blocks 3-4-6-3, FPN with LastLevelMaxPool,
RPN head, TwoMLPHead, FastRCNNPredictor, MaskRCNNHeads, MaskRCNNPredictor, 91 classes) but
narrow, so the files stay small: ResNet base width 8 instead of 64 (torchvision's
``ResNet._make_layer`` and ``Bottleneck``, only the stage widths changed), FPN and mask-head
width 32 instead of 256, box-head FC width 128 (= 4 x FPN width, as 1024 = 4 x 256).
Every weight and FrozenBatchNorm statistic is random (non-trivial biases and statistics, so
that every mapped tensor matters), and the model runs on a random normalized 256 x 256 image.

Writes two files:
  maskrcnn_tiny_state.npz: the state dict, ``{key: array}``, exactly as a user would export
    torchvision's (``np.savez(path, **{k: v.numpy() for k, v in model.state_dict().items()})``).
  maskrcnn_tiny_outputs.npz: the image and torchvision's outputs (NCHW, torchvision's box
    convention (x1, y1, x2, y2)): ``image``; ``body_0..3`` (C2..C5); ``fpn_0..3``,
    ``fpn_pool`` (P2..P6); ``rpn_objectness`` [A, 1] and ``rpn_deltas`` [A, 4] (flattened by
    ``concat_box_prediction_layers``) and ``anchors`` [A, 4]; ``boxes`` [N, 4] test boxes;
    ``box_pooled`` [N, C, 7, 7] (``MultiScaleRoIAlign``, aligned=False, as torchvision's
    Mask R-CNN) with ``box_logits`` [N, 91] and ``box_deltas`` [N, 364] computed from it;
    ``box_pooled_aligned`` (the same levels, ``roi_align(aligned=True)``) with
    ``box_logits_aligned`` / ``box_deltas_aligned``; ``mask_pooled`` [N, C, 14, 14],
    ``mask_features`` (after the four convs), ``mask_logits`` [N, 8, 28, 28] (the first 8 of the 91 classes' logits).
"""

from __future__ import annotations

import argparse
import os
from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.ops import roi_align
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.ops.poolers import LevelMapper

WIDTH, FPN_DIM, MASK_DIM, NUM_CLASSES, SIZE = 8, 32, 32, 91, 256
MASK_CLASSES_KEPT = 8  # the mask logits of classes 0..7 are stored (all 91: 2.8 MB)
LAYERS = (3, 4, 6, 3)  # ResNet-50


class NarrowResNet(ResNet):
    """torchvision's ResNet with base width ``width`` (64 in the real nets)."""

    def __init__(self, layers, width):
        nn.Module.__init__(self)
        self._norm_layer = FrozenBatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(Bottleneck, width, layers[0])
        self.layer2 = self._make_layer(Bottleneck, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(Bottleneck, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(Bottleneck, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32 * width, 10)


def build_model() -> MaskRCNN:
    body = NarrowResNet(LAYERS, WIDTH)
    del body.fc  # maskrcnn_resnet50_fpn's backbone has no fc either
    backbone = BackboneWithFPN(
        body, return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[4 * WIDTH * 2 ** i for i in range(4)], out_channels=FPN_DIM)
    return MaskRCNN(
        backbone, num_classes=None,
        box_head=TwoMLPHead(FPN_DIM * 7 * 7, 4 * FPN_DIM),
        box_predictor=FastRCNNPredictor(4 * FPN_DIM, NUM_CLASSES),
        mask_head=MaskRCNNHeads(FPN_DIM, (MASK_DIM,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(MASK_DIM, MASK_DIM, NUM_CLASSES)).eval()


def randomize(model: nn.Module, generator: torch.Generator) -> None:
    """Random weights (fan-in scaled), biases and FrozenBatchNorm statistics."""
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if tensor.ndim >= 2:
                fan_in = tensor[0].numel() if "conv5_mask" not in name else tensor.shape[0]
                tensor.copy_(torch.randn(tensor.shape, generator=generator)
                             * (2.0 / fan_in) ** 0.5)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 1.5 + 0.5)
            elif name.endswith("weight"):  # FrozenBatchNorm scale
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.5)
            else:  # biases and running means
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)


def test_boxes() -> torch.Tensor:
    """(x1, y1, x2, y2) boxes of several sizes: FPN levels 2, 3 and 4 at 256 px."""
    return torch.tensor([
        [10.0, 12.0, 40.0, 50.0], [100.3, 80.7, 130.2, 140.9], [5.0, 5.0, 60.0, 30.0],
        [30.0, 20.0, 150.0, 120.0], [64.0, 64.0, 192.0, 192.0], [0.0, 0.0, 255.0, 250.0],
        [20.5, 40.25, 250.0, 240.0], [140.0, 10.0, 250.0, 100.0], [200.0, 200.0, 210.0, 230.0],
        [3.0, 100.0, 110.0, 255.0],
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures",
        "torchvision_maskrcnn"))
    args = parser.parse_args()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = build_model()
    randomize(model, generator)
    image = torch.randn((1, 3, SIZE, SIZE), generator=generator)
    boxes = test_boxes()
    out: dict[str, torch.Tensor] = {"image": image, "boxes": boxes}
    with torch.no_grad():
        body = model.backbone.body(image)
        fpn = model.backbone.fpn(body)
        for key, value in body.items():
            out[f"body_{key}"] = value
        for key, value in fpn.items():
            out[f"fpn_{key}"] = value
        levels = list(fpn.values())
        objectness, deltas = model.rpn.head(levels)
        out["rpn_objectness"], out["rpn_deltas"] = concat_box_prediction_layers(
            objectness, deltas)
        out["anchors"] = model.rpn.anchor_generator(ImageList(image, [(SIZE, SIZE)]), levels)[0]

        features = OrderedDict((k, v) for k, v in fpn.items() if k != "pool")
        sizes = [(SIZE, SIZE)]
        pooled = model.roi_heads.box_roi_pool(features, [boxes], sizes)
        logits, box_deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
        out.update(box_pooled=pooled, box_logits=logits, box_deltas=box_deltas)

        level = LevelMapper(2, 5)([boxes])
        rois = torch.cat([torch.zeros((len(boxes), 1)), boxes], dim=1)
        aligned = torch.zeros_like(pooled)
        for index, feature in enumerate(features.values()):
            chosen = torch.where(level == index)[0]
            if len(chosen):
                aligned[chosen] = roi_align(feature, rois[chosen], (7, 7),
                                            spatial_scale=1.0 / 2 ** (index + 2),
                                            sampling_ratio=2, aligned=True)
        logits, box_deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(aligned))
        out.update(box_pooled_aligned=aligned, box_logits_aligned=logits,
                   box_deltas_aligned=box_deltas, box_levels=level + 2)

        mask_pooled = model.roi_heads.mask_roi_pool(features, [boxes], sizes)
        mask_features = model.roi_heads.mask_head(mask_pooled)
        mask_logits = model.roi_heads.mask_predictor(mask_features)
        out.update(mask_pooled=mask_pooled, mask_features=mask_features,
                   mask_logits=mask_logits[:, :MASK_CLASSES_KEPT])

    os.makedirs(args.output, exist_ok=True)
    state = {key: value.numpy() for key, value in model.state_dict().items()}
    state_path = os.path.join(args.output, "maskrcnn_tiny_state.npz")
    outputs_path = os.path.join(args.output, "maskrcnn_tiny_outputs.npz")
    np.savez_compressed(state_path, **state)
    np.savez_compressed(outputs_path, **{k: v.numpy() for k, v in out.items()})
    for path in (state_path, outputs_path):
        print(f"{path}: {os.path.getsize(path) / 1e6:.2f} MB")
    print(f"{sum(v.size for v in state.values()):,} parameters and statistics in "
          f"{len(state)} tensors; levels of the test boxes: {(level + 2).tolist()}")


if __name__ == "__main__":
    main()
