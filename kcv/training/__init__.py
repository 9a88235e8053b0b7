"""kcv.training: LR range test, LR schedules, strategy selection, resumable fit.

The command line (`kcv train`, `kcv lr-find`, ...) is `kcv.cli`.
"""

from kcv.training.fit import fit
from kcv.training.lr_finder import LRFinder, find_lr, smooth_losses, suggest_lr
from kcv.training.schedules import (
    CosineRestarts,
    ExponentialDecay,
    LinearDecayTail,
    MultiStepDecay,
    StepDecay,
    WarmupCosine,
)
from kcv.training.strategy import strategy
