"""Density models on uint8 images."""

from typing import Any, Dict

from tfp_ood.config import GlowConfig
from tfp_ood.models.base import DensityModel, bits_per_dim, check_images, dequantize
from tfp_ood.models.flow import FlowModel
from tfp_ood.models.pixel_cnn import PixelCNNConfig, PixelCNNModel
from tfp_ood.models.vae import VAE, VAEConfig

__all__ = ['DensityModel', 'FAMILIES', 'FlowModel', 'PixelCNNConfig', 'PixelCNNModel', 'VAE',
           'VAEConfig', 'MODEL_NAMES', 'bits_per_dim', 'check_images', 'dequantize',
           'from_config', 'named_model']

#: Model families and how to build them from a `get_config()` dict.
FAMILIES = {
    'glow': lambda d: FlowModel.from_config(GlowConfig.from_dict(dict(d, coupling='affine'))),
    'cv_glow': lambda d: FlowModel.from_config(GlowConfig.from_dict(dict(d, coupling='additive'))),
    'pixelcnn': lambda d: PixelCNNModel(PixelCNNConfig(**d)),
    'vae': lambda d: VAE(VAEConfig(**d)),
}


#: Model names accepted by `named_model` (and `tfp-ood train --model`).
MODEL_NAMES = ('glow', 'cv_glow', 'pixelcnn', 'vae', 'vae_rnvp')


def named_model(model: str, config_name: str, image_shape, seed: int = 0) -> DensityModel:
    """A model by name and named configuration ('paper', 'cpu', 'tiny').

    `model` is one of `MODEL_NAMES`: `'vae'` is the conv-categorical VAE and
    `'vae_rnvp'` the VAE with a RealNVP encoder.
    """
    if model in ('glow', 'cv_glow'):
        coupling = 'affine' if model == 'glow' else 'additive'
        return FlowModel.from_config(GlowConfig.named(config_name, image_shape,
                                                      coupling=coupling, seed=seed))
    if model == 'pixelcnn':
        return PixelCNNModel(PixelCNNConfig.named(config_name, image_shape))
    if model in ('vae', 'vae_rnvp'):
        variant = 'conv_categorical' if model == 'vae' else 'rnvp_encoder'
        return VAE(VAEConfig.named(config_name, image_shape, variant=variant, seed=seed))
    raise ValueError(f'Unknown model {model!r}; expected one of {MODEL_NAMES}.')


def from_config(config: Dict[str, Any]) -> DensityModel:
    """Builds a model from `model.get_config()` output (`{'family': ..., ...}`)."""
    config = dict(config)
    family = config.pop('family', None)
    if family not in FAMILIES:
        raise ValueError(f'Unknown model family {family!r}; expected one of '
                         f'{sorted(FAMILIES)}.')
    return FAMILIES[family](config)
