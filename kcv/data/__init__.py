"""kcv.data: tf.data pipelines and synthetic datasets."""

from kcv.data import synthetic
from kcv.data.folder import segmentation_folder
from kcv.data.synthetic import make_shapes, shapes_dataset
