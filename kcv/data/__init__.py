"""kcv.data: tf.data pipelines and synthetic datasets."""

from kcv.data import synthetic
from kcv.data.box_augment import augment_detection
from kcv.data.coco import coco_categories, coco_detection, detections_to_coco, write_coco_json
from kcv.data.detection import make_shapes_detection, shapes_detection_dataset
from kcv.data.folder import segmentation_folder
from kcv.data.synthetic import make_shapes, shapes_dataset
