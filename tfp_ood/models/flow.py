"""Normalizing-flow density model: a base distribution and a bijector.

`FlowModel` wraps a bijector whose `forward` maps latents to (dequantized,
centred) images, with a standard normal base distribution on the latent, and
reports the paper's decomposition of the log-likelihood per image:

```none
log P(k) = log_pz + log_det + dequant_const
log_pz        distribution term: log N(z; 0, I) at z = f(x), plus the
              log-densities of the learned split priors
log_det       volume term: log |det df/dx| of the flow's own layers
dequant_const -D log 256, the change of scale from pixel values to [0, 1)
```

`log_prob` is the sum of the three, so the split is exact by construction;
the tests check it against `tfd.TransformedDistribution.log_prob`.

A multi-scale flow also reports each level's share (`level<i>_log_pz`: the
standard normal log-density of the latent the level factors out plus its split
prior's log-determinant; `level<i>_log_det`: its steps' log-determinant). They
sum to `log_pz` and `log_det` up to float rounding.

`statistics(images)` adds what happens along the way, per image
(`statistic_names`): each step's log-determinant
(`level<i>_step<j>_log_det`, summing to `level<i>_log_det`), the mean square
of the activations after each step (`level<i>_step<j>_mean_square`), and
each level's split-prior log-determinant (`level<i>_prior_log_det`, all but
the last level) and the mean square of the latent it factors out
(`level<i>_latent_mean_square`). `statistics(images, gradients=True)` adds,
per image, the log-norm of the log-likelihood's gradient with respect to each
step's ActNorm, 1x1 convolution and coupling and each split prior
(`level<i>_step<j>_coupling_log_grad_norm`, ...; `parameter_groups`).
"""

from typing import Dict, List, Optional

import math

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_ood.bijectors.glow import Step, glow
from tfp_ood.bijectors.layers import ImageBijector, inverse_and_log_det_terms
from tfp_ood.config import GlowConfig
from tfp_ood.errors import InputError
from tfp_ood.models.base import NUM_BINS, DensityModel, check_images, dequantize
from tfp_ood.terms import DEQUANT_CONST, LOG_DET, LOG_PROB, LOG_PZ, level_term, step_term

tfd = tfp.distributions

__all__ = ['FlowModel']


