"""The `kcv` command (`python -m kcv`): train, lr-find, export, receptive-field.

The one module that joins kcv and `export/` (DESIGN.md); installed as the `kcv` console script.

    kcv train --model unet --data synthetic --epochs 10 --output runs/unet
    kcv lr-find --model unet --data synthetic --output lr_find.png
    kcv export runs/unet/model.keras --format tflite --output unet.tflite
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

    e = sub.add_parser("export", help="export a .keras model to a SavedModel or a .tflite file")
    e.add_argument("model", help="path of a .keras model")
    e.add_argument("--format", default="tflite", choices=("tflite", "saved_model"))
    e.add_argument("--output", required=True, help="output .tflite file or SavedModel folder")
    e.add_argument("--quantization", default=None, choices=("float16", "dynamic"),
                   help="tflite weight quantization (default: none, float32)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output")

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


def _export(args):
    # DESIGN.md: nothing in kcv imports export/. The `kcv export` command is the one
    # exception, so the import stays inside this function: kcv works without export/.
    import export

    model = _load(args.model)
    if args.format == "saved_model":
        if args.quantization:
            raise _Error("--quantization applies to --format tflite only")
        path = export.to_saved_model(model, args.output, overwrite=args.overwrite)
    else:
        path = export.to_tflite(model, args.output, quantization=args.quantization,
                                overwrite=args.overwrite)
    print(json.dumps({"format": args.format, "output": path}))


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


_COMMANDS = {"train": _train, "lr-find": _lr_find, "export": _export,
             "convert-torchvision": _convert_torchvision, "receptive-field": _receptive_field}


def main(argv=None):
    """Entry point of the `kcv` console script.

    Args:
        argv: arguments without the program name (default: `sys.argv[1:]`).

    Returns:
        Exit status: 0 on success, 1 when the command fails, 2 on bad arguments.
    """
    parser = _parser()
    args = parser.parse_args(argv)
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
