"""receptive_field on keras.applications models against fields derived by hand from their layers."""

import keras
import numpy as np
import pytest

import kcv
from kcv.models import ResNet18
from kcv.utils import ReceptiveField, receptive_field

_APPS = keras.applications


def _by_hand(layers):
    """Plain recurrence over a hand-written list of (kernel, stride, pad_before) per layer:
    size += (k - 1) * jump; centre += ((k - 1) / 2 - pad_before) * jump; jump *= stride."""
    size, jump, start = 1, 1, 0.0
    for k, s, pad in layers:
        size += (k - 1) * jump
        start += ((k - 1) / 2 - pad) * jump
        jump *= s
    return size, jump, start


def test_vgg16_block5_pool():
    # 13 3x3 "same" convolutions (pad 1) and 5 2x2 pools, read off keras.applications.VGG16.
    convs = (2, 2, 3, 3, 3)
    layers = []
    for n in convs:
        layers += [(3, 1, 1)] * n + [(2, 2, 0)]
    assert _by_hand(layers) == (212, 32, 15.5)
    model = _APPS.VGG16(weights=None, include_top=False, input_shape=(64, 64, 3))
    assert receptive_field(model, "block5_pool") == ReceptiveField((212, 212), (32, 32),
                                                                  (15.5, 15.5))
    # After block3_pool: 2+2+3 convs and three pools.
    assert receptive_field(model, "block3_pool").size == (44, 44)


def test_mobilenet_v1():
    # conv1: 3x3 stride 2 "same" on an even size pads 0 before; 13 depthwise 3x3 (stride 2 ones
    # after a (0, 1) zero padding, valid; stride 1 ones "same", pad 1); 1x1 pointwise convs add
    # nothing. Strides of the depthwise convs: keras.applications' block list.
    strides = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
    layers = [(3, 2, 0)] + [(3, s, 1 if s == 1 else 0) for s in strides]
    assert _by_hand(layers) == (315, 32, 31)
    model = _APPS.MobileNet(weights=None, include_top=False, input_shape=(96, 96, 3))
    assert receptive_field(model) == ReceptiveField((315, 315), (32, 32), (31, 31))


@pytest.fixture(scope="module")
def mobilenet_v2():
    """keras.applications' MobileNetV2 with its top (read only by the tests)."""
    return _APPS.MobileNetV2(weights=None, include_top=True, input_shape=(96, 96, 3))


def test_mobilenet_v2_through_residual_adds(mobilenet_v2):
    # Conv1 3x3 s2, then the depthwise 3x3 of the 17 inverted residual blocks; the identity
    # branches of the adds are centred like the convolutional ones, so the adds keep the
    # larger field.
    strides = (1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1)
    layers = [(3, 2, 0)] + [(3, s, 1 if s == 1 else 0) for s in strides]
    assert _by_hand(layers) == (491, 32, 31)
    model = mobilenet_v2
    # layer_name=None: the last layer with a spatial output (out_relu), before the top.
    assert receptive_field(model) == ReceptiveField((491, 491), (32, 32), (31, 31))
    assert receptive_field(model, "block_2_add") == receptive_field(model, "block_2_project_BN")


def test_resnet50_and_published_value():
    # Stem: pad 3 + 7x7/2 valid, pad 1 + 3x3/2 max pool. Bottleneck blocks: the 3x3 "same" conv
    # of each (the 1x1 convs add nothing; keras' v1 puts the stride on the first 1x1).
    layers = [(1, 1, 3), (7, 2, 0), (1, 1, 1), (3, 2, 0)]
    for stage, blocks in enumerate((3, 4, 6, 3)):
        for i in range(blocks):
            stride = 2 if i == 0 and stage > 0 else 1
            layers += [(1, stride, 0), (3, 1, 1)]
    assert _by_hand(layers) == (483, 32, 0)  # 483: Araujo et al. (Distill, 2019), ResNet-50
    model = _APPS.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    assert receptive_field(model) == ReceptiveField((483, 483), (32, 32), (0, 0))


