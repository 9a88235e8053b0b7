"""Fine-tune a converted torchvision Faster R-CNN on the synthetic shapes with `model.fit`.

The path of torchvision's fine-tuning tutorial, in Keras: load a torchvision checkpoint
(`--checkpoint fasterrcnn_resnet50_fpn_coco-258fb6c6.pth`, or an `.npz` of its state dict)
with a new `num_classes` (3 shapes + background), which replaces the box predictor and keeps
every other weight; train with `fit` (the loss terms shown as it goes), report the held-out
losses and detections, save a `.keras` file and check that it reloads to the same detections.

Without `--checkpoint` a random stand-in of the test fixture's size (ResNet-50's 3/4/6/3
bottlenecks with narrow layers, 91 classes) plays the checkpoint, so the script runs offline
in a few minutes on a CPU; random weights learn little in that time, the point is the path.

    python examples/finetune_torchvision.py                  # the stand-in, 3 epochs
    python examples/finetune_torchvision.py --checkpoint fasterrcnn_resnet50_fpn_coco-258fb6c6.pth \\
        --min-size 256 --max-size 256 --epochs 5
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kcv.data import shapes_detection_dataset  # noqa: E402
from kcv.data.detection import CLASS_NAMES  # noqa: E402
from kcv.models.detection import (  # noqa: E402
    TorchvisionFasterRCNN,
    faster_rcnn_from_torchvision,
    torchvision_labels,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="torchvision .pth or .npz (default: a stand-in)")
    parser.add_argument("--architecture", default="fasterrcnn_resnet50_fpn",
                        choices=("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2"))
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--min-size", type=int, default=128, help="torchvision's min_size")
    parser.add_argument("--max-size", type=int, default=128, help="torchvision's max_size")
    parser.add_argument("--train-images", type=int, default=96)
    parser.add_argument("--val-images", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--trainable-backbone-layers", type=int, default=3)
    parser.add_argument("--out", default=os.path.join("runs", "finetune_torchvision"))
    return parser.parse_args(argv)


def stand_in_checkpoint(architecture):
    """A random torchvision-layout state dict of the test fixture's size (91 classes)."""
    keras.utils.set_random_seed(0)
    model = TorchvisionFasterRCNN(91, stem_filters=16, stage_widths=(8, 16, 32, 64),
                                  fpn_filters=32, representation_size=64,
                                  box_head_conv_filters=32, architecture=architecture)
    return model.torchvision_state_dict()


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    checkpoint = args.checkpoint or stand_in_checkpoint(args.architecture)
    model = faster_rcnn_from_torchvision(
        checkpoint, args.architecture, num_classes=len(CLASS_NAMES) + 1,
        min_size=args.min_size, max_size=args.max_size,
        trainable_backbone_layers=args.trainable_backbone_layers,
        rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300)
    print(f"{len(model.trainable_weights)} trainable weight tensors "
          f"({model.count_params():,} numbers in all)")
    train = shapes_detection_dataset(args.train_images, args.image_size, args.batch_size,
                                     seed=0, augment=True).map(torchvision_labels)
    val = shapes_detection_dataset(args.val_images, args.image_size, args.batch_size, seed=1,
                                   shuffle=False).map(torchvision_labels).cache()
    model.compile(keras.optimizers.Adam(args.learning_rate))
    model.fit(train, validation_data=val, epochs=args.epochs, verbose=2)
    print("held-out losses:", {k: round(v, 4) for k, v in
                               model.evaluate(val, verbose=0, return_dict=True).items()})

    images, targets = next(iter(val))
    out = model.predict(images, verbose=0)
    for i in range(min(2, len(images))):
        n = int(out["num_detections"][i])
        truth = [CLASS_NAMES[c - 1] for c in targets["classes"][i].numpy() if c > 0]
        best = [(CLASS_NAMES[c - 1], round(float(s), 2)) for c, s in
                zip(out["classes"][i, :3], out["scores"][i, :3]) if s > 0]
        print(f"image {i}: truth {truth}; {n} detections, best {best}")
    path = os.path.join(args.out, "finetuned.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    again = reloaded.predict(images, verbose=0)
    same = np.allclose(again["boxes"], out["boxes"], atol=1e-4)
    print(f"saved {path}; reloaded detections {'equal' if same else 'DIFFER'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
