"""kcv.losses: losses as a function plus a serializable `keras.losses.Loss` class."""

from kcv.losses.segmentation import BCEDiceLoss, DiceLoss, bce_dice_loss, dice_loss
