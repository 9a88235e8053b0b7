"""Convert Keras models to TFLite (LiteRT) with builtin kernels only, and run them.

TFLite here means `TFLITE_BUILTINS` (or `TFLITE_BUILTINS_INT8`) only: a model that needs Flex
(select TensorFlow) ops would need the 5+ MB Flex delegate on the phone, so it is refused with
a `FlexOpsError` that lists the ops. (Keras' `model.export(format="litert")` silently allows them.)
"""

import contextlib
import os
import re
import tempfile
import warnings

import numpy as np
import tensorflow as tf

from export._common import input_specs, named_outputs, prepare_path, serving_function
from export._litert import interpreter, tflite_ops

_QUANTIZATIONS = (None, "float16", "dynamic", "int8")
_IO_DTYPES = ("float32", "int8", "uint8")


class FlexOpsError(ValueError):
    """Raised when a model needs ops outside the TFLite builtins. `.ops` lists them."""

    def __init__(self, ops, detail=""):
        self.ops = sorted(set(ops))
        msg = (
            "The model needs TensorFlow ops that are not TFLite builtins (they would need the Flex "
            f"delegate): {', '.join(self.ops) if self.ops else '(unknown)'}."
        )
        if detail:
            msg += f"\nConverter said: {detail}"
        super().__init__(msg)


def _representative(model, representative_data, specs, calibration_steps=None, progress=False):
    if representative_data is None:
        raise ValueError(
            "`representative_data` is required for quantization='int8': give an iterable of "
            "input batches (arrays, or (inputs, targets) tuples as a tf.data dataset yields)."
        )

    def examples():
        for item in representative_data:
            if isinstance(item, (tuple, list)) and len(specs) == 1:
                item = item[0]
            arrays = item if isinstance(item, (tuple, list)) else [item]
            arrays = [np.asarray(a, dtype=s.dtype.as_numpy_dtype) for a, s in zip(arrays, specs)]
            # Feed one example at a time: the converted model has a fixed batch size.
            batch = arrays[0].shape[0] if arrays[0].ndim == len(specs[0].shape) else None
            if batch is None:
                yield arrays
            else:
                b = specs[0].shape[0] or batch
                for i in range(0, batch, b):
                    yield [a[i : i + b] for a in arrays]

    def gen():
        bar = None
        if progress:
            import keras

            total = len(representative_data) if hasattr(representative_data, "__len__") else None
            if calibration_steps is not None:
                total = calibration_steps if total is None else min(total, calibration_steps)
            bar = keras.utils.Progbar(total, unit_name="calibration example")
        for step, arrays in enumerate(examples()):
            if calibration_steps is not None and step >= calibration_steps:
                break
            yield arrays
            if bar is not None:
                bar.update(step + 1)

    return gen


@contextlib.contextmanager
def _converter(model, specs):
    """A converter for the model's serving function, with the weights frozen into constants.

    The serving function (named inputs and outputs, as the SavedModel's `serving_default`) is
    traced once, its variables are folded into constants, and only that constant graph goes
    through a temporary SavedModel, which keeps the signature's names for LiteRT. Converting the
    concrete function directly would keep VAR_HANDLE/READ_VARIABLE ops for Keras 3 variables
    (which int8 calibration cannot run); writing the whole Keras model as a SavedModel first
    gives the same graph but costs ~7x more. The function is traced in a save context (as
    `tf.saved_model.save` traces it), its while loops are kept, and the frozen module is saved
    without gradient functions (a TFLite model needs none), so detectors (RoIAlign's custom
    gradient, NMS loops) freeze too. A model whose function still cannot be frozen falls back to that full
    SavedModel, with a warning. Convert inside the `with` block: the temporary folder is
    removed when it ends, whether the conversion succeeded or not.
    """
    from export.saved_model import write_saved_model

    with tempfile.TemporaryDirectory(prefix="kcv_tflite_") as tmp:
        path = os.path.join(tmp, "saved_model")
        serve = serving_function(model, "float32")
        try:
            _write_frozen_saved_model(model, path, specs, serve)
        except Exception as err:  # noqa: BLE001 - any freezing failure: take the general route
            warnings.warn(f"Freezing the serving function failed ({type(err).__name__}: "
                          f"{str(err)[:500]}); converting the full SavedModel instead, which "
                          "is slower and may keep dynamic shapes that are not builtins.",
                          stacklevel=3)
            path = os.path.join(tmp, "saved_model_full")
            write_saved_model(model, path, specs, serve)
        yield tf.lite.TFLiteConverter.from_saved_model(path, signature_keys=["serving_default"])


