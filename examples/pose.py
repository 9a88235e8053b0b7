"""Bottom-up pose estimation on synthetic stick figures: OpenPose targets, training with a loss
per stage, person assembly outside the model, and COCO keypoint AP (OKS) by pycocotools on
held-out figures. Writes runs/pose/fields.png and results.json.

    python examples/pose.py                     # the defaults: OKS AP 0.39, ~5 min on 2 cores
    python examples/pose.py --epochs 1 --train-images 16 --val-images 8   # a smoke run
"""

import argparse
import contextlib
import io
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import kcv
from kcv.data.keypoints import (
    COCO_PERSON_LIMBS,
    confidence_maps,
    part_affinity_fields,
)
from kcv.data.stick_figures import make_stick_figures, write_coco_keypoints_json
from kcv.models.pose import assemble_people

STRIDE = 8


def targets(keypoints, visibility, size, sigma, limb_width):
    """`{"heatmaps", "pafs"}` per image, NumPy `[N, h, w, 17]` and `[N, h, w, 32]`."""
    shape = (size // STRIDE, size // STRIDE)
    heat, pafs = [], []
    for kp, vis in zip(keypoints, visibility):
        heat.append(confidence_maps(kp, vis, shape, sigma, STRIDE).numpy())
        f = part_affinity_fields(kp, vis, COCO_PERSON_LIMBS, shape, limb_width, STRIDE)
        pafs.append(tf.reshape(f, (*shape, -1)).numpy())
    return np.stack(heat), np.stack(pafs)


def evaluate(people, gt_json):
    """COCO keypoint AP of the assembled people (pycocotools, OKS with COCO's sigmas)."""
    results = []
    for image_index, (keypoints, scores) in enumerate(people):
        for kp, score in zip(keypoints, scores):
            flat = np.concatenate([kp[:, :2], (kp[:, 2:] > 0) * 1.0], -1).ravel()
            results.append({"image_id": image_index + 1, "category_id": 1,
                            "keypoints": [float(v) for v in flat], "score": float(score)})
    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(max(evaluator.stats[0], 0.0))


def draw(path, image, heat, pafs, people):
    fig = Figure(figsize=(9, 3.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    axes[0].imshow(image)
    axes[0].set_title("image")
    axes[1].imshow(heat.max(-1), cmap="magma")
    axes[1].set_title("predicted heatmaps (max)")
    fx, fy = pafs[..., 0::2].sum(-1), pafs[..., 1::2].sum(-1)
    rows, cols = np.mgrid[0:heat.shape[0], 0:heat.shape[1]]
    axes[1].quiver(cols, rows, fx, fy, color="cyan", angles="xy", scale_units="xy", scale=1)
    axes[2].imshow(image)
    keypoints, _ = people
    for person in keypoints:
        for a, b in COCO_PERSON_LIMBS:
            if person[a, 2] > 0 and person[b, 2] > 0:
                axes[2].plot(person[[a, b], 0], person[[a, b], 1], "-", lw=2)
    axes[2].set_title(f"assembled: {len(keypoints)} people")
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=256)
    parser.add_argument("--val-images", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=0.25)
    parser.add_argument("--out", default=os.path.join("runs", "pose"))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    keras.utils.set_random_seed(0)
    start = time.time()
    size = args.image_size
    sigma, limb_width = size / 16, size / 24
    x_train, t_train = make_stick_figures(args.train_images, size, seed=1)
    x_val, t_val = make_stick_figures(args.val_images, size, seed=2)  # held out
    heat, pafs = targets(t_train["keypoints"], t_train["visibility"], size, sigma, limb_width)

    model = kcv.models.OpenPose((size, size, 3), 17, COCO_PERSON_LIMBS, stages=args.stages,
                                alpha=args.alpha, stage_filters=32, refinement_kernel=3)
    y = {name: heat if name.endswith("heatmaps") else pafs for name in model.output_names}
    model.compile(keras.optimizers.Adam(2e-3),
                  loss=kcv.losses.stage_losses(model.output_names, normalize=True))
    model.fit(x_train, y, epochs=args.epochs, batch_size=args.batch_size, verbose=2)

    last = f"stage{args.stages}"
    out = model.predict(x_val, batch_size=args.batch_size, verbose=0)
    people = assemble_people(out[f"{last}_heatmaps"], out[f"{last}_pafs"], COCO_PERSON_LIMBS,
                             stride=STRIDE, peak_threshold=0.2)
    gt_json = os.path.join(args.out, "val_keypoints.json")
    write_coco_keypoints_json(gt_json, t_val, size)
    ap = evaluate(people, gt_json)
    png = os.path.join(args.out, "fields.png")
    draw(png, x_val[0], out[f"{last}_heatmaps"][0], out[f"{last}_pafs"][0], people[0])
    seconds = time.time() - start
    results = {"oks_ap": ap, "wall_seconds": round(seconds, 1), "png": png,
               "val_images": args.val_images, "train_images": args.train_images,
               "epochs": args.epochs, "image_size": size}
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"OKS AP (pycocotools, {args.val_images} held-out images): {ap:.3f}; "
          f"wall time {seconds:.0f} s")
    return results


if __name__ == "__main__":
    main()
