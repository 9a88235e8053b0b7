"""Shared test routines for kcv layers, models and ops.

`check_layer` runs the standard checks every layer and model owes (DESIGN.md):
config round trip, `.keras` save and reload with `safe_mode=True` in a fresh Python process,
forward pass and training step under `mixed_float16`, forward pass under XLA, and conversion to
TFLite with builtin ops only with the same outputs in the LiteRT interpreter.

`check_gradients` runs `tf.test.compute_gradient` in float64 on an op.
"""

import copy
import inspect
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

import export

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _as_list(x):
    if isinstance(x, dict):  # Keras flattens dict outputs in sorted key order
        return [x[k] for k in sorted(x)]
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _model_input(arrays):
    return arrays if len(arrays) > 1 else arrays[0]


def _outputs(model, arrays, training=False):
    out = model(_model_input(arrays), training=training)
    out = [np.asarray(o) for o in _as_list(out)]
    return [o.astype(np.int8) if o.dtype == bool else o for o in out]  # bool masks: diffable


def _wrap(layer, arrays, input_dtypes=None):
    """A functional model around a layer, with inputs shaped like `arrays` (batch dim free)."""
    inputs = []
    for i, a in enumerate(arrays):
        dtype = (input_dtypes or {}).get(i, a.dtype.name if a.dtype != np.float64 else "float32")
        inputs.append(keras.Input(shape=a.shape[1:], dtype=dtype, name=f"in_{i}"))
    out = layer(_model_input(inputs))
    return keras.Model(_model_input(inputs), out)


def _from_config_without_dtype(layer):
    config = dict(layer.get_config())
    config.pop("dtype", None)
    return layer.__class__.from_config(config)


def check_config_round_trip(obj, arrays=None, input_dtypes=None):
    """`from_config(get_config())` gives the same config and, given inputs, the same outputs.

    Comparing outputs (with the original's weights copied over) catches a constructor argument
    that `get_config` forgets: the configs then agree with each other, the behaviour does not.
    """
    config = obj.get_config()
    json.dumps(config)  # must be JSON-serializable for `.keras`
    clone = obj.__class__.from_config(copy.deepcopy(config))  # Functional consumes its dict
    again = clone.get_config()
    changed = sorted(k for k in set(config) | set(again) if config.get(k) != again.get(k))
    assert not changed, (
        f"get_config/from_config round trip changed {changed}: "
        f"{[(config.get(k), again.get(k)) for k in changed][:3]}"
    )
    if arrays is not None:
        original = obj if isinstance(obj, keras.Model) else _wrap(obj, arrays, input_dtypes)
        rebuilt = clone if isinstance(clone, keras.Model) else _wrap(clone, arrays, input_dtypes)
        expected = _outputs(original, arrays)
        _outputs(rebuilt, arrays)
        rebuilt.set_weights(original.get_weights())
        for e, g in zip(expected, _outputs(rebuilt, arrays)):
            np.testing.assert_allclose(g, e, atol=1e-6, rtol=0,
                                       err_msg="the layer rebuilt from its config differs")
    return clone


