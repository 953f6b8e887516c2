"""Density models on uint8 images."""

from tfp_ood.models.base import DensityModel, bits_per_dim, check_images, dequantize
from tfp_ood.models.flow import FlowModel

__all__ = ['DensityModel', 'FlowModel', 'bits_per_dim', 'check_images', 'dequantize']
