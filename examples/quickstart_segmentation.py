"""Quickstart: train a U-Net on synthetic shapes, export it for serving and phones, verify it.

The whole path a kcv user takes, end to end:
    data (kcv.data.synthetic) -> model (kcv.models.UNet) -> loss + metrics (kcv.losses,
    kcv.metrics) -> model.fit -> export (SavedModel, TFLite float32 and full int8) -> verify.

Run it with `make demo` (or `python examples/quickstart_segmentation.py`). It writes
runs/quickstart/: history.png, predictions.png, report.json, saved_model/, unet_fp32.tflite,
unet_int8.tflite.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import export  # noqa: E402
import kcv  # noqa: E402
from kcv.data.synthetic import CLASS_NAMES, NUM_CLASSES, make_shapes  # noqa: E402

FOREGROUND = list(range(1, NUM_CLASSES))


class TimeBudget(keras.callbacks.Callback):
    """Stops training at the end of the epoch during which `seconds` ran out."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if time.perf_counter() - self.start > self.seconds:
            print(f"\nTime budget of {self.seconds:.0f} s reached after epoch {epoch + 1}.")
            self.model.stop_training = True


def foreground_dice(masks, probs):
    """Dice over the foreground classes, from kcv's metric (labels by argmax)."""
    metric = kcv.metrics.DiceCoefficient(NUM_CLASSES, class_ids=FOREGROUND)
    metric.update_state(masks, probs)
    return float(metric.result())


def plot_history(history, path):
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, history["loss"], "o-", label="train")
    ax1.plot(epochs, history["val_loss"], "o-", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss (cross-entropy + Dice)", title="Loss")
    ax1.legend()
    ax2.plot(epochs, history["dice"], "o-", label="train")
    ax2.plot(epochs, history["val_dice"], "o-", label="validation")
    ax2.set(xlabel="epoch", ylabel="foreground Dice", title="Dice", ylim=(0, 1))
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_predictions(images, masks, predictions, path, count=6):
    """Rows of image | truth | one panel per entry of `predictions` (name -> probabilities)."""
    names = list(predictions)
    cols = 2 + len(names)
    fig, axes = plt.subplots(count, cols, figsize=(2.3 * cols, 2.3 * count))
    axes = np.atleast_2d(axes)
    for i in range(count):
        panels = [(images[i], "image"), (masks[i], "truth")]
        panels += [(predictions[name][i].argmax(-1), name) for name in names]
        for ax, (img, title) in zip(axes[i], panels):
            if img.ndim == 2:
                ax.imshow(img, vmin=0, vmax=NUM_CLASSES - 1, cmap="viridis",
                          interpolation="nearest")
            else:
                ax.imshow(img)
            ax.set_title(title if i == 0 else "")
            ax.axis("off")
    fig.suptitle("classes: " + ", ".join(f"{i}={n}" for i, n in enumerate(CLASS_NAMES)))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/quickstart", help="output directory")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--time-budget", type=float, default=270.0,
                        help="stop training after the epoch in which this many seconds pass")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()

    # --- data
    print(f"Generating {args.train_images} + {args.val_images} synthetic images "
          f"({args.image_size}x{args.image_size})...")
    x_train, y_train = make_shapes(args.train_images, args.image_size, seed=args.seed)
    x_val, y_val = make_shapes(args.val_images, args.image_size, seed=args.seed + 10_000)

    # --- model, loss, metrics
    model = kcv.models.UNet((args.image_size, args.image_size, 3), NUM_CLASSES,
                            filters=args.filters, depth=4, norm="batch")
    steps = args.epochs * int(np.ceil(args.train_images / args.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, steps, alpha=0.05)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=kcv.losses.BCEDiceLoss(),
        metrics=[kcv.metrics.DiceCoefficient(NUM_CLASSES, class_ids=FOREGROUND, name="dice"),
                 kcv.metrics.MeanIoU(NUM_CLASSES, name="mean_iou")],
    )
    print(f"UNet: {model.count_params():,} parameters")

    # --- train
    t_fit = time.perf_counter()
    history = model.fit(
        x_train, y_train, validation_data=(x_val, y_val), epochs=args.epochs,
        batch_size=args.batch_size, callbacks=[TimeBudget(args.time_budget)], verbose=1,
    ).history
    train_seconds = time.perf_counter() - t_fit
    probs = model.predict(x_val, batch_size=64, verbose=0)
    val_dice = foreground_dice(y_val, probs)
    print(f"Trained {len(history['loss'])} epochs in {train_seconds:.0f} s; "
          f"validation foreground Dice {val_dice:.4f}")

    # --- export
    print("Exporting SavedModel, TFLite float32 and TFLite int8...")
    sm_path = export.to_saved_model(model, os.path.join(args.out, "saved_model"), overwrite=True)
    fp32_path = export.to_tflite(model, os.path.join(args.out, "unet_fp32.tflite"),
                                 overwrite=True)
    int8_path = export.to_tflite(
        model, os.path.join(args.out, "unet_int8.tflite"), quantization="int8",
        representative_data=[x_train[i:i + 1] for i in range(100)], overwrite=True,
    )

    # --- verify
    fp32 = export.verify(model, fp32_path, x_val[:16])
    int8 = export.verify(model, int8_path, x_val[:16])
    int8_probs = export.run_tflite(int8_path, x_val)[0]
    int8_dice = foreground_dice(y_val, int8_probs)
    fp32_ok = fp32["max_abs_diff"] <= 1e-4 and fp32["builtins_only"]
    int8_ok = abs(int8_dice - val_dice) <= 0.02 and int8["builtins_only"]

    plot_history(history, os.path.join(args.out, "history.png"))
    plot_predictions(x_val, y_val, {"prediction": probs},
                     os.path.join(args.out, "predictions.png"))
    report = {
        "epochs": len(history["loss"]),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "parameters": int(model.count_params()),
        "val_foreground_dice": round(val_dice, 4),
        "val_mean_iou": round(float(history["val_mean_iou"][-1]), 4),
        "history": {k: [round(float(v), 5) for v in vals] for k, vals in history.items()},
        "saved_model": sm_path,
        "tflite_fp32": {"path": fp32_path, **fp32},
        "tflite_int8": {"path": int8_path, **int8, "val_foreground_dice": round(int8_dice, 4)},
        "checks": {
            "val_dice_at_least_0.90": val_dice >= 0.90,
            "fp32_max_abs_diff_at_most_1e-4": fp32_ok,
            "int8_dice_within_0.02": int8_ok,
        },
    }
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)

    print()
    print(f"validation foreground Dice (Keras float32): {val_dice:.4f}  (target >= 0.90)")
    print(f"TFLite float32: max abs diff {fp32['max_abs_diff']:.2e} (<= 1e-4), "
          f"{fp32['file_size_bytes'] / 1e6:.2f} MB, {fp32['median_latency_ms']:.2f} ms/image, "
          f"builtins only: {fp32['builtins_only']}")
    print(f"TFLite int8:    Dice {int8_dice:.4f} (float {val_dice:.4f}, allowed gap 0.02), "
          f"{int8['file_size_bytes'] / 1e6:.2f} MB, {int8['median_latency_ms']:.2f} ms/image")
    print(f"Wrote {args.out}/: history.png, predictions.png, report.json, saved_model/, "
          "unet_fp32.tflite, unet_int8.tflite")
    ok = all(report["checks"].values())
    print("All checks passed." if ok else f"Some checks FAILED: {report['checks']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
