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

Each level is a `Level`, a `Chain` in scoring order (image to latent: the
chain applies the inverses of its bijectors in list order and the forwards in
reverse order, so no reversal is needed) that names its parts: `squeeze`,
`steps` (each a `Step` of ActNorm, 1x1 convolution and coupling),
`split_prior`, `next_level`. `glow(...).levels` lists every level, outermost
first, and its `inverse_and_log_det_terms` reports each level's share of the
log-likelihood (`LogDetTerms.levels`).

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
import math
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras

from tfp_ood.bijectors.coupling import Coupling
from tfp_ood.bijectors.layers import (DISTRIBUTION, VOLUME, ActNorm, ApplyToChannels, Chain,
                                      Invert, InvertibleConv1x1, LevelTerms, LogDetTerms,
                                      Squeeze)
from tfp_ood.config import PRECISIONS, GlowConfig
from tfp_ood.errors import InputError

__all__ = ['Level', 'PRECISIONS', 'Step', 'glow', 'cv_glow', 'coupling_network_fn',
           'exit_network_fn']

# A factory `fn(input_shape, output_channels, seed) -> tf_keras.Model`.
NetworkFn = Callable[[Sequence[int], int, int], tf_keras.Model]


def _layer_dtype(precision: str):
    """The Keras dtype policy of a network layer: float32 variables always;
    computation in float32 or (`'bfloat16'`) in bfloat16."""
    if precision not in PRECISIONS:
        raise InputError(f'precision must be one of {PRECISIONS}; got {precision!r}.')
    return 'float32' if precision == 'float32' else tf_keras.mixed_precision.Policy(
        'mixed_bfloat16')


def coupling_network_fn(hidden_channels: int, precision: str = 'float32',
                        float32_convolutions: Sequence[int] = ()) -> NetworkFn:
    """Glow's coupling network: conv3x3 -> ReLU -> conv1x1 -> ReLU -> conv3x3.

    The last convolution is zero-initialised, so every coupling starts as the
    identity. With `precision='bfloat16'` the convolutions compute in
    bfloat16 (Keras' `mixed_bfloat16` policy: float32 variables, inputs cast
    on the way in); `Coupling` casts the output back to float32.

    Args:
      hidden_channels: width of the two hidden layers.
      precision: `'float32'` or `'bfloat16'`.
      float32_convolutions: indices (0, 1, 2) of convolutions that compute in
        float32 even when `precision='bfloat16'`: keeping the first and the
        last in float32 trades most of bfloat16's speed for per-image
        likelihoods closer to float32's (`benchmarks/precision_accuracy.py`
        measures both).
        Default value: `()`.
    """
    if not set(float32_convolutions) <= {0, 1, 2}:
        raise InputError(f'float32_convolutions are indices 0, 1, 2 of the three convolutions; '
                         f'got {tuple(float32_convolutions)}.')
    dtypes = [_layer_dtype('float32' if i in float32_convolutions else precision)
              for i in range(3)]

    def network(input_shape, output_channels, seed):
        init = tf_keras.initializers.GlorotUniform
        return tf_keras.Sequential([
            tf_keras.Input(shape=tuple(input_shape)),
            tf_keras.layers.Conv2D(hidden_channels, 3, padding='same',
                                   activation='relu', dtype=dtypes[0],
                                   kernel_initializer=init(seed=seed)),
            tf_keras.layers.Conv2D(hidden_channels, 1, activation='relu', dtype=dtypes[1],
                                   kernel_initializer=init(seed=seed + 1)),
            tf_keras.layers.Conv2D(output_channels, 3, padding='same', dtype=dtypes[2],
                                   kernel_initializer='zeros'),
        ])

    return network


def exit_network_fn() -> NetworkFn:
    """The split prior's network: one zero-initialised conv3x3.

    At initialisation the prior of the factored-out channels is `N(0, I)`
    (TFP's default exit network starts at a scale of `e^2` instead,
    docs/stack.md, note 11). It computes in float32 at every precision of
    `glow`: one small convolution, with nothing to gain from bfloat16.
    """

    def network(input_shape, output_channels, seed):
        del seed  # Zero-initialised: nothing random.
        return tf_keras.Sequential([
            tf_keras.Input(shape=tuple(input_shape)),
            tf_keras.layers.Conv2D(output_channels, 3, padding='same',
                                   kernel_initializer='zeros'),
        ])

    return network


