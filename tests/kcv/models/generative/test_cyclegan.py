"""CycleGAN: the networks against the published sizes and receptive field, the image history
against Shrivastava et al.'s rule, the losses against NumPy, mixed precision and `.keras`."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcv.layers import ReflectionPadding2D
from kcv.models import CycleGAN, PatchGANDiscriminator, ResNetGenerator
from kcv.models.generative import ImageHistory
from kcv.utils import receptive_field

from kcv_testing import check_config_round_trip, check_keras_reload, check_layer


def _instance_norm_params(model):
    return sum(int(np.prod(w.shape)) for layer in model.layers
               if isinstance(layer, keras.layers.GroupNormalization) for w in layer.weights)


def test_resnet_generator_matches_the_official_parameter_count():
    # The PyTorch CycleGAN prints "[Network G_A] Total number of parameters : 11.378 M" for
    # resnet_9blocks (convolutions with bias; InstanceNorm2d without affine parameters).
    convs = (7 * 7 * 3 * 64 + 64 + 3 * 3 * 64 * 128 + 128 + 3 * 3 * 128 * 256 + 256
             + 9 * 2 * (3 * 3 * 256 * 256 + 256)
             + 3 * 3 * 256 * 128 + 128 + 3 * 3 * 128 * 64 + 64 + 7 * 7 * 64 * 3 + 3)
    assert round(convs / 1e6, 3) == 11.378
    model = ResNetGenerator((None, None, 3))
    assert model.count_params() - _instance_norm_params(model) == convs
    assert sum(isinstance(layer, keras.layers.Add) for layer in model.layers) == 9
    six = ResNetGenerator((64, 64, 3), num_residual_blocks=6)
    assert sum(isinstance(layer, keras.layers.Add) for layer in six.layers) == 6


def test_patchgan_is_70x70_and_matches_the_official_parameter_count():
    model = PatchGANDiscriminator((256, 256, 3))
    assert model.output_shape == (None, 30, 30, 1)  # pix2pix / CycleGAN at 256 x 256
    field = receptive_field(model)
    assert field.size == (70, 70) and field.jump == (8, 8)
    # "[Network D_A] Total number of parameters : 2.765 M" (basic, n_layers=3, instance norm)
    convs = (4 * 4 * 3 * 64 + 64 + 4 * 4 * 64 * 128 + 128 + 4 * 4 * 128 * 256 + 256
             + 4 * 4 * 256 * 512 + 512 + 4 * 4 * 512 * 1 + 1)
    assert round(convs / 1e6, 3) == 2.765
    assert model.count_params() - _instance_norm_params(model) == convs


def test_resnet_generator_standard_checks():
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    model = check_layer(lambda: ResNetGenerator((16, 16, 3), filters=4, num_residual_blocks=2,
                                                output_channels=1), x)
    assert model.output_shape == (None, 16, 16, 1)


def test_patchgan_standard_checks():
    x = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    check_layer(lambda: PatchGANDiscriminator((32, 32, 3), filters=4), x)


def _images(start, n, shape=(2, 2, 1)):
    """Images whose pixels all equal their index: `start, ..., start + n - 1`."""
    return np.broadcast_to(np.arange(start, start + n, dtype=np.float32)[:, None, None, None],
                           (n, *shape)).copy()


def test_image_history_fills_then_swaps_half_the_time():
    history = ImageHistory(pool_size=50, seed=0)
    # Filling: 50 images come back as given and are stored.
    for start in range(0, 50, 10):
        np.testing.assert_array_equal(history(_images(start, 10)).numpy(), _images(start, 10))
    assert int(history.count) == 50
    np.testing.assert_array_equal(np.sort(history.images.numpy()[:, 0, 0, 0]), np.arange(50))
    # Full: each new image is returned (p = 1/2) or replaces a stored one returned instead.
    returned_new = 0
    for step in range(40):
        new = _images(1000 + 10 * step, 10)
        before = set(history.images.numpy()[:, 0, 0, 0])
        out = history(new).numpy()[:, 0, 0, 0]
        after = set(history.images.numpy()[:, 0, 0, 0])
        is_new = out == new[:, 0, 0, 0]
        returned_new += int(is_new.sum())
        assert set(out[~is_new]) <= before  # the others come from the buffer
        assert len(set(out[~is_new])) == int((~is_new).sum())  # distinct slots
        assert set(new[~is_new, 0, 0, 0]) <= after  # and were replaced by the new images
        assert not (set(new[is_new, 0, 0, 0]) & after)  # returned ones are not stored
        assert after == (before - set(out[~is_new])) | set(new[~is_new, 0, 0, 0])
    # 400 Bernoulli(1/2) draws: 200 +- 4.5 standard deviations (10).
    assert 155 <= returned_new <= 245
    assert int(history.count) == 50


def test_image_history_inside_tf_function_float16_and_pool_size_zero():
    history = ImageHistory(pool_size=4, seed=1, dtype="mixed_float16")
    step = tf.function(lambda x: history(x))
    out = step(tf.constant(_images(0, 3), tf.float16))
    assert out.dtype == tf.float16 and history.images.dtype == "float32"
    # One image fills the last slot; the other two return themselves or an image of step 1.
    out = step(tf.constant(_images(3, 3), tf.float16)).numpy()[:, 0, 0, 0]
    assert out[0] == 3 and set(out[1:]) <= {0, 1, 2, 4, 5}
    assert int(history.count) == 4
    assert set(history.images.numpy()[:, 0, 0, 0]) <= set(range(6))
    passthrough = ImageHistory(pool_size=0)
    np.testing.assert_array_equal(passthrough(_images(5, 2)).numpy(), _images(5, 2))
    check_config_round_trip(ImageHistory(pool_size=7, seed=3))
    with pytest.raises(ValueError, match=r"`pool_size` must be an integer >= 0. Received: "
                                         r"pool_size=-1"):
        ImageHistory(pool_size=-1)
    with pytest.raises(ValueError, match=r"known H, W, C"):
        ImageHistory().build((None, None, None, 3))


def _tiny(**kwargs):
    def g():
        return ResNetGenerator((32, 32, 1), filters=4, num_residual_blocks=1)

    def d():
        return PatchGANDiscriminator((32, 32, 1), filters=4)

    return CycleGAN(g(), g(), d(), d(), **kwargs)


def _one_conv(name, activation):
    images = keras.Input((8, 8, 1), name="images")
    x = ReflectionPadding2D(1, name="pad")(images)
    x = keras.layers.Conv2D(1, 3, name="conv")(x)
    return keras.Model(images, keras.layers.Activation(activation, dtype="float32")(x), name=name)


def _small(**kwargs):
    """A CycleGAN of one-convolution networks on 8x8 images (a tanh generator, a score-map
    discriminator). Tracing a `train_step` costs about 20 s of CPU per ResNet/PatchGAN CycleGAN
    (some 18,000 graph ops) against 3 s for these; the wrapper's losses, training and saving do
    not depend on what the networks are, and the ResNet and PatchGAN networks pass the standard
    checks above (the CycleGAN docstring example trains them inside `fit`)."""
    return CycleGAN(_one_conv("g", "tanh"), _one_conv("f", "tanh"), _one_conv("d_a", "linear"),
                    _one_conv("d_b", "linear"), **kwargs)


def _np_lsgan(label, scores):
    return np.mean((np.asarray(scores, np.float64) - label) ** 2)


def _np_l1(x, y):
    return np.mean(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))


def test_cyclegan_train_step_losses_match_numpy():
    rng = np.random.default_rng(2)
    a = rng.uniform(-1, 1, (3, 8, 8, 1)).astype(np.float32)
    b = rng.uniform(-1, 1, (3, 8, 8, 1)).astype(np.float32)
    model = _small(pool_size=50)
    g, f, d_a, d_b = (model.generator_ab, model.generator_ba, model.discriminator_a,
                      model.discriminator_b)
    # The networks as black boxes (training and inference agree), then the
    # losses of Zhu et al. eqs. 1-3 (LSGAN form) and the identity loss in NumPy.
    fake_b, fake_a = np.asarray(g(a)), np.asarray(f(b))
    adversarial = _np_lsgan(1, d_b(fake_b)) + _np_lsgan(1, d_a(fake_a))
    cycle = _np_l1(a, f(fake_b)) + _np_l1(b, g(fake_a))
    identity = _np_l1(b, g(b)) + _np_l1(a, f(a))
    g_loss = adversarial + 10 * cycle + 0.5 * 10 * identity
    # The history is filling, so the discriminators see this batch's generated images.
    d_a_loss = 0.5 * (_np_lsgan(1, d_a(a)) + _np_lsgan(0, d_a(fake_a)))
    d_b_loss = 0.5 * (_np_lsgan(1, d_b(b)) + _np_lsgan(0, d_b(fake_b)))
    model.compile(keras.optimizers.SGD(0.0), keras.optimizers.SGD(0.0))
    history = model.fit(a, b, batch_size=3, shuffle=False, verbose=0).history
    logs = {k: v[0] for k, v in history.items()}
    expected = {"g_loss": g_loss, "adversarial_loss": adversarial, "cycle_loss": cycle,
                "identity_loss": identity, "d_a_loss": d_a_loss, "d_b_loss": d_b_loss}
    for key, value in expected.items():
        assert logs[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    np.testing.assert_allclose(model.history_b.images.numpy()[:3], fake_b, atol=1e-5)


def test_cyclegan_trains_under_mixed_precision_and_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.uniform(-1, 1, (4, 8, 8, 1)).astype(np.float32)
    model = _small(seed=5)
    check_config_round_trip(model, [a, -a])
    check_keras_reload(model, [a, -a])
    keras.mixed_precision.set_global_policy("mixed_float16")
    mixed = _small(seed=5)
    mixed.compile()
    before = [np.array(w) for w in mixed.generator_variables + mixed.discriminator_variables]
    # 4 steps: the first ones may be skipped while the loss scale falls from 2^15.
    logs = mixed.fit(a, -a, batch_size=2, epochs=2, verbose=0).history
    assert all(np.all(np.isfinite(v)) for v in logs.values())
    after = [np.array(w) for w in mixed.generator_variables + mixed.discriminator_variables]
    n_g = len(mixed.generator_variables)
    assert any(not np.array_equal(x, y) for x, y in zip(before[:n_g], after[:n_g]))
    assert any(not np.array_equal(x, y) for x, y in zip(before[n_g:], after[n_g:]))
    assert int(mixed.history_a.count) == 8  # 2 epochs of 4 images, fewer than 50
    keras.mixed_precision.set_global_policy("float32")
    path = os.path.join(tmp_path, "cyclegan.keras")
    mixed.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded.history_a.images.numpy(),
                                  mixed.history_a.images.numpy())
    for name in ("generator_optimizer", "discriminator_optimizer"):
        saved, got = getattr(mixed, name), getattr(loaded, name)
        assert int(got.iterations) == int(saved.iterations) > 0, name


def test_cyclegan_argument_errors():
    model = _tiny()
    nets = [model.generator_ab, model.generator_ba, model.discriminator_a, model.discriminator_b]
    with pytest.raises(ValueError, match=r"Received: cycle_weight=-1"):
        CycleGAN(*nets, cycle_weight=-1)
    with pytest.raises(ValueError, match=r"Received: pool_size=2.5"):
        CycleGAN(*nets, pool_size=2.5)
    to_rgb = ResNetGenerator((32, 32, 1), filters=4, num_residual_blocks=1, output_channels=3)
    with pytest.raises(ValueError, match=r"identity_weight=0"):
        CycleGAN(to_rgb, *nets[1:])
    free = ResNetGenerator((None, None, 1), filters=4, num_residual_blocks=1)
    with pytest.raises(ValueError, match=r"static shape"):
        CycleGAN(free, free, *nets[2:])
    with pytest.raises(ValueError, match=r"multiples of 4. Received: input_shape=\(30, 32, 3\)"):
        ResNetGenerator((30, 32, 3))
    with pytest.raises(ValueError, match=r"at least 32"):
        PatchGANDiscriminator((16, 16, 3))
