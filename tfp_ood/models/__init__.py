"""Density models on uint8 images."""

from typing import Any, Dict, Sequence

from tfp_ood.config import (MODEL_NAMES, GlowConfig, PixelCNNConfig, VAEConfig, named_config,
                            spec_of_family)
from tfp_ood.models.base import DensityModel, bits_per_dim, check_images, dequantize
from tfp_ood.models.flow import FlowModel
from tfp_ood.models.pixel_cnn import PixelCNNModel
from tfp_ood.models.vae import VAE

__all__ = ['DensityModel', 'FlowModel', 'PixelCNNConfig', 'PixelCNNModel', 'VAE', 'VAEConfig',
           'MODEL_NAMES', 'bits_per_dim', 'build', 'check_images', 'dequantize', 'from_config',
           'named_model']

# The model class of each configuration class (`tfp_ood.config.MODELS` maps
# names to configuration classes).
_BUILDERS = {GlowConfig: FlowModel.from_config, PixelCNNConfig: PixelCNNModel, VAEConfig: VAE}


def build(config) -> DensityModel:
    """The model of a configuration (`GlowConfig`, `PixelCNNConfig` or `VAEConfig`)."""
    return _BUILDERS[type(config)](config)


def named_model(model: str, config_name: str, image_shape: Sequence[int],
                seed: int = 0) -> DensityModel:
    """A model by name (`tfp_ood.config.MODEL_NAMES`) and named size ('paper', 'cpu', ...).

    `'vae'` is the conv-categorical VAE and `'vae_rnvp'` the VAE with a
    RealNVP encoder.
    """
    overrides = {} if model == 'pixelcnn' else {'seed': seed}
    return build(named_config(model, config_name, image_shape, **overrides))


def from_config(config: Dict[str, Any]) -> DensityModel:
    """Builds a model from `model.get_config()` output (`{'family': ..., ...}`)."""
    config = dict(config)
    spec = spec_of_family(config.pop('family', None))
    return build(spec.config_class.from_dict(dict(config, **spec.fixed)))
