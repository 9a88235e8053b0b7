"""Training job run in a subprocess by test_distributed.py (not collected by pytest).

Usage: python distributed_job.py MODE OUT_DIR
  mirrored: splits the CPU into two logical devices, trains the same model once on one device
            and once under MirroredStrategy over both, saves single_*.npy and mirrored_*.npy.
  worker:   one worker of a MultiWorkerMirroredStrategy cluster (TF_CONFIG set by the caller),
            strategy chosen by kcv.training.strategy(); saves worker<index>_*.npy.
  segmentation: two logical CPU devices; builds each kcv segmentation model (UNet, UNet++ with
            deep supervision, DeepLabV3+, HRNet) under MirroredStrategy, trains it with
            model.fit and evaluates it; writes segmentation.json (losses, replicas, variable
            types).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

GLOBAL_BATCH, STEPS = 8, 4


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH * STEPS, 8, 8, 2)).astype(np.float32)
    y = rng.integers(0, 3, size=(GLOBAL_BATCH * STEPS, 8, 8)).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)


def build(initial_weights=None):
    """Small conv net, per-pixel loss (kcv's class-weighted cross-entropy), L2 regularisation
    and BatchNormalization synchronised across replicas."""
    import keras

    import kcv

    keras.utils.set_random_seed(3)
    l2 = keras.regularizers.L2(1e-2)
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(4, 3, padding="same", kernel_regularizer=l2)(inputs)
    h = keras.layers.BatchNormalization(synchronized=True)(h)
    h = keras.layers.Activation("relu")(h)
    logits = keras.layers.Conv2D(3, 1, kernel_regularizer=l2, name="head")(h)
    model = keras.Model(inputs, logits)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=kcv.losses.WeightedCrossentropy(class_weights=[0.5, 1.0, 2.0],
                                                       from_logits=True))
    if initial_weights is not None:
        model.set_weights(initial_weights)
    return model


def train(strategy=None, initial_weights=None):
    """Trains STEPS steps on the global batch with kcv.training.fit; returns the weights (all,
    incl. BN statistics)."""
    from kcv.training import fit

    ds = data()
    if strategy is None:
        model = build(initial_weights)
    else:
        with strategy.scope():
            model = build(initial_weights)
    fit(model, ds, epochs=1, verbose=0, shuffle=False)
    return [np.asarray(w) for w in model.get_weights()]


def save(out_dir, prefix, weights):
    for i, w in enumerate(weights):
        np.save(os.path.join(out_dir, f"{prefix}_{i:02d}.npy"), w)


def main():
    mode, out_dir = sys.argv[1], sys.argv[2]
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        init = [np.asarray(w) for w in build().get_weights()]
        save(out_dir, "initial", init)
        save(out_dir, "single", train(None, init))
        from kcv.training import strategy as pick

        strategy = pick()
        assert isinstance(strategy, tf.distribute.MirroredStrategy), type(strategy)
        assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
        save(out_dir, "mirrored", train(strategy, init))
    elif mode == "worker":
        from kcv.training import strategy as pick

        strategy = pick()  # first TF call: MultiWorkerMirroredStrategy must come first
        assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy), type(strategy)
        index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        init = [np.asarray(w) for w in build().get_weights()]
        save(out_dir, f"initial{index}", init)
        save(out_dir, f"worker{index}", train(strategy, init))
    elif mode == "segmentation":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        with open(os.path.join(out_dir, "segmentation.json"), "w") as f:
            json.dump(train_segmentation_models(), f)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


def train_segmentation_models():
    import keras

    import kcv
    from kcv.data.synthetic import NUM_CLASSES, make_shapes

    shape = (32, 32, 3)
    builders = {
        "UNet": lambda: kcv.models.UNet(shape, NUM_CLASSES, filters=4, depth=2),
        "UNetPlusPlus": lambda: kcv.models.UNetPlusPlus(shape, NUM_CLASSES, filters=4, depth=2),
        "DeepLabV3": lambda: kcv.models.DeepLabV3(shape, NUM_CLASSES, alpha=0.35, filters=16,
                                                  rates=(1, 2, 3), decoder=True),
        "HRNet": lambda: kcv.models.HRNet(shape, NUM_CLASSES, width=8, stem_filters=8,
                                          num_modules=(1, 1, 1, 1), num_blocks=1),
    }
    x, y = make_shapes(32, 32, seed=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = {}
    for name, make in builders.items():
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = make()
            heads = len(model.outputs)
            # SGD with momentum (a slot variable per weight, mirrored like Adam's): tracing
            # Adam's update for every weight on both replicas cost more than the whole forward
            # and backward pass of DeepLabV3+ (45 -> 26 CPU-s of its fit).
            model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                          loss=[kcv.losses.BCEDiceLoss()] * heads,
                          loss_weights=[1.0 / heads] * heads)
        targets = [y] * heads if heads > 1 else y
        history = model.fit(x, targets, epochs=3, batch_size=16, verbose=0).history["loss"]
        results[name] = {
            "losses": [float(v) for v in history],
            "replicas": strategy.num_replicas_in_sync,
            "mirrored": all(isinstance(v.value, tf.distribute.DistributedValues)
                            for v in model.trainable_variables),
            "eval": float(model.evaluate(x[:16], [y[:16]] * heads if heads > 1 else y[:16],
                                         batch_size=8, verbose=0, return_dict=True)["loss"]),
        }
    return results


if __name__ == "__main__":
    main()
