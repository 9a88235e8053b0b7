"""A small Vision Transformer learns the scikit-learn handwritten digits (8x8, 10 classes).

`kcv.models.VisionTransformer` with 2x2 patches (16 tokens plus the class token), trained on
1,437 images and evaluated on the 360 held out (a fixed stratified 80/20 split). Prints the
held-out accuracy and writes the class token's attention (last layer) for one image as a PNG.

Run:  python examples/vit_digits.py           (about a minute on 2 CPU cores)
      python examples/vit_digits.py --quick   (a smoke run)
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from kcv.models import VisionTransformer  # noqa: E402
from kcv.models.vit import attention_maps  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", default="runs/transformer")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = 1
    keras.utils.set_random_seed(0)
    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]  # [N, 8, 8, 1] in [0, 1]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, random_state=0, stratify=digits.target)
    model = VisionTransformer((8, 8, 1), 10, patch_size=2, hidden_dim=64, num_layers=3,
                              num_heads=4, mlp_dim=128, dropout=0.1)
    steps = args.epochs * int(np.ceil(len(x_train) / 32))
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=1e-3,
                                                      warmup_steps=max(1, steps // 10))
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=args.epochs, verbose=2)
    accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
    elapsed = time.time() - started
    print(f"held-out accuracy ({len(x_test)} digits): {accuracy:.4f}")
    print(f"wall time: {elapsed:.0f} s")

    attention = attention_maps(model, x_test[:1])[-1][0].mean(0)[0, 1:].reshape(4, 4)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(5, 2.6))
    axes[0].imshow(x_test[0, :, :, 0], cmap="gray")
    axes[0].set_title(f"digit {y_test[0]}")
    axes[1].imshow(attention, cmap="viridis")
    axes[1].set_title("class-token attention")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    png = os.path.join(args.out, "vit_attention.png")
    fig.savefig(png, dpi=100)
    print(f"attention map: {png}")
    with open(os.path.join(args.out, "vit_results.json"), "w") as f:
        json.dump({"accuracy": accuracy, "test_size": len(x_test), "wall_time_s": elapsed,
                   "png": png}, f)
    return accuracy


if __name__ == "__main__":
    main()