def _tracing_for_export():
    """Traces as `tf.saved_model.save` does (its save context): ops that compile their
    internals with nested XLA functions (RoIAlign, NMS, deformable convolution;
    `custom_ops._context`) then keep the portable plain ops, as in the full SavedModel."""
    from tensorflow.python.saved_model import save_context

    return save_context.save_context(tf.saved_model.SaveOptions())


def _write_frozen_saved_model(model, path, specs, serve=None):
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    if serve is None:
        def serve(*args):
            return named_outputs(model, model(list(args) if len(args) > 1 else args[0],
                                              training=False))

    with tf.device("/cpu:0"):
        with _tracing_for_export():
            traced = tf.function(serve).get_concrete_function(*specs)
        # while loops (NMS) stay functional: lowered to v1 Switch/Merge, nested loops no longer
        # convert ("Failed to functionalize Control Flow V1 ops")
        frozen = convert_variables_to_constants_v2(traced, lower_control_flow=False)
        structure = traced.structured_outputs

        module = tf.Module()
        module.serve = tf.function(
            lambda *args: tf.nest.pack_sequence_as(structure, frozen(*args)),
            input_signature=specs)
        # No gradient functions: the converter never reads them, and a custom gradient whose
        # function captures a forward tensor (RoIAlign's, with per-box FPN levels) cannot be
        # saved from a frozen graph ("Found invalid capture ... when saving custom gradients").
        tf.saved_model.save(module, path,
                            signatures={"serving_default": module.serve.get_concrete_function()},
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))


def _find_flex_ops(model, specs):
    """Converts with select TF ops allowed, and lists the ops that ended up outside the builtins."""
    with _converter(model, specs) as conv:
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS,
            tf.lite.OpsSet.SELECT_TF_OPS,
        ]
        conv.allow_custom_ops = True
        try:
            content = conv.convert()
        except Exception:  # pragma: no cover - nothing more to learn
            return []
    return [op for op in tflite_ops(content) if op.startswith("Flex") or op == "CUSTOM"]


