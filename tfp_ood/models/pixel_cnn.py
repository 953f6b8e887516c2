"""PixelCNN++ (Salimans et al., 2017) on TFP's `tfd.PixelCNN`.

The likelihood is a discretized mixture of logistics over pixel values
`0..255`, so `log_prob` is the discrete log-likelihood `log P(k)` directly:
no dequantization noise and no volume term.

`PixelCNNDistribution` is a thin subclass of `tfd.PixelCNN` that adds
`pixel_log_prob`, the conditional log-likelihood of every pixel given the
pixels before it in raster order, `[batch, H, W]`, which sums to
`tfd.PixelCNN.log_prob` (tested) and maps where in an image the likelihood
comes from.

`PixelCNNModel.statistics` summarises that map per image from the same one
network pass, in nats per pixel (all channels): its spread (`pixel_nll_std`),
its 10th/50th/90th/99th percentiles and maximum, the mean of its worst 10%
of pixels (`pixel_nll_top10`) and how much it changes between neighbouring
pixels (`pixel_nll_map_tv`), for detectors built on the model's computation
(`tfp_ood.detectors.DensityOfStates`).

`PixelCNNModel` holds the network's variables and reaches the distribution
through a closure: a `tf.Module` that holds a weight-normalised
`tfd.PixelCNN` directly cannot be saved ("captures graph tensor from a parent
function", docs/stack.md, note 5).

#### References

[1]: Tim Salimans, Andrej Karpathy, Xi Chen, Diederik P. Kingma. PixelCNN++.
     ICLR 2017. https://arxiv.org/abs/1701.05517
"""

from typing import Any, Dict

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_ood.config import PIXEL_CNN_CONFIG_NAMES, PixelCNNConfig, spec_of_family
from tfp_ood.errors import InputError
from tfp_ood.models.base import DensityModel, check_images
from tfp_ood.terms import LOG_PROB

tfd = tfp.distributions

#: What `PixelCNNModel.statistics` reports besides `log_prob`.
PIXEL_STATISTICS = ('pixel_nll_std', 'pixel_nll_q10', 'pixel_nll_q50', 'pixel_nll_q90',
                    'pixel_nll_q99', 'pixel_nll_max', 'pixel_nll_top10', 'pixel_nll_map_tv')

__all__ = ['PIXEL_CNN_CONFIG_NAMES', 'PIXEL_STATISTICS', 'PixelCNNConfig', 'PixelCNNDistribution',
           'PixelCNNModel']


