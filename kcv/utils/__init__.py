"""kcv.utils: receptive fields, parameter and MAC counts, model surgery."""

from kcv.utils.complexity import count_macs, count_params
from kcv.utils.draw import draw_detections, save_detection_grid
from kcv.utils.receptive_field import ReceptiveField, receptive_field
from kcv.utils.surgery import dilate
