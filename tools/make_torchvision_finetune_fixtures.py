"""Writes tests/fixtures/torchvision_fasterrcnn_train.npz: torchvision's training losses and a
few gradients of the narrow v1 Faster R-CNN of tests/fixtures/torchvision_fasterrcnn_v1.npz,
and the parameter names torchvision trains for each `trainable_backbone_layers`.
Used by tests/kcv/models/detection/test_torchvision_finetune.py.

Needs torch + torchvision (never kcv dependencies). Run in a side environment after
tools/make_torchvision_fixtures.py (it reads that fixture's state dict):
    /tmp/torchenv/bin/python tools/make_torchvision_finetune_fixtures.py
(checked with torch 2.14.1 / torchvision 0.29.1).

Losses: the narrow v1 model (FrozenBatchNorm2d, so train mode changes no statistics) in train
mode and float64 on the fixture's "upscale" images (96x120 -> 128x160, so the target boxes are
scaled by 4/3) with random target boxes, `rpn_pre_nms_top_n_train=300` and
`rpn_post_nms_top_n_train=150` (torchvision's are 2000: smaller for a fast test); its samplers take every candidate
(`batch_size_per_image` larger than the anchor and proposal counts, `positive_fraction=1.0`), so
torchvision's random sampling plays no part and the losses are deterministic. Stored: `images`
[B, H, W, 3] uint8, `boxes` [B, M, 4] yxyx in the input's pixels and `labels` [B, M] int32
(torchvision's label ids, -1 padding), the four losses `loss_<name>`, and `grad/<key>` (the
gradient of their sum) for a few parameters, each in torchvision's layout.

Trainable names: for v1 and v2 at `trainable_backbone_layers` 0, 3 and 5, the full-size model
built as `fasterrcnn_resnet50_fpn(weights=...)` / `_v2` build it (`_resnet_fpn_extractor` on
a ResNet-50 with FrozenBatchNorm2d (v1) or BatchNorm2d (v2)); stored as `<arch>/parameters`
(every parameter name), `<arch>/frozen_<k>` (those with `requires_grad=False`) and
`<arch>/norm_parameters` (the weight/bias of BatchNorm2d layers: v2 only).
"""

import os

import numpy as np
import torch
from make_torchvision_fixtures import FIXTURES, build_narrow
from torchvision.models import resnet
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import misc as misc_nn_ops

OUT = os.path.join(FIXTURES, "torchvision_fasterrcnn_train.npz")
PRE_NMS_TOP_N, POST_NMS_TOP_N = 300, 150  # rpn_{pre,post}_nms_top_n_train: a small test
GRAD_KEYS = ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.bias",
             "roi_heads.box_head.fc7.weight", "rpn.head.cls_logits.weight",
             "rpn.head.bbox_pred.bias", "backbone.fpn.layer_blocks.0.0.weight",
             "backbone.body.layer4.0.conv1.weight", "backbone.body.layer2.1.conv2.weight")


def full_model(v2, trainable_layers):
    """`fasterrcnn_resnet50_fpn(_v2)`'s builder with pretrained weights, minus the download."""
    if v2:
        body = resnet.resnet50()
        backbone = _resnet_fpn_extractor(body, trainable_layers, norm_layer=torch.nn.BatchNorm2d)
        return FasterRCNN(backbone, 91, rpn_head=RPNHead(256, 3, conv_depth=2),
                          box_head=FastRCNNConvFCHead((256, 7, 7), [256] * 4, [1024],
                                                      norm_layer=torch.nn.BatchNorm2d))
    body = resnet.resnet50(norm_layer=misc_nn_ops.FrozenBatchNorm2d)
    return FasterRCNN(_resnet_fpn_extractor(body, trainable_layers), 91)


def trainable_names(arrays):
    for arch, v2 in (("fasterrcnn_resnet50_fpn", False), ("fasterrcnn_resnet50_fpn_v2", True)):
        for k in (0, 3, 5):
            model = full_model(v2, k)
            names = [n for n, _ in model.named_parameters()]
            arrays[f"{arch}/frozen_{k}"] = np.array(
                [n for n, p in model.named_parameters() if not p.requires_grad])
        arrays[f"{arch}/parameters"] = np.array(names)
        norms = [f"{m}.{p}" for m, mod in model.named_modules()
                 if isinstance(mod, torch.nn.BatchNorm2d) for p in ("weight", "bias")]
        arrays[f"{arch}/norm_parameters"] = np.array(norms, dtype=str)


def losses(arrays, rng):
    with np.load(os.path.join(FIXTURES, "torchvision_fasterrcnn_v1.npz")) as z:
        state = {k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("sd/")}
        images_u8 = z["upscale/images"]
    model = build_narrow(rng)
    model.load_state_dict(state)
    model.transform.min_size, model.transform.max_size = (128,), 160
    model.rpn._pre_nms_top_n["training"] = PRE_NMS_TOP_N
    model.rpn._post_nms_top_n["training"] = POST_NMS_TOP_N
    for sampler in (model.rpn.fg_bg_sampler, model.roi_heads.fg_bg_sampler):
        sampler.batch_size_per_image, sampler.positive_fraction = 100_000, 1.0
    model.double().train()
    b, h, w, _ = images_u8.shape
    counts = (3, 2)
    boxes = np.zeros((b, max(counts), 4))
    labels = np.full((b, max(counts)), -1, np.int32)
    targets = []
    for i, n in enumerate(counts):
        y1, x1 = rng.uniform(0, h - 30, n), rng.uniform(0, w - 30, n)
        bh, bw = rng.uniform(12, 60, n), rng.uniform(12, 60, n)
        yxyx = np.stack([y1, x1, np.minimum(y1 + bh, h), np.minimum(x1 + bw, w)], -1)
        boxes[i, :n], labels[i, :n] = yxyx, rng.integers(1, 5, n)
        targets.append({"boxes": torch.from_numpy(yxyx[:, [1, 0, 3, 2]].copy()),
                        "labels": torch.from_numpy(labels[i, :n].astype(np.int64))})
    images = [torch.from_numpy(x / 255.0).permute(2, 0, 1).contiguous() for x in images_u8]
    loss = model(images, targets)
    total = sum(loss.values())
    total.backward()
    params = dict(model.named_parameters())
    arrays.update(images=images_u8, boxes=boxes, labels=labels)
    for name, value in loss.items():
        arrays[name] = value.detach().numpy()
    for key in GRAD_KEYS:
        arrays[f"grad/{key}"] = params[key].grad.numpy()
    print({k: float(v) for k, v in loss.items()})


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    arrays = {}
    losses(arrays, rng)
    trainable_names(arrays)
    np.savez_compressed(OUT, **arrays)
    print(OUT, os.path.getsize(OUT) // 1024, "kB")


if __name__ == "__main__":
    main()
