"""kcv.models.pose: bottom-up (OpenPose) and top-down (HRNet) human-pose models."""

from kcv.models.pose.assembly import assemble_people, find_peaks, limb_scores
from kcv.models.pose.hrnet_pose import HRNetPose, decode_heatmaps
from kcv.models.pose.openpose import OpenPose
