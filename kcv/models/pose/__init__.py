"""kcv.models.pose: bottom-up (OpenPose) and top-down (HRNet) human-pose models."""

from kcv.models.pose.openpose import OpenPose
