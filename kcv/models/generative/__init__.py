"""Generative models: VAE, GAN (DCGAN reference networks) and CycleGAN."""

from kcv.models.generative.cyclegan import (
    CycleGAN,
    ImageHistory,
    PatchGANDiscriminator,
    ResNetGenerator,
)
from kcv.models.generative.gan import GAN, DCGANDiscriminator, DCGANGenerator
from kcv.models.generative.vae import VAE
