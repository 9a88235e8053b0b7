"""Segmentation zoo: UNet, UNet++ and DeepLabV3 trained on the same synthetic shapes.

Each model trains on the same data with cross-entropy + Dice (UNet++ on the mean over its
deep-supervision heads), then the script prints a table of validation foreground Dice,
parameters, training time per epoch and float32 / int8 TFLite latency (LiteRT, one image),
a second table of UNet++'s pruned levels (parameters, Dice, latency: the paper's speed/accuracy
trade-off), and saves a PNG of validation predictions side by side.

Run: python examples/segmentation_zoo.py [--out runs/zoo]   (about 20 minutes on 2 CPU cores)
Writes: <out>/zoo.png, <out>/report.json
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import export  # noqa: E402
import kcv  # noqa: E402
from kcv.data.synthetic import NUM_CLASSES, make_shapes  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quickstart_segmentation import foreground_dice, plot_predictions  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    """Records the wall-clock seconds of every epoch."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def build(kind, size, args):
    shape = (size, size, 3)
    if kind == "UNet":
        return kcv.models.UNet(shape, NUM_CLASSES, filters=args.unet_filters, depth=4)
    if kind == "UNet++":
        return kcv.models.UNetPlusPlus(shape, NUM_CLASSES, filters=args.unetpp_filters,
                                       depth=args.unetpp_depth, deep_supervision=True)
    # The paper's rates (6, 12, 18) suit a 33x33 map (513-pixel crops at output stride 16);
    # here the map is size/16 pixels wide, so the rates shrink with it.
    rates = tuple(int(r) for r in args.deeplab_rates.split(","))
    return kcv.models.DeepLabV3(shape, NUM_CLASSES, backbone="mobilenet_v2",
                                alpha=args.deeplab_alpha, filters=args.deeplab_filters,
                                rates=rates, output_stride=16, decoder=True,
                                backbone_bn_momentum=0.9)  # short training from scratch


def latency(model, x_val, x_train, quantization, runs):
    """Median LiteRT latency (ms, one image) of the model converted with builtins only."""
    content = export.convert_to_tflite(
        model, quantization=quantization,
        representative_data=[x_train[i:i + 1] for i in range(32)] if quantization else None)
    report = export.verify(model, content, x_val[:4], num_runs=runs)
    return report["median_latency_ms"], content


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/zoo")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--unet-filters", type=int, default=16)
    parser.add_argument("--unetpp-filters", type=int, default=8)
    parser.add_argument("--unetpp-depth", type=int, default=4)
    parser.add_argument("--deeplab-alpha", type=float, default=0.35)
    parser.add_argument("--deeplab-filters", type=int, default=48)
    parser.add_argument("--deeplab-rates", default="1,2,3",
                        help="ASPP rates at output stride 16 (the paper: 6,12,18 for 513 px)")
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--models", default="UNet,UNet++,DeepLabV3")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    size = args.image_size

    print(f"Generating {args.train_images} + {args.val_images} synthetic images ({size}x{size})")
    x_train, y_train = make_shapes(args.train_images, size, seed=args.seed)
    x_val, y_val = make_shapes(args.val_images, size, seed=args.seed + 10_000)

    rows, predictions, levels = [], {}, []
    for kind in args.models.split(","):
        keras.utils.set_random_seed(args.seed)
        model = build(kind, size, args)
        heads = len(model.outputs)
        steps = args.epochs * int(np.ceil(args.train_images / args.batch_size))
        model.compile(
            optimizer=keras.optimizers.Adam(
                keras.optimizers.schedules.CosineDecay(args.learning_rate, steps, alpha=0.05)),
            loss=[kcv.losses.BCEDiceLoss()] * heads,
            loss_weights=[1.0 / heads] * heads,  # UNet++: the mean of the heads' losses
            jit_compile=False,  # XLA-compiling DeepLab's training step costs more than it saves
        )
        print(f"\n{kind}: {model.count_params():,} parameters, training {args.epochs} epochs")
        targets = [y_train] * heads if heads > 1 else y_train
        timer = EpochTimer()
        model.fit(x_train, targets, epochs=args.epochs, batch_size=args.batch_size,
                  callbacks=[timer], verbose=2)
        epoch_times = timer.seconds
        inference = kcv.models.prune(model, args.unetpp_depth) if heads > 1 else model
        probs = inference.predict(x_val, batch_size=32, verbose=0)
        predictions[kind] = probs
        dice = foreground_dice(y_val, probs)
        fp32_ms, _ = latency(inference, x_val, x_train, None, args.latency_runs)
        int8_ms, int8_model = latency(inference, x_val, x_train, "int8", args.latency_runs)
        int8_dice = foreground_dice(y_val, export.run_tflite(int8_model, x_val)[0])
        rows.append({
            "model": kind, "val_dice": dice, "int8_val_dice": int8_dice,
            "parameters": int(inference.count_params()),
            # the first epoch includes tracing the training step; later ones are steady-state
            "seconds_per_epoch": float(np.median(epoch_times[1:] or epoch_times)),
            "first_epoch_seconds": epoch_times[0],
            "tflite_fp32_ms": fp32_ms, "tflite_int8_ms": int8_ms,
        })
        if heads > 1:  # UNet++ pruned levels: the paper's fast modes
            for level in range(1, heads + 1):
                pruned = kcv.models.prune(model, level)
                level_probs = pruned.predict(x_val, batch_size=32, verbose=0)
                ms, _ = latency(pruned, x_val, x_train, None, args.latency_runs)
                levels.append({"level": level, "parameters": int(pruned.count_params()),
                               "val_dice": foreground_dice(y_val, level_probs),
                               "tflite_fp32_ms": ms})

    header = (f"{'model':<10} {'val Dice':>9} {'int8 Dice':>9} {'params':>10} {'s/epoch':>8} "
              f"{'fp32 ms':>8} {'int8 ms':>8}")
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['model']:<10} {r['val_dice']:>9.4f} {r['int8_val_dice']:>9.4f} "
              f"{r['parameters']:>10,} {r['seconds_per_epoch']:>8.1f} "
              f"{r['tflite_fp32_ms']:>8.2f} {r['tflite_int8_ms']:>8.2f}")
    if levels:
        print(f"\nUNet++ pruned levels\n{'level':<6} {'params':>10} {'val Dice':>9} {'fp32 ms':>8}")
        for lv in levels:
            print(f"L{lv['level']:<5} {lv['parameters']:>10,} {lv['val_dice']:>9.4f} "
                  f"{lv['tflite_fp32_ms']:>8.2f}")
    plot_predictions(x_val, y_val, predictions, os.path.join(args.out, "zoo.png"),
                     count=min(6, len(x_val)))
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump({"settings": vars(args), "models": rows, "unet_plus_plus_levels": levels}, f,
                  indent=2)
    print(f"\nWrote {args.out}/zoo.png and {args.out}/report.json "
          "(latency: LiteRT interpreter, batch 1, median of runs; machine-dependent)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
