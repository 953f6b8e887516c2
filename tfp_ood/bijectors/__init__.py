"""Bijectors of the package's flows (forward: latent -> image)."""

from tfp_ood.bijectors.coupling import Coupling
from tfp_ood.bijectors.glow import coupling_network_fn, cv_glow, exit_network_fn, glow
from tfp_ood.bijectors.layers import (DISTRIBUTION, VOLUME, ActNorm, ApplyToChannels,
                                      ImageBijector, InvertibleConv1x1, Squeeze,
                                      inverse_and_log_det_terms)

__all__ = [
    'ActNorm', 'ApplyToChannels', 'Coupling', 'DISTRIBUTION', 'ImageBijector',
    'InvertibleConv1x1', 'Squeeze', 'VOLUME', 'coupling_network_fn', 'cv_glow',
    'exit_network_fn', 'glow', 'inverse_and_log_det_terms',
]
