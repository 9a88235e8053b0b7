import numpy as np
import pytest
import tensorflow as tf
from matplotlib.colors import to_rgb
from matplotlib.patches import Rectangle

from kcv.utils import draw_detections, save_detection_grid


def _rectangles(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_boxes_labels_and_what_is_left_out():
    boxes = [[4, 2, 20, 30], [0, 0, 10, 10], [1, 1, 5, 5], [0, 0, 0, 0]]
    ax = draw_detections(np.zeros((32, 32, 3)), boxes, [1, 0, 0, -1], [0.9, 0.25, 0.6, 0.0],
                         class_names=["cat", "dog"], score_threshold=0.5)
    rects = _rectangles(ax)
    # [y1, x1, y2, x2] = [4, 2, 20, 30] -> corner (x, y) = (2, 4), width 28, height 16
    assert [(r.get_xy(), r.get_width(), r.get_height()) for r in rects] == [
        ((2, 4), 28, 16), ((1, 1), 4, 4)]
    assert [t.get_text() for t in ax.texts] == ["dog 0.90", "cat 0.60"]
    assert rects[0].get_edgecolor() != rects[1].get_edgecolor()  # colour per class
    plain = draw_detections(np.zeros((8, 8, 1), np.uint8), [[1, 1, 4, 4]], [3])
    assert [t.get_text() for t in plain.texts] == ["3"]  # no names, no scores


def test_box_is_drawn_on_its_pixels():
    # a 64 x 64 black image rendered at 2 output pixels per image pixel (128 x 128)
    ax = draw_detections(np.zeros((64, 64, 3)), [[40, 20, 60, 44]], [2], linewidth=1.0)
    canvas = ax.figure.canvas
    canvas.draw()
    rendered = np.asarray(canvas.buffer_rgba())[..., :3] / 255.0
    assert rendered.shape == (128, 128, 3)
    green = np.array(to_rgb("#2ca02c"))  # class 2's colour
    # left edge x = 20 -> column 40, at the height of the box's middle (y = 50 -> row 100)
    assert np.abs(rendered[99:102, 39:42] - green).sum(-1).min() < 0.2
    # right edge x = 44 -> column 88; bottom edge y = 60 -> row 120
    assert np.abs(rendered[99:102, 87:90] - green).sum(-1).min() < 0.2
    assert np.abs(rendered[119:122, 60:62] - green).sum(-1).min() < 0.2
    # inside and outside the box the image stays black
    assert rendered[100, 64].max() < 0.05 and rendered[20, 20].max() < 0.05


def test_grid_truth_and_prediction(tmp_path):
    images = np.random.default_rng(0).uniform(size=(3, 48, 48, 3)).astype(np.float32)
    targets = {"boxes": np.array([[[2, 3, 20, 30], [0, 0, 0, 0]]] * 3, np.float32),
               "classes": np.array([[0, -1]] * 3, np.int32)}
    predictions = {"boxes": np.array([[[2, 3, 21, 30], [5, 5, 9, 9]]] * 3, np.float32),
                   "scores": np.array([[0.9, 0.1]] * 3, np.float32),
                   "classes": np.array([[0, 1]] * 3, np.int32),
                   "num_detections": np.array([2, 0, 1])}
    path = str(tmp_path / "grid.png")
    fig = save_detection_grid(path, images, targets, predictions, ["ellipse", "rectangle"],
                              score_threshold=0.3, max_images=2)
    png = tf.io.decode_png(tf.io.read_file(path)).numpy()
    width, height = fig.get_size_inches() * fig.dpi
    assert png.shape[:2] == (round(height), round(width))
    axes = fig.axes
    assert len(axes) == 4  # 2 rows (max_images) x (truth, prediction)
    assert [t.get_text() for t in axes[0].texts] == ["ellipse"]
    assert [t.get_text() for t in axes[1].texts] == ["ellipse 0.90"]  # 0.1 is below 0.3
    assert len(axes[3].texts) == 0 and len(_rectangles(axes[2])) == 1  # num_detections = 0
    assert axes[0].get_title() == "ground truth" and axes[1].get_title() == "prediction"
    only_truth = save_detection_grid(str(tmp_path / "t.png"), images, targets)
    assert len(only_truth.axes) == 3


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: draw_detections(np.zeros((4, 4)), [[0, 0, 1, 1]], [0]), "image"),
        (lambda: draw_detections(np.zeros((4, 4, 3)), [[0, 0, 1, 1]], [0, 1]), "classes"),
        (lambda: draw_detections(np.zeros((4, 4, 3)), [[0, 0, 1, 1]], [0], [0.1, 0.2]),
         "scores"),
        (lambda: save_detection_grid("x.png", np.zeros((4, 4, 3)), {}), "images"),
        (lambda: save_detection_grid("x.png", np.zeros((1, 4, 4, 3)), {}, max_images=0),
         "max_images"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
