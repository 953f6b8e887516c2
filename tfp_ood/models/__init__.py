"""Density models on uint8 images."""

from typing import Any, Dict

from tfp_ood.config import GlowConfig
from tfp_ood.models.base import DensityModel, bits_per_dim, check_images, dequantize
from tfp_ood.models.flow import FlowModel

__all__ = ['DensityModel', 'FAMILIES', 'FlowModel', 'bits_per_dim', 'check_images',
           'dequantize', 'from_config']

#: Model families and how to build them from a `get_config()` dict.
FAMILIES = {
    'glow': lambda d: FlowModel.from_config(GlowConfig.from_dict(dict(d, coupling='affine'))),
    'cv_glow': lambda d: FlowModel.from_config(GlowConfig.from_dict(dict(d, coupling='additive'))),
}


def from_config(config: Dict[str, Any]) -> DensityModel:
    """Builds a model from `model.get_config()` output (`{'family': ..., ...}`)."""
    config = dict(config)
    family = config.pop('family', None)
    if family not in FAMILIES:
        raise ValueError(f'Unknown model family {family!r}; expected one of '
                         f'{sorted(FAMILIES)}.')
    return FAMILIES[family](config)
