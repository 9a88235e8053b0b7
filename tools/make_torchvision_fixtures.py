"""Writes tests/fixtures/torchvision_fasterrcnn_v1.npz: a narrow torchvision Faster R-CNN v1
(`fasterrcnn_resnet50_fpn`'s structure, every block and key of it, with narrower layers) with
random weights and random FrozenBatchNorm statistics, and torchvision's outputs stage by stage.
Used by tests/kcv/models/detection/test_torchvision_port.py.

Needs torch + torchvision (never kcv dependencies). Rerun in a side environment:
    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch torchvision numpy
    /tmp/torchenv/bin/python tools/make_torchvision_fixtures.py
    /tmp/torchenv/bin/python tools/make_torchvision_fixtures.py --v2  # ..._v2.npz
(checked with torch 2.14.1 / torchvision 0.29.1). `--full OUT.npz` instead writes the state dict
of the full-size `fasterrcnn_resnet50_fpn` (`--full OUT.npz --v2`: `_v2`; random weights,
~170 MB, not committed) with the same stage outputs, for a local check of the full architecture
with tools/check_torchvision_port.py:
    /tmp/torchenv/bin/python tools/make_torchvision_fixtures.py --full /tmp/tv_full.npz
    python tools/check_torchvision_port.py /tmp/tv_full.npz

The narrow model is built like `fasterrcnn_resnet50_fpn(weights=COCO_V1)` builds the real
one: ResNet-50 with `FrozenBatchNorm2d` (epsilon overwritten to 0.0, as torchvision does for
the COCO_V1 weights), `_resnet_fpn_extractor`-style `BackboneWithFPN` (LastLevelMaxPool),
torchvision's default RPN and RoI heads; only widths are reduced (stem 16, bottleneck widths
8/16/32/64, so C2..C5 have 32/64/128/256 channels; FPN 32 channels; MLP head 64) and
`num_classes=5`, `min_size=128`, `max_size=160`. Everything runs in float64 (`model.double()`
on float32-representable weights, stored as float32). Batch-norm statistics are those of a
forward pass over random images (so activations stay O(1) through 16 blocks) perturbed at random.

Stored per case `c` (images of one size; torchvision gets them as a list):
`c/images` [B, H, W, 3] uint8 (the input is `images / 255`, NHWC), `c/transformed` [B, Hp, Wp, 3] (normalised, resized,
padded), `c/image_size` (the resized size); for the case "upscale" only: `c/C2..C5`, `c/P0..P4` (FPN '0'..'3', 'pool'), NHWC;
`c/objectness_l` [B, H_l, W_l, A], `c/deltas_l` [B, H_l, W_l, 4A] (torchvision's raw head
outputs, NHWC), `c/anchors` [N, 4] xyxy; for every case: `c/proposals_b` [P_b, 4] xyxy,
`c/fixed_rois` [R, 4] xyxy (per image 0) with `c/fixed_logits`,
`c/fixed_deltas` (box head on them); `c/det_boxes_b` [D_b, 4] xyxy in the input image's pixels,
`c/det_scores_b`, `c/det_labels_b`. The state dict is under `sd/<torchvision key>` (new key names).
"""

import argparse
import os

import numpy as np
import torch
import torchvision
from torchvision.models import resnet
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                        "fixtures")
OUT = os.path.join(FIXTURES, "torchvision_fasterrcnn_v1.npz")
OUT_V2 = os.path.join(FIXTURES, "torchvision_fasterrcnn_v2.npz")
RETURN_LAYERS = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
CASES = {  # name: (batch, height, width, min_size, max_size)
    "upscale": (2, 96, 120, 128, 160),  # scale 4/3 -> 128 x 160
    "noresize": (1, 128, 150, 128, 160),  # scale 1: only padded to 128 x 160
    "downscale": (1, 200, 130, 128, 160),  # scale 0.8 -> 160 x 104
}
V2_CASES = {"downscale": CASES["downscale"], "noresize": CASES["noresize"]}
FULL_CASES = {"full": (1, 150, 200, 160, 200),  # scale 1
              "fullresize": (1, 120, 180, 160, 200)}  # scale 10/9 -> 133 x 200


