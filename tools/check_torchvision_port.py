"""Compares kcv's torchvision Faster R-CNN port with a fixture of tools/make_torchvision_fixtures.py,
stage by stage, and prints the largest differences (used for the full-size model, whose random
state dict is too large to commit):

    /work/torchenv/bin/python tools/make_torchvision_fixtures.py --full /tmp/tv_full.npz
    python tools/check_torchvision_port.py /tmp/tv_full.npz --min-size 160 --max-size 200
    (v2: `--full /tmp/tv_full_v2.npz --v2`, then `--architecture fasterrcnn_resnet50_fpn_v2`)

Exits with status 1 when a float64 stage differs by more than the tests allow (features 1e-8,
proposal and detection boxes 1e-6 px, the same counts and labels).
"""

import argparse
import json
import sys

import numpy as np
import tensorflow as tf

from kcv.models.detection.torchvision_port import faster_rcnn_from_torchvision


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) if np.size(b) else 0.0


def check(path, min_size, max_size, architecture="fasterrcnn_resnet50_fpn", dtype="float64"):
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    sd = {k[3:]: v for k, v in data.items() if k.startswith("sd/")}
    model = faster_rcnn_from_torchvision(sd, architecture, dtype, min_size=min_size,
                                         max_size=max_size)
    report, ok = {"parameters": int(model.count_params())}, True
    for case in sorted({k.split("/")[0] for k in data if "/" in k and not k.startswith("sd/")}):
        images = data[f"{case}/images"].astype(np.float64) / 255.0
        out = model.stages(tf.constant(images.astype(dtype)))
        r = {"transformed": _max_diff(out["transformed"], data[f"{case}/transformed"])}
        if f"{case}/P0" in data:
            body = model.body(tf.constant(data[f"{case}/transformed"].astype(dtype)))
            r["C2..C5"] = max(_max_diff(c, data[f"{case}/C{i + 2}"]) for i, c in enumerate(body))
            r["P2..P6"] = max(_max_diff(p, data[f"{case}/P{i}"])
                              for i, p in enumerate(out["features"]))
            b = images.shape[0]
            r["objectness"] = max(_max_diff(o, data[f"{case}/objectness_{i}"].reshape(b, -1))
                                  for i, o in enumerate(out["objectness"]))
            ok &= max(r["C2..C5"], r["P2..P6"], r["objectness"]) <= 1e-8
        logits, deltas = model.box_head(
            [tf.constant(data[f"{case}/P{i}"][:1]) for i in range(5)] if f"{case}/P0" in data
            else [f[:1] for f in out["features"]], tf.constant(data[f"{case}/fixed_rois"][None]))
        r["fixed_rois_logits"] = _max_diff(logits[0], data[f"{case}/fixed_logits"])
        for i in range(images.shape[0]):
            props = data[f"{case}/proposals_{i}"]
            dets = data[f"{case}/det_boxes_{i}"]
            n_p, n_d = int(out["num_proposals"][i]), int(out["num_detections"][i])
            r[f"proposals_{i}"] = [n_p, len(props), _max_diff(out["proposals"][i, :len(props)],
                                                              props) if n_p == len(props) else None]
            same = n_d == len(dets) and np.array_equal(out["classes"][i, :n_d],
                                                       data[f"{case}/det_labels_{i}"])
            r[f"detections_{i}"] = [n_d, len(dets), _max_diff(
                out["boxes"][i, :n_d], dets[:, [1, 0, 3, 2]]) if same else None]
            ok &= (n_p == len(props) and same and r[f"proposals_{i}"][2] <= 1e-6
                   and r[f"detections_{i}"][2] <= 1e-6)
        report[case] = r
    return report, bool(ok)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("fixture")
    parser.add_argument("--min-size", type=int, default=160)
    parser.add_argument("--max-size", type=int, default=200)
    parser.add_argument("--architecture", default="fasterrcnn_resnet50_fpn")
    args = parser.parse_args()
    report, ok = check(args.fixture, args.min_size, args.max_size, args.architecture)
    print(json.dumps(report, indent=1))
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
