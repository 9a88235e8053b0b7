"""Faster R-CNN under MirroredStrategy, run in a subprocess by test_faster_rcnn_deploy.py.

Usage: python detection_distributed_job.py OUT_DIR

Splits the CPU into two logical devices (this must happen before TensorFlow starts, hence the
subprocess), then trains the same tiny Faster R-CNN from the same weights for `STEPS` steps on
one fixed batch, once on one device and once under MirroredStrategy over both; saves
`initial_*.npy`, `single_*.npy`, `mirrored_*.npy` (weights) and `losses.json`.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tests/, for kcv_testing (the tiny detector)
_TESTS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, _TESTS)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

BATCH, STEPS = 4, 2


def train(strategy, initial):
    """`STEPS` steps of `fit` on one fixed batch from the weights `initial`; the weights and the
    logged losses after them."""
    import keras

    import kcv

    from kcv_testing import tiny_faster_rcnn as _model

    images, targets = kcv.data.make_shapes_detection(BATCH, image_size=64, seed=0, max_boxes=8)
    data = tf.data.Dataset.from_tensor_slices((images, targets)).batch(BATCH).repeat()
    with strategy.scope():
        model = _model()
        model(images[:1])
        model.set_weights(initial)
        model.compile(optimizer=keras.optimizers.SGD(0.02, momentum=0.9))
    history = model.fit(data, steps_per_epoch=1, epochs=STEPS, verbose=0).history
    return [np.asarray(w) for w in model.get_weights()], history


def save(out_dir, prefix, weights):
    for i, w in enumerate(weights):
        np.save(os.path.join(out_dir, f"{prefix}_{i:03d}.npy"), w)


def main():
    out_dir = sys.argv[1]
    tf.config.experimental.enable_op_determinism()  # replicas run concurrently: no racing kernel
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from kcv_testing import tiny_faster_rcnn as _model

    keras.utils.set_random_seed(0)
    model = _model()
    model(np.zeros((1, 64, 64, 3), np.float32))
    initial = [np.asarray(w) for w in model.get_weights()]  # both runs start from these
    single, single_history = train(tf.distribute.get_strategy(), initial)
    mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    mirrored, mirrored_history = train(mirrored_strategy, initial)
    save(out_dir, "initial", initial)
    save(out_dir, "single", single)
    save(out_dir, "mirrored", mirrored)
    with open(os.path.join(out_dir, "losses.json"), "w") as f:
        json.dump({"single": single_history, "mirrored": mirrored_history,
                   "replicas": mirrored_strategy.num_replicas_in_sync}, f)


if __name__ == "__main__":
    main()
