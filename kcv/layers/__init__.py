"""kcv.layers: Keras layers wrapping kcv ops and the building blocks of kcv models."""

from kcv.layers.aspp import ASPP
from kcv.layers.attention import CBAM, ChannelAttention, SpatialAttention
from kcv.layers.conv_blocks import ConvBNAct, DepthwiseSeparableConv, InvertedResidual
from kcv.layers.cosine import CosineClassifier
from kcv.layers.deformable import DeformableConv2D
from kcv.layers.detection import DetectionPostProcess
from kcv.layers.dilated import HybridDilatedConv
from kcv.layers.distance import EuclideanDistance, euclidean_distance
from kcv.layers.embedding import (
    ClassToken,
    LearnedPositionEmbedding,
    PatchEmbedding,
    SinusoidalPositionalEncoding,
    TokenAndPositionEmbedding,
)
from kcv.layers.normalization import normalization
from kcv.layers.padding import ReflectionPadding2D
from kcv.layers.residual import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from kcv.layers.roi import MultiScaleRoIAlign, RoIAlign, RoIPool
from kcv.layers.transformer import PaddingMask, TransformerDecoderLayer, TransformerEncoderLayer
from kcv.layers.upsampling import DenseUpsampling
