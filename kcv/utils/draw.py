"""Pictures of detections: boxes with class names and scores, and a truth-vs-prediction grid.

Drawn with matplotlib's object API (`matplotlib.figure.Figure`, no pyplot state), with the
image shown on pixel-edge coordinates (`extent=(0, W, H, 0)`), so a box `[y1, x1, y2, x2]` in
kcv's pixel convention is drawn exactly where it lies.
"""

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")


def _label(cls, score, class_names):
    name = class_names[cls] if class_names is not None and cls < len(class_names) else str(cls)
    return name if score is None else f"{name} {score:.2f}"


def _as_image(image):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"`image` must be [H, W, 3] (or [H, W, 1]). Received: "
                         f"image.shape={image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(image.astype(np.float32), 0.0, 1.0)
    return image[..., 0] if image.shape[-1] == 1 else image


def draw_detections(image, boxes, classes, scores=None, class_names=None, score_threshold=0.0,
                    ax=None, linewidth=1.5):
    """Draws boxes with their class names (and scores) over an image.

    Entries with class < 0 (padding) or a score below `score_threshold` are left out.

    Args:
        image: `[H, W, 3]` float in [0, 1] or uint8 (or `[H, W, 1]`).
        boxes: `[N, 4]` `[y1, x1, y2, x2]` pixels.
        classes: `[N]` int class ids.
        scores: optional `[N]` scores, written after the name (`"cup 0.93"`).
        class_names: names indexed by class id (default: the ids).
        score_threshold: minimal score drawn.
        ax: a matplotlib Axes to draw into (default: a new figure the size of the image).
        linewidth: box line width in points.

    Returns:
        The matplotlib Axes (`ax.figure` is its figure), with one `Rectangle` patch and one
        text label per drawn box.

    Example:
        >>> import numpy as np
        >>> ax = draw_detections(np.zeros((32, 32, 3)), [[4, 2, 20, 30]], [1], [0.9],
        ...                      class_names=["cat", "dog"])
        >>> [t.get_text() for t in ax.texts]
        ['dog 0.90']
    """
    image = _as_image(image)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1).astype(np.int64)
    if len(classes) != len(boxes):
        raise ValueError(f"`classes` must have one entry per box. Received: {len(boxes)} boxes, "
                         f"{len(classes)} classes")
    if scores is not None:
        scores = np.asarray(scores, np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"`scores` must have one entry per box. Received: {len(boxes)} "
                             f"boxes, {len(scores)} scores")
    height, width = image.shape[:2]
    if ax is None:
        fig = Figure(figsize=(max(width, 64) / 50, max(height, 64) / 50), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image, extent=(0, width, height, 0), interpolation="nearest",
              cmap="gray" if image.ndim == 2 else None)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    for k, ((y1, x1, y2, x2), cls) in enumerate(zip(boxes, classes)):
        score = None if scores is None else float(scores[k])
        if cls < 0 or (score is not None and score < score_threshold):
            continue
        colour = _PALETTE[cls % len(_PALETTE)]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour,
                               linewidth=linewidth))
        inside = y1 < 0.08 * height  # no room above the box: write the label inside it
        ax.text(x1, y1, _label(cls, score, class_names), color="white", fontsize=6,
                va="top" if inside else "bottom", ha="left", clip_on=True,
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 0.5, "alpha": 0.8})
    return ax


def save_detection_grid(path, images, targets, predictions=None, class_names=None,
                        score_threshold=0.3, max_images=8):
    """Writes a PNG grid: one row per image, ground truth left, predictions (scores as labels)
    right.

    Args:
        path: the PNG file to write.
        images: `[B, H, W, 3]` float in [0, 1] or uint8.
        targets: `{"boxes": [B, M, 4], "classes": [B, M]}` padded with class -1.
        predictions: optional detector output `{"boxes", "scores", "classes",
            "num_detections"}` (`[B, D, ...]`, `[B]`); without it only the truth is drawn.
        class_names: names indexed by class id.
        score_threshold: predictions below it are not drawn.
        max_images: at most this many rows.

    Returns:
        The matplotlib `Figure` written (its axes in row order, truth then prediction).

    Example:
        >>> import kcv
        >>> images, targets = kcv.data.make_shapes_detection(2, 64)
        >>> fig = save_detection_grid("truth.png", images, targets,
        ...                           class_names=kcv.data.detection.CLASS_NAMES)
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"`images` must be [B, H, W, 3]. Received: images.shape={images.shape}")
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise ValueError(f"`max_images` must be a positive int. Received: "
                         f"max_images={max_images!r}")
    rows = min(len(images), max_images)
    cols = 1 if predictions is None else 2
    height, width = images.shape[1:3]
    panel = 2.5
    fig = Figure(figsize=(cols * panel, rows * panel * height / width + 0.3), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    true_boxes, true_classes = np.asarray(targets["boxes"]), np.asarray(targets["classes"])
    for r in range(rows):
        draw_detections(images[r], true_boxes[r], true_classes[r], class_names=class_names,
                        ax=axes[r, 0])
        if predictions is not None:
            n = int(np.asarray(predictions["num_detections"])[r])
            draw_detections(images[r], np.asarray(predictions["boxes"])[r, :n],
                            np.asarray(predictions["classes"])[r, :n],
                            np.asarray(predictions["scores"])[r, :n], class_names,
                            score_threshold, ax=axes[r, 1])
    axes[0, 0].set_title("ground truth", fontsize=8)
    if predictions is not None:
        axes[0, 1].set_title("prediction", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return fig
