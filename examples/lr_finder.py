"""Learning-rate range test on the synthetic segmentation task, then training at the suggestion.

    python examples/lr_finder.py [--out runs/lr_finder] [--epochs 12]   (about 9 minutes on 2 CPU cores)

1. `kcv.training.find_lr` sweeps the rate of Adam from 1e-6 to 10 over 100 batches on a U-Net,
   stops when the loss diverges, puts the model back as it was and writes the PNG.
2. A fresh U-Net is trained at the suggested rate (steepest descent of the smoothed curve)
   with a warmup+cosine schedule, next to one at a rate 100x smaller, and their validation
   mean IoU is printed. The loss is cross-entropy + Dice (plain cross-entropy on these masks,
   mostly background, sits for many epochs at "all background").
"""

import argparse
import json
import os

import keras

import kcv
from kcv.data import synthetic
from kcv.training import WarmupCosine, find_lr


def build(seed, image_size=64, filters=16, depth=3):
    keras.utils.set_random_seed(seed)
    model = kcv.models.UNet((image_size, image_size, 3), synthetic.NUM_CLASSES, filters=filters,
                            depth=depth)
    model.compile(keras.optimizers.Adam(1e-3), kcv.losses.BCEDiceLoss(),
                  metrics=[kcv.metrics.MeanIoU(synthetic.NUM_CLASSES)])
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/lr_finder")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=128)
    parser.add_argument("--num-steps", type=int, default=100, help="steps of the range test")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--filters", type=int, default=16, help="U-Net filters of the first level")
    parser.add_argument("--depth", type=int, default=3, help="U-Net levels")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    size = args.image_size
    unet = {"image_size": size, "filters": args.filters, "depth": args.depth}
    train = synthetic.shapes_dataset(args.num_images, size, batch_size=16, seed=0)
    val = synthetic.shapes_dataset(args.val_images, size, batch_size=16, seed=1, shuffle=False)

    finder = find_lr(build(0, **unet), train, start_lr=1e-6, end_lr=10.0, num_steps=args.num_steps)
    png = finder.plot(os.path.join(args.out, "lr_find.png"), title="U-Net, synthetic shapes")
    print(f"range test: {len(finder.losses)} steps (stopped early: {finder.stopped_early}); "
          f"suggestions {finder.suggestions}; plot {png}")

    results = {"suggestions": finder.suggestions, "png": png}
    steps = int(train.cardinality())
    chosen = finder.suggested_lr
    for label, lr in (("suggested", chosen), ("suggested/100", chosen / 100)):
        model = build(1, **unet)
        model.optimizer = keras.optimizers.Adam(WarmupCosine(lr, 1, args.epochs - 1, steps))
        model.compile(model.optimizer, kcv.losses.BCEDiceLoss(),
                      metrics=[kcv.metrics.MeanIoU(synthetic.NUM_CLASSES)])
        history = model.fit(train, validation_data=val, epochs=args.epochs, verbose=2,
                            shuffle=False)  # the dataset shuffles itself
        results[label] = {"lr": lr, **{k: [round(float(v), 4) for v in vs]
                                       for k, vs in history.history.items()}}
        print(f"{label} lr={lr:.3g}: val_mean_iou {history.history['val_mean_iou'][-1]:.3f}, "
              f"val_loss {history.history['val_loss'][-1]:.3f}")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