class FlowModel(DensityModel):
    """A flow on images with the distribution/volume split.

    Args:
      bijector: an `ImageBijector` whose `forward` maps latents `[..., H, W, C]`
        to images of the same shape (as `tfp_ood.bijectors.glow` builds).
      image_shape: `(H, W, C)`.
      config: the configuration the bijector was built from, if any; kept for
        export and checkpoints.
      name: module name.
      precision: where the bijector's networks compute (`'float32'` or
        `'bfloat16'`, see `tfp_ood.bijectors.glow`); recorded in exports. Not
        part of `get_config()`: the variables are the same in both.

    #### Examples

    ```python
    model = FlowModel.from_config(GlowConfig.named('tiny', (16, 16, 3)))
    model.initialize(train_images[:256])       # ActNorm data-dependent init
    terms = model.log_prob_terms(test_images)  # dict of [batch] tensors
    ```
    """

    can_sample = True
    vectorized_gradients = True
    is_flow = True

    def __init__(self, bijector: ImageBijector, image_shape, config: Optional[GlowConfig] = None,
                 name: str = 'flow', precision: str = 'float32'):
        super().__init__(image_shape, name=name)
        self.config = config
        self.precision = precision
        self.bijector = bijector
        self.base_distribution = tfd.Sample(tfd.Normal(0., 1.),
                                            sample_shape=self.image_shape)
        # The continuous density of the centred, dequantized images; used by
        # tests as an independent check and available for TFP users.
        self.distribution = tfd.TransformedDistribution(self.base_distribution,
                                                        bijector)
        self.initialized = tf.Variable(False, trainable=False,
                                       name='initialized')

    @property
    def levels(self):
        """The levels of a multi-scale flow (`tfp_ood.bijectors.Level`), outermost
        first; empty for a flow without levels."""
        return tuple(getattr(self.bijector, 'levels', ()))

    @property
    def term_names(self):
        per_level = tuple(level_term(i, t) for i in range(len(self.levels))
                          for t in (LOG_PZ, LOG_DET))
        return (LOG_PZ, LOG_DET, DEQUANT_CONST) + per_level

    @property
    def statistic_names(self):
        names = []
        for i, level in enumerate(self.levels):
            names += [step_term(i, j, t) for j in range(len(level.steps))
                      for t in (LOG_DET, 'mean_square')]
            if level.split_prior is not None:
                names.append(level_term(i, 'prior_log_det'))
            names.append(level_term(i, 'latent_mean_square'))
        return tuple(names)

    def parameter_groups(self) -> Dict[str, List[tf.Variable]]:
        """Per level, each step's ActNorm, 1x1 convolution and coupling
        (`level<i>_step<j>_act_norm`, `..._conv1x1`, `..._coupling`) and the
        split prior (`level<i>_prior`); any other trainable variable in `rest`.
        A flow without levels has the default grouping."""
        if not self.levels:
            return super().parameter_groups()
        groups = {}
        for i, level in enumerate(self.levels):
            for j, step in enumerate(level.steps):
                for part in Step._fields:
                    groups[f'level{i}_step{j}_{part}'] = list(
                        getattr(step, part).trainable_variables)
            if level.split_prior is not None:
                groups[f'level{i}_prior'] = list(level.split_prior.trainable_variables)
        grouped = {v.ref() for vs in groups.values() for v in vs}
        rest = [v for v in self.trainable_variables if v.ref() not in grouped]
        if rest:
            groups['rest'] = rest
        return {k: v for k, v in groups.items() if v}

    @classmethod
    def from_config(cls, config: GlowConfig, precision: str = 'float32') -> 'FlowModel':
        """A Glow (affine) or CV-Glow (additive) as `config` says, its networks
        computing in `precision`."""
        return cls(glow(config, precision=precision), config.image_shape, config=config,
                   name=config.family, precision=precision)

    def get_config(self) -> Dict:
        """The model's configuration as JSON-able data (`models.from_config` rebuilds it)."""
        if self.config is None:
            raise InputError('This FlowModel was built from a bijector, not a GlowConfig; '
                             'it has no configuration to save.')
        return dict(family=self.config.family, **self.config.to_dict())

    @property
    def dequant_const(self) -> float:
        """`-D log 256`, in nats per image."""
        return -self.num_dims * math.log(NUM_BINS)

    def initialize(self, images, seed: int = 0) -> None:
        """Data-dependent initialisation of every ActNorm from `images`.

        Call once, eagerly, with a batch of training images (a few hundred),
        before training. Uses uniform dequantization noise drawn with `seed`.
        """
        images = check_images(images, self.image_shape)
        noise = tf.random.stateless_uniform(tf.shape(images), seed=[seed, 0])
        inverse_and_log_det_terms(self.bijector, dequantize(images, noise), data_init=True)
        self.initialized.assign(True)

    def log_prob_terms(self, images, noise=None) -> Dict[str, tf.Tensor]:
        """The log-likelihood of each image and its decomposition.

        Args:
          images: uint8 `[batch, H, W, C]`.
          noise: dequantization noise in `[0, 1)`, same shape, or `None` for
            the deterministic midpoint `1/2`.
            Default value: `None`.

        Returns:
          A dict of `[batch]` float32 tensors, in nats per image:
          `log_prob == log_pz + log_det + dequant_const`, and for a multi-scale
          flow `level<i>_log_pz` and `level<i>_log_det` per level.
        """
        return self._terms(images, noise)[0]

    def _terms(self, images, noise=None):
        """`log_prob_terms` and the per-level `LevelTerms`."""
        images = check_images(images, self.image_shape)
        z, terms = inverse_and_log_det_terms(self.bijector, dequantize(images, noise))
        log_pz = self.base_distribution.log_prob(z) + terms.distribution
        const = tf.fill(tf.shape(log_pz), self.dequant_const)
        out = {
            LOG_PROB: log_pz + terms.volume + const,
            LOG_PZ: log_pz,
            LOG_DET: terms.volume,
            DEQUANT_CONST: const,
        }
        for i, level in enumerate(terms.levels):
            out[level_term(i, LOG_PZ)] = level.latent_log_prob + level.prior_log_det
            out[level_term(i, LOG_DET)] = level.volume
        return out, terms.levels

    def _forward_statistics(self, images) -> Dict[str, tf.Tensor]:
        """`log_prob_terms(images)` and every statistic of `statistic_names`
        (see the module docstring), from one pass through the flow."""
        out, levels = self._terms(images)
        for i, level in enumerate(levels):
            for j, (log_det, mean_square) in enumerate(zip(level.step_volumes,
                                                           level.step_mean_squares)):
                out[step_term(i, j, LOG_DET)] = log_det
                out[step_term(i, j, 'mean_square')] = mean_square
            if i + 1 < len(levels):  # The last level has no split prior.
                out[level_term(i, 'prior_log_det')] = level.prior_log_det
            out[level_term(i, 'latent_mean_square')] = level.latent_mean_square
        return out

    def sample(self, num_images: int, temperature: float = 1.0,
               seed: Optional[int] = None) -> tf.Tensor:
        """Draws uint8 images; latents are scaled by `temperature`."""
        z = temperature * self.base_distribution.sample(num_images, seed=seed)
        x = self.bijector.forward(z)
        pixels = tf.floor((x + 0.5) * NUM_BINS)
        return tf.cast(tf.clip_by_value(pixels, 0., NUM_BINS - 1.), tf.uint8)
