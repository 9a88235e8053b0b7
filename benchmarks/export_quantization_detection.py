"""COCO AP of a Faster R-CNN before and after TFLite quantization, on held-out synthetic shapes.

The detection row of `benchmarks/export_quantization.py` (`--families faster_rcnn`; also runs
alone). Trains the detector of `examples/detection_quickstart.py` with its default recipe
(`build_detector`: the ten-convolution "small" backbone with an FPN, 128x128 images) for 1,200
steps, a third of the quickstart's, on `kcv.data.shapes_detection_dataset` (seed 0), then
converts it to float32, dynamic-range and full int8 TFLite (`export.convert_to_tflite`; int8 calibrated on 50 training images, its
convolutions and fully connected layers in int8, its box arithmetic, NMS and RoIAlign kept in
float32 by the detector's `serving_float_scopes`) and measures the 12 COCO box numbers
(`kcv.metrics.COCOMeanAveragePrecision`, pycocotools) of Keras and of each `.tflite` in LiteRT
on 200 held-out images (seed 10,000).

Run:  python benchmarks/export_quantization_detection.py            (about 9 minutes on 2 cores)
      python benchmarks/export_quantization_detection.py --quick    (smoke: 4 steps)
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
sys.path.insert(0, os.path.join(_ROOT, "examples"))

import detection_quickstart as quickstart  # noqa: E402
import keras  # noqa: E402

import export  # noqa: E402
import kcv  # noqa: E402
from export import evaluate  # noqa: E402

MODES = ("float32", "dynamic", "int8")
_NAMES = ["boxes", "scores", "classes", "num_detections"]


def _settings(quick):
    args = quickstart.parse_args(["--quick"] if quick else [])
    if not quick:  # the quickstart's recipe (small backbone, 128x128), a third of its steps
        args.train_images, args.val_images, args.epochs = 1200, 200, 8
    return args


def run(quick=False, out="runs/export_quantization", threads=1):
    """Trains, converts and measures; returns `(rows, "AP")` as `export_quantization` does."""
    args = _settings(quick)
    keras.utils.set_random_seed(args.seed)
    size = args.image_size
    train = kcv.data.shapes_detection_dataset(args.train_images, size, args.batch_size,
                                              seed=args.seed, repeat=True)
    x_cal = kcv.data.make_shapes_detection(50 if not quick else 4, size, seed=args.seed)[0]
    x_val, y_val = kcv.data.make_shapes_detection(args.val_images, size,
                                                  seed=args.seed + 10_000)
    detector = quickstart.build_detector(args)
    steps = args.epochs * max(1, args.train_images // args.batch_size)
    warmup = min(args.warmup_steps, steps // 2)
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps - warmup, alpha=0.01,
                                                      warmup_target=args.learning_rate,
                                                      warmup_steps=warmup)
    detector.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4,
                                                      clipnorm=5.0))
    started = time.time()
    detector.fit(train, epochs=args.epochs, steps_per_epoch=steps // args.epochs, verbose=0)
    train_s = time.time() - started
    reference = quickstart.coco_numbers(
        y_val, detector.predict(x_val, batch_size=16, verbose=0))
    rows = [{"family": "faster_rcnn", "mode": "keras", **reference, "train_s": round(train_s, 1),
             "train_steps": steps}]
    print(json.dumps(rows[-1]), flush=True)
    calibration = [x_cal[i:i + 1] for i in range(len(x_cal))]  # training images only
    for mode in MODES:
        started = time.time()
        if mode == "int8":
            content = export.convert_to_tflite(detector, quantization="int8",
                                               representative_data=calibration)
        else:
            content = export.convert_to_tflite(
                detector, quantization=None if mode == "float32" else mode)
        convert_s = time.time() - started
        lite = dict(zip(_NAMES, export.run_tflite(content, x_val, output_names=_NAMES)))
        figures = quickstart.coco_numbers(y_val, lite)
        rows.append({"family": "faster_rcnn", "mode": mode, **figures,
                     "change_points": round(100 * (figures["AP"] - reference["AP"]), 2),
                     "AP50_change_points": round(100 * (figures["AP50"] - reference["AP50"]), 2),
                     "bytes": len(content), "convert_s": round(convert_s, 1),
                     "latency_ms": round(evaluate.latency_ms(content, threads, 10), 3)})
        print(json.dumps(rows[-1]), flush=True)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "faster_rcnn.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return rows, "AP"


def table(rows):
    """The Markdown row of docs/export.md's table (COCO AP and AP50, in points)."""
    by_mode = {row["mode"]: row for row in rows}
    lines = []
    for metric in ("AP", "AP50"):
        values = [f"{100 * by_mode[m][metric]:.2f}" for m in ("keras", "float32")]
        values += ["-", f"{100 * by_mode['dynamic'][metric]:.2f}",
                   f"{100 * by_mode['int8'][metric]:.2f}", "-"]
        change = 100 * (by_mode["int8"][metric] - by_mode["keras"][metric])
        lines.append(f"| Faster R-CNN (shapes, COCO {metric} %) | " + " | ".join(values)
                     + f" | {change:+.2f} points |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/export_quantization")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="4 training steps, 8 images (smoke)")
    args = parser.parse_args(argv)
    rows, _ = run(args.quick, args.out, args.threads)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
