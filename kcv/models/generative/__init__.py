"""Generative models: VAE, GAN (DCGAN reference networks) and CycleGAN."""

from kcv.models.generative.vae import VAE
