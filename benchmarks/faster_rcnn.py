"""Training step and inference time: kcv's ResNet50-FPN Faster R-CNN vs torchvision's, same run.

kcv's `FasterRCNN(90, backbone="resnet50", input_shape=(512, 512, 3))` (91 logits with the
background, torchvision's default `num_classes=91`) against torchvision's
`fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=512, max_size=512)` (so
its transform does not resize a 512x512 image), with the same RPN/RoI counts (2000/2000 train,
1000/1000 test, 256 and 512 sampled), thresholds and detections per image; both untrained
(random weights; without pretrained weights torchvision trains every backbone layer with plain
BatchNorm, and kcv's backbone is fully trainable too). torchvision's RoI-head linear layers are
initialised as Keras' `Dense` defaults (Glorot uniform, zero bias), which kcv's head uses, so that
both untrained heads give scores alike and post-processing does alike work (with PyTorch's
default init torchvision's head passes 100 detections per image through the 0.05 threshold,
kcv's none). Likewise torchvision's backbone convolutions are initialised as Keras' `Conv2D`
default (Glorot uniform, zero bias), which kcv's backbone uses: with PyTorch's Kaiming init the
untrained features grow to std ~50 at C5, the RPN's deltas blow the proposals up to the whole
image and NMS keeps ~250 of them, against kcv's 1000, so torchvision's RoI head did a quarter of
kcv's work; aligned, both keep about as many (printed with the detections). Timed at batch 1
and 2 on the same images and boxes:

* inference: kcv `tf.function(model(x, training=False))` (Keras 3 does not XLA-compile on CPU)
  vs torchvision `model.eval()` under `torch.inference_mode()`;
* training step: kcv `train_step` in a `tf.function` (what `fit` runs) vs torchvision's loss
  dict, `backward()` and `step()`, both plain SGD (lr 1e-4, momentum 0.9).

torchvision is not a kcv dependency: it runs as a subprocess (this file with `--torch-worker`)
in the Python of a side environment given by `--torch-python` or `$KCV_TORCH_PYTHON` (default
`/work/torchenv/bin/python`), with `torch.set_num_threads(2)`; TensorFlow keeps its default
threads (all cores). Besides wall time, each call's process CPU time is measured (the
"CPU-time ratio"; with `--threads 1` it barely moves with the machine's load). `--threads N` pins both to N threads (torch's intra-op threads, TF's intra-
and inter-op pools): `--threads 1` gives ratios that hold up on a loaded machine, where
PyTorch's OpenMP threads suffer more from oversubscription than TensorFlow's pool. The worker answers one command at a time while this process waits, so the
two never run at once; repetitions alternate which goes first and medians are reported, with the
ratio kcv / torchvision (below 1 means kcv is faster). `--profile` also times kcv's pieces
(backbone + FPN, RPN with proposals, RoI head with post-processing, the losses, the gradient).
`--tflite` converts the detector with `export.convert_to_tflite` (builtins only) and times it
in LiteRT at batch 1, or prints why the conversion failed.

Run (from the repository root; about 5 minutes on an idle 2-core machine with the defaults, 20 on a loaded one):
     PYTHONPATH=. .venv/bin/python benchmarks/faster_rcnn.py [--repeats 5] [--threads N]
     [--profile] [--tflite] [--torch-python /path/to/python]
     [--no-compare (only the --profile/--tflite parts)]
e.g. `... benchmarks/faster_rcnn.py` and `... benchmarks/faster_rcnn.py --threads 1`.
"""

import json
import os
import statistics
import subprocess
import sys
import time

SIZE = 512
NUM_CLASSES = 90  # object classes; torchvision counts the background too (91)
BATCHES = (1, 2)
LR, MOMENTUM = 1e-4, 0.9
_DEFAULT_TORCH_PYTHON = "/work/torchenv/bin/python"


