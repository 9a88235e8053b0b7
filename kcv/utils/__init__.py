"""kcv.utils."""

from kcv.utils.complexity import count_flops, count_params
from kcv.utils.receptive_field import ReceptiveField, receptive_field
