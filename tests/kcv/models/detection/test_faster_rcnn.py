"""FasterRCNN assembly: trains with fit (the four named losses fall), predicts padded detections."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kcv
from kcv.models.detection import FasterRCNN

from kcv_testing import tiny_faster_rcnn as _model


def test_initial_rpn_loss_and_detections_format():
    images, targets = kcv.data.make_shapes_detection(2, image_size=64, seed=1, max_boxes=8)
    model = _model()
    losses = model.compute_losses(images, targets)
    assert sorted(losses) == ["box_reg", "classifier", "rpn_box", "rpn_objectness"]
    # RPN logits start near 0 (normal std 0.01 init): BCE = log 2
    np.testing.assert_allclose(float(losses["rpn_objectness"]), np.log(2), atol=0.02)
    out = model(images)
    assert out["boxes"].shape == (2, 100, 4) and out["classes"].dtype == tf.int32
    for i in range(2):
        k = int(out["num_detections"][i])
        assert not out["scores"][i, k:].numpy().any() and not out["boxes"][i, k:].numpy().any()
        assert (out["scores"][i, :k].numpy() > 0.05).all()
        assert ((out["classes"][i, :k].numpy() >= 0) & (out["classes"][i, :k].numpy() < 3)).all()
        b = out["boxes"][i, :k].numpy()
        assert (b >= 0).all() and (b <= 64).all()


@pytest.mark.slow
def test_fit_losses_fall():
    images, targets = kcv.data.make_shapes_detection(4, image_size=64, seed=0, max_boxes=8)
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3, clipnorm=5.0))
    data = tf.data.Dataset.from_tensor_slices((images, targets)).batch(4).repeat()
    history = model.fit(data, steps_per_epoch=5, epochs=3, verbose=0).history
    assert set(history) == {"loss", "rpn_objectness", "rpn_box", "classifier", "box_reg"}
    for name in ("loss", "classifier"):
        assert history[name][-1] < 0.8 * history[name][0], (name, history[name])
    for name in ("rpn_objectness", "rpn_box", "box_reg"):
        assert history[name][-1] < history[name][0], (name, history[name])
    logs = model.evaluate(data, steps=1, verbose=0, return_dict=True)
    assert set(logs) == set(history) and np.isfinite(list(logs.values())).all()
    pred = model.predict(images, verbose=0)
    assert pred["boxes"].shape == (4, 100, 4)


def test_config_round_trip():
    model = FasterRCNN(2, backbone="resnet18", input_shape=(64, 64, 3), fpn_filters=8,
                       representation_size=16)
    config = model.get_config()
    again = FasterRCNN.from_config(config)
    assert again.get_config() == config
    with pytest.raises(ValueError, match="`backbone` must be one of"):
        FasterRCNN(2, backbone="alexnet")
