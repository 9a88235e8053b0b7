"""The `kcv` command (`python -m kcv`): train, lr-find, export, verify, serve, receptive-field.

The one module that joins kcv and `export/` (DESIGN.md); installed as the `kcv` console script.

    kcv train --model unet --data synthetic --epochs 10 --output runs/unet
    kcv lr-find --model unet --data synthetic --output lr_find.png
    kcv export runs/unet/model.keras --format saved_model --serving uint8 exports/unet/1
    kcv export runs/unet/model.keras --format tflite --quantize int8 --calibration synthetic unet.tflite
    kcv verify unet.tflite --reference runs/unet/model.keras --data synthetic --plot modes.png
    kcv serve exports/unet --port 8501
    kcv receptive-field unet --input-size 256

`--data` is `synthetic` (kcv.data.synthetic shapes, 4 classes) or a folder holding `images/`
and `masks/` (kcv.data.segmentation_folder; give `--num-classes`). Bad arguments print one
line, `kcv: error: ...`, and exit with status 2 (1 when the command itself fails).
"""

import argparse
import json
import os
import sys

_MODELS = {"unet": "UNet", "unet_plus_plus": "UNetPlusPlus", "hrnet": "HRNet",
           "deeplab_v3": "DeepLabV3"}
_QUANTIZE = ("none", "float16", "dynamic", "int8")
_SCHEDULES = ("constant", "cosine", "step", "multistep", "exponential", "linear-tail")


