"""kcv.data: tf.data pipelines and synthetic datasets."""

from kcv.data import synthetic
from kcv.data.synthetic import make_shapes, shapes_dataset
