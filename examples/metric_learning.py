"""Metric learning on real handwritten digits: a Siamese network with the contrastive loss and an
embedding trained with AM-Softmax, against raw pixels.

Data: scikit-learn's digits (`sklearn.datasets.load_digits`: 1,797 real 8x8 images, shipped
with scikit-learn, nothing downloads), split by image into train / validation / test (50/20/30,
stratified by digit). Both embeddings come from the same small CNN ending in an L2
normalisation:

- Siamese: `kcv.models.SiameseNetwork(embedding)` trained with `kcv.losses.ContrastiveLoss` on
  pairs of training images drawn afresh each epoch (half same digit, label 1; half different,
  label 0).
- AM-Softmax: `embedding -> kcv.layers.CosineClassifier(10)` trained with
  `kcv.losses.AMSoftmaxLoss` on the training labels; the embedding is the layer before the head.

Reported for each embedding and for the raw pixels (the 64 grey values, Euclidean distance):
- verification: fixed random pairs of validation images pick the distance threshold that best
  separates same/different digit; the accuracy at that threshold and the ROC AUC are measured on
  pairs of test images;
- nearest-neighbour top-1: each test image gets the digit of its nearest training image.

Writes `projection.png` (the test embeddings projected on their first two principal axes),
`roc.png` (ROC curves on the test pairs) and `report.json` to `--out`; also converts the
AM-Softmax embedding model to TFLite (builtin ops only) and reports the LiteRT difference.

Run:  python examples/metric_learning.py        (a few minutes on 2 CPU cores)
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

import export  # noqa: E402
import kcv  # noqa: E402


def split_digits(seed, fractions=(0.5, 0.2)):
    """`{"train": (x, y), "val": ..., "test": ...}`, images `[n, 8, 8, 1]` in [0, 1], split by
    image and stratified by digit."""
    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    labels = digits.target.astype("int32")
    rng = np.random.default_rng(seed)
    parts = {"train": [], "val": [], "test": []}
    for digit in range(10):
        index = rng.permutation(np.flatnonzero(labels == digit))
        a = int(round(fractions[0] * len(index)))
        b = a + int(round(fractions[1] * len(index)))
        parts["train"].append(index[:a])
        parts["val"].append(index[a:b])
        parts["test"].append(index[b:])
    return {k: (images[np.sort(np.concatenate(v))], labels[np.sort(np.concatenate(v))])
            for k, v in parts.items()}


def sample_pairs(labels, num_pairs, rng):
    """`(i, j, same)`: half the pairs share a digit (same = 1), half do not (same = 0)."""
    by_digit = [np.flatnonzero(labels == d) for d in range(10)]
    half = num_pairs // 2
    first = rng.integers(0, len(labels), size=num_pairs)
    second = np.empty(num_pairs, np.int64)
    for k, i in enumerate(first):
        if k < half:
            second[k] = rng.choice(by_digit[labels[i]])
        else:
            other = rng.choice([d for d in range(10) if d != labels[i]])
            second[k] = rng.choice(by_digit[other])
    same = (labels[first] == labels[second]).astype("float32")
    return first, second, same


def build_embedding(dim, name="embedding"):
    """A small CNN for 8x8 digits ending in an L2-normalised `dim`-vector."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)                       # 4 x 4
    x = keras.layers.Conv2D(128, 3, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, activation="relu", name="fc")(x)
    x = keras.layers.Dense(dim, name="project")(x)
    outputs = keras.layers.UnitNormalization(name="l2_normalize")(x)
    return keras.Model(inputs, outputs, name=name)