def test_dilation_and_non_square_kernels():
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(1, (3, 1), dilation_rate=(2, 1), padding="valid", name="a")(inputs)
    x = keras.layers.Conv2D(1, (1, 5), strides=(1, 2), padding="valid", name="b")(x)
    x = keras.layers.Conv2D(1, 3, dilation_rate=3, padding="valid", name="c")(x)
    model = keras.Model(inputs, x)
    # height: k_eff 5, 1, 7 -> 1 + 4 + 0 + 6 = 11; width: k 1, 5 (then jump 2), k_eff 7 ->
    # 1 + 0 + 4 + 6 * 2 = 17. Centres (valid): height 2 + 0 + 3 = 5; width 0 + 2 + 3 * 2 = 8.
    assert receptive_field(model, "c") == ReceptiveField((11, 17), (1, 2), (5, 8))


def test_concatenate_of_different_fields_takes_the_envelope():
    inputs = keras.Input((16, 16, 1))
    a = keras.layers.Conv2D(1, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(1, 7, padding="same", name="b")(inputs)
    x = keras.layers.Concatenate(name="cat")([a, b])
    model = keras.Model(inputs, x)
    assert receptive_field(model, "cat") == ReceptiveField((7, 7), (1, 1), (0, 0))


def test_verbose_prints_a_table(capsys):
    receptive_field(ResNet18((64, 64, 3), include_top=False), "conv2_block1_out", verbose=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["layer", "type", "k_eff", "stride", "size", "jump", "start"]
    assert lines[-1].split() == ["conv2_block1_out", "Activation", "27", "4", "0"]


def test_errors(mobilenet_v2):
    model = mobilenet_v2
    with pytest.raises(ValueError, match="layer_name='nope'"):
        receptive_field(model, "nope")
    with pytest.raises(ValueError, match="4-D"):
        receptive_field(model, "predictions")
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Resizing(24, 24, name="up")(inputs)
    with pytest.raises(ValueError, match="'up' \\(Resizing\\)"):
        receptive_field(keras.Model(inputs, x))
    x = keras.layers.Conv2DTranspose(1, 3, strides=2, output_padding=1, name="up2")(inputs)
    with pytest.raises(ValueError, match="'up2'.*output_padding"):
        receptive_field(keras.Model(inputs, x))
    x = keras.layers.Conv2DTranspose(1, 2, strides=3, name="holes")(inputs)
    with pytest.raises(ValueError, match="'holes'.*kernel_size >= strides"):
        receptive_field(keras.Model(inputs, x))


def _measured_fields(model, size):
    """Per output row: the rows of input pixels that can change it, found by perturbing one input
    row at a time (+100 on a positive image through positive weights, so ReLU and max pooling
    pass the change on). Returns {output row: (first input row, last input row)}."""
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([np.full(w.shape, 0.1, "float32") if w.ndim > 1
                               else np.zeros(w.shape, "float32") for w in layer.get_weights()])
    base = rng.uniform(0.5, 1.0, (1, size, size, 1)).astype("float32")
    batch = np.repeat(base, size, axis=0)
    batch[np.arange(size), np.arange(size), :, :] += 100.0  # image r: input row r raised
    changed = np.abs(model.predict(batch, verbose=0) - model.predict(base, verbose=0)).max(
        axis=(2, 3)) > 1e-3  # [input row, output row]
    return {o: (int(np.flatnonzero(changed[:, o])[0]), int(np.flatnonzero(changed[:, o])[-1]))
            for o in range(changed.shape[1]) if changed[:, o].any()}


def _check_against_measured(model, size, interior):
    """Over whole periods of output rows in `interior` (fields away from the borders), the mean
    measured field size equals `size` and the mean of (centre - o * jump) equals `start`."""
    rf = receptive_field(model)
    fields = _measured_fields(model, size)
    sizes = [fields[o][1] - fields[o][0] + 1 for o in interior]
    offsets = [(fields[o][0] + fields[o][1]) / 2 - o * rf.jump[0] for o in interior]
    assert np.mean(sizes) == pytest.approx(rf.size[0]), (sizes, rf)
    assert np.mean(offsets) == pytest.approx(rf.start[0]), (offsets, rf)
    return rf


@pytest.mark.parametrize("make, jump", [
    (lambda: keras.layers.Conv2DTranspose(1, 2, strides=2), 1),                   # U-Net's
    (lambda: keras.layers.Conv2DTranspose(1, 3, strides=2, padding="same"), 1),
    (lambda: keras.layers.Conv2DTranspose(1, 4, strides=2, padding="same"), 1),
    (lambda: keras.layers.Conv2DTranspose(1, 3, strides=2), 1),
    (lambda: keras.layers.Conv2DTranspose(1, 3, strides=3), 2 / 3),
    (lambda: keras.layers.UpSampling2D(2, interpolation="bilinear"), 1),
    (lambda: keras.layers.UpSampling2D(4, interpolation="bilinear"), 0.5),
    (lambda: keras.layers.UpSampling2D(3, interpolation="bilinear"), 2 / 3),
    (lambda: keras.layers.UpSampling2D(2, interpolation="nearest"), 1),
])
def test_upsampling_layers_against_measured_fields(make, jump):
    """After a 3x3 stride-2 convolution (fields 3 wide, jump 2), each upsampling layer."""
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(1, 3, strides=2)(inputs)
    model = keras.Model(inputs, make()(x))
    out = model.output.shape[1]
    period = int(round(2 / jump))  # output rows per input unit of the upsampling layer
    interior = range(2 * period, 2 * period + 3 * period)  # three whole periods, off the border
    assert out > interior[-1] + 2 * period
    rf = _check_against_measured(model, 32, interior)
    assert rf.jump[0] == pytest.approx(jump)


def test_unet_with_transposed_and_bilinear_upsampling():
    """The whole U-Net (max pooling, concatenated skips, upsampling) against measured fields;
    the default target (`kcv receptive-field unet`) is its last layer."""
    for upsampling in ("transpose", "bilinear"):
        model = kcv.models.UNet((96, 96, 1), 1, filters=2, depth=2, norm=None,
                                upsampling=upsampling, output_activation=None)
        rf = _check_against_measured(model, 96, range(40, 56))
        assert rf.jump == (1, 1)


def test_kcv_conv_units_and_the_unet_bottleneck():
    # A ConvBNAct is its convolution for the field (normalization and activation are
    # position-wise). U-Net bottleneck by hand: two 3x3 convs per level, 2x2 pools: 5, 6
    # (jump 2), 14, 16 (jump 4), 32, 36 (jump 8), 68, 76 (jump 16), then 76 + 2 * 2 * 16 = 140;
    # "same" 3x3 convs keep the centre, each 2x2 pool moves it by 0.5 * jump: 0.5+1+2+4 = 7.5.
    inputs = keras.Input((32, 32, 1))
    unit = kcv.layers.ConvBNAct(2, 3, strides=2, dilation_rate=1, name="unit")(inputs)
    model = keras.Model(inputs, kcv.layers.ConvBNAct(2, 3, dilation_rate=2, name="atrous")(unit))
    assert _by_hand([(3, 2, 0), (5, 1, 2)]) == (11, 2, 1)
    assert receptive_field(model) == ReceptiveField((11, 11), (2, 2), (1, 1))
    unet = kcv.models.UNet((64, 64, 3), 2, filters=4, depth=4)
    assert receptive_field(unet, "bottleneck_conv2") == ReceptiveField((140, 140), (16, 16),
                                                                       (7.5, 7.5))
