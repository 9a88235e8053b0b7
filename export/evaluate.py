"""Accuracy and speed of exported models: top-1, mean IoU / Dice, LiteRT latency, a mode chart.

Used by `kcv verify` and `benchmarks/export_quantization.py` to compare a float model with its
quantized `.tflite` copies on held-out data. NumPy only (no kcv import: export/ runs where kcv
cannot be imported).
"""

import os
import time

import numpy as np

from export._litert import tflite_ops
from export.tflite import run_tflite

__all__ = ["accuracy", "latency_ms", "plot_modes", "predict"]

_TASKS = ("classification", "segmentation")


def predict(model, images, batch_size=32):
    """Class scores of a Keras model or a `.tflite` file (path or bytes) on float images.

    Args:
        model: a Keras model with one image input and one output, or a `.tflite` path/bytes.
        images: float32 `[N, H, W, C]`, already preprocessed as the model expects.
        batch_size: images per Keras call.

    Returns:
        float32 `[N, classes]` or `[N, H, W, classes]`.
    """
    images = np.asarray(images, np.float32)
    if isinstance(model, (bytes, bytearray, str, os.PathLike)):
        return run_tflite(model, images)[0].astype(np.float32)
    parts = [np.asarray(model(images[i:i + batch_size], training=False), np.float32)
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts, axis=0)


def accuracy(scores, labels, task=None, num_classes=None, ignore_background=True):
    """Accuracy figures of class scores against integer labels.

    Args:
        scores: `[N, C]` (classification) or `[N, H, W, C]` (segmentation) scores.
        labels: int `[N]` or `[N, H, W]`.
        task: `"classification"` or `"segmentation"`; default: read from the rank of `scores`.
        num_classes: classes (default `scores.shape[-1]`).
        ignore_background: leave class 0 out of the segmentation means (foreground figures).

    Returns:
        classification: `{"top1": fraction correct}`; segmentation: `{"miou": ..., "dice": ...,
        "pixel_accuracy": ...}`, the IoU `TP / (TP + FP + FN)` and Dice `2 TP / (2 TP + FP +
        FN)` of each class summed over all images (one confusion matrix), averaged over the
        classes present (in the labels or the predictions).

    Example:
        >>> accuracy(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 1, 1]))
        {'top1': 0.6666666666666666}
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    task = task or ("classification" if scores.ndim == 2 else "segmentation")
    if task not in _TASKS:
        raise ValueError(f"`task` must be one of {_TASKS}. Received: task={task!r}")
    predicted = scores.argmax(-1) if scores.shape[-1] > 1 else (scores[..., 0] > 0.5)
    predicted = predicted.astype(np.int64)
    if predicted.shape != labels.shape:
        raise ValueError(f"`labels` must have shape {predicted.shape}. "
                         f"Received: labels.shape={labels.shape}")
    if task == "classification":
        return {"top1": float(np.mean(predicted == labels))}
    n = num_classes or max(scores.shape[-1], 2)
    confusion = np.bincount(labels.ravel().astype(np.int64) * n + predicted.ravel(),
                            minlength=n * n).reshape(n, n)
    tp = np.diag(confusion).astype(np.float64)
    fp = confusion.sum(0) - tp
    fn = confusion.sum(1) - tp
    present = (tp + fp + fn) > 0
    if ignore_background:
        present[0] = False
    iou = tp[present] / (tp + fp + fn)[present]
    dice = 2 * tp[present] / (2 * tp + fp + fn)[present]
    return {"miou": float(iou.mean()) if iou.size else 0.0,
            "dice": float(dice.mean()) if dice.size else 0.0,
            "pixel_accuracy": float(tp.sum() / confusion.sum())}


def latency_ms(tflite, num_threads=1, num_runs=20):
    """Median time of one `.tflite` invocation in the LiteRT interpreter, in milliseconds.

    Args:
        tflite: a `.tflite` path or its bytes.
        num_threads: interpreter threads (phones run 1-4).
        num_runs: timed runs after one warm-up.

    Returns:
        The median latency in ms (zeros in; dynamic dimensions set to 1).
    """
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(tflite, (bytes, bytearray)):
        interp = Interpreter(model_content=bytes(tflite), num_threads=num_threads)
    else:
        interp = Interpreter(model_path=os.fspath(tflite), num_threads=num_threads)
    runner = interp.get_signature_runner()
    feed = {name: np.zeros([d if d > 0 else 1 for d in detail["shape"]], detail["dtype"])
            for name, detail in runner.get_input_details().items()}
    runner(**feed)
    times = []
    for _ in range(max(1, num_runs)):
        start = time.perf_counter()
        runner(**feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def tflite_size(tflite):
    """Bytes of a `.tflite` path or content."""
    if isinstance(tflite, (bytes, bytearray)):
        return len(tflite)
    return os.path.getsize(tflite)


def plot_modes(rows, path, metric=None, title="Export modes"):
    """Writes a PNG of latency and accuracy per export mode, side by side.

    Args:
        rows: list of dicts with `"mode"`, `"latency_ms"` and optionally the accuracy `metric`.
        path: PNG to write.
        metric: the accuracy key to plot (e.g. `"top1"`, `"miou"`); default: no accuracy panel.
        title: figure title.

    Returns:
        `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if metric else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.2), squeeze=False)
    modes = [row["mode"] for row in rows]
    axes[0, 0].bar(modes, [row["latency_ms"] for row in rows], color="tab:blue")
    axes[0, 0].set_ylabel("median latency (ms, LiteRT)")
    if metric:
        values = [row.get(metric, np.nan) for row in rows]
        axes[0, 1].bar(modes, values, color="tab:green")
        axes[0, 1].set_ylabel(metric)
        finite = [v for v in values if np.isfinite(v)]
        if finite:
            low = min(finite)
            axes[0, 1].set_ylim(max(0.0, low - 0.1), min(1.0, max(finite) + 0.02))
    for ax in axes.ravel():
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def ops_and_size(tflite):
    """`(sorted op names, bytes)` of a `.tflite` path or content."""
    return tflite_ops(tflite), tflite_size(tflite)
