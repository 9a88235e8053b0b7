"""RoIPool speed: custom_ops.roi_pool vs its autodiff reference and crop_and_resize + max-pool.

Forward + backward (gradient with respect to the features) for 512 RoIs on [2, 50, 68, 256]
features, 7x7 output, spatial_scale=1/16 (the inputs of benchmarks/roi.py), all in
`tf.function`, measured in the same run, interleaved, median of repeats; and forward alone.
Baselines: the op's private autodiff reference (`_roi_pool_reference`, same numbers, TF's
automatic gradient of the max) and the usual TF substitute, `tf.image.crop_and_resize` to 14x14
then 2x2 max pooling (bilinear samples, not Fast R-CNN's integer bins: not the same numbers).

Run: .venv/bin/python benchmarks/roi_pool.py [--quick]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from roi import IMAGE_H, IMAGE_W, OUT, SCALE, make_inputs, timed  # noqa: E402

import custom_ops  # noqa: E402
from custom_ops.roi_pool import _roi_pool_reference  # noqa: E402


def _crop_max_pool(feats, boxes, idx, output_size, spatial_scale):
    del spatial_scale  # the boxes are normalised by the image size instead
    norm = boxes / tf.constant([IMAGE_H, IMAGE_W, IMAGE_H, IMAGE_W], tf.float32)
    crops = tf.image.crop_and_resize(feats, norm, idx, [2 * output_size, 2 * output_size])
    return tf.nn.max_pool2d(crops, 2, 2, "VALID")


OPS = {"ours": custom_ops.roi_pool, "autodiff": _roi_pool_reference,
       "crop+maxpool": _crop_max_pool}


def step_fn(op, backward):
    @tf.function
    def step(feats, boxes, idx, dy):
        with tf.GradientTape() as tape:
            tape.watch(feats)
            out = op(feats, boxes, idx, OUT, SCALE)
            loss = tf.reduce_sum(out * dy)
        return (out, tape.gradient(loss, feats)) if backward else out

    return step


def main():
    quick = "--quick" in sys.argv
    repeats = 5 if quick else 15
    args = make_inputs(512)
    fns = {(name, bwd): step_fn(op, bwd) for name, op in OPS.items() for bwd in (True, False)}
    for fn in fns.values():  # trace + warm up
        timed(fn, args)
    times = {key: [] for key in fns}
    for _ in range(repeats):  # interleaved
        for key, fn in fns.items():
            times[key].append(timed(fn, args))
    med = {key: float(np.median(t)) * 1e3 for key, t in times.items()}
    print(f"RoIPool, K=512 on [2, 50, 68, 256], 7x7, median of {repeats} (ms)")
    print(f"{'':<20}{'ours':>10}{'autodiff':>10}{'crop+max':>10}"
          f"{'ours/autodiff':>15}{'ours/crop+max':>15}")
    for bwd, label in ((True, "forward + backward"), (False, "forward only")):
        o, a, c = (med[(n, bwd)] for n in OPS)
        print(f"{label:<20}{o:>10.1f}{a:>10.1f}{c:>10.1f}{o / a:>15.2f}{o / c:>15.2f}")


if __name__ == "__main__":
    main()