# One long-lived loader process per test process: it imports kcv as a user's process does and
# loads each saved model with `safe_mode=True`; it never sees the objects the test built (they
# reach it only as `.keras` files), which is what "a fresh process" has to prove. Starting a new
# interpreter per check cost ~5 s of TensorFlow import each, a large share of the suite's time.
_LOADER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, traceback
    import numpy as np, keras
    import kcv  # registers the kcv objects, as a user's process does
    for line in sys.stdin:
        request = json.loads(line)
        tmp, n = request["tmp"], request["inputs"]
        try:
            keras.backend.clear_session()
            model = keras.saving.load_model(os.path.join(tmp, "model.keras"), safe_mode=True)
            arrays = [np.load(os.path.join(tmp, f"in_{i}.npy")) for i in range(n)]
            out = model(arrays if n > 1 else arrays[0], training=False)
            if isinstance(out, dict):  # as `_as_list`: sorted keys, which are checked too
                np.save(os.path.join(tmp, "keys.npy"), np.array(sorted(out)))
                out = [out[k] for k in sorted(out)]
            out = out if isinstance(out, (list, tuple)) else [out]
            for i, o in enumerate(out):
                np.save(os.path.join(tmp, f"out_{i}.npy"), np.asarray(o))
            reply = {"ok": True}
        except Exception:
            reply = {"ok": False, "error": traceback.format_exc()[-3000:]}
        del request
        sys.stdout.write("KCV-LOADER " + json.dumps(reply) + "\\n")
        sys.stdout.flush()
    """
)
_loader = None


def _load_in_other_process(tmp, num_inputs, timeout=300):
    """Runs the loader on `tmp` (model.keras + in_*.npy); returns None or the error text."""
    global _loader
    if _loader is None or _loader.poll() is not None:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=_ROOT)
        log = tempfile.TemporaryFile(mode="w+")  # its stderr, shown if it dies
        _loader = subprocess.Popen([sys.executable, "-u", "-c", _LOADER_SCRIPT], text=True,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=log, env=env)
        _loader.log = log
    _loader.stdin.write(json.dumps({"tmp": tmp, "inputs": num_inputs}) + "\n")
    _loader.stdin.flush()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([_loader.stdout], [], [], deadline - time.monotonic())
        line = _loader.stdout.readline() if ready else ""
        if not line:
            break
        if line.startswith("KCV-LOADER "):
            reply = json.loads(line[len("KCV-LOADER "):])
            return None if reply["ok"] else reply["error"]
    _loader.kill()
    _loader.wait()
    _loader.log.seek(0)
    tail = _loader.log.read()[-3000:]
    _loader = None
    return f"the loader process died or timed out; its stderr ends:\n{tail}"


def check_keras_reload(model, arrays, atol=1e-6):
    """Saves `model` to `.keras`, reloads it in another process with `safe_mode=True`.

    The other process imports only kcv (as a user's does) and gets the model as a file, never
    the test's objects. Dict outputs (e.g. backbones with `return_features=True`) are compared
    key by key.
    """
    out = model(_model_input(arrays), training=False)
    want_keys = sorted(out) if isinstance(out, dict) else None
    expected = [np.asarray(o) for o in _as_list(out)]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        for i, a in enumerate(arrays):
            np.save(os.path.join(tmp, f"in_{i}.npy"), a)
        error = _load_in_other_process(tmp, len(arrays))
        assert error is None, f"reload in a fresh process failed:\n{error}"
        keys_path = os.path.join(tmp, "keys.npy")
        keys = np.load(keys_path).tolist() if os.path.exists(keys_path) else None
        assert keys == want_keys, f"reloaded model returns keys {keys}, original {want_keys}"
        count = len([f for f in os.listdir(tmp) if f.startswith("out_")])
        assert count == len(expected), f"reloaded model gives {count} outputs, not {len(expected)}"
        got = [np.load(os.path.join(tmp, f"out_{i}.npy")) for i in range(count)]
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=atol, rtol=0, err_msg="`.keras` reload differs")


def run_saved_model_without_kcv(path, inputs):
    """Runs a SavedModel's `serving_default` in a fresh process where kcv cannot be imported.

    As in TF Serving: `kcv` and `custom_ops` are made unimportable before TensorFlow loads the
    model, so it must hold everything it needs.

    Args:
        path: the SavedModel directory.
        inputs: dict `{signature input name: array}`.

    Returns:
        `(input_names, outputs)`: the signature's input names and a dict `{output name:
        array}` of everything it returned.
    """
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(os.path.join(tmp, "inputs.npz"), **inputs)
        script = textwrap.dedent(f"""
            import json, os, sys
            sys.modules["kcv"] = None  # as in TF Serving: kcv is not importable
            sys.modules["custom_ops"] = None
            import numpy as np, tensorflow as tf
            fn = tf.saved_model.load({os.fspath(path)!r}).signatures["serving_default"]
            feed = dict(np.load(os.path.join({tmp!r}, "inputs.npz")))
            out = fn(**{{k: tf.constant(v) for k, v in feed.items()}})
            np.savez(os.path.join({tmp!r}, "outputs.npz"), **{{k: v.numpy() for k, v in out.items()}})
            with open(os.path.join({tmp!r}, "names.json"), "w") as f:
                json.dump(sorted(fn.structured_input_signature[1]), f)
        """)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        with open(os.path.join(tmp, "names.json")) as f:
            names = json.load(f)
        outputs = dict(np.load(os.path.join(tmp, "outputs.npz")))
    return names, outputs


def assert_same_detections(got, want, box_atol=1e-3, score_atol=1e-4):
    """An exported detector's outputs against the Keras model's: the same number of detections
    and classes, boxes within `box_atol` pixels, scores within `score_atol`.

    Args:
        got, want: dicts of arrays `{"boxes" [B, D, 4], "scores" [B, D], "classes" [B, D],
            "num_detections" [B]}`.
    """
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
    np.testing.assert_array_equal(got["classes"], want["classes"])
    np.testing.assert_allclose(got["boxes"], want["boxes"], atol=box_atol, rtol=0)
    np.testing.assert_allclose(got["scores"], want["scores"], atol=score_atol, rtol=0)


def convert_to_tflite_with_fallbacks(model, **kwargs):
    """`export.convert_to_tflite(model, **kwargs)` and the fallback warnings it gave.

    `export.convert_to_tflite` freezes the serving function and converts that constant graph;
    when freezing fails it warns and converts the full SavedModel instead (slower, and it may
    keep dynamic shapes that are not builtins). A test asserts the list is empty.

    Returns:
        `(content, fallbacks)`: the `.tflite` bytes and the messages of the fallback warnings.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        content = export.convert_to_tflite(model, **kwargs)
    fallbacks = [str(w.message) for w in caught
                 if "Freezing the serving function failed" in str(w.message)]
    return content, fallbacks


def check_mixed_precision(factory, arrays, reference_model, rtol=5e-2, train=True):
    """Forward pass and one training step under `mixed_float16`.

    The mixed-precision model gets the float32 model's weights, so its outputs must match the
    float32 outputs within float16 accuracy; a training step must give a finite loss and
    change the trainable weights.
    """
    expected = _outputs(reference_model, arrays)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        obj = factory()
        model = obj if isinstance(obj, keras.Model) else _wrap(obj, arrays)
        model.set_weights(reference_model.get_weights())
        got = _outputs(model, arrays)
        for e, g in zip(expected, got):
            g = g.astype(np.float32)
            assert np.all(np.isfinite(g)), "non-finite output under mixed_float16"
            scale = max(1.0, float(np.max(np.abs(e))) if e.size else 1.0)
            np.testing.assert_allclose(g, e, atol=rtol * scale, rtol=0,
                                       err_msg="mixed_float16 output differs from float32")
        if train and model.trainable_weights:
            targets = [np.zeros_like(o, dtype=np.float32) + 0.5 for o in expected]
            # Eagerly: the same train_step (LossScaleOptimizer, loss scaling, casts) without
            # tracing the whole model into a graph, which costs more than the step itself.
            model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", run_eagerly=True)
            before = [np.array(w) for w in model.trainable_weights]
            hist = model.fit(_model_input(arrays), _model_input(targets) if len(targets) > 1
                             else targets[0], epochs=1, batch_size=arrays[0].shape[0], verbose=0)
            loss = hist.history["loss"][-1]
            assert np.isfinite(loss), f"training step under mixed_float16 gave loss={loss}"
            after = [np.array(w) for w in model.trainable_weights]
            assert any(not np.array_equal(b, a) for b, a in zip(before, after)), (
                "a training step under mixed_float16 did not change any weight"
            )
    finally:
        keras.mixed_precision.set_global_policy("float32")


def check_xla(model, arrays, atol=1e-5):
    """The forward pass compiles with `jit_compile=True` and matches eager execution."""
    expected = _outputs(model, arrays)
    fn = tf.function(lambda *xs: model(_model_input(list(xs)), training=False), jit_compile=True)
    got = [np.asarray(o) for o in _as_list(fn(*arrays))]
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=atol, rtol=0, err_msg="XLA output differs")


def check_tflite(model, arrays, atol=1e-4, batch_size="fixed"):
    """Converts with TFLITE_BUILTINS only and compares LiteRT outputs with Keras (max abs diff).

    With `batch_size="fixed"` every input gets the static shape of its array (inputs may have
    different leading sizes, e.g. features and boxes); `None` keeps the batch dynamic.

    Returns the `.tflite` bytes.
    """
    expected = _outputs(model, arrays)
    shapes = [a.shape for a in arrays] if batch_size == "fixed" else None
    content = export.convert_to_tflite(model, batch_size=batch_size if shapes is None else 1,
                                       input_shapes=shapes)
    ops = export.tflite_ops(content)
    bad = [op for op in ops if op.startswith("Flex") or op == "CUSTOM"]
    assert not bad, f"non-builtin ops in the TFLite model: {bad}"
    got = export.run_tflite(content, arrays, output_names=export.output_names(model),
                            input_names=export.input_names(model))
    for e, g in zip(expected, got):
        assert e.shape == g.shape, f"TFLite output shape {g.shape} != Keras {e.shape}"
        diff = float(np.max(np.abs(e - g))) if e.size else 0.0
        assert diff <= atol, f"TFLite max abs diff {diff} > {atol}"
    return content


def check_layer(factory, inputs, *, config=True, keras_reload=True, mixed_precision=True,
                train=True, xla=True, tflite=True, xla_atol=1e-5, tflite_atol=1e-4,
                mixed_precision_rtol=5e-2, input_dtypes=None):
    """The standard checks for a layer or model (DESIGN.md, "Tests and CI").

    Args:
        factory: a zero-argument callable returning a new layer or model (called again under
            `mixed_float16`), or a layer instance (re-created from its config there).
        inputs: an array or list of arrays (batch first) to feed.
        config, keras_reload, mixed_precision, train, xla, tflite: which checks to run
            (all by default; switching one off needs a reason in the test).
        xla_atol, tflite_atol, mixed_precision_rtol: tolerances.
        input_dtypes: `{input_index: dtype}` for non-float inputs when wrapping a layer.

    Returns:
        The float32 Keras model that was checked (a layer is wrapped in a functional model).
    """
    arrays = [np.asarray(a) for a in _as_list(inputs)]
    if isinstance(factory, keras.Model):
        raise TypeError("check_layer needs a factory for models, so that it can rebuild them "
                        "under mixed_float16: pass `lambda: MyModel(...)`.")
    if isinstance(factory, keras.layers.Layer):
        instance = factory

        def factory():
            return _from_config_without_dtype(instance)

        obj = instance
    else:
        obj = factory()
    model = obj if isinstance(obj, keras.Model) else _wrap(obj, arrays, input_dtypes)
    _outputs(model, arrays)  # builds everything
    if config:
        check_config_round_trip(obj, arrays, input_dtypes)
    if keras_reload:
        check_keras_reload(model, arrays)
    if xla:
        check_xla(model, arrays, atol=xla_atol)
    if tflite:
        check_tflite(model, arrays, atol=tflite_atol)
    if mixed_precision:
        check_mixed_precision(factory, arrays, model, rtol=mixed_precision_rtol, train=train)
    return model


# --------------------------------------------------------------------------------------------
# Ops (custom_ops): the op contract of DESIGN.md in one call


def _numpy_outputs(out):
    return [np.asarray(o) for o in tf.nest.flatten(out)]


def _grad_names(inputs, grad_args):
    if grad_args is not None:
        return list(grad_args)
    return [k for k, v in inputs.items()
            if isinstance(v, (np.ndarray, tf.Tensor)) and np.asarray(v).dtype.kind == "f"]


def check_op(op, reference, make_inputs, *, dtypes=("float32", "float64"), seeds=(0, 1, 2),
             grad_args=None, backward=True, gradients=True, xla=True, error_cases=(),
             atol=None, grad_tolerance=None, xla_atol=1e-5):
    """The standard checks for a custom op (DESIGN.md, "Op contract").

    1. Forward: `op(**inputs)` equals `reference(**inputs)` for every dtype in `dtypes` and
       every seed, and float outputs keep the input dtype.
    2. Backward (`backward=True`): in float64, the gradient of `sum(op(...) * dy)` for a random
       `dy` equals that of the reference (which must then be differentiable TensorFlow, e.g.
       the op's private autodiff `_<op>_reference`).
    3. Gradient check (`gradients=True`): `tf.test.compute_gradient` in float64 for every seed
       (`check_gradients`), with respect to `grad_args`.
    4. Graph and XLA (`xla=True`): under `tf.function` and `tf.function(jit_compile=True)` the
       outputs, and the gradients of step 2 unless both gradient checks are off, equal eager
       (float32, first seed).
    5. Error cases: each `(overrides, exception, match)` in `error_cases` updates the inputs of
       the first seed with the dict `overrides` and must raise `exception` whose message
       matches the regular expression `match`.

    Args:
        op: the op, called with keyword arguments.
        reference: a function with the same signature giving the expected outputs (a NumPy
            transcription or the op's autodiff reference); its outputs may be NumPy arrays.
        make_inputs: `make_inputs(seed, dtype)` returning a dict of keyword arguments; float
            arrays in `dtype`, the others (indices, sizes, flags) as the op wants them.
        dtypes: float dtypes for the forward comparison.
        seeds: seeds for the forward comparison and the gradient check.
        grad_args: names of the inputs to differentiate (default: every float array).
        backward, gradients, xla: which checks to run (switching one off needs a reason).
        error_cases: `(overrides, exception, match)` triples, see above.
        atol: `{dtype: tolerance}` of the forward comparison (default 1e-5 for float32 and
            1e-10 for float64).
        grad_tolerance: keyword arguments of `check_gradients` (`delta`, `atol`, `rtol`).
        xla_atol: tolerance between XLA and eager.

    Returns:
        The eager outputs (flattened list of arrays) for the first seed and dtype.
    """
    atol = {"float16": 1e-2, "float32": 1e-5, "float64": 1e-10, **(atol or {})}
    first = None
    for dtype in dtypes:
        for seed in seeds:
            inputs = make_inputs(seed, dtype)
            got = _numpy_outputs(op(**inputs))
            want = _numpy_outputs(reference(**inputs))
            first = got if first is None else first
            assert len(got) == len(want), f"op gives {len(got)} outputs, reference {len(want)}"
            for i, (g, w) in enumerate(zip(got, want)):
                assert g.shape == w.shape, f"output {i} shape {g.shape} != reference {w.shape}"
                if g.dtype.kind == "f":
                    assert g.dtype == np.dtype(dtype), (
                        f"output {i} is {g.dtype} for {dtype} inputs (ops return the input dtype)"
                    )
                np.testing.assert_allclose(
                    g, w, atol=atol[dtype], rtol=0,
                    err_msg=f"forward output {i} differs from the reference ({dtype}, seed {seed})")
    if backward or gradients:
        # One trace for all seeds: compute_gradient calls the function once per input element.
        traced = tf.function(lambda values, inputs: op(**{**inputs, **values}))
        for seed in seeds:
            inputs = make_inputs(seed, "float64")
            names = _grad_names(inputs, grad_args)
            if backward:
                got = _forward_and_gradients(op, inputs, names, seed)
                want = _forward_and_gradients(reference, inputs, names, seed)
                for n, g, w in zip(names, got[1], want[1]):
                    np.testing.assert_allclose(
                        g, w, atol=1e-10, rtol=1e-8,
                        err_msg=f"gradient of `{n}` differs from the reference's (seed {seed})")
            if gradients:
                others = {k: tf.constant(v) if isinstance(v, np.ndarray) else v
                          for k, v in inputs.items() if k not in names}

                def fn(*values, others=others, names=names):
                    return traced(dict(zip(names, values)), others)

                check_gradients(fn, [inputs[n] for n in names], **(grad_tolerance or {}))
    if xla:
        inputs = make_inputs(seeds[0], "float32")
        names = _grad_names(inputs, grad_args) if backward or gradients else []
        eager = _forward_and_gradients(op, inputs, names, seeds[0])
        for mode, jit in (("tf.function", False), ("XLA", True)):
            compiled = tf.function(lambda kw: _forward_and_gradients(op, kw, names, seeds[0]),
                                   jit_compile=jit)(inputs)
            for what, e_list, c_list in zip(("output", "gradient"), eager, compiled):
                for i, (e, c) in enumerate(zip(e_list, c_list)):
                    np.testing.assert_allclose(
                        np.asarray(c), e, atol=xla_atol, rtol=0,
                        err_msg=f"{what} {i} under {mode} differs from eager")
    for overrides, exception, match in error_cases:
        _check_error_case(op, {**make_inputs(seeds[0], dtypes[0]), **overrides}, overrides,
                          exception, match)
    return first


def _forward_and_gradients(fn, inputs, names, seed):
    """`(outputs, gradients)` of `fn(**inputs)`, gradients of `sum(outputs * dy)` (dy seeded)
    with respect to the inputs `names` (zeros where `fn` gives none)."""
    variables = {n: tf.convert_to_tensor(inputs[n]) for n in names}
    with tf.GradientTape() as tape:
        tape.watch(list(variables.values()))
        outs = tf.nest.flatten(fn(**{**inputs, **variables}))
        rng = np.random.default_rng(seed)
        floats = [o for o in outs if o.dtype.is_floating]
        loss = tf.add_n([tf.reduce_sum(o * rng.normal(size=o.shape).astype(o.dtype.as_numpy_dtype))
                         for o in floats]) if floats and names else None
    grads = tape.gradient(loss, list(variables.values())) if loss is not None else []
    grads = [tf.zeros_like(variables[n]) if g is None else g for n, g in zip(names, grads)]
    if tf.executing_eagerly():
        return [np.asarray(o) for o in outs], [np.asarray(g) for g in grads]
    return outs, grads


def _check_error_case(op, inputs, overrides, exception, match):
    try:
        op(**inputs)
    except exception as e:
        assert re.search(match, str(e)), (
            f"{exception.__name__} for {sorted(overrides)} says {str(e)!r}, expected {match!r}")
    else:
        raise AssertionError(f"error case {sorted(overrides)} did not raise {exception.__name__}")


def check_gradients(fn, args, *, delta=1e-4, atol=1e-6, rtol=1e-5):
    """float64 `tf.test.compute_gradient` check of `fn(*args)` with respect to every arg.

    Args:
        fn: a function of float64 tensors (wrap the op to close over integer arguments).
        args: float64 arrays.
        delta: finite-difference step.
        atol, rtol: tolerance between theoretical and numerical Jacobians.
    """
    args = [tf.constant(np.asarray(a, dtype=np.float64)) for a in args]
    theoretical, numerical = tf.test.compute_gradient(fn, args, delta=delta)
    for i, (t, n) in enumerate(zip(theoretical, numerical)):
        np.testing.assert_allclose(
            t, n, atol=atol, rtol=rtol, err_msg=f"gradient of argument {i} disagrees with finite differences"
        )


# === Losses ===

# The Keras 3.15 reductions (`keras.losses.Loss(reduction=...)`) as NumPy of the per-sample
# losses, without sample weights; "none" and None return the per-sample values themselves.
_LOSS_REDUCTIONS = {
    "sum": np.sum,
    "sum_over_batch_size": np.mean,
    "mean": np.mean,
    "mean_with_sample_weight": np.mean,
}


def _function_arguments(loss_fn, kwargs):
    """The part of `kwargs` that `loss_fn` takes (all of it if it takes `**kwargs`)."""
    params = inspect.signature(loss_fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(kwargs)
    names = {p.name for p in params}
    return {k: v for k, v in kwargs.items() if k in names}


def _as_json(value):
    return json.loads(json.dumps(value))


def _loss_model(loss, y_pred):
    """A model that returns its input (no weights), compiled with `loss`: its `evaluate` on
    `(y_pred, y_true)` is the loss of `y_pred`, computed by Keras' compiled (graph) path."""
    inputs = keras.Input(shape=y_pred.shape[1:], dtype="float32")
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    model.compile(optimizer="sgd", loss=loss)
    return model


def _evaluate(model, y_true, y_pred):
    return float(model.evaluate(y_pred, y_true, batch_size=len(y_pred), verbose=0))


def _close(got, expected, rtol, atol, what):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(expected, np.float64),
                               rtol=rtol, atol=atol, err_msg=what)


def check_loss(loss_fn, loss_cls, y_true, y_pred, *, function_axis=None, package="kcv",
               rtol=1e-5, atol=1e-6, keras_reload=True, mixed_precision=True,
               mixed_precision_rtol=1e-2, **kwargs):
    """The standard checks for a loss given as a function plus a `keras.losses.Loss` class.

    1. Function == class: `loss_cls(reduction="none", **kwargs)` (and `reduction=None`) gives
       `loss_fn(y_true, y_pred, **kwargs)` for every sample.
    2. Reductions: each Keras 3.15 reduction ("sum", "sum_over_batch_size", "mean",
       "mean_with_sample_weight"), also with a `sample_weight`, against NumPy of those
       per-sample values.
    3. Config: `get_config` is JSON-serializable and returns every argument in `kwargs`,
       `keras.losses.deserialize(serialize(loss))` gives the same config and the same value, and
       the class is registered as `"{package}>{ClassName}"`.
    4. `.keras`: a tiny model compiled with the loss is saved and reloaded with
       `safe_mode=True`; `evaluate` gives the loss value before and after.
    5. Mixed precision: float16 `y_pred` (and float16 floating `y_true`) gives a finite loss
       close to the float32 one, through the function and through the class with
       `dtype="mixed_float16"`.

    Args:
        loss_fn: the loss function `loss_fn(y_true, y_pred, **kwargs)`; it gets the part of
            `kwargs` its signature names.
        loss_cls: the `keras.losses.Loss` subclass.
        y_true, y_pred: arrays, batch first.
        function_axis: for an element-wise function whose class averages over an axis (as
            Keras' binary losses average the last axis), that axis; None when the function
            already gives what the class reduces.
        package: the package the class must be registered under.
        rtol, atol: tolerance of the float32 comparisons.
        keras_reload, mixed_precision: which of checks 4 and 5 to run (switching one off
            needs a reason in the test).
        mixed_precision_rtol: tolerance of float16 against float32, relative to
            `max(1, |loss|)`.
        **kwargs: constructor arguments of `loss_cls`.

    Returns:
        The per-sample losses (NumPy float64) of the function.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred, np.float32)
    fn_kwargs = _function_arguments(loss_fn, kwargs)

    # 1. function == class with no reduction
    values = np.asarray(loss_fn(y_true, y_pred, **fn_kwargs), np.float64)
    if function_axis is not None:
        values = values.mean(axis=function_axis)
    for none in ("none", None):
        got = np.asarray(loss_cls(reduction=none, **kwargs)(y_true, y_pred))
        assert got.shape == values.shape, (
            f"{loss_cls.__name__}(reduction={none!r}) gives shape {got.shape}, the function "
            f"{values.shape}")
        _close(got, values, rtol, atol, f"{loss_cls.__name__}(reduction={none!r}) differs "
                                        f"from {getattr(loss_fn, '__name__', loss_fn)}")

    # 2. reductions against NumPy, with and without sample weights
    weights = np.random.default_rng(0).uniform(0.5, 1.5, values.shape).astype(np.float32)
    for reduction, reduce in _LOSS_REDUCTIONS.items():
        loss = loss_cls(reduction=reduction, **kwargs)
        _close(loss(y_true, y_pred), reduce(values), rtol, atol,
               f"reduction={reduction!r} differs from NumPy")
        weighted = values * weights
        expected = (weighted.sum() if reduction == "sum" else
                    weighted.sum() / weights.sum() if reduction == "mean_with_sample_weight"
                    else weighted.mean())
        _close(loss(y_true, y_pred, sample_weight=weights), expected, rtol, atol,
               f"reduction={reduction!r} with sample_weight differs from NumPy")

    # 3. config round trip and registration
    loss = loss_cls(**kwargs)
    value = float(loss(y_true, y_pred))
    config = loss.get_config()
    json.dumps(config)
    for key, arg in kwargs.items():
        assert key in config and _as_json(config[key]) == _as_json(arg), (
            f"{loss_cls.__name__}.get_config() does not return {key}={arg!r}: "
            f"{config.get(key, '<missing>')!r}")
    expected_name = f"{package}>{loss_cls.__name__}"
    assert keras.saving.get_registered_name(loss_cls) == expected_name, (
        f"{loss_cls.__name__} is registered as {keras.saving.get_registered_name(loss_cls)!r}, "
        f"not {expected_name!r}")
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(clone) is loss_cls, f"deserialize gave {type(clone).__name__}"
    assert _as_json(clone.get_config()) == _as_json(config), "config round trip changed"
    _close(float(clone(y_true, y_pred)), value, rtol, atol, "the loss rebuilt from its config "
                                                             "differs")

    # 4. `.keras` round trip of a model compiled with the loss
    if keras_reload:
        model = _loss_model(loss, y_pred)
        _close(_evaluate(model, y_true, y_pred), value, rtol, atol,
               "model.evaluate with the compiled loss differs from the loss")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "loss_model.keras")
            model.save(path)
            loaded = keras.saving.load_model(path, safe_mode=True)
        assert type(loaded.loss) is loss_cls, f"reloaded loss is {type(loaded.loss).__name__}"
        _close(_evaluate(loaded, y_true, y_pred), value, rtol, atol,
               "the loss of the `.keras`-reloaded model differs")

    # 5. float16 predictions
    if mixed_precision:
        half_pred = y_pred.astype(np.float16)
        half_true = y_true.astype(np.float16) if y_true.dtype.kind == "f" else y_true
        scale = max(1.0, float(np.max(np.abs(values))) if values.size else 1.0)
        half = np.asarray(loss_fn(half_true, half_pred, **fn_kwargs), np.float64)
        if function_axis is not None:
            half = half.mean(axis=function_axis)
        assert np.all(np.isfinite(half)), "the loss function is not finite for float16 inputs"
        _close(half, values, 0, mixed_precision_rtol * scale,
               "the loss function on float16 inputs differs from float32")
        got = float(loss_cls(dtype="mixed_float16", **kwargs)(half_true, half_pred))
        assert np.isfinite(got), "the loss class under mixed_float16 is not finite"
        _close(got, value, 0, mixed_precision_rtol * max(1.0, abs(value)),
               "the loss class under mixed_float16 differs from float32")
    return values


def tiny_detection_backbone(size):
    """A detection backbone small enough for fast tests: four stride-2 conv stages after a
    stride-2 stem, the dict `C2`..`C5` at strides 4..32 that `kcv.models.FasterRCNN` takes."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    out = {}
    for level, filters in zip(("C2", "C3", "C4", "C5"), (8, 16, 16, 16)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
        out[level] = x
    return keras.Model(inputs, out, name="tiny")


def tiny_faster_rcnn(size=64, **kwargs):
    """A `kcv.models.FasterRCNN` on `tiny_detection_backbone` with small heads and proposal
    counts, at a fixed `size` x `size` input (`kwargs` go to the constructor)."""
    from kcv.models.detection import FasterRCNN

    return FasterRCNN(3, backbone=tiny_detection_backbone(size), input_shape=(size, size, 3),
                      fpn_filters=16, representation_size=32, rpn_pre_nms_top_n=(200, 100),
                      rpn_post_nms_top_n=(100, 50), box_batch_size_per_image=64, **kwargs)