def convert_to_tflite(model, quantization=None, representative_data=None, batch_size=1,
                      int8_io=False, input_shapes=None, io_dtype=None, calibration_steps=None,
                      progress=False, float_ops=None, keep_float=None, float_scopes=None):
    """Converts a Keras model to TFLite flatbuffer bytes with builtin ops only.

    A model with a `serving_signature(dtype, batch_size)` method (kcv's detectors) is converted
    through it with `dtype="float32"`: float32 `images` in [0, 1], outputs named by its
    `serving_output_names` (`boxes`, `scores`, `classes`, `num_detections`). With `"int8"`,
    such a model's `serving_float_scopes` and `serving_float_ops` are the default
    `float_scopes` and `keep_float`: a detector's
    convolutions and fully connected layers run in int8, its box arithmetic, NMS and RoIAlign
    in float32 (int8 box coordinates would cost the accuracy), in the same `.tflite`.

    Args:
        model: a built Keras model.
        quantization: `None` (float32), `"float16"` (fp16 weights), `"dynamic"` (int8 weights,
            float activations) or `"int8"` (full integer, needs `representative_data`).
        representative_data: iterable of input batches for `"int8"` calibration; tuples of
            (inputs, targets) are accepted and the targets ignored (a tf.data dataset works).
        batch_size: fixed batch size of the converted model (default 1, as phones run it);
            `None` keeps it dynamic.
        int8_io: with `"int8"`, make the model's inputs and outputs int8 too (default: float32
            in and out, quantized inside); the same as `io_dtype="int8"`.
        input_shapes: optional full shapes, one per model input, overriding `batch_size` (for
            inputs with different leading sizes, e.g. features and boxes). `None` entries stay
            dynamic: `(1, None, None, 3)` gives a fully convolutional model whose input the
            interpreter resizes (`Interpreter.resize_tensor_input`; `run_tflite` does it).
        io_dtype: with `"int8"`, the inputs' and outputs' type: `"float32"` (default), `"int8"`
            or `"uint8"` (quantized with the model's scale and zero point, which
            `run_tflite` applies).
        calibration_steps: use at most this many calibration examples (default: all).
        progress: show a progress bar over the calibration examples.
        float_ops: with `"int8"`, keep the model in float where full-integer kernels do not
            exist (`TFLITE_BUILTINS` allowed beside `TFLITE_BUILTINS_INT8`, so e.g. a ViT's
            layer norms may run in float); default `False`: integer kernels only.
        keep_float: with `"int8"`, what is left in float32 while the rest is quantized
            (selective quantization through `tf.lite.experimental.QuantizationDebugger`): TFLite
            op names in capitals (`["SOFTMAX", "FULLY_CONNECTED"]`, every op of that kind,
            its `denylisted_ops`) and/or TFLite tensor names (the output of one op, its
            `denylisted_nodes`; `export.quantization_debug.layer_errors` lists them with their
            int8 error): the way to keep the accuracy where int8 loses it.
        float_scopes: with `"int8"`, TensorFlow name scopes (e.g. `["generate_proposals"]`,
            the scope names as written, without Keras' `_1` suffixes): every op traced inside
            one stays float32 (selective quantization by node, as `keep_float` by op type).
            Default: the model's `serving_float_scopes` if it has one, else none. Ops without
            integer kernels may then run in float (as with `float_ops=True`).

    Returns:
        `bytes` of the `.tflite` model.

    Raises:
        FlexOpsError: the model needs ops that are not TFLite builtins; lists them.
        ValueError: unknown `quantization`, or `"int8"` without `representative_data`.
    """
    if quantization not in _QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be one of {_QUANTIZATIONS}. Received: quantization={quantization!r}"
        )
    if io_dtype is None:
        io_dtype = "int8" if int8_io else "float32"
    if io_dtype not in _IO_DTYPES:
        raise ValueError(f"`io_dtype` must be one of {_IO_DTYPES}. Received: io_dtype={io_dtype!r}")
    if io_dtype != "float32" and quantization != "int8":
        raise ValueError(f"`io_dtype={io_dtype!r}` needs quantization='int8'. Received: "
                         f"quantization={quantization!r}")
    specs = input_specs(model, batch_size=batch_size, input_shapes=input_shapes)
    if quantization == "int8":
        representative_data = _representative(model, representative_data, specs,
                                              calibration_steps, progress)
    if keep_float is not None and (quantization != "int8" or isinstance(keep_float, str)):
        raise ValueError("`keep_float` is a list of TFLite op or tensor names for "
                         "quantization='int8'. "
                         f"Received: keep_float={keep_float!r}, quantization={quantization!r}")
    if quantization == "int8" and float_scopes is None:
        float_scopes = getattr(model, "serving_float_scopes", None)
    if quantization == "int8" and keep_float is None:
        keep_float = getattr(model, "serving_float_ops", None)
    if float_scopes is not None and (quantization != "int8" or isinstance(float_scopes, str)):
        raise ValueError("`float_scopes` is a list of TensorFlow name scopes for "
                         f"quantization='int8'. Received: float_scopes={float_scopes!r}, "
                         f"quantization={quantization!r}")
    with _converter(model, specs) as conv:
        return _convert(conv, model, specs, quantization, representative_data, io_dtype,
                        bool(float_ops), keep_float, float_scopes)


def _is_op_name(name):
    """`CONV_2D`, `SOFTMAX`: a TFLite op kind; anything else is a tensor name."""
    return re.fullmatch(r"[A-Z][A-Z0-9_]*", name) is not None


def _selective(conv, representative, io_dtype, keep_float, float_scopes=None):
    """Full-integer conversion with the ops or tensors named in `keep_float`, and every op
    inside one of the name scopes `float_scopes`, left in float.

    `tf.lite.experimental.QuantizationDebugger` calibrates once (`calibrated_model`) and
    quantizes with its options' `denylisted_ops` / `denylisted_nodes` (op output names); the
    node names under `float_scopes` are read from the calibrated model before that, and their
    tensors' ranges removed from it (`_drop_calibration`).
    """
    keep_float = list(keep_float or [])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                      tf.lite.OpsSet.TFLITE_BUILTINS]
    nodes = [name for name in keep_float if not _is_op_name(name)]
    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_ops=[name for name in keep_float if _is_op_name(name)],
        denylisted_nodes=nodes, fully_quantize=io_dtype != "float32")
    with warnings.catch_warnings():  # the debugger runs the deprecated tf.lite.Interpreter
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=conv, debug_dataset=representative, debug_options=options)
        if float_scopes:
            options.denylisted_nodes = nodes + scoped_op_names(debugger.calibrated_model,
                                                               float_scopes)
            debugger.calibrated_model = _drop_calibration(debugger.calibrated_model,
                                                          float_scopes)
        return debugger.get_nondebug_quantized_model()


