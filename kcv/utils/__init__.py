"""kcv.utils."""

from kcv.utils.complexity import count_flops, count_params
from kcv.utils.draw import draw_detections, save_detection_grid
from kcv.utils.receptive_field import ReceptiveField, receptive_field
