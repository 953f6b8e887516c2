"""Glow and constant-volume Glow (CV-Glow) as chains of TFP bijectors.

`forward` maps a latent of shape `[H, W, C]` to an image of the same shape;
`inverse` maps an image to its latent. Each level of the multi-scale
architecture is itself shape-preserving, which is what lets it run with an
unknown batch size (unlike `tfb.Glow`, docs/stack.md, note 2):

```none
image [H, W, C]
  |  Squeeze                       -> [H/2, W/2, 4C]
  |  K x ( ActNorm -> InvertibleConv1x1 -> Coupling )       volume term
  |  split prior: Coupling on the last 2C channels,       distribution term
  |     conditioned on the first 2C (a learned N(mu, sigma^2) prior)
  |  ApplyToChannels(next level, first 2C channels)   (the last level has no
  |                                                    split and no next level)
  |  Squeeze^-1                    -> [H, W, C]
latent [H, W, C]  ~  N(0, I)
```

The list each level builds is in scoring order (image to latent): a
`tfb.Chain` applies the inverses of its bijectors in list order (and the
forwards in reverse order), so no reversal is needed.

CV-Glow uses additive couplings in the flow steps and an additive split prior
(`N(mu(x_a), I)`), so every log-determinant left depends on parameters only
and the volume term is one number for every image.

#### References

[1]: Diederik P. Kingma, Prafulla Dhariwal. Glow: Generative Flow with
     Invertible 1x1 Convolutions. NeurIPS 2018. https://arxiv.org/abs/1807.03039
[2]: Eric Nalisnick et al. Do Deep Generative Models Know What They Don't Know?
     ICLR 2019. https://arxiv.org/abs/1810.09136
"""

import dataclasses
from typing import Callable, Optional, Sequence

import tensorflow_probability as tfp
import tf_keras

from tfp_ood.bijectors.coupling import Coupling
from tfp_ood.bijectors.layers import (DISTRIBUTION, VOLUME, ActNorm, ApplyToChannels,
                                      InvertibleConv1x1, Squeeze)
from tfp_ood.config import GlowConfig

tfb = tfp.bijectors

__all__ = ['glow', 'cv_glow', 'coupling_network_fn', 'exit_network_fn']

# A factory `fn(input_shape, output_channels, seed) -> tf_keras.Model`.
NetworkFn = Callable[[Sequence[int], int, int], tf_keras.Model]


def coupling_network_fn(hidden_channels: int) -> NetworkFn:
    """Glow's coupling network: conv3x3 -> ReLU -> conv1x1 -> ReLU -> conv3x3.

    The last convolution is zero-initialised, so every coupling starts as the
    identity.
    """

    def network(input_shape, output_channels, seed):
        init = tf_keras.initializers.GlorotUniform
        return tf_keras.Sequential([
            tf_keras.Input(shape=tuple(input_shape)),
            tf_keras.layers.Conv2D(hidden_channels, 3, padding='same',
                                   activation='relu',
                                   kernel_initializer=init(seed=seed)),
            tf_keras.layers.Conv2D(hidden_channels, 1, activation='relu',
                                   kernel_initializer=init(seed=seed + 1)),
            tf_keras.layers.Conv2D(output_channels, 3, padding='same',
                                   kernel_initializer='zeros'),
        ])

    return network


def exit_network_fn() -> NetworkFn:
    """The split prior's network: one zero-initialised conv3x3.

    At initialisation the prior of the factored-out channels is `N(0, I)`
    (TFP's default exit network starts at a scale of `e^2` instead,
    docs/stack.md, note 11).
    """

    def network(input_shape, output_channels, seed):
        del seed  # Zero-initialised: nothing random.
        return tf_keras.Sequential([
            tf_keras.Input(shape=tuple(input_shape)),
            tf_keras.layers.Conv2D(output_channels, 3, padding='same',
                                   kernel_initializer='zeros'),
        ])

    return network


def glow(config: GlowConfig,
         coupling_fn: Optional[NetworkFn] = None,
         exit_fn: Optional[NetworkFn] = None) -> tfb.Chain:
    """Builds the Glow bijector described by `config`.

    Args:
      config: the architecture; `config.coupling` chooses affine (Glow) or
        additive (CV-Glow) couplings and split priors.
      coupling_fn: network factory for the couplings.
        Default value: `coupling_network_fn(config.hidden_channels)`.
      exit_fn: network factory for the split priors.
        Default value: `exit_network_fn()`.

    Returns:
      A `tfb.Chain` whose `forward` maps latents `[..., H, W, C]` to images of
      the same shape.
    """
    coupling_fn = coupling_fn or coupling_network_fn(config.hidden_channels)
    exit_fn = exit_fn or exit_network_fn()
    # Width of a coupling network's output per transformed channel: shift
    # only (additive), or shift and log-scale (affine).
    width = 2 if config.coupling == 'affine' else 1
    seeds = iter(range(config.seed * 100_000, (config.seed + 1) * 100_000, 2))

    def coupling(shape, network_fn, log_det_term, name):
        conditioning = shape[-1] // 2
        network = network_fn((shape[0], shape[1], conditioning),
                             width * (shape[-1] - conditioning), next(seeds))
        return Coupling(shape, network, log_det_term=log_det_term, name=name)

    def level(event_shape, index):
        squeeze = Squeeze(event_shape, name=f'level{index}_squeeze')
        shape = squeeze.latent_event_shape
        bijectors = [squeeze]
        for step in range(config.num_steps_per_level):
            prefix = f'level{index}_step{step}'
            bijectors += [
                ActNorm(shape, name=f'{prefix}_act_norm'),
                InvertibleConv1x1(shape, seed=next(seeds),
                                  name=f'{prefix}_conv1x1'),
                coupling(shape, coupling_fn, VOLUME, f'{prefix}_coupling'),
            ]
        if index + 1 < config.num_levels:
            kept = shape[-1] // 2
            bijectors += [
                coupling(shape, exit_fn, DISTRIBUTION,
                         f'level{index}_split_prior'),
                ApplyToChannels(level((shape[0], shape[1], kept), index + 1),
                                shape, kept, name=f'level{index}_inner'),
            ]
        bijectors.append(tfb.Invert(squeeze, name=f'level{index}_unsqueeze'))
        return tfb.Chain(bijectors, name=f'level{index}')

    return level(config.image_shape, 0)


def cv_glow(config: GlowConfig, **kwargs) -> tfb.Chain:
    """Constant-volume Glow: `glow` with additive couplings and priors."""
    return glow(dataclasses.replace(config, coupling='additive'), **kwargs)
