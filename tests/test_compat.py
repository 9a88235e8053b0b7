"""Every private Keras/TensorFlow/LiteRT attribute kcv touches still exists in the installed
versions. The lists live beside the code that reads them (`custom_ops/_compat.py`,
`kcv/_compat.py`, `export/_litert.py`, `export/_common.py`); a failure here names the attribute
that an upgrade removed, instead of a training run or an export failing deep inside."""

import importlib

import keras
import pytest

import custom_ops._compat
import export._common
import export._litert
import kcv._compat


def _instance_of(owner):
    """An object of class `owner` (instance attributes exist only on instances)."""
    if owner == "keras.optimizers.Optimizer":
        return keras.optimizers.SGD(0.1)
    if owner == "keras.Model":
        inputs = keras.Input((2,))
        return keras.Model(inputs, keras.layers.Dense(1)(inputs))
    if owner == "keras.layers.Layer":
        return keras.layers.Layer()
    if owner == "keras.KerasTensor":
        return keras.layers.Dense(1)(keras.Input((2,)))
    if owner == "ai_edge_litert.interpreter.Interpreter":
        return importlib.import_module("ai_edge_litert.interpreter").Interpreter
    raise AssertionError(f"tests/test_compat.py has no probe for {owner}: add one")


def _owner(name):
    try:
        return importlib.import_module(name)  # a module
    except ImportError:
        return _instance_of(name)


_ENTRIES = sorted(set(kcv._compat.PRIVATE_ATTRIBUTES + export._litert.PRIVATE_ATTRIBUTES
                      + export._common.PRIVATE_ATTRIBUTES))


def test_kcv_compat_lists_custom_ops_internals():
    assert set(custom_ops._compat.PRIVATE_ATTRIBUTES) <= set(kcv._compat.PRIVATE_ATTRIBUTES)
    assert len(_ENTRIES) == 8  # a new private attribute: list it, and give it a probe here


@pytest.mark.parametrize("owner, attribute, why", _ENTRIES,
                         ids=[f"{o}.{a}" for o, a, _ in _ENTRIES])
def test_private_attribute_exists(owner, attribute, why):
    if not hasattr(_owner(owner), attribute):
        pytest.fail(f"`{owner}.{attribute}` is gone in the installed version; kcv reads it "
                    f"because {why}. Find its replacement and update the module that lists it.")


def test_tensorflow_internals_answer_in_the_contexts_they_describe():
    import tensorflow as tf

    assert custom_ops._compat.graph_in_xla_context(tf.compat.v1.get_default_graph()) is False
    seen = []
    tf.function(lambda: seen.append(custom_ops._compat.graph_in_xla_context(
        tf.compat.v1.get_default_graph())) or tf.constant(0), jit_compile=True)()
    assert seen == [True]
    assert custom_ops._compat.in_save_context() is False


def test_a_missing_internal_answers_none(monkeypatch):
    monkeypatch.setattr(custom_ops._compat, "_internal", lambda module, attribute: None)
    assert custom_ops._compat.in_save_context() is None
    assert custom_ops._compat.graph_in_xla_context(None) is None


def test_keras_accessors_name_the_attribute_when_it_is_gone(monkeypatch):
    optimizer = keras.optimizers.SGD(0.1)
    schedule = keras.optimizers.schedules.ExponentialDecay(1.0, 1, 0.5)
    variable = kcv._compat.get_learning_rate(optimizer)
    kcv._compat.set_learning_rate(optimizer, schedule)
    assert kcv._compat.get_learning_rate(optimizer) is schedule
    kcv._compat.set_learning_rate(optimizer, variable)
    assert kcv._compat.get_learning_rate(optimizer) is variable
    del optimizer._learning_rate  # what a Keras that renamed it looks like
    with pytest.raises(RuntimeError, match="keras.optimizers.Optimizer._learning_rate"):
        kcv._compat.get_learning_rate(optimizer)
    with pytest.raises(TypeError, match="Expected a keras.Model. Received: SGD"):
        kcv._compat.detach_distribute_strategy(optimizer)


def test_tflite_ops_names_the_attribute_when_it_is_gone(monkeypatch):
    inputs = keras.Input((4,))
    content = export.convert_to_tflite(keras.Model(inputs, keras.layers.Dense(2)(inputs)))
    assert export.tflite_ops(content) == ["FULLY_CONNECTED"]
    interpreter_class = importlib.import_module("ai_edge_litert.interpreter").Interpreter
    monkeypatch.delattr(interpreter_class, "_get_ops_details")
    with pytest.raises(RuntimeError, match="Interpreter._get_ops_details"):
        export.tflite_ops(content)
