"""Bijectors of the package's flows (forward: latent -> image).

Every bijector here has the one-pass protocol
`inverse_and_log_det_terms(y) -> (x, LogDetTerms)`; see `layers`.
"""

from tfp_ood.bijectors.coupling import Coupling
from tfp_ood.bijectors.glow import (PRECISIONS, Level, Step, coupling_network_fn, cv_glow,
                                    exit_network_fn, glow)
from tfp_ood.bijectors.layers import (DISTRIBUTION, VOLUME, ActNorm, ApplyToChannels, Chain,
                                      ImageBijector, Invert, InvertibleConv1x1, LevelTerms,
                                      LogDetTerms, Squeeze, inverse_and_log_det_terms)

__all__ = [
    'ActNorm', 'ApplyToChannels', 'Chain', 'Coupling', 'DISTRIBUTION', 'ImageBijector',
    'Invert', 'InvertibleConv1x1', 'Level', 'LevelTerms', 'LogDetTerms', 'PRECISIONS',
    'Squeeze', 'Step',
    'VOLUME', 'coupling_network_fn', 'cv_glow', 'exit_network_fn', 'glow',
    'inverse_and_log_det_terms',
]
