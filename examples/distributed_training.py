"""Train a U-Net on one device, several local devices, or several machines: same script.

    # one machine (all its GPUs, or the CPU):
    python examples/distributed_training.py --epochs 5

    # two logical CPU devices on one machine (MirroredStrategy), to try it without GPUs:
    python examples/distributed_training.py --cpu-devices 2

    # two workers (run each line in its own terminal, or on two hosts with their addresses):
    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:23456", "127.0.0.1:23457"]},
                "task": {"type": "worker", "index": 0}}' python examples/distributed_training.py
    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:23456", "127.0.0.1:23457"]},
                "task": {"type": "worker", "index": 1}}' python examples/distributed_training.py

`kcv.training.strategy()` picks MultiWorkerMirroredStrategy from TF_CONFIG, MirroredStrategy
for several local devices, the default strategy otherwise. The batch size is the global batch.
Training is resumable: kill it and run the same command again. Worker 0 (the chief) saves the
model; every worker keeps its own backup folder.
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description="U-Net on synthetic shapes with tf.distribute")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch")
    parser.add_argument("--cpu-devices", type=int, default=1,
                        help="split the CPU into this many logical devices (no GPU needed)")
    parser.add_argument("--out", default="runs/distributed")
    parser.add_argument("--train-images", type=int, default=512)
    parser.add_argument("--val-images", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--filters", type=int, default=16, help="U-Net filters of the first level")
    parser.add_argument("--depth", type=int, default=3, help="U-Net levels")
    args = parser.parse_args(argv)

    if args.cpu_devices > 1 and not os.environ.get("TF_CONFIG"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpu_devices)

    import keras

    import kcv
    from kcv.data import synthetic
    from kcv.training import WarmupCosine, fit, strategy

    distribution = strategy()  # before any other TF work (MultiWorkerMirroredStrategy needs it)
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    index = task.get("index", 0)
    print(f"{type(distribution).__name__}: {distribution.num_replicas_in_sync} replicas; "
          f"worker {index}")

    size = args.image_size
    train = synthetic.shapes_dataset(args.train_images, size, args.batch_size, seed=0)
    val = synthetic.shapes_dataset(args.val_images, size, args.batch_size, seed=1, shuffle=False)
    steps = int(train.cardinality())
    with distribution.scope():
        keras.utils.set_random_seed(0)
        model = kcv.models.UNet((size, size, 3), synthetic.NUM_CLASSES, filters=args.filters,
                                depth=args.depth)
        model.compile(keras.optimizers.Adam(WarmupCosine(1e-2, 1, args.epochs - 1, steps)),
                      kcv.losses.BCEDiceLoss(),
                      metrics=[kcv.metrics.MeanIoU(synthetic.NUM_CLASSES)])
    fit(model, train, epochs=args.epochs, validation_data=val, verbose=2,
        backup_dir=os.path.join(args.out, f"backup-worker{index}"))
    if index == 0:
        os.makedirs(args.out, exist_ok=True)
        model.save(os.path.join(args.out, "unet.keras"))
        print("saved", os.path.join(args.out, "unet.keras"))


if __name__ == "__main__":
    main()