def shifted(images, rng, max_shift=1):
    """Each image moved by up to `max_shift` pixels in y and x (zeros shifted in)."""
    out = np.zeros_like(images)
    for n, (dy, dx) in enumerate(rng.integers(-max_shift, max_shift + 1, size=(len(images), 2))):
        src = images[n, max(0, -dy):8 - max(0, dy), max(0, -dx):8 - max(0, dx)]
        out[n, max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out


def distances_of_pairs(features, pairs):
    first, second, _ = pairs
    return np.linalg.norm(features[first] - features[second], axis=1)


def evaluate(name, features, data, pairs):
    """Verification accuracy / AUC (threshold from the validation pairs) and NN top-1."""
    train_f, val_f, test_f = features
    val_d = distances_of_pairs(val_f, pairs["val"])
    candidates = np.unique(val_d)
    accuracy = [np.mean((val_d <= t) == (pairs["val"][2] == 1)) for t in candidates]
    threshold = float(candidates[int(np.argmax(accuracy))])
    test_d = distances_of_pairs(test_f, pairs["test"])
    same = pairs["test"][2] == 1
    squared = (np.sum(test_f ** 2, 1)[:, None] + np.sum(train_f ** 2, 1)[None, :]
               - 2 * test_f @ train_f.T)
    nearest = data["train"][1][np.argmin(squared, axis=1)]
    fpr, tpr, _ = roc_curve(same, -test_d)
    return {
        "name": name,
        "threshold": threshold,
        "val_verification_accuracy": float(np.max(accuracy)),
        "test_verification_accuracy": float(np.mean((test_d <= threshold) == same)),
        "test_roc_auc": float(roc_auc_score(same, -test_d)),
        "nn_top1": float(np.mean(nearest == data["test"][1])),
        "roc": (fpr, tpr),
    }


def embed(model, data):
    return [np.asarray(model.predict(data[k][0], batch_size=256, verbose=0))
            for k in ("train", "val", "test")]


def train_siamese(data, args, rng):
    embedding = build_embedding(args.dim, name="siamese_embedding")
    siamese = kcv.models.SiameseNetwork(embedding)
    siamese.compile(keras.optimizers.Adam(args.lr),
                    loss=kcv.losses.ContrastiveLoss(margin=args.contrastive_margin))
    x, y = data["train"]
    for epoch in range(args.siamese_epochs):
        i, j, same = sample_pairs(y, args.pairs_per_epoch, rng)
        hist = siamese.fit([shifted(x[i], rng), shifted(x[j], rng)], same,
                           batch_size=args.batch_size, epochs=1, verbose=0)
        print(f"siamese epoch {epoch + 1}/{args.siamese_epochs}: "
              f"contrastive loss {hist.history['loss'][-1]:.4f}", flush=True)
    return siamese.get_layer(embedding.name)


def train_am_softmax(data, args, rng):
    embedding = build_embedding(args.dim, name="am_softmax_embedding")
    inputs = keras.Input((8, 8, 1), name="image")
    cosines = kcv.layers.CosineClassifier(10, name="cosines")(embedding(inputs))
    classifier = keras.Model(inputs, cosines, name="am_softmax_classifier")
    classifier.compile(keras.optimizers.Adam(args.lr),
                       loss=kcv.losses.AMSoftmaxLoss(scale=args.scale, margin=args.margin))
    x, y = data["train"]
    for epoch in range(args.am_epochs):
        hist = classifier.fit(shifted(x, rng), y, batch_size=args.batch_size, epochs=1,
                              shuffle=True, verbose=0)
        print(f"am-softmax epoch {epoch + 1}/{args.am_epochs}: "
              f"loss {hist.history['loss'][-1]:.4f}", flush=True)
    return embedding


def pca_2d(features):
    centred = features - features.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def plot(results, test_features, test_labels, out):
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4))
    for ax, r, f in zip(axes, results, test_features):
        p = pca_2d(f)
        scatter = ax.scatter(p[:, 0], p[:, 1], c=test_labels, cmap="tab10", s=8, vmin=-0.5,
                             vmax=9.5)
        ax.set_title(f"{r['name']}\nNN top-1 {r['nn_top1']:.4f}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(scatter, ax=axes, ticks=range(10), label="digit")
    fig.suptitle("test images, first two principal axes")
    projection = os.path.join(out, "projection.png")
    fig.savefig(projection, dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for r in results:
        fpr, tpr = r["roc"]
        ax.plot(fpr, tpr, label=f"{r['name']} (AUC {r['test_roc_auc']:.4f})")
    ax.plot([1e-3, 1], [1e-3, 1], "k:", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlim(1e-3, 1)
    ax.set_xlabel("false positive rate (log scale)")
    ax.set_ylabel("true positive rate")
    ax.set_title("same/different digit, test pairs")
    ax.legend(loc="lower right")
    roc = os.path.join(out, "roc.png")
    fig.savefig(roc, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return projection, roc


def run_split(seed, args):
    """Trains both embeddings on one split of the digits and evaluates them beside raw pixels."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    data = split_digits(seed)
    pairs = {k: sample_pairs(data[k][1], args.eval_pairs, np.random.default_rng(1000 * seed + i))
             for i, k in enumerate(("val", "test"), start=1)}
    raw = [data[k][0].reshape(len(data[k][0]), -1) for k in ("train", "val", "test")]
    siamese_embedding = train_siamese(data, args, rng)
    am_embedding = train_am_softmax(data, args, rng)
    features = [raw, embed(siamese_embedding, data), embed(am_embedding, data)]
    results = [evaluate(n, f, data, pairs) for n, f in zip(NAMES, features)]
    return data, features, results, am_embedding


NAMES = ("raw pixels", "Siamese + contrastive", "AM-Softmax")
METRICS = ("test_verification_accuracy", "test_roc_auc", "nn_top1")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/metric_learning")
    parser.add_argument("--splits", type=int, default=3,
                        help="random train/val/test splits (seeds 0, 1, ...); numbers are "
                             "reported per split and averaged, the PNGs show split 0")
    parser.add_argument("--dim", type=int, default=32, help="embedding size")
    parser.add_argument("--siamese-epochs", type=int, default=10)
    parser.add_argument("--pairs-per-epoch", type=int, default=8192)
    parser.add_argument("--contrastive-margin", type=float, default=1.0)
    parser.add_argument("--am-epochs", type=int, default=30)
    parser.add_argument("--scale", type=float, default=30.0, help="AM-Softmax scale")
    parser.add_argument("--margin", type=float, default=0.35, help="AM-Softmax margin")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-pairs", type=int, default=4000, help="pairs per split")
    args = parser.parse_args(argv)
    start, cpu_start = time.perf_counter(), time.process_time()
    os.makedirs(args.out, exist_ok=True)
    per_split = []
    for seed in range(args.splits):
        data, features, results, am_embedding = run_split(seed, args)
        print(f"split {seed}: " + ", ".join(f"{r['name']} NN top-1 {r['nn_top1']:.4f}"
                                            for r in results), flush=True)
        per_split.append([{k: v for k, v in r.items() if k != "roc"} for r in results])
        if seed == 0:
            print({k: len(v[1]) for k, v in data.items()}, "images (train/val/test)")
            projection, roc = plot(results, [f[2] for f in features], data["test"][1], args.out)
            content = export.convert_to_tflite(am_embedding, batch_size=1)
            ops = export.tflite_ops(content)
            lite = export.run_tflite(content, data["test"][0][:64])[0]  # one image at a time
            tflite = {"ops": ops,
                      "builtins_only": not any(op.startswith("Flex") or op == "CUSTOM"
                                               for op in ops),
                      "max_abs_diff": float(np.max(np.abs(lite - features[2][2][:64])))}
    mean = {name: {m: float(np.mean([split[i][m] for split in per_split])) for m in METRICS}
            for i, name in enumerate(NAMES)}
    seconds = time.perf_counter() - start
    report = {
        "images": {k: len(v[1]) for k, v in data.items()},
        "mean_over_splits": mean,
        "per_split": per_split,
        "tflite_am_softmax_embedding_split0": tflite,
        "wall_time_seconds": round(seconds, 1),
        "cpu_time_seconds": round(time.process_time() - cpu_start, 1),
        "arguments": vars(args),
        "png": [projection, roc],
    }
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"mean over {args.splits} split(s) {'':5s} {'verif. acc':>10s} {'ROC AUC':>8s} "
          f"{'NN top-1':>9s}")
    for name in NAMES:
        print(f"{name:30s} " + " ".join(f"{mean[name][m]:{w}.4f}"
                                        for m, w in zip(METRICS, (10, 8, 9))))
    print(f"TFLite AM-Softmax embedding: builtins only {tflite['builtins_only']}, "
          f"max abs diff {tflite['max_abs_diff']:.2e}")
    print(f"wrote {projection}, {roc} and report.json in {seconds:.0f} s "
          f"({report['cpu_time_seconds']:.0f} s of CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