def _data(batch):
    """Images in [0, 1] and 3 GT boxes per image (yxyx pixels, classes 0..89), fixed seed."""
    import numpy as np

    rng = np.random.default_rng(batch)
    images = rng.uniform(0, 1, (batch, SIZE, SIZE, 3)).astype(np.float32)
    corner = rng.uniform(0, SIZE * 0.6, (batch, 3, 2))
    side = rng.uniform(32, SIZE * 0.4, (batch, 3, 2))
    boxes = np.concatenate([corner, corner + side], -1).astype(np.float32)
    classes = rng.integers(0, NUM_CLASSES, (batch, 3)).astype(np.int32)
    return images, boxes, classes


# === torchvision worker (runs in the side environment; imports no TensorFlow) ===


def _torch_worker(threads):
    import torch
    import torchvision

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1, min_size=SIZE,
        max_size=SIZE)
    layers = [*model.backbone.body.modules(), *model.roi_heads.modules()]
    for layer in layers:  # as Keras' Conv2D/Dense defaults, which kcv's backbone and head use
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                torch.nn.init.zeros_(layer.bias)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    data = {}
    for batch in BATCHES:
        images, boxes, classes = _data(batch)
        imgs = [torch.from_numpy(im).permute(2, 0, 1).contiguous() for im in images]
        targets = [{"boxes": torch.from_numpy(b[:, [1, 0, 3, 2]]).float(),  # yxyx -> xyxy
                    "labels": torch.from_numpy(c).long() + 1} for b, c in zip(boxes, classes)]
        data[batch] = imgs, targets

    def infer(batch):
        model.eval()
        with torch.inference_mode():
            out = model(data[batch][0])
        return {"detections": [len(o["boxes"]) for o in out]}

    def proposals(batch):
        model.eval()
        with torch.inference_mode():
            images, _ = model.transform(data[batch][0])
            boxes, _ = model.rpn(images, model.backbone(images.tensors))
        return {"proposals": [len(b) for b in boxes]}

    def train(batch):
        model.train()
        losses = model(*data[batch])
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        return {"loss": float(total.detach())}

    def pieces(batch):  # inference split as kcv's --profile split
        model.eval()
        times = {}
        with torch.inference_mode():
            start = time.perf_counter()
            images, _ = model.transform(data[batch][0])
            features = model.backbone(images.tensors)
            times["backbone+fpn"] = time.perf_counter() - start
            start = time.perf_counter()
            proposals, _ = model.rpn(images, features)
            times["rpn+proposals"] = time.perf_counter() - start
            start = time.perf_counter()
            model.roi_heads(features, proposals, images.image_sizes)
            times["roi_head+postprocess"] = time.perf_counter() - start
        return {"pieces": times}

    commands = {"infer": infer, "train": train, "pieces": pieces, "proposals": proposals}
    print(json.dumps({"ready": torch.__version__ + " / torchvision " + torchvision.__version__,
                      "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        start, cpu = time.perf_counter(), time.process_time()
        reply = commands[request["cmd"]](request["batch"])
        reply["seconds"] = time.perf_counter() - start
        reply["cpu"] = time.process_time() - cpu
        print(json.dumps(reply), flush=True)


class TorchWorker:
    """The torchvision side: this file with `--torch-worker` in the side environment's Python."""

    def __init__(self, python, threads):
        if not os.path.exists(python):
            sys.exit(f"torchvision's Python not found: {python!r}. Give a Python with torch and "
                     "torchvision via --torch-python or $KCV_TORCH_PYTHON (it is not a kcv "
                     "dependency; e.g. `python -m venv /work/torchenv && /work/torchenv/bin/pip "
                     "install torch torchvision`).")
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--torch-worker",
                                      str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"the torchvision worker exited (code {self.proc.wait()}); see its stderr")
        return json.loads(line)

    def __call__(self, cmd, batch):
        self.proc.stdin.write(json.dumps({"cmd": cmd, "batch": batch}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


# === kcv side ===


def _kcv_model():
    import keras

    from kcv.models import FasterRCNN

    keras.utils.set_random_seed(0)
    model = FasterRCNN(NUM_CLASSES, backbone="resnet50", input_shape=(SIZE, SIZE, 3))
    model.compile(optimizer=keras.optimizers.SGD(LR, momentum=MOMENTUM))
    return model


def _kcv_runners(model):
    import tensorflow as tf

    infer_fn = tf.function(lambda x: model(x, training=False))
    train_fn = tf.function(lambda x, y: model.train_step((x, y)))
    data = {}
    for batch in BATCHES:
        images, boxes, classes = _data(batch)
        data[batch] = (tf.constant(images),
                       {"boxes": tf.constant(boxes), "classes": tf.constant(classes)})

    def infer(batch):
        start, cpu = time.perf_counter(), time.process_time()
        out = infer_fn(data[batch][0])
        detections = out["num_detections"].numpy().tolist()
        return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
                "detections": detections}

    def train(batch):
        start, cpu = time.perf_counter(), time.process_time()
        logs = train_fn(*data[batch])
        loss = float(logs["loss"])
        return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
                "loss": loss}

    def proposals(batch):
        x = data[batch][0]
        return {"proposals": model._rpn(x, model._features(x, False), False)[4].numpy().tolist()}

    return infer, train, proposals, data


def _kcv_pieces(model, data, repeats):
    """Medians of kcv's pieces: inference split as torchvision's, and the training step's parts."""
    import tensorflow as tf

    from kcv.models.detection.roi_heads import postprocess_detections, trim_padded_rois

    @tf.function
    def features(x):
        return model._features(x, False)

    @tf.function
    def rpn(x, pyramid):
        return model._rpn(x, pyramid, False)[3:]

    @tf.function
    def head(x, pyramid, proposals, num):
        proposals = trim_padded_rois(proposals, num)  # as the model's call
        logits, deltas = model.box_head([*pyramid[:4], proposals], training=False)
        return postprocess_detections(logits, deltas, proposals, num, tf.shape(x)[1:3],
                                      model.box_score_threshold, model.box_nms_threshold,
                                      model.detections_per_image)

    @tf.function
    def losses(x, y):
        return model.compute_losses(x, y, training=True)

    @tf.function
    def gradients(x, y):
        with tf.GradientTape() as tape:
            total = tf.add_n(list(model.compute_losses(x, y, training=True).values()))
        return tape.gradient(total, model.trainable_variables)

    rows = {}
    for batch in BATCHES:
        x, y = data[batch]
        pyramid = features(x)
        proposals, num = rpn(x, pyramid)
        steps = (("backbone+fpn", features, (x,)), ("rpn+proposals", rpn, (x, pyramid)),
                 ("roi_head+postprocess", head, (x, pyramid, proposals, num)),
                 ("train: losses (forward)", losses, (x, y)),
                 ("train: losses + gradients", gradients, (x, y)))
        for name, fn, args in steps:
            tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
                times.append(time.perf_counter() - start)
            rows[(batch, name)] = statistics.median(times)
    return rows


def _tflite_latency(model, repeats):
    """Median LiteRT latency (2 threads) of the whole detector at batch 1, or why it failed."""
    import keras
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    import export

    inputs = keras.Input((SIZE, SIZE, 3), batch_size=1)  # the exporter needs model.inputs
    wrapped = keras.Model(inputs, model(inputs))
    start = time.perf_counter()
    try:
        content = export.convert_to_tflite(wrapped, batch_size=1)
    except Exception as err:  # report why, leave the LiteRT row out
        return f"conversion failed: {type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}"
    print(f"  converted in {time.perf_counter() - start:.0f} s, {len(content) / 1e6:.0f} MB")
    interp = Interpreter(model_content=content, num_threads=2)
    interp.allocate_tensors()
    index = interp.get_input_details()[0]["index"]
    x = _data(1)[0].astype(np.float32)
    times = []
    for i in range(repeats + 1):
        interp.set_tensor(index, x)
        start = time.perf_counter()
        interp.invoke()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv):
    if "--help" in argv or "-h" in argv:
        print(__doc__)
        return
    repeats = int(argv[argv.index("--repeats") + 1]) if "--repeats" in argv else 5
    threads = int(argv[argv.index("--threads") + 1]) if "--threads" in argv else None
    python = (argv[argv.index("--torch-python") + 1] if "--torch-python" in argv
              else os.environ.get("KCV_TORCH_PYTHON", _DEFAULT_TORCH_PYTHON))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    torch_worker = TorchWorker(python, threads or 2)  # fails early and clearly when missing
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    model = _kcv_model()
    kcv_infer, kcv_train, kcv_proposals, data = _kcv_runners(model)
    kcv = {"infer": kcv_infer, "train": kcv_train}
    print(f"Faster R-CNN ResNet50-FPN at {SIZE}x{SIZE}, {NUM_CLASSES + 1} classes, untrained; "
          f"median of {repeats} interleaved repeats")
    print(f"torchvision side: {torch_worker.info['ready']}, {torch_worker.info['threads']} "
          f"threads; TF {tf.__version__}, intra-op threads "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default (all cores)'}")
    for batch in BATCHES:
        print(f"  proposals per image, batch {batch}: kcv "
              f"{kcv_proposals(batch)['proposals']} / torchvision "
              f"{torch_worker('proposals', batch)['proposals']}")
    rows = []
    for cmd in () if "--no-compare" in argv else ("infer", "train"):  # inference first: the training steps change the weights
        for batch in BATCHES:
            for _ in range(2):  # warm-up: tracing (kcv) and first-call allocations (both)
                first = kcv[cmd](batch), torch_worker(cmd, batch)
            times = {"kcv": [], "torchvision": []}
            cpus = {"kcv": [], "torchvision": []}
            for i in range(repeats):
                order = (("kcv", kcv[cmd]), ("torchvision", lambda c, b: torch_worker(c, b)))
                for name, fn in order if i % 2 == 0 else order[::-1]:
                    reply = fn(batch) if name == "kcv" else fn(cmd, batch)
                    times[name].append(reply["seconds"])
                    cpus[name].append(reply["cpu"])
            a, b = statistics.median(times["kcv"]), statistics.median(times["torchvision"])
            cpu_ratio = statistics.median(cpus["kcv"]) / statistics.median(cpus["torchvision"])
            note = ("detections kcv {} / torchvision {}".format(first[0]["detections"],
                                                                 first[1]["detections"])
                    if cmd == "infer" else
                    "loss kcv {:.3f} / torchvision {:.3f}".format(first[0]["loss"],
                                                                  first[1]["loss"]))
            rows.append((f"{'inference' if cmd == 'infer' else 'training step'}, batch {batch}",
                         a, b, note, cpu_ratio))
            print(f"  {rows[-1][0]}: kcv {a * 1e3:.0f} ms, torchvision {b * 1e3:.0f} ms, "
                  f"ratio {a / b:.2f}, CPU-time ratio {cpu_ratio:.2f} ({note})", flush=True)
    print(f"\n{'setting':24s} {'kcv ms':>9s} {'torchvision ms':>15s} {'kcv / tv':>9s} "
          f"{'CPU time kcv / tv':>18s}")
    for label, a, b, _, cpu_ratio in rows:
        print(f"{label:24s} {a * 1e3:9.0f} {b * 1e3:15.0f} {a / b:9.2f} {cpu_ratio:18.2f}")
    if "--profile" in argv:
        print("\nPieces (median ms; kcv inference pieces as torchvision's):")
        ours = _kcv_pieces(model, data, repeats)
        for batch in BATCHES:
            samples = [torch_worker("pieces", batch)["pieces"] for _ in range(repeats + 1)][1:]
            for (b, name), seconds in ours.items():
                if b != batch:
                    continue
                tv = (statistics.median([s[name] for s in samples]) * 1e3
                      if name in samples[0] else float("nan"))
                print(f"  batch {batch} {name:28s} kcv {seconds * 1e3:8.0f}   torchvision "
                      f"{tv:8.0f}")
    torch_worker.close()
    if "--tflite" in argv:
        latency = _tflite_latency(model, repeats)
        if isinstance(latency, str):
            print(f"\nLiteRT: {latency}")
        else:
            print(f"\nLiteRT float32, batch 1, 2 threads: {latency * 1e3:.0f} ms")


if __name__ == "__main__":
    if "--torch-worker" in sys.argv:
        _torch_worker(int(sys.argv[sys.argv.index("--torch-worker") + 1]))
    else:
        main(sys.argv[1:])