class PixelCNNDistribution(tfd.PixelCNN):
    """`tfd.PixelCNN` with per-pixel conditional log-likelihoods."""

    def pixel_log_prob(self, value, training=False) -> tf.Tensor:
        """`log p(x_i | x_<i)` for every pixel `i` in raster order, `[batch, H, W]`.

        Follows `tfd.PixelCNN._log_prob` but keeps the pixel axes: the network's
        mixture parameters, the linear dependence of a pixel's channel means on
        its earlier channels, and the mixture without its final reduction.
        """
        value = tf.convert_to_tensor(value, self.dtype)
        transformed = 2. * (value - self._low) / (self._high - self._low) - 1.
        params = self.network(transformed, training=training)
        num_channels = self.event_shape[-1]
        if num_channels == 1:
            component_logits, locs, scales = params
        else:
            component_logits, locs, scales, coeffs = params
            loc_parts = tf.split(locs, num_channels, axis=-1)
            coef_parts = tf.split(coeffs, num_channels * (num_channels - 1) // 2, axis=-1)
            channels = [c[..., tf.newaxis, :] for c in tf.split(transformed, num_channels, -1)]
            k = 0
            for i in range(num_channels):
                for j in range(i):
                    loc_parts[i] += channels[j] * coef_parts[k]
                    k += 1
            locs = tf.concat(loc_parts, axis=-1)
        per_image = self._make_mixture_dist(component_logits, locs, scales)
        return per_image.distribution.log_prob(value)  # Without the pixel reduction.


class PixelCNNModel(DensityModel):
    """A PixelCNN++ as a `DensityModel` (discrete likelihood, no terms)."""

    term_names = ()
    can_sample = True
    # At temperature 1 only: as the registry declares for the family.
    sample_temperatures = spec_of_family('pixelcnn').sample_temperatures
    any_temperature = spec_of_family('pixelcnn').any_temperature

    def __init__(self, config: PixelCNNConfig, name: str = 'pixelcnn'):
        super().__init__(config.image_shape, name=name)
        self.config = config
        distribution = PixelCNNDistribution(
            image_shape=config.image_shape, num_resnet=config.num_resnet,
            num_hierarchies=config.num_hierarchies, num_filters=config.num_filters,
            num_logistic_mix=config.num_logistic_mix, dropout_p=config.dropout_p,
            use_weight_norm=True, use_data_init=False)
        self._distribution = lambda: distribution  # A closure: not tracked (trap 5).
        self.network = distribution.network  # The variables, tracked and trained.
        # tfd.PixelCNN masks its convolutions with kernel constraints, which Keras
        # applies only after an optimizer step: until then a fresh network sees
        # the future. Apply them now, so the model is autoregressive from the start.
        for variable in self.network.variables:
            if getattr(variable, 'constraint', None) is not None:
                variable.assign(variable.constraint(variable))

    @property
    def distribution(self) -> PixelCNNDistribution:
        return self._distribution()

    def saved_objects(self):
        """The variables only: a weight-normed layer's call captures a kernel
        computed in the parent graph, so the layers cannot be saved as objects
        (docs/stack.md, note 5)."""
        return {'model_variables': list(self.variables)}

    def get_config(self) -> Dict[str, Any]:
        return dict(family='pixelcnn', **self.config.to_dict())

    def log_prob_terms(self, images, noise=None) -> Dict[str, tf.Tensor]:
        """Discrete log-likelihood; `noise` is ignored (the model is discrete)."""
        del noise
        images = check_images(images, self.image_shape)
        return {LOG_PROB: self.distribution.log_prob(tf.cast(images, tf.float32),
                                                     training=False)}

    def training_log_prob(self, images, noise=None) -> tf.Tensor:
        """The log-likelihood with dropout active, for training."""
        del noise
        return self.distribution.log_prob(tf.cast(images, tf.float32), training=True)

    def pixel_log_prob(self, images) -> tf.Tensor:
        images = check_images(images, self.image_shape)
        return self.distribution.pixel_log_prob(tf.cast(images, tf.float32))

    @property
    def statistic_names(self):
        return PIXEL_STATISTICS

    def _forward_statistics(self, images) -> Dict[str, tf.Tensor]:
        """`log_prob` and the summaries of the per-pixel negative log-likelihood
        map of `statistic_names` (nats per pixel), from one network pass."""
        pixel_nll = -self.pixel_log_prob(images)
        flat = tf.reshape(pixel_nll, [tf.shape(pixel_nll)[0], -1])
        num_pixels = self.image_shape[0] * self.image_shape[1]
        quantiles = tfp.stats.percentile(flat, [10., 50., 90., 99.], axis=1,
                                         interpolation='linear')
        worst = tf.math.top_k(flat, k=max(1, num_pixels // 10), sorted=False).values
        map_tv = (tf.reduce_mean(tf.abs(pixel_nll[:, 1:] - pixel_nll[:, :-1]), axis=[1, 2])
                  + tf.reduce_mean(tf.abs(pixel_nll[:, :, 1:] - pixel_nll[:, :, :-1]),
                                   axis=[1, 2]))
        return {LOG_PROB: -tf.reduce_sum(flat, axis=1),
                'pixel_nll_std': tf.math.reduce_std(flat, axis=1),
                'pixel_nll_q10': quantiles[0], 'pixel_nll_q50': quantiles[1],
                'pixel_nll_q90': quantiles[2], 'pixel_nll_q99': quantiles[3],
                'pixel_nll_max': tf.reduce_max(flat, axis=1),
                'pixel_nll_top10': tf.reduce_mean(worst, axis=1),
                'pixel_nll_map_tv': map_tv}

    def sample(self, num_images, temperature: float = 1.0, seed=None) -> tf.Tensor:
        """Autoregressive samples (one network pass per pixel); `temperature`
        must be 1 (a mixture of logistics has no standard temperature)."""
        if isinstance(temperature, (int, float)):
            if temperature != 1.0:
                raise InputError(f'PixelCNN samples at temperature 1 only; got {temperature}.')
        else:
            tf.debugging.assert_near(temperature, 1.0,
                                     message='PixelCNN samples at temperature 1 only')
        samples = self.distribution.sample(num_images, seed=seed)
        return tf.cast(tf.clip_by_value(tf.round(samples), 0., 255.), tf.uint8)
