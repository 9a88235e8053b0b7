"""kcv.models: functional model builders (backbones, segmentation, detection) and generative models."""

from kcv.models import detection
from kcv.models.backbones import (
    VGG16,
    MobileNetV1,
    MobileNetV2,
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
    ResNet152,
)
from kcv.models.detection.faster_rcnn import FasterRCNN
from kcv.models.generative import (
    GAN,
    VAE,
    CycleGAN,
    DCGANDiscriminator,
    DCGANGenerator,
    PatchGANDiscriminator,
    ResNetGenerator,
)
from kcv.models.pose import HRNetPose, OpenPose
from kcv.models.segmentation import DeepLabV3, HRNet, UNet, UNetPlusPlus, prune
from kcv.models.siamese import SiameseNetwork
from kcv.models.transformer import Transformer, beam_search, greedy_decode
from kcv.models.vit import VisionTransformer
