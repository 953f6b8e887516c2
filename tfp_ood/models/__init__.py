"""Density models on uint8 images."""

from typing import Any, Dict, Sequence

from tfp_ood.config import (MODEL_NAMES, GlowConfig, PixelCNNConfig, VAEConfig,
                            config_from_saved, named_config)
from tfp_ood.errors import InputError
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


def build(config, precision: str = 'float32') -> DensityModel:
    """The model of a configuration (`GlowConfig`, `PixelCNNConfig` or `VAEConfig`).

    `precision='bfloat16'` (the flows only) computes the coupling and prior
    networks in bfloat16; see `tfp_ood.bijectors.glow`.
    """
    if isinstance(config, GlowConfig):
        return FlowModel.from_config(config, precision=precision)
    if precision != 'float32':
        raise InputError(f'precision {precision!r} is implemented for the flows (glow, '
                         f'cv_glow); {type(config).__name__} models compute in float32.')
    return _BUILDERS[type(config)](config)


def named_model(model: str, config_name: str, image_shape: Sequence[int],
                seed: int = 0, precision: str = 'float32', **overrides) -> DensityModel:
    """A model by name (`tfp_ood.config.MODEL_NAMES`) and named size ('paper', 'cpu', ...).

    `'vae'` is the conv-categorical VAE and `'vae_rnvp'` the VAE with a
    RealNVP encoder. `overrides` set other fields of the configuration (e.g.
    `coupling_scale='contracting'` for a Glow).
    """
    if model != 'pixelcnn':
        overrides = dict(overrides, seed=seed)
    return build(named_config(model, config_name, image_shape, **overrides), precision)


def from_config(config: Dict[str, Any], precision: str = 'float32') -> DensityModel:
    """Builds a model from `model.get_config()` output (`{'family': ..., ...}`)."""
    return build(config_from_saved(config), precision)