def _scope_pattern(scopes):
    return re.compile(r"(?:^|/)(?:%s)(?:_\d+)?(?:/|$)" % "|".join(map(re.escape, scopes)))


def _in_scopes(name, pattern):
    return any(pattern.search(part) for part in name.split(";"))


def scoped_op_names(model, scopes):
    """The output names of the ops of a `.tflite` model (every subgraph) inside name scopes.

    Args:
        model: `.tflite` bytes (float or calibrated).
        scopes: TensorFlow name scopes as written (`"roi_align"` also matches the `roi_align_1`
            that a second trace gives).

    Returns:
        Sorted op output tensor names (TFLite names an op by its first output; fused ops by
        `a;b`, matched when any part is inside a scope).

    Example:
        >>> import keras
        >>> inputs = keras.Input((4,))
        >>> hidden = keras.layers.Dense(3, activation="relu", name="hidden")(inputs)
        >>> model = keras.Model(inputs, keras.layers.Dense(2, name="head")(hidden), name="net")
        >>> scoped_op_names(convert_to_tflite(model), ["hidden"])
        ['net_1/hidden_1/MatMul;net_1/hidden_1/Relu']
    """
    from tensorflow.lite.tools import flatbuffer_utils

    pattern = _scope_pattern(scopes)
    flat = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    names = set()
    for graph in flat.subgraphs:
        for op in graph.operators or []:
            if op.outputs is not None and len(op.outputs):
                name = graph.tensors[op.outputs[0]].name.decode()
                if _in_scopes(name, pattern):
                    names.add(name)
    return sorted(names)


