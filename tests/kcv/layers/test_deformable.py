"""Tests of kcv.layers.DeformableConv2D: shared layer routine, fresh layer == Conv2D (x 0.5 when
modulated), offsets/mask wiring against NumPy bilinear sampling, learning, bad arguments."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcv.layers import DeformableConv2D

from kcv_testing import check_layer


def _randomize_offset_conv(layer, rng, scale=0.3):
    """Non-zero offset predictor weights, so that the checks see real deformation."""
    layer.offset_conv.set_weights([rng.normal(size=w.shape).astype(np.float32) * scale
                                   for w in layer.offset_conv.get_weights()])


def test_shared_layer_routine():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)

    def factory():
        return DeformableConv2D(6, 3, groups=2, offset_groups=2, activation="relu",
                                name="dcn")

    model = check_layer(factory, x)
    layer = model.get_layer("dcn")
    assert layer.offset_conv.built and layer.kernel.shape == (3, 3, 2, 6)


def test_shared_layer_routine_with_learned_offsets():
    """The same checks on a layer whose offsets are non-zero (samples off the grid and outside
    the input) - a fresh layer only exercises the plain-convolution special case."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 7, 7, 4)).astype(np.float32)
    layer = DeformableConv2D(4, 3, strides=2, modulated=True, offset_scale=0.5, name="dcn")
    layer(x)
    _randomize_offset_conv(layer, rng, scale=0.5)
    offsets, _ = layer.offsets_and_mask(x)
    assert np.abs(offsets.numpy()).max() > 2.0
    # keras_reload=False: the `.keras` file stores weights whatever their values, and the
    # fresh-process reload of this layer (~10 s) already runs in test_shared_layer_routine.
    check_layer(layer, x, keras_reload=False)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3),
        dict(kernel_size=3, strides=2),
        dict(kernel_size=(3, 5), dilation_rate=2, groups=2, offset_groups=2),
        dict(kernel_size=3, strides=2, padding="valid", groups=4),
        dict(kernel_size=1),
    ],
)
@pytest.mark.parametrize("modulated", [False, True])
def test_fresh_layer_is_a_plain_convolution(kwargs, modulated):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 9, 10, 8)).astype(np.float32)
    layer = DeformableConv2D(8, modulated=modulated, bias_initializer="random_normal", **kwargs)
    got = layer(x).numpy()
    conv = keras.layers.Conv2D(8, kwargs["kernel_size"], strides=kwargs.get("strides", 1),
                               padding=kwargs.get("padding", "same"),
                               dilation_rate=kwargs.get("dilation_rate", 1),
                               groups=kwargs.get("groups", 1), use_bias=False)
    conv.build(x.shape)
    conv.set_weights([layer.kernel.numpy()])
    expected = conv(x).numpy() * (0.5 if modulated else 1.0) + layer.bias.numpy()
    assert got.shape == expected.shape == tuple(layer.compute_output_shape(x.shape))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def _np_bilinear(image, y, x):
    """Zero-padded bilinear sample of `image [H, W, C]` (torchvision's rule)."""
    h, w, _ = image.shape
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return np.zeros(image.shape[-1])
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    total = np.zeros(image.shape[-1])
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * image[yy, xx]
    return total