def _narrow_resnet50(norm_layer):
    """ResNet-50's structure (3, 4, 6, 3 bottlenecks) with narrow layers."""
    model = resnet.ResNet(resnet.Bottleneck, [3, 4, 6, 3], norm_layer=norm_layer)
    model.inplanes = 16
    model.conv1 = torch.nn.Conv2d(3, 16, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = norm_layer(16)
    for i, (planes, blocks) in enumerate(zip((8, 16, 32, 64), (3, 4, 6, 3))):
        setattr(model, f"layer{i + 1}",
                model._make_layer(resnet.Bottleneck, planes, blocks, stride=1 if i == 0 else 2))
    return model


def _calibrate(body, rng):
    """BatchNorm running statistics from random images, then random perturbations."""
    for m in body.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    body.train()
    with torch.no_grad():
        for _ in range(2):
            x = torch.from_numpy(rng.normal(size=(2, 3, 96, 96))).float()
            x = body.maxpool(body.relu(body.bn1(body.conv1(x))))
            for layer in (body.layer1, body.layer2, body.layer3, body.layer4):
                x = layer(x)
    body.eval()
    with torch.no_grad():
        for m in body.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean += torch.from_numpy(rng.normal(0, 0.05, n)).float()
                m.running_var *= torch.from_numpy(rng.uniform(0.8, 1.25, n)).float()
                m.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, n)).float())
                m.bias.copy_(torch.from_numpy(rng.normal(0, 0.2, n)).float())


def _freeze_bn(module):
    """BatchNorm2d -> FrozenBatchNorm2d(eps=0.0) with the same statistics (COCO_V1 setup)."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            frozen = misc_nn_ops.FrozenBatchNorm2d(child.num_features, eps=0.0)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            _freeze_bn(child)


def _randomise_heads(model, rng):
    """FPN and heads scaled so that scores stay between 0 and 1 (no float32 ties at 1.0) and
    away from torchvision's near-zero RPN init, so that every decision matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("backbone.fpn.inner_blocks") and name.endswith("weight"):
                p.mul_(0.05)
            elif name.startswith("rpn.head.cls_logits"):
                p.copy_(torch.from_numpy(rng.normal(0, 0.05 if "weight" in name else 0.3,
                                                    p.shape)).float())
            elif name.startswith("rpn.head.bbox_pred"):
                p.copy_(torch.from_numpy(rng.normal(0, 0.02, p.shape)).float())
            elif name.startswith("backbone.fpn") and name.endswith("bias"):
                p.copy_(torch.from_numpy(rng.normal(0, 0.1, p.shape)).float())
            elif name.startswith("roi_heads.box_predictor.bbox_pred"):
                p.mul_(0.3)


def build_narrow(rng):
    body = _narrow_resnet50(torch.nn.BatchNorm2d)
    _calibrate(body, rng)
    _freeze_bn(body)
    backbone = BackboneWithFPN(body, RETURN_LAYERS, [32, 64, 128, 256], 32,
                               extra_blocks=LastLevelMaxPool())
    model = FasterRCNN(backbone, num_classes=None, min_size=128, max_size=160,
                       box_head=TwoMLPHead(32 * 7 * 7, 64),
                       box_predictor=FastRCNNPredictor(64, 5))
    _randomise_heads(model, rng)
    return model


def _random_bn_stats(module, rng):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.1, n)).float())
                m.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, n)).float())
                m.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, n)).float())
                m.bias.copy_(torch.from_numpy(rng.normal(0, 0.1, n)).float())


def build_narrow_v2(rng):
    """`fasterrcnn_resnet50_fpn_v2`'s structure, narrow: BatchNorm2d (eval, eps 1e-5)
    everywhere, FPN convs + BN, a two-conv RPN head, the four-conv + one-FC box head."""
    body = _narrow_resnet50(torch.nn.BatchNorm2d)
    _calibrate(body, rng)
    backbone = BackboneWithFPN(body, RETURN_LAYERS, [32, 64, 128, 256], 32,
                               extra_blocks=LastLevelMaxPool(), norm_layer=torch.nn.BatchNorm2d)
    box_head = FastRCNNConvFCHead((32, 7, 7), [32, 32, 32, 32], [64],
                                  norm_layer=torch.nn.BatchNorm2d)
    _random_bn_stats(backbone.fpn, rng)
    _random_bn_stats(box_head, rng)
    model = FasterRCNN(backbone, num_classes=None, min_size=128, max_size=160,
                       rpn_head=RPNHead(32, 3, conv_depth=2), box_head=box_head,
                       box_predictor=FastRCNNPredictor(64, 5))
    _randomise_heads(model, rng)
    with torch.no_grad():  # BN after the FPN convs: scale its output instead of the weights
        for block in model.backbone.fpn.inner_blocks:
            block[1].weight.mul_(0.05)
            block[1].bias.mul_(0.05)
    return model


def build_full(rng, v2=False):
    if v2:
        model = torchvision.models.detection.fasterrcnn_resnet50_fpn_v2(
            weights=None, weights_backbone=None, num_classes=91, min_size=160, max_size=200)
        _calibrate(model.backbone.body, rng)
        _random_bn_stats(model.backbone.fpn, rng)
        _random_bn_stats(model.roi_heads.box_head, rng)
        with torch.no_grad():  # peaked class scores: some above box_score_thresh = 0.05
            model.roi_heads.box_predictor.cls_score.weight.mul_(20.0)
    else:
        model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=91, min_size=160, max_size=200)
        _calibrate(model.backbone.body, rng)
        _freeze_bn(model.backbone.body)
    _randomise_heads(model, rng)
    return model