def _drop_calibration(calibrated, scopes):
    """The calibrated model without the ranges of the tensors inside `scopes` (every subgraph).

    Denylisting a node keeps its kernel in float, but the quantizer still puts a quantize /
    dequantize pair on every tensor it has a range for (the outputs of multi-output ops such as
    UNPACK, WHILE-body arguments): int8 rounding in the middle of float code. A tensor without
    a range cannot be quantized, so it stays exactly float.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    pattern = _scope_pattern(scopes)
    flat = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    for index, graph in enumerate(flat.subgraphs):
        # a loop's body or condition with an op inside the scopes is float code as a whole
        # (its arguments are named by TFLite, not by the scope)
        whole = index > 0 and any(
            op.outputs is not None and len(op.outputs)
            and _in_scopes(graph.tensors[op.outputs[0]].name.decode(), pattern)
            for op in graph.operators or [])
        for tensor in graph.tensors or []:
            if tensor.quantization is not None and (
                    whole or _in_scopes(tensor.name.decode(), pattern)):
                tensor.quantization = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(flat))


def _convert(conv, model, specs, quantization, representative, io_dtype, float_ops,
             keep_float=None, float_scopes=None):
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == "int8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if float_ops:
            conv.target_spec.supported_ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
        if io_dtype != "float32":
            conv.inference_input_type = getattr(tf, io_dtype)
            conv.inference_output_type = getattr(tf, io_dtype)
    try:
        if keep_float or float_scopes:
            return _selective(conv, representative, io_dtype, keep_float, float_scopes)
        return conv.convert()
    except Exception as err:  # the converter raises ConverterError with a long log
        text = str(err)
        named = re.findall(r"(?:Flex|Custom) ops: ([^\n]+)", text)
        if named or "flex" in text.lower() or "custom op" in text.lower():
            ops = sorted({op.strip() for line in named for op in line.split(",") if op.strip()})
            raise FlexOpsError(ops or _find_flex_ops(model, specs)) from err
        raise


def to_tflite(model, path, quantization=None, representative_data=None, overwrite=False,
              batch_size=1, int8_io=False, **kwargs):
    """Writes `model` as a `.tflite` file with builtin ops only. See `convert_to_tflite`.

    Args:
        model, quantization, representative_data, batch_size, int8_io: as `convert_to_tflite`.
        path: the `.tflite` file to write.
        overwrite: replace an existing file; without it an existing path raises.
        **kwargs: the other arguments of `convert_to_tflite` (`input_shapes`, `io_dtype`,
            `calibration_steps`, `progress`, `float_ops`, `keep_float`, `float_scopes`).

    Returns:
        The path written.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> calibration = [np.random.default_rng(i).random((1, 4), "float32") for i in range(8)]
        >>> to_tflite(model, "dense_int8.tflite", quantization="int8",
        ...           representative_data=calibration)
        'dense_int8.tflite'
    """
    path = prepare_path(path, overwrite)
    content = convert_to_tflite(model, quantization, representative_data, batch_size, int8_io,
                                **kwargs)
    with open(path, "wb") as f:
        f.write(content)
    return path


def _quantize(x, detail):
    scale, zero = detail["quantization"]
    if detail["dtype"] in (np.int8, np.uint8) and scale:
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])
    return x.astype(detail["dtype"])


def _dequantize(y, detail):
    scale, zero = detail["quantization"]
    if detail["dtype"] in (np.int8, np.uint8) and scale:
        return (y.astype(np.float32) - zero) * scale
    return y


def run_tflite(model, inputs, output_names=None, input_names=None):
    """Runs a `.tflite` file (or bytes) in the LiteRT interpreter.

    When every input has the same leading (batch) size and the model's batch is fixed and
    smaller, the inputs are run one model-batch at a time. Integer-quantized inputs and outputs
    are quantized and de-quantized with the model's own parameters.

    Args:
        model: path to a `.tflite` file, or its bytes.
        inputs: an array; a dict `{input_name: array}`; or a list of arrays in the order of
            `input_names`.
        output_names: the order to return outputs in (for a model converted by kcv, the Keras
            output layer names: `export.output_names(keras_model)`); default: signature order.
        input_names: the signature input names, in the order of `inputs` when it is a list
            (for a model converted by kcv, the Keras input names: `export.input_names(model)`).
            Required for a list of several arrays: LiteRT lists inputs sorted by name, which
            need not be the model's order.

    Returns:
        A list of float arrays, one per output.
    """
    interp = interpreter(model)
    runner = interp.get_signature_runner()
    sig = interp.get_signature_list()
    key = next(iter(sig))
    in_names = list(sig[key]["inputs"])
    out_names = sig[key]["outputs"]
    if isinstance(inputs, dict):
        feed_all = dict(inputs)
    else:
        arrays = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if input_names is None:
            if len(arrays) > 1:
                raise ValueError(
                    "`input_names` is required to feed a list of several arrays (LiteRT sorts "
                    f"inputs by name: {in_names}). Pass input_names=export.input_names(model) "
                    "or a dict of arrays."
                )
            input_names = in_names
        feed_all = dict(zip(input_names, arrays))
        if len(arrays) != len(in_names):
            feed_all = {f"<array {i}>": a for i, a in enumerate(arrays)}
    if sorted(feed_all) != sorted(in_names):
        raise ValueError(
            f"The model has inputs {sorted(in_names)}; received {sorted(feed_all)}."
        )
    in_details = runner.get_input_details()
    out_details = runner.get_output_details()
    feed_all = {name: np.asarray(a) for name, a in feed_all.items()}
    leading = {a.shape[0] if a.ndim else None for a in feed_all.values()}
    fixed = {int(in_details[name]["shape"][0]) if len(in_details[name]["shape"]) else None
             for name in in_names}
    n = next(iter(leading)) if len(leading) == 1 else None
    step = n
    if n and len(fixed) == 1:
        b = next(iter(fixed))
        if b is not None and 0 < b < n:
            if n % b:
                raise ValueError(f"Batch of {n} is not a multiple of the model's fixed batch {b}.")
            step = b
    results = {name: [] for name in out_names}
    starts = range(0, n, step) if step and step != n else [None]
    for start in starts:
        feed = {}
        for name, arr in feed_all.items():
            chunk = arr if start is None else arr[start:start + step]
            feed[name] = _quantize(chunk, in_details[name])
        out = runner(**feed)
        for name in out_names:
            results[name].append(_dequantize(out[name], out_details[name]))
    ordered = list(output_names) if output_names is not None else list(out_names)
    return [np.concatenate(results[name], axis=0) for name in ordered]


