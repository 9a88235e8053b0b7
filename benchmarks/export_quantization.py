"""Accuracy, size and LiteRT latency of each TFLite mode, per model family, on held-out data.

Trains small models quickly, then converts each to float32, float16, dynamic-range and full
int8 TFLite (float and uint8 input/output) and measures on held-out data:

* segmentation (UNet, DeepLabV3+): foreground mean IoU and Dice on synthetic shapes
  (`kcv.data.make_shapes`, 64x64, train seed 0, 200 held out with seed 10,000, 4 classes);
* classification (ViT on 8x8 digits, MobileNetV2 on digits upsampled to 32x32x3): top-1 on
  scikit-learn's digits (the last 497 of the 1,797 held out);
* detection (`--families faster_rcnn`): COCO AP of a Faster R-CNN on held-out synthetic shapes,
  float32, dynamic and full int8 (float post-processing) only, by
  `benchmarks/export_quantization_detection.py` (its docstring has the settings).
Calibration draws 100 training images only. The quantization debugger
(`export.quantization_debug.layer_errors`, on 32 training images) then ranks the int8 tensors
by their own error; when plain int8 loses more than 1 point, the tensors above
`--keep-float-threshold` quantization steps are kept in float (`keep_float`) and measured too.

Prints one JSON line per family and mode and a Markdown table (docs/export.md shows it), and
writes `<out>/<family>_modes.png` (latency and accuracy per mode) and `<out>/results.json`.

Run:  python benchmarks/export_quantization.py              (all four families)
      python benchmarks/export_quantization.py --families mobilenet_v2
      python benchmarks/export_quantization.py --families unet --quick   (smoke)
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import export  # noqa: E402
from export import evaluate  # noqa: E402
from export.quantization_debug import layer_errors  # noqa: E402
from kcv.data import make_shapes  # noqa: E402
from kcv.losses import BCEDiceLoss  # noqa: E402
from kcv.models import DeepLabV3, MobileNetV2, UNet, VisionTransformer  # noqa: E402

_MODES = ("float32", "float16", "dynamic", "int8", "int8_uint8_io")
_SUSPECT = 0.7  # rmse / scale above which a tensor stays in float (the debugger tutorial's cut)


def _shapes(num_train, num_test, size):
    x_train, y_train = make_shapes(num_train, size, seed=0)
    x_test, y_test = make_shapes(num_test, size, seed=10_000)
    return (np.clip(x_train, 0, 1).astype("float32"), np.asarray(y_train),
            np.clip(x_test, 0, 1).astype("float32"), np.asarray(y_test))


def _digits(size, channels):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    if size != 8:
        images = keras.ops.convert_to_numpy(keras.ops.image.resize(images, (size, size)))
    images = np.repeat(images, channels, axis=-1)
    held_out = 497
    return (images[:-held_out], digits.target[:-held_out], images[-held_out:],
            digits.target[-held_out:])


def _with_bn_momentum(model, momentum):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
    return model


def _family(name, quick):
    """(model, loss, data, epochs, metric)."""
    epochs = 1 if quick else None
    if name == "unet":
        data = _shapes(64 if quick else 1000, 32 if quick else 200, 64)
        model = UNet((64, 64, 3), 4, filters=8, depth=3)
        return model, BCEDiceLoss(), data, epochs or 10, "miou"
    if name == "deeplab_v3_plus":
        data = _shapes(64 if quick else 800, 32 if quick else 200, 64)
        # momentum 0.9: the backbone's 0.999 leaves the moving statistics near their initial
        # values after a few hundred steps, and the model at inference near chance
        model = DeepLabV3((64, 64, 3), 4, alpha=0.35, filters=32, decoder=True,
                          decoder_filters=16, dropout=0.0, backbone_bn_momentum=0.9)
        return model, BCEDiceLoss(), data, epochs or 8, "miou"
    if name == "mobilenet_v2":
        # digits upsampled to 32x32 and repeated to 3 channels; momentum 0.9 as for DeepLab
        # (with keras.applications' 0.999 it stays at chance after 30 epochs of 41 steps)
        model = _with_bn_momentum(MobileNetV2((32, 32, 3), alpha=0.35, classes=10), 0.9)
        return model, "sparse_categorical_crossentropy", _digits(32, 3), epochs or 10, "top1"
    if name == "vit":
        model = VisionTransformer((8, 8, 1), 10, patch_size=2, hidden_dim=64, num_layers=3,
                                  num_heads=4, mlp_dim=128)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return model, loss, _digits(8, 1), epochs or 30, "top1"
    raise ValueError(f"unknown family {name!r}")


def _convert(model, mode, calibration, keep_float=None):
    if mode == "int8_keep_float":
        return export.convert_to_tflite(model, quantization="int8",
                                        representative_data=calibration, keep_float=keep_float)
    if mode == "float32":
        return export.convert_to_tflite(model)
    if mode in ("float16", "dynamic"):
        return export.convert_to_tflite(model, quantization=mode)
    return export.convert_to_tflite(model, quantization="int8", representative_data=calibration,
                                    io_dtype="uint8" if mode == "int8_uint8_io" else None)


def _measure(name, model, mode, calibration, x_test, y_test, reference, metric, threads,
             keep_float=None):
    content = _convert(model, mode, calibration, keep_float)
    figures = evaluate.accuracy(evaluate.predict(content, x_test), y_test)
    row = {"family": name, "mode": mode, **figures,
           "change_points": round(100 * (figures[metric] - reference[metric]), 2),
           "bytes": len(content), "latency_ms": round(evaluate.latency_ms(content, threads, 30), 3)}
    if keep_float:
        row["keep_float"] = keep_float
    print(json.dumps(row), flush=True)
    return row


def run_family(name, quick, out, threads, threshold=_SUSPECT):
    keras.utils.set_random_seed(0)
    model, loss, (x_train, y_train, x_test, y_test), epochs, metric = _family(name, quick)
    model.compile(keras.optimizers.Adam(3e-3 if name != "vit" else 1e-3), loss)
    started = time.time()
    model.fit(x_train, y_train, batch_size=16 if metric == "miou" else 32, epochs=epochs,
              verbose=0, shuffle=True)
    train_s = time.time() - started
    reference = evaluate.accuracy(evaluate.predict(model, x_test), y_test)
    rows = [{"family": name, "mode": "keras", **reference, "train_s": round(train_s, 1)}]
    print(json.dumps(rows[-1]), flush=True)
    calibration = [x_train[i:i + 1] for i in range(100)]  # training images only
    for mode in _MODES:
        rows.append(_measure(name, model, mode, calibration, x_test, y_test, reference, metric,
                             threads))
    # the quantization debugger on training images: each int8 op's own error
    errors = layer_errors(model, calibration[:32])
    rows[0]["worst_tensors"] = [{k: r[k] for k in ("op", "tensor", "rmse_over_scale")}
                                for r in errors[:5]]
    print(json.dumps({"family": name, "worst_tensors": rows[0]["worst_tensors"]}), flush=True)
    suspects = [r["tensor"] for r in errors if r["rmse_over_scale"] > threshold]
    int8 = next(row for row in rows if row["mode"] == "int8")
    if int8["change_points"] < -1.0 and suspects:  # plain int8 misses the 1-point goal
        rows.append(_measure(name, model, "int8_keep_float", calibration, x_test, y_test,
                             reference, metric, threads, keep_float=suspects))
    rows[0]["total_s"] = round(time.time() - started, 1)
    evaluate.plot_modes(rows[1:], os.path.join(out, f"{name}_modes.png"), metric=metric,
                        title=f"{name}: latency ({threads} thread) and {metric}")
    return rows, metric


def _table(results):
    lines = ["| family | metric | Keras | float32 | float16 | dynamic | int8 | int8, uint8 I/O "
             "| int8 change (points) | int8, worst tensors in float (change) |",
             "|" + " --- |" * 10]
    for rows, metric in results:
        by_mode = {row["mode"]: row for row in rows}
        values = [f"{100 * by_mode[m][metric]:.2f}" for m in ("keras",) + _MODES]
        selective = by_mode.get("int8_keep_float")
        selective = (f"{100 * selective[metric]:.2f} ({selective['change_points']:+.2f}, "
                     f"{len(selective['keep_float'])} tensors)" if selective else "not needed")
        lines.append(f"| {rows[0]['family']} | {metric} | " + " | ".join(values)
                     + f" | {by_mode['int8']['change_points']:+.2f} | {selective} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default="unet,vit,deeplab_v3_plus,mobilenet_v2",
                        help="comma-separated: unet, vit, deeplab_v3_plus, mobilenet_v2, "
                        "faster_rcnn (default: the four families of docs/export.md's table)")
    parser.add_argument("--keep-float-threshold", type=float, default=_SUSPECT,
                        help="when int8 loses more than 1 point, tensors whose int8 error "
                        "exceeds this many quantization steps (RMSE / scale) stay in float")
    parser.add_argument("--out", default="runs/export_quantization")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="one epoch, few images (smoke)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    families = args.families.split(",")
    detection = None
    if "faster_rcnn" in families:
        import export_quantization_detection

        families.remove("faster_rcnn")
        detection = export_quantization_detection.run(args.quick, args.out, args.threads)
    results = [run_family(name, args.quick, args.out, args.threads, args.keep_float_threshold)
               for name in families]
    table = _table(results)
    if detection is not None:
        table += "\n" + export_quantization_detection.table(detection[0])
        results.append(detection)
    print(table)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump([rows for rows, _ in results], f, indent=1)
    return results


if __name__ == "__main__":
    main()