def _nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy()


def run_case(model, name, images_u8, rng, arrays, stages):
    b, h, w, _ = images_u8.shape
    images = [torch.from_numpy(x / 255.0).permute(2, 0, 1).contiguous() for x in images_u8]
    arrays[f"{name}/images"] = images_u8  # the model's input is images / 255 (float64)
    with torch.no_grad():
        image_list, _ = model.transform(images)
        arrays[f"{name}/transformed"] = _nhwc(image_list.tensors)
        arrays[f"{name}/image_size"] = np.array(image_list.image_sizes[0])
        features = model.backbone(image_list.tensors)
        flist = list(features.values())
        if stages:  # backbone, FPN, RPN head outputs and anchors
            body = model.backbone.body(image_list.tensors)
            for i, key in enumerate(("0", "1", "2", "3")):
                arrays[f"{name}/C{i + 2}"] = _nhwc(body[key])
            for i, f in enumerate(flist):
                arrays[f"{name}/P{i}"] = _nhwc(f)
            objectness, deltas = model.rpn.head(flist)
            for i, (o, d) in enumerate(zip(objectness, deltas)):
                arrays[f"{name}/objectness_{i}"] = _nhwc(o)
                arrays[f"{name}/deltas_{i}"] = _nhwc(d)
            arrays[f"{name}/anchors"] = model.rpn.anchor_generator(image_list, flist)[0].numpy()
        proposals, _ = model.rpn(image_list, features)
        for i, p in enumerate(proposals):
            arrays[f"{name}/proposals_{i}"] = p.numpy()
        ih, iw = image_list.image_sizes[0]
        y1, x1 = rng.uniform(0, ih - 8, 12), rng.uniform(0, iw - 8, 12)
        hh, ww = rng.uniform(2, ih, 12), rng.uniform(2, iw, 12)
        fixed = np.stack([x1, y1, np.minimum(x1 + ww, iw), np.minimum(y1 + hh, ih)], -1)
        fixed[0] = [0.0, 0.0, iw, ih]  # level 5 (large box)
        fixed[1] = [3.0, 4.0, 3.5, 4.25]  # tiny: roi_align's 1-pixel minimum
        fixed_t = torch.from_numpy(fixed)
        pooled = model.roi_heads.box_roi_pool(features, [fixed_t], image_list.image_sizes[:1])
        logits, box_deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
        arrays[f"{name}/fixed_rois"] = fixed
        arrays[f"{name}/fixed_logits"] = logits.numpy()
        arrays[f"{name}/fixed_deltas"] = box_deltas.numpy()
        detections = model(images)
        for i, d in enumerate(detections):
            arrays[f"{name}/det_boxes_{i}"] = d["boxes"].numpy()
            arrays[f"{name}/det_scores_{i}"] = d["scores"].numpy()
            arrays[f"{name}/det_labels_{i}"] = d["labels"].numpy().astype(np.int32)
    print(name, (b, h, w), "->", image_list.image_sizes[0], tuple(image_list.tensors.shape),
          [len(p) for p in proposals], [len(d["boxes"]) for d in detections])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", help="write the full-size model's fixture here instead")
    parser.add_argument("--v2", action="store_true",
                        help="the v2 architecture (tests/fixtures/torchvision_fasterrcnn_v2.npz)")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if args.full:
        model = build_full(rng, args.v2)
    else:
        model = build_narrow_v2(rng) if args.v2 else build_narrow(rng)
    model.eval()
    arrays = {f"sd/{k}": v.numpy().astype(np.float32) for k, v in model.state_dict().items()
              if v.dtype.is_floating_point}
    model.double()
    cases = FULL_CASES if args.full else V2_CASES if args.v2 else CASES
    for name, (b, h, w, min_size, max_size) in cases.items():
        model.transform.min_size, model.transform.max_size = (min_size,), max_size
        images = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
        images[:, h // 4: h // 2, w // 4: w // 2] //= 5  # some structure for the detector
        stages = name in ("upscale", "fullresize") or (args.v2 and name == "downscale")
        run_case(model, name, images, rng, arrays, stages=stages)
    out = args.full or (OUT_V2 if args.v2 else OUT)
    np.savez_compressed(out, **arrays)
    print(out, os.path.getsize(out) // 1024, "kB,", torch.__version__, torchvision.__version__)


if __name__ == "__main__":
    main()