def test_offsets_and_mask_are_wired_as_documented():
    """Layer output from its own predicted offsets/mask, recomputed with NumPy loops: the
    offset channels are (group, row, col, (dy, dx)), mask channels (group, row, col), the mask
    is a sigmoid, and each offset group displaces its own block of channels."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 5, 5, 4)).astype(np.float32)
    layer = DeformableConv2D(3, 3, offset_groups=2, use_bias=False, offset_scale=0.5)
    layer(x)
    _randomize_offset_conv(layer, rng)
    offsets, mask = (t.numpy().astype(np.float64) for t in layer.offsets_and_mask(x))
    raw = layer.offset_conv(x).numpy().astype(np.float64)
    np.testing.assert_allclose(offsets, 0.5 * raw[..., :36], atol=1e-6)
    np.testing.assert_allclose(mask, 1 / (1 + np.exp(-raw[..., 36:])), atol=1e-6)
    kernel = layer.kernel.numpy().astype(np.float64)
    expected = np.zeros((5, 5, 3))
    for ho in range(5):
        for wo in range(5):
            for g in range(2):
                for i in range(3):
                    for j in range(3):
                        k = i * 3 + j
                        dy, dx = offsets[0, ho, wo, g * 18 + 2 * k: g * 18 + 2 * k + 2]
                        sample = _np_bilinear(x[0, :, :, 2 * g:2 * g + 2].astype(np.float64),
                                              ho - 1 + i + dy, wo - 1 + j + dx)
                        expected[ho, wo] += (mask[0, ho, wo, g * 9 + k]
                                             * sample @ kernel[i, j, 2 * g:2 * g + 2])
    np.testing.assert_allclose(layer(x).numpy()[0], expected, atol=1e-4)


def test_offset_predictor_learns_from_zero():
    """At zero offsets the gradient reaches the offset predictor (it is not stuck at zero),
    and a few steps of fitting a shifted target move the offsets toward the shift."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 12, 12, 1)).astype(np.float32)
    layer = DeformableConv2D(1, 1, modulated=False, use_bias=False,
                             kernel_initializer="ones")
    # Target: the image sampled half a pixel to the right (linear interpolation).
    shifted = np.concatenate([x[:, :, 1:], np.zeros_like(x[:, :, :1])], axis=2)
    target = 0.5 * x + 0.5 * shifted
    model = keras.Sequential([keras.Input((12, 12, 1)), layer])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(x) - target) ** 2)
    grads = tape.gradient(loss, layer.offset_conv.trainable_weights)
    assert all(np.abs(g.numpy()).max() > 1e-3 for g in grads)
    before = float(loss)
    model.fit(x, target, epochs=40, batch_size=4, verbose=0)
    after = float(np.mean((model(x).numpy() - target) ** 2))
    dx = layer.offsets_and_mask(x)[0].numpy()[..., 1]
    assert after < 0.2 * before
    assert 0.3 < float(np.median(dx)) < 0.7  # learned horizontal offset ~ +0.5 pixel


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(filters=0), r"`filters` must be a positive integer. Received: filters=0"),
        (dict(filters=6, groups=4), r"`filters` must be divisible by `groups`.*groups=4"),
        (dict(kernel_size=(3, 3, 3)), r"`kernel_size` must be a positive integer or a pair"),
        (dict(strides=0), r"`strides` must be.*strides=0"),
        (dict(padding="full"), r"`padding` must be one of \('same', 'valid'\).*'full'"),
        (dict(strides=2, dilation_rate=2), r"`strides > 1` cannot be combined"),
        (dict(offset_groups=-1), r"`offset_groups` must be a positive integer"),
        (dict(activation="nope"), r"`activation` must be an activation name"),
        (dict(offset_scale=0), r"`offset_scale` must be a positive finite number.*=0"),
        (dict(column_budget_bytes=-1), r"`column_budget_bytes` must be a non-negative int.*=-1"),
        (dict(column_budget_bytes=1.5), r"`column_budget_bytes` must be a non-negative int"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(filters=4, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        DeformableConv2D(**args)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(groups=3, filters=3), r"divisible by `groups`. Received: groups=3, "
                                    r"input_shape=\(1, 6, 6, 4\)"),
        (dict(offset_groups=3), r"divisible by `offset_groups`. Received: offset_groups=3"),
    ],
)
def test_bad_input_channels(kwargs, match):
    args = dict(filters=4, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        DeformableConv2D(**args)(np.zeros((1, 6, 6, 4), np.float32))


def test_column_budget_reaches_the_op_and_keeps_the_numbers(monkeypatch):
    """`column_budget_bytes` is passed to `deform_conv2d` (columns kept between the passes) and
    survives get_config; outputs and all gradients equal the default layer's in a tf.function."""
    import kcv.layers.deformable as module

    seen = []
    op = module.deform_conv2d

    def spy(*args, **kwargs):
        seen.append(kwargs["column_budget_bytes"])
        return op(*args, **kwargs)

    monkeypatch.setattr(module, "deform_conv2d", spy)
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(2, 9, 9, 4)), tf.float32)
    plain = DeformableConv2D(6, 3, offset_groups=2)
    plain(x)
    _randomize_offset_conv(plain, rng)
    kept = DeformableConv2D.from_config({**plain.get_config(), "column_budget_bytes": 1 << 30})
    kept(x)
    kept.set_weights(plain.get_weights())
    assert kept.get_config()["column_budget_bytes"] == 1 << 30
    assert plain.get_config()["column_budget_bytes"] == 0

    @tf.function
    def step(layer, inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = layer(inputs)
            loss = tf.reduce_sum(out * out)
        return out, tape.gradient(loss, [inputs, *layer.trainable_weights])

    seen.clear()
    ref = step(plain, x)
    got = step(kept, x)
    assert seen == [0, 1 << 30]
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)
    for g, r in zip(got[1], ref[1]):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)