class Step(NamedTuple):
    """One flow step of a level: ActNorm -> invertible 1x1 convolution -> coupling."""

    act_norm: ActNorm
    conv1x1: InvertibleConv1x1
    coupling: Coupling


def _standard_normal_log_prob(z: tf.Tensor) -> tf.Tensor:
    """`log N(z; 0, I)` summed over each example's `[H, W, C]`."""
    size = float(z.shape[1] * z.shape[2] * z.shape[3])
    return -0.5 * tf.reduce_sum(tf.square(z), axis=[1, 2, 3]) - 0.5 * math.log(2 * math.pi) * size


class Level(Chain):
    """One level of a multi-scale Glow, a `Chain` that names its parts.

    In scoring order: `squeeze`, the `steps`, then (all but the last level)
    the `split_prior` on the second half of the channels and the next level on
    the first half (`ApplyToChannels`), and the un-squeeze. The factored-out
    half leaves the flow as this level's latent, with a standard normal base.

    Args:
      squeeze: the level's `Squeeze`.
      steps: its `Step`s.
      split_prior: the coupling that gives the factored-out half its learned
        conditional prior, or `None` for the last level.
      next_level: the next `Level`, or `None` for the last level.
      name: the level's name.
    """

    def __init__(self, squeeze: Squeeze, steps: Sequence[Step],
                 split_prior: Optional[Coupling] = None, next_level: Optional['Level'] = None,
                 name: str = 'level'):
        if (split_prior is None) != (next_level is None):
            raise InputError('Level: a split prior and a next level come together.')
        shape = squeeze.latent_event_shape
        bijectors = [squeeze] + [b for step in steps for b in step]
        if next_level is not None:
            bijectors += [split_prior,
                          ApplyToChannels(next_level, shape, next_level.image_event_shape[-1],
                                          name=f'{name}_inner')]
        bijectors.append(Invert(squeeze, name=f'{name}_unsqueeze'))
        super().__init__(bijectors, name=name)
        # Plain Python values: the parts are reached through `bijectors` only, so
        # every variable keeps the one checkpoint path it had in a TFP chain.
        self._num_steps = len(steps)
        self._has_next = next_level is not None

    @property
    def _inner(self) -> Optional[ApplyToChannels]:
        return self.bijectors[-2] if self._has_next else None

    @property
    def squeeze(self) -> Squeeze:
        return self.bijectors[0]

    @property
    def steps(self) -> Tuple[Step, ...]:
        parts = self.bijectors[1:1 + 3 * self._num_steps]
        return tuple(Step(*parts[i:i + 3]) for i in range(0, len(parts), 3))

    @property
    def split_prior(self) -> Optional[Coupling]:
        return self.bijectors[-3] if self._has_next else None

    @property
    def next_level(self) -> Optional['Level']:
        return None if self._inner is None else self._inner.bijector

    @property
    def levels(self) -> Tuple['Level', ...]:
        """This level and every deeper one, outermost first."""
        return (self,) + (self.next_level.levels if self.next_level is not None else ())

    def _inverse_and_log_det_terms_4d(self, y, data_init):
        own, inner = LogDetTerms.zero(), LogDetTerms.zero()
        latent_log_prob = latent_mean_square = None
        step_volumes, step_mean_squares = [], []
        kept = None if self._inner is None else self.next_level.image_event_shape[-1]
        # The steps' bijectors are bijectors[1:1 + 3 * num_steps], three each.
        step_ends = {3 * (k + 1) for k in range(self._num_steps)}
        step_volume = 0.
        for i, b in enumerate(self.bijectors):
            y, part = b._inverse_and_log_det_terms_4d(y, data_init)
            if b is self._inner:
                inner = part
            else:
                own = own.plus(part)
            if 1 <= i <= 3 * self._num_steps:
                step_volume = step_volume + part.volume
                if i in step_ends:
                    step_volumes.append(step_volume)
                    step_mean_squares.append(tf.reduce_mean(tf.square(y), axis=[1, 2, 3]))
                    step_volume = 0.
            if kept is not None and b is self.split_prior:
                # The factored-out half is final: the next level leaves it alone.
                latent_log_prob = _standard_normal_log_prob(y[..., kept:])
                latent_mean_square = tf.reduce_mean(tf.square(y[..., kept:]), axis=[1, 2, 3])
        if latent_log_prob is None:  # The last level: all of its latent is final.
            latent_log_prob = _standard_normal_log_prob(y)
            latent_mean_square = tf.reduce_mean(tf.square(y), axis=[1, 2, 3])
        level = LevelTerms(own.volume, own.distribution, latent_log_prob, tuple(step_volumes),
                           tuple(step_mean_squares), latent_mean_square)
        return y, LogDetTerms(own.volume + inner.volume, own.distribution + inner.distribution,
                              (level,) + inner.levels)


