"""kcv.utils: receptive fields, parameter and MAC counts, model surgery."""

from kcv.utils.complexity import count_macs, count_params
from kcv.utils.receptive_field import ReceptiveField, receptive_field
from kcv.utils.surgery import dilate