class _Error(Exception):
    """A user error: printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _add_model_and_data(p):
    p.add_argument("--model", default="unet", choices=sorted(_MODELS),
                   help="model builder (default: unet)")
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' or a folder with images/ and masks/ (default: synthetic)")
    p.add_argument("--num-classes", type=_positive_int, default=None,
                   help="classes in the masks (synthetic: 4; required for a folder)")
    p.add_argument("--image-size", type=_positive_int, default=64,
                   help="square input size in pixels (default: 64)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="global batch (default: 8)")
    p.add_argument("--num-images", type=_positive_int, default=256,
                   help="synthetic training images (default: 256; validation: a quarter)")
    p.add_argument("--filters", type=_positive_int, default=None,
                   help="base filters of unet/unet_plus_plus (default: the builder's)")
    p.add_argument("--depth", type=_positive_int, default=None,
                   help="downsamplings of unet/unet_plus_plus (default: the builder's)")
    p.add_argument("--loss", default="ce+dice", choices=("ce", "dice", "ce+dice", "dice+focal"),
                   help="cross-entropy, Dice, their sum, or Dice + focal (default: ce+dice)")
    p.add_argument("--mixed-precision", action="store_true",
                   help="train under the mixed_float16 policy (loss scaling by Keras)")
    p.add_argument("--seed", type=int, default=0, help="data and initialisation seed")


def _add_preprocess(p):
    p.add_argument("--preprocess", default="unit",
                   choices=("unit", "symmetric", "imagenet", "none"),
                   help="how pixels in [0, 255] become the model's input: unit (x / 255, as "
                   "kcv.data; default), symmetric (x / 127.5 - 1), imagenet (mean/std), none")


def _parser():
    parser = _Parser(prog="kcv", description="kcv command-line tools: train segmentation "
                     "models, run the learning-rate range test, export, convert torchvision "
                     "detectors, receptive fields.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a segmentation model (resumable; multi-device "
                       "and multi-worker via kcv.training.strategy())",
                       description="Train a segmentation model. Re-running the same command "
                       "after a crash resumes from the last finished epoch.")
    _add_model_and_data(t)
    t.add_argument("--epochs", type=_positive_int, default=10, help="epochs (default: 10)")
    t.add_argument("--lr", type=_positive_float, default=1e-3,
                   help="(peak) learning rate of Adam (default: 1e-3)")
    t.add_argument("--schedule", default="constant", choices=_SCHEDULES,
                   help="learning-rate schedule (default: constant)")
    t.add_argument("--warmup-epochs", type=int, default=0, help="cosine: warmup epochs")
    t.add_argument("--step-size", type=_positive_int, default=10, help="step: epochs per decay")
    t.add_argument("--milestones", default="", help="multistep: comma-separated epochs")
    t.add_argument("--gamma", type=_positive_float, default=0.1,
                   help="step/multistep/exponential: decay factor")
    t.add_argument("--decay-epochs", type=_positive_int, default=None,
                   help="linear-tail: epochs of the final linear decay (default: epochs // 2)")
    t.add_argument("--output", default="runs/kcv",
                   help="folder for model.keras, history.json, checkpoints/ and the backup")

    f = sub.add_parser("lr-find", help="learning-rate range test; writes the loss-vs-LR PNG",
                       description="Learning-rate range test (the model is left untrained).")
    _add_model_and_data(f)
    f.add_argument("--start-lr", type=_positive_float, default=1e-6)
    f.add_argument("--end-lr", type=_positive_float, default=10.0)
    f.add_argument("--num-steps", type=_positive_int, default=100)
    f.add_argument("--smoothing", type=float, default=0.98,
                   help="moving-average factor of the loss, in [0, 1) (default: 0.98)")
    f.add_argument("--output", default="lr_find.png",
                   help="PNG path (default: lr_find.png); the curve goes beside it as .json")

    e = sub.add_parser("export", help="export a .keras model to a SavedModel or a .tflite file",
                       description="Export a .keras model: a SavedModel for TF Serving (uint8 "
                       "images of any size in, named results out) or a builtins-only .tflite "
                       "file (float32, float16, dynamic-range or full-integer int8).")
    e.add_argument("model", help="path of a .keras model")
    e.add_argument("out", nargs="?", default=None,
                   help="output .tflite file or SavedModel folder (or give --output)")
    e.add_argument("--output", default=None, help="the same as OUT")
    e.add_argument("--format", default="tflite", choices=("tflite", "saved_model"))
    e.add_argument("--quantize", "--quantization", dest="quantize", default="none",
                   choices=_QUANTIZE, help="tflite: none (float32), float16, dynamic (int8 "
                   "weights) or int8 (full integer, needs --calibration) (default: none)")
    e.add_argument("--calibration", default=None,
                   help="int8 calibration images: 'synthetic' (kcv shapes), 'digits' "
                   "(scikit-learn), or a folder of images (or holding images/)")
    e.add_argument("--calibration-steps", type=_positive_int, default=100,
                   help="calibration images to use (default: 100)")
    e.add_argument("--serving", default=None, choices=("uint8", "float", "none"),
                   help="saved_model: what serving_default takes (default: uint8; none: the "
                   "model's own inputs and outputs); tflite int8: uint8 makes the input and "
                   "output uint8 (default: float32)")
    _add_preprocess(e)
    e.add_argument("--version", type=_positive_int, default=None,
                   help="saved_model: write OUT/VERSION/ (TF Serving's layout)")
    e.add_argument("--float-ops", action="store_true",
                   help="int8: keep ops without integer kernels in float")
    e.add_argument("--dynamic-size", action="store_true",
                   help="tflite: leave height and width dynamic (fully convolutional models; "
                   "the interpreter's resize_tensor_input sets them)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output")

    v = sub.add_parser("verify", help="check exported models: parity, ops, size, latency, "
                       "accuracy change", description="Check .tflite files (and SavedModels): "
                       "parity with the .keras model, op list, size, LiteRT latency and, with "
                       "--data, the accuracy change; --plot draws latency and accuracy per file.")
    v.add_argument("artifacts", nargs="+", metavar="ARTIFACT",
                   help=".tflite file(s) or SavedModel folder(s)")
    v.add_argument("--reference", default=None, help="the .keras model they came from")
    v.add_argument("--data", default=None,
                   help="held-out data: 'synthetic' (segmentation), 'digits' (classification), "
                   "or a folder with images/ and masks/")
    v.add_argument("--num-images", type=_positive_int, default=64,
                   help="held-out images (default: 64)")
    _add_preprocess(v)
    v.add_argument("--threads", type=_positive_int, default=1, help="LiteRT threads")
    v.add_argument("--runs", type=_positive_int, default=20, help="timed runs (median)")
    v.add_argument("--plot", default=None, help="PNG of latency and accuracy per artifact")

    sv = sub.add_parser("serve", help="serve a versioned SavedModel folder over TF Serving's "
                       "REST API (standard library; for trying a model without TF Serving)")
    sv.add_argument("base_path", help="folder holding numbered versions (e.g. exports/unet)")
    sv.add_argument("--name", default=None, help="model name in the URLs (default: folder name)")
    sv.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8501, help="port (default: 8501)")

    c = sub.add_parser("convert-torchvision",
                       help="convert a torchvision Faster R-CNN checkpoint to a Keras model",
                       description="Convert a torchvision Faster R-CNN state dict (.pth, which "
                       "needs torch: pip install kcv[torch]; or .npz) to a Keras model "
                       "(OUT.keras) or weights (OUT.weights.h5, printed config to rebuild "
                       "kcv.models.detection.TorchvisionFasterRCNN).")
    c.add_argument("checkpoint", help="torchvision state dict: .pth or .npz")
    c.add_argument("output", help="OUT.keras (model) or OUT.weights.h5 (weights)")
    c.add_argument("--architecture", default="fasterrcnn_resnet50_fpn",
                   help="torchvision builder name (default: fasterrcnn_resnet50_fpn)")
    c.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    c.add_argument("--min-size", type=_positive_int, default=800,
                   help="torchvision's min_size (default: 800)")
    c.add_argument("--max-size", type=_positive_int, default=1333,
                   help="torchvision's max_size (default: 1333)")

    r = sub.add_parser("receptive-field", help="receptive field of a model's output (or a layer)")
    r.add_argument("model", help=f"a .keras file or a builder name ({', '.join(sorted(_MODELS))})")
    r.add_argument("--layer", default=None, help="layer name (default: the last spatial layer)")
    r.add_argument("--input-size", type=_positive_int, default=256,
                   help="input size used to build a named model (default: 256)")
    r.add_argument("--num-classes", type=_positive_int, default=2)
    r.add_argument("--verbose", action="store_true", help="print the per-layer table")
    return parser


# === commands ===

def _build_model(args, num_classes):
    import kcv.models

    builder = getattr(kcv.models, _MODELS[args.model])
    kwargs = {}
    if args.model in ("unet", "unet_plus_plus"):
        if getattr(args, "filters", None):
            kwargs["filters"] = args.filters
        if getattr(args, "depth", None):
            kwargs["depth"] = args.depth
        if args.model == "unet_plus_plus":
            kwargs["deep_supervision"] = False
    elif getattr(args, "filters", None) or getattr(args, "depth", None):
        raise _Error(f"--filters/--depth apply to unet and unet_plus_plus, not {args.model}")
    size = args.image_size if hasattr(args, "image_size") else args.input_size
    return builder((size, size, 3), num_classes, **kwargs)


def _datasets(args):
    """(train, validation, num_classes)."""
    if args.data == "synthetic":
        from kcv.data import synthetic

        if args.num_classes not in (None, synthetic.NUM_CLASSES):
            raise _Error(f"the synthetic data has {synthetic.NUM_CLASSES} classes, "
                         f"got --num-classes {args.num_classes}")
        train = synthetic.shapes_dataset(args.num_images, args.image_size, args.batch_size,
                                         seed=args.seed)
        val = synthetic.shapes_dataset(max(args.num_images // 4, args.batch_size),
                                       args.image_size, args.batch_size, seed=args.seed + 10_000,
                                       shuffle=False)
        return train, val, synthetic.NUM_CLASSES
    if not os.path.isdir(args.data):
        raise _Error(f"--data must be 'synthetic' or an existing folder, got {args.data!r}")
    from kcv.data import segmentation_folder

    images, masks = os.path.join(args.data, "images"), os.path.join(args.data, "masks")
    if not (os.path.isdir(images) and os.path.isdir(masks)):
        raise _Error(f"--data folder {args.data!r} must contain images/ and masks/")
    if args.num_classes is None:
        raise _Error("--num-classes is required with a data folder")
    train = segmentation_folder(images, masks, args.image_size, args.batch_size,
                                num_classes=args.num_classes, seed=args.seed)
    val_images, val_masks = (os.path.join(args.data, "val", "images"),
                             os.path.join(args.data, "val", "masks"))
    val = (segmentation_folder(val_images, val_masks, args.image_size, args.batch_size,
                               augment=False, num_classes=args.num_classes, shuffle=False)
           if os.path.isdir(val_images) else None)
    return train, val, args.num_classes


def _loss(name, num_classes):
    import keras

    import kcv.losses

    if num_classes == 1:
        ce = keras.losses.BinaryCrossentropy()
    else:
        ce = keras.losses.SparseCategoricalCrossentropy()
    if name == "ce":
        return ce
    if name == "dice":
        return kcv.losses.DiceLoss()
    if name == "ce+dice":
        return kcv.losses.BCEDiceLoss()
    return kcv.losses.DiceFocalLoss()


def _steps(dataset):
    import tensorflow as tf

    n = int(dataset.cardinality())
    if n == tf.data.INFINITE_CARDINALITY or n < 1:
        raise _Error("cannot count the batches per epoch of the training data (needed by "
                     "the schedule); use --schedule constant")
    return n


def _schedule(args, steps_per_epoch):
    from kcv.training import schedules

    if args.schedule == "constant":
        return args.lr
    if args.schedule == "cosine":
        if not 0 <= args.warmup_epochs < args.epochs:
            raise _Error(f"--warmup-epochs must be in [0, epochs), got {args.warmup_epochs}")
        return schedules.WarmupCosine(args.lr, args.warmup_epochs,
                                      args.epochs - args.warmup_epochs, steps_per_epoch)
    if args.schedule == "step":
        return schedules.StepDecay(args.lr, args.step_size, steps_per_epoch, args.gamma)
    if args.schedule == "exponential":
        return schedules.ExponentialDecay(args.lr, steps_per_epoch, args.gamma)
    if args.schedule == "multistep":
        try:
            milestones = [int(m) for m in args.milestones.split(",") if m.strip()]
        except ValueError:
            raise _Error(f"--milestones must be comma-separated epochs, got "
                         f"{args.milestones!r}") from None
        return schedules.MultiStepDecay(args.lr, milestones, steps_per_epoch, args.gamma)
    decay = args.decay_epochs or max(args.epochs // 2, 1)
    return schedules.LinearDecayTail(args.lr, args.epochs, decay, steps_per_epoch)


def _compiled_model(args, num_classes, learning_rate):
    import keras

    import kcv.metrics

    model = _build_model(args, num_classes)
    metrics = [kcv.metrics.MeanIoU(max(num_classes, 2))] if num_classes > 1 else []
    model.compile(keras.optimizers.Adam(learning_rate), _loss(args.loss, num_classes),
                  metrics=metrics)
    return model


def _setup(args):
    import keras

    from kcv.training import strategy

    keras.utils.set_random_seed(args.seed)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    return strategy()


def _train(args):
    from kcv.training import fit

    distribution = _setup(args)
    train, val, num_classes = _datasets(args)
    learning_rate = _schedule(args, _steps(train) if args.schedule != "constant" else 1)
    with distribution.scope():
        model = _compiled_model(args, num_classes, learning_rate)
    os.makedirs(args.output, exist_ok=True)
    history = fit(model, train, epochs=args.epochs, validation_data=val, verbose=2,
                  backup_dir=os.path.join(args.output, "backup"),
                  checkpoint_dir=os.path.join(args.output, "checkpoints"))
    model_path = os.path.join(args.output, "model.keras")
    model.save(model_path)
    logs = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    with open(os.path.join(args.output, "history.json"), "w") as fh:
        json.dump(logs, fh, indent=1)
    print(json.dumps({"model": model_path, "replicas": distribution.num_replicas_in_sync,
                      **{k: v[-1] for k, v in logs.items()}}))


def _lr_find(args):
    from kcv.training import find_lr

    distribution = _setup(args)
    train, _, num_classes = _datasets(args)
    with distribution.scope():
        model = _compiled_model(args, num_classes, 1e-3)
    finder = find_lr(model, train, start_lr=args.start_lr, end_lr=args.end_lr,
                     num_steps=args.num_steps, smoothing=args.smoothing)
    finder.plot(args.output, title=f"LR range test: {args.model}, {args.data}")
    summary = {"png": args.output, "suggested_lr": finder.suggested_lr, **finder.suggestions,
               "steps": int(len(finder.losses)), "stopped_early": finder.stopped_early}
    with open(os.path.splitext(args.output)[0] + ".json", "w") as fh:
        json.dump({**summary, "learning_rates": finder.learning_rates.tolist(),
                   "losses": finder.losses.tolist(),
                   "smoothed_losses": finder.smoothed_losses.tolist()}, fh)
    print(json.dumps(summary))


def _load(path):
    import keras

    import kcv  # noqa: F401  (registers kcv layers, losses and metrics for loading)

    if not os.path.isfile(path):
        raise _Error(f"no such model file: {path!r}")
    return keras.saving.load_model(path, compile=False)


def _image_files(folder):
    if os.path.isdir(os.path.join(folder, "images")):
        folder = os.path.join(folder, "images")
    names = sorted(n for n in os.listdir(folder)
                   if n.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".gif")))
    if not names:
        raise _Error(f"no .png/.jpg/.bmp/.gif images in {folder!r}")
    return [os.path.join(folder, n) for n in names]


def _pixels(source, size, num_images, held_out):
    """(pixels float32 [N, H, W, 3] in [0, 255], labels or None): synthetic, digits or a folder.

    Calibration (`held_out=False`) and evaluation (`held_out=True`) draw disjoint images:
    synthetic shapes with seeds 0 and 10,000 (as `kcv train`), the first and the last
    `num_images` of scikit-learn's 1,797 digits.
    """
    import numpy as np
    import tensorflow as tf

    if source == "synthetic":
        from kcv.data import make_shapes

        images, masks = make_shapes(num_images, size[0], seed=10_000 if held_out else 0)
        images = tf.image.resize(np.clip(images, 0, 1) * 255.0, size).numpy()
        return images, np.asarray(masks)
    if source == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        part = slice(-num_images, None) if held_out else slice(0, num_images)
        images = digits.images[part, :, :, None].astype("float32") * (255.0 / 16.0)
        images = tf.image.resize(np.repeat(images, 3, axis=-1), size).numpy()
        return images, digits.target[part]
    if not os.path.isdir(source):
        raise _Error(f"data must be 'synthetic', 'digits' or a folder, got {source!r}")
    files = _image_files(source)[:num_images]
    images = np.stack([tf.image.resize(tf.io.decode_image(tf.io.read_file(f), channels=3,
                                                          expand_animations=False), size)
                       for f in files]).astype("float32")
    masks_dir = os.path.join(source, "masks")
    if not os.path.isdir(masks_dir):
        return images, None
    masks = [tf.image.resize(tf.io.decode_image(tf.io.read_file(
        os.path.join(masks_dir, os.path.basename(f))), channels=1, expand_animations=False),
        size, method="nearest")[..., 0] for f in files]
    return images, np.stack(masks).astype("int64")


def _model_size(model):
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        raise _Error(f"calibration and --data need a model with a fixed image size; its input "
                     f"is {shape}")
    return int(shape[1]), int(shape[2])


def _model_inputs(pixels, preprocess):
    import numpy as np
    import tensorflow as tf

    import export.serving

    return np.asarray(export.serving.preprocess_pixels(tf.constant(pixels), preprocess))


def _export(args):
    # DESIGN.md: nothing in kcv imports export/. The `kcv` command is the one exception, so
    # the import stays inside the functions: kcv works without export/.
    import export

    out = args.out or args.output
    if out is None or (args.out and args.output and args.out != args.output):
        raise _Error("give the output path once, as OUT or --output")
    model = _load(args.model)
    if args.format == "saved_model":
        if args.quantize != "none":
            raise _Error("--quantize applies to --format tflite only")
        serving = None if args.serving == "none" else (args.serving or "uint8")
        path = export.to_saved_model(model, out, overwrite=args.overwrite, serving=serving,
                                     preprocess=args.preprocess, version=args.version)
        print(json.dumps({"format": args.format, "output": path, "serving": serving or "none"}))
        return
    if args.version is not None:
        raise _Error("--version applies to --format saved_model only")
    quantization = None if args.quantize == "none" else args.quantize
    calibration = None
    if quantization == "int8":
        if args.calibration is None:
            raise _Error("--quantize int8 needs --calibration (synthetic, digits or a folder)")
        pixels, _ = _pixels(args.calibration, _model_size(model), args.calibration_steps,
                            held_out=False)
        calibration = [_model_inputs(pixels[i:i + 1], args.preprocess)
                       for i in range(len(pixels))]
    elif args.calibration is not None:
        raise _Error("--calibration applies to --quantize int8 only")
    io_dtype = "uint8" if (args.serving == "uint8" and quantization == "int8") else None
    shapes = None
    if args.dynamic_size:
        shapes = [(1, None, None) + tuple(model.inputs[0].shape[3:])]
    path = export.to_tflite(model, out, quantization=quantization,
                            representative_data=calibration, overwrite=args.overwrite,
                            io_dtype=io_dtype, progress=calibration is not None,
                            float_ops=args.float_ops, input_shapes=shapes)
    print(json.dumps({"format": args.format, "output": path, "quantize": args.quantize,
                      "io_dtype": io_dtype or "float32", "bytes": os.path.getsize(path)}))


def _saved_model_report(path, model, images):
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    report = {"artifact": path, "signatures": sorted(loaded.signatures), "bytes": int(size)}
    if model is not None and images is not None and "serving_float" in loaded.signatures:
        out = loaded.signatures["serving_float"](image=tf.constant(images))
        expected = np.asarray(model(images, training=False), np.float32)
        report["max_abs_diff"] = float(np.max(np.abs(out["probabilities"].numpy() - expected)))
    return report


def _verify(args):
    import numpy as np

    from export import evaluate, tflite_ops

    model = _load(args.reference) if args.reference else None
    images = labels = None
    if args.data:
        if model is None:
            raise _Error("--data needs --reference (the model gives the image size)")
        pixels, labels = _pixels(args.data, _model_size(model), args.num_images, held_out=True)
        images = _model_inputs(pixels, args.preprocess)
    elif model is not None:
        shape = (4,) + tuple(model.inputs[0].shape[1:])
        images = np.random.default_rng(0).random(shape).astype("float32")
    reference = None
    rows = []
    if model is not None and images is not None:
        expected = evaluate.predict(model, images)
        if labels is not None:
            reference = evaluate.accuracy(expected, labels)
            rows.append({"artifact": args.reference, "mode": "keras", **reference})
            print(json.dumps(rows[-1]))
    for artifact in args.artifacts:
        if os.path.isdir(artifact):
            report = _saved_model_report(artifact, model, images)
            print(json.dumps(report))
            continue
        if not os.path.isfile(artifact):
            raise _Error(f"no such artifact: {artifact!r}")
        ops = tflite_ops(artifact)
        report = {"artifact": artifact, "mode": os.path.splitext(os.path.basename(artifact))[0],
                  "bytes": os.path.getsize(artifact), "ops": ops,
                  "builtins_only": not any(op.startswith(("Flex", "CUSTOM")) for op in ops),
                  "threads": args.threads,
                  "latency_ms": evaluate.latency_ms(artifact, args.threads, args.runs)}
        if images is not None:
            got = evaluate.predict(artifact, images)
            report["max_abs_diff"] = float(np.max(np.abs(got - expected)))
            if labels is not None:
                figures = evaluate.accuracy(got, labels)
                report.update(figures)
                report["change"] = {k: figures[k] - reference[k] for k in figures}
        rows.append(report)
        print(json.dumps(report))
    if args.plot:
        timed = [row for row in rows if "latency_ms" in row]
        if not timed:
            raise _Error("--plot needs at least one .tflite artifact")
        metric = next((k for k in ("miou", "top1") if k in timed[0]), None)
        evaluate.plot_modes(timed, args.plot, metric=metric,
                            title=f"latency ({args.threads} thread(s)) and accuracy per mode")
        print(json.dumps({"plot": args.plot}))


def _serve(args):
    from export import rest

    name = args.name or os.path.basename(os.path.normpath(args.base_path))

    def ready(server):
        host, port = server.server_address[:2]
        print(json.dumps({"serving": args.base_path,
                          "url": f"http://{host}:{port}/v1/models/{name}:predict"}), flush=True)

    rest.serve(args.base_path, name, host=args.host, port=args.port, ready=ready)


def _convert_torchvision(args):
    from kcv.models.detection.torchvision_port import faster_rcnn_from_torchvision

    if not args.output.endswith((".keras", ".weights.h5")):
        raise _Error(f"OUTPUT must end with .keras or .weights.h5, got {args.output!r}")
    if not os.path.isfile(args.checkpoint):
        raise _Error(f"no such checkpoint: {args.checkpoint!r}")
    try:
        model = faster_rcnn_from_torchvision(args.checkpoint, args.architecture, args.dtype,
                                             min_size=args.min_size, max_size=args.max_size)
    except ImportError as err:
        raise _Error(str(err)) from err
    if args.output.endswith(".keras"):
        model.save(args.output)
    else:
        model.save_weights(args.output)
    config = {k: v for k, v in model.get_config().items() if k not in ("name", "trainable")}
    print(json.dumps({"architecture": args.architecture, "output": args.output,
                      "config": config}, default=str))


def _receptive_field(args):
    from kcv.utils import receptive_field

    if args.model in _MODELS:
        args.filters = args.depth = None
        model = _build_model(args, args.num_classes)
    elif args.model.endswith(".keras"):
        model = _load(args.model)
    else:
        raise _Error(f"MODEL must be a .keras file or one of {', '.join(sorted(_MODELS))}, "
                     f"got {args.model!r}")
    field = receptive_field(model, args.layer, verbose=args.verbose)
    print(json.dumps({"model": args.model, "layer": args.layer or "last spatial layer",
                      "size": list(field.size), "jump": list(field.jump),
                      "start": list(field.start)}))


_COMMANDS = {"train": _train, "lr-find": _lr_find, "export": _export, "verify": _verify,
             "serve": _serve, "convert-torchvision": _convert_torchvision,
             "receptive-field": _receptive_field}


def main(argv=None):
    """Entry point of the `kcv` console script.

    Args:
        argv: arguments without the program name (default: `sys.argv[1:]`).

    Returns:
        Exit status: 0 on success, 1 when the command fails, 2 on bad arguments.
    """
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if (getattr(args, "command", None) == "export" and args.out is None and len(extra) == 1
            and not extra[0].startswith("-")):
        args.out, extra = extra[0], []  # OUT given after the options
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        _COMMANDS[args.command](args)
    except (_Error, ValueError, OSError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"kcv {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