def glow(config: GlowConfig,
         coupling_fn: Optional[NetworkFn] = None,
         exit_fn: Optional[NetworkFn] = None,
         precision: str = 'float32') -> Level:
    """Builds the Glow bijector described by `config`.

    Args:
      config: the architecture; `config.coupling` chooses affine (Glow) or
        additive (CV-Glow) couplings and split priors, `config.coupling_scale`
        how the affine flow steps bound their scales.
      coupling_fn: network factory for the couplings.
        Default value: `coupling_network_fn(config.hidden_channels, precision)`.
      exit_fn: network factory for the split priors.
        Default value: `exit_network_fn()`.
      precision: where the default coupling networks compute: `'float32'` or
        `'bfloat16'`. Only those: the split priors, ActNorm, the 1x1 convolutions, the
        log-determinants, the latents' log-densities and every sum over pixels
        stay float32, and the variables are float32 in both (a checkpoint
        of one precision loads into the other).

    Returns:
      The outermost `Level`: a `Chain` whose `forward` maps latents
      `[..., H, W, C]` to images of the same shape.
    """
    coupling_fn = coupling_fn or coupling_network_fn(config.hidden_channels, precision)
    exit_fn = exit_fn or exit_network_fn()
    # Width of a coupling network's output per transformed channel: shift
    # only (additive), or shift and log-scale (affine).
    width = 2 if config.coupling == 'affine' else 1
    seeds = iter(range(config.seed * 100_000, (config.seed + 1) * 100_000, 2))

    def coupling(shape, network_fn, log_det_term, name):
        conditioning = shape[-1] // 2
        network = network_fn((shape[0], shape[1], conditioning),
                             width * (shape[-1] - conditioning), next(seeds))
        # The split priors' log-scale is a log standard deviation: always symmetric.
        scale = config.coupling_scale if log_det_term == VOLUME else 'symmetric'
        return Coupling(shape, network, log_det_term=log_det_term, scale=scale, name=name)

    def level(event_shape, index):
        squeeze = Squeeze(event_shape, name=f'level{index}_squeeze')
        shape = squeeze.latent_event_shape
        steps = []
        for step in range(config.num_steps_per_level):
            prefix = f'level{index}_step{step}'
            steps.append(Step(ActNorm(shape, name=f'{prefix}_act_norm'),
                              InvertibleConv1x1(shape, seed=next(seeds), name=f'{prefix}_conv1x1'),
                              coupling(shape, coupling_fn, VOLUME, f'{prefix}_coupling')))
        if index + 1 == config.num_levels:
            return Level(squeeze, steps, name=f'level{index}')
        prior = coupling(shape, exit_fn, DISTRIBUTION, f'level{index}_split_prior')
        inner = level((shape[0], shape[1], shape[-1] // 2), index + 1)
        return Level(squeeze, steps, prior, inner, name=f'level{index}')

    return level(config.image_shape, 0)


def cv_glow(config: GlowConfig, **kwargs) -> Level:
    """Constant-volume Glow: `glow` with additive couplings and priors."""
    return glow(dataclasses.replace(config, coupling='additive'), **kwargs)
