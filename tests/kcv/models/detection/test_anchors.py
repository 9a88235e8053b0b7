"""Anchors against hand-computed boxes and NumPy transcriptions of py-faster-rcnn / torchvision."""

import numpy as np
import pytest
import tensorflow as tf

from kcv.models.detection import AnchorGenerator, SingleLevelAnchorGenerator, generate_anchors

from kcv_testing import check_config_round_trip


def _py_faster_rcnn(base_size=16, ratios=(0.5, 1, 2), scales=(8, 16, 32)):
    """py-faster-rcnn's lib/rpn/generate_anchors.py (inclusive x1, y1, x2, y2)."""
    def whctrs(a):
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def mk(ws, hs, xc, yc):
        ws, hs = ws[:, None], hs[:, None]
        return np.hstack([xc - 0.5 * (ws - 1), yc - 0.5 * (hs - 1),
                          xc + 0.5 * (ws - 1), yc + 0.5 * (hs - 1)])

    w, h, xc, yc = whctrs(np.array([1, 1, base_size, base_size], float) - 1)
    size_ratios = w * h / np.array(ratios, float)
    ws = np.round(np.sqrt(size_ratios))
    ratio_anchors = mk(ws, np.round(ws * np.array(ratios, float)), xc, yc)
    out = []
    for a in ratio_anchors:
        w, h, xc, yc = whctrs(a)
        out.append(mk(w * np.array(scales, float), h * np.array(scales, float), xc, yc))
    return np.vstack(out)


def test_paper_anchor_shapes():
    a = generate_anchors((16, 16), 16).numpy()
    wh = np.stack([a[:, 3] - a[:, 1], a[:, 2] - a[:, 0]], 1)
    # (w, h) by hand: ratio 0.5 -> 23 x 12 at scale 1, ratio 1 -> 16 x 16, ratio 2 -> 11 x 22
    expected = [(184, 96), (368, 192), (736, 384), (128, 128), (256, 256), (512, 512),
                (88, 176), (176, 352), (352, 704)]
    np.testing.assert_array_equal(wh, expected)
    np.testing.assert_array_equal((a[:, :2] + a[:, 2:]) / 2, np.full((9, 2), 8.0))  # cell centre
    ref = _py_faster_rcnn()
    np.testing.assert_array_equal(a, np.stack([ref[:, 1], ref[:, 0], ref[:, 3] + 1,
                                               ref[:, 2] + 1], 1))


def test_paper_anchor_grid_and_order():
    a = generate_anchors((800, 600), 16)
    assert a.shape == (50 * 38 * 9, 4) == (17100, 4)
    a = a.numpy().reshape(50, 38, 9, 4)
    base = a[0, 0]
    np.testing.assert_array_equal(a[3, 5], base + [48, 80, 48, 80])  # row 3, column 5
    np.testing.assert_array_equal(a[49, 37], base + [784, 592, 784, 592])
    # a non-multiple of the stride: ceil(33 / 16) = 3 rows, ceil(17 / 16) = 2 columns
    assert generate_anchors((33, 17), 16, scales=(8,), ratios=(1.0,)).shape == (6, 4)


def test_paper_anchors_dynamic_shape():
    fn = tf.function(lambda s: generate_anchors(s, 8, scales=(2,), ratios=(1.0,), base_size=8))
    out = fn(tf.constant([16, 24])).numpy()
    np.testing.assert_array_equal(out[:2], [[-4, -4, 12, 12], [-4, 4, 12, 20]])
    assert out.shape == (6, 4)


def _torchvision_grid(image_hw, grids, sizes, ratios):
    """torchvision AnchorGenerator.generate_anchors + grid_anchors, xyxy -> yxyx."""
    out = []
    for (gh, gw), s, r in zip(grids, sizes, ratios):
        scales = np.asarray(s, np.float32)
        h_ratios = np.sqrt(np.asarray(r, np.float32))
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        base = np.round(np.stack([-ws, -hs, ws, hs], 1) / 2)
        sh, sw = image_hw[0] // gh, image_hw[1] // gw
        shift_y, shift_x = np.meshgrid(np.arange(gh) * sh, np.arange(gw) * sw, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = np.stack([shift_x, shift_y, shift_x, shift_y], 1)
        xyxy = (shifts[:, None, :] + base[None]).reshape(-1, 4)
        out.append(xyxy[:, [1, 0, 3, 2]])
    return np.concatenate(out).astype(np.float32)


def test_anchor_generator_matches_torchvision_rule():
    sizes = ((32,), (64,), (128, 256))
    ratios = ((0.5, 1.0, 2.0), (0.5, 1.0, 2.0), (1.0, 3.0))
    gen = AnchorGenerator(sizes, ratios)
    assert gen.num_anchors_per_location() == [3, 3, 4]
    image = tf.zeros([2, 60, 100, 3])
    feats = [tf.zeros([2, 15, 25, 1]), tf.zeros([2, 8, 13, 1]), tf.zeros([2, 4, 7, 1])]
    out = gen([image, *feats]).numpy()
    ref = _torchvision_grid((60, 100), [(15, 25), (8, 13), (4, 7)], sizes, ratios)
    np.testing.assert_array_equal(out, ref)
    # by hand: size 32 ratio 0.5: h = 32 * sqrt(.5) = 22.63, w = 45.25 -> round(+-11.31) = 11,
    # round(+-22.63) = 23; level 1 stride (60 // 8, 100 // 13) = (7, 7)
    np.testing.assert_array_equal(out[0], [-11, -23, 11, 23])
    np.testing.assert_array_equal(out[15 * 25 * 3 + 3 * (13 + 1) + 1], [-32 + 7, -32 + 7, 32 + 7, 32 + 7])


def test_anchor_generator_round_half_to_even():
    # size 5, ratio 1: +-2.5 -> torch.round gives +-2 (half to even)
    out = AnchorGenerator(((5,),), (1.0,))([tf.zeros([1, 4, 4, 1]), tf.zeros([1, 1, 1, 1])])
    np.testing.assert_array_equal(out.numpy(), [[-2, -2, 2, 2]])


def test_anchor_generator_in_functional_model_and_config():
    gen = AnchorGenerator(((16,), (32,)), (0.5, 1.0, 2.0))
    images = np.zeros((1, 32, 32, 3), np.float32)
    feats = [np.zeros((1, 8, 8, 2), np.float32), np.zeros((1, 4, 4, 2), np.float32)]
    check_config_round_trip(gen, [images, *feats])
    assert gen.compute_output_shape([(None, 32, 32, 3), (None, 8, 8, 2), (None, 4, 4, 2)]) == (
        (64 + 16) * 3, 4)


def test_errors():
    with pytest.raises(ValueError, match="`stride` must be a positive int. Received: stride=0"):
        generate_anchors((32, 32), 0)
    with pytest.raises(ValueError, match=r"`ratios` must be.*Received: ratios=\(0.5, -1\)"):
        generate_anchors((32, 32), 16, ratios=(0.5, -1))
    with pytest.raises(ValueError, match="`image_shape` must be"):
        generate_anchors((32, 32, 3), 16)
    with pytest.raises(ValueError, match="one tuple per level"):
        AnchorGenerator(((32,), (64,)), ((1.0,), (1.0,), (1.0,)))
    with pytest.raises(ValueError, match="expects \\[images, one feature map per level\\]"):
        AnchorGenerator(((32,),))([tf.zeros([1, 4, 4, 1])])


def test_single_level_anchor_generator_by_hand():
    gen = SingleLevelAnchorGenerator(16)
    anchors = gen([tf.zeros([1, 64, 64, 3]), tf.zeros([1, 4, 4, 8])]).numpy()
    assert anchors.shape == (4 * 4 * 9, 4) and gen.num_anchors_per_location() == [9]
    # first cell, ratio 0.5, scale 32: 736 wide, 384 high around the centre 7.5 (+ 1 edge)
    np.testing.assert_array_equal(anchors[2], [-184, -360, 200, 376])
    # cell (row 1, col 2), ratio 1, scale 8: 128 x 128, x1 = 7.5 - 63.5 = -56, shifted (16, 32)
    np.testing.assert_array_equal(anchors[(1 * 4 + 2) * 9 + 3], [-40, -24, 88, 104])
    assert SingleLevelAnchorGenerator.from_config(gen.get_config()).get_config() == gen.get_config()
    with pytest.raises(ValueError, match="`stride` must be a positive int. Received: stride=0"):
        SingleLevelAnchorGenerator(0)
