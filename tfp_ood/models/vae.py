"""Variational autoencoders on TFP distributions, in the paper's two variants.

- **conv-categorical**: a convolutional encoder to a diagonal Gaussian
  posterior and a convolutional decoder to a 256-way categorical per pixel
  channel (`tfd.Independent(tfd.Categorical(logits), 3)`);
- **RealNVP encoder**: the diagonal Gaussian posterior followed by
  `encoder_flow_layers` RealNVP couplings (`tfb.RealNVP`), decoded with a
  discretized logistic per pixel channel.

Either decoder can be chosen with `likelihood='categorical'` or
`'logistic'`. The discretized logistic is computed the numerically stable way
of PixelCNN++ (edge bins from the log-CDF, a density fallback for tiny bins):
`tfd.QuantizedDistribution(tfd.Logistic)` gave NaN losses after about ten
steps (docs/stack.md, note 6).

The decoders are discrete, so log-likelihoods are of the uint8 images
themselves (no dequantization). Training maximises the one-sample ELBO;
scoring reports the importance-weighted estimate with `K` samples
(Burda et al., 2016) as `log_prob`, and the `K`-sample ELBO as `elbo`
(`log_prob >= elbo` always). Scoring draws the same `K` standard-normal
vectors for every image (reparameterised by each image's posterior), so a
score is a function of the image alone, whatever the batch.
"""

import math
from typing import Any, Dict

import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from tfp_ood.config import LIKELIHOODS, VAE_CONFIG_NAMES, VAEConfig
from tfp_ood.models.base import DensityModel, check_images
from tfp_ood.terms import LOG_PROB

tfb = tfp.bijectors
tfd = tfp.distributions

__all__ = ['DECODE_BYTES', 'LIKELIHOODS', 'VAE', 'VAEConfig', 'VAE_CONFIG_NAMES', 'VAE_STATISTICS',
           'discretized_logistic_log_prob']

_MAX_LOG_SCALE = 3.0

#: Bytes of the decoder's largest output per pass when scoring: the K draws of
#: a batch are decoded in passes of at most this size (3 draws of a CIFAR-10
#: image's 256 logits per pixel channel, 9.4 MB), so that the output and the
#: log-likelihood's intermediates stay in the CPU's cache. On a 2-core Xeon
#: (`benchmarks/vae_likelihood.py`), decoding each draw's whole batch at once
#: (20 images, 63 MB of logits) scored at 0.6 times the speed; 3 and 5 draws a
#: pass were equally fast and 8 slower again, so the budget keeps clear of
#: that edge for CPUs with less cache.
DECODE_BYTES = 10 * 2 ** 20


def discretized_logistic_log_prob(k, loc, log_scale):
    """`log P(k)` of a logistic discretized to the 256 bins of a pixel value.

    Args:
      k: pixel values `0..255` (any float or int dtype).
      loc, log_scale: the logistic on the `[-1, 1]` scale, broadcastable to `k`.

    Returns:
      Log-probabilities of the shape of `k`; `exp` of them sums to 1 over `k`.
    """
    x = tf.cast(k, tf.float32) / 127.5 - 1.
    centered = x - loc
    inv_scale = tf.exp(-log_scale)
    plus = inv_scale * (centered + 1. / 255.)
    minus = inv_scale * (centered - 1. / 255.)
    log_cdf_plus = plus - tf.nn.softplus(plus)  # log sigmoid(plus), for k = 0.
    log_one_minus_cdf_minus = -tf.nn.softplus(minus)  # For k = 255.
    # log(sigmoid(plus) - sigmoid(minus)) without cancellation.
    log_delta = (tf.math.log(-tf.math.expm1(minus - plus)) + plus - tf.nn.softplus(plus)
                 - tf.nn.softplus(minus))
    log_delta = tf.where(tf.math.is_finite(log_delta), log_delta, -1e30)
    middle = inv_scale * centered  # Density fallback when the bin mass underflows.
    log_density = middle - log_scale - 2. * tf.nn.softplus(middle) - math.log(127.5)
    inner = tf.where(log_delta > -30., log_delta, log_density)
    return tf.where(x < -0.999, log_cdf_plus,
                    tf.where(x > 0.999, log_one_minus_cdf_minus, inner))


def _real_nvp_network(num_in: int, num_out: int, hidden: int, seed: int) -> tf_keras.Model:
    return tf_keras.Sequential([
        tf_keras.Input(shape=(num_in,)),
        tf_keras.layers.Dense(hidden, activation='relu',
                              kernel_initializer=tf_keras.initializers.GlorotUniform(seed)),
        tf_keras.layers.Dense(2 * num_out, kernel_initializer='zeros'),
    ])


#: What `VAE.statistics` reports besides its terms.
VAE_STATISTICS = ('posterior_loc_norm', 'posterior_log_scale_mean', 'posterior_kl',
                  'reconstruction_log_prob', 'log_weight_std', 'decoder_residual_norm',
                  'decoder_std_norm')


class VAE(DensityModel):
    """A VAE as a `DensityModel`: `log_prob` is the K-sample importance-weighted
    estimate, `elbo` the K-sample ELBO."""

    term_names = ('elbo',)
    can_sample = True

    def __init__(self, config: VAEConfig, name: str = 'vae'):
        super().__init__(config.image_shape, name=name)
        self.config = config
        height, width, channels = config.image_shape
        d, f = config.latent_dim, config.filters
        init = tf_keras.initializers.GlorotUniform
        self.encoder = tf_keras.Sequential([
            tf_keras.Input(shape=config.image_shape),
            tf_keras.layers.Conv2D(f, 3, strides=2, padding='same', activation='relu',
                                   kernel_initializer=init(config.seed)),
            tf_keras.layers.Conv2D(2 * f, 3, strides=2, padding='same', activation='relu',
                                   kernel_initializer=init(config.seed + 1)),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(2 * d, kernel_initializer=init(config.seed + 2)),
        ], name='encoder')
        outputs = 256 if config.likelihood == 'categorical' else 2
        self.decoder = tf_keras.Sequential([
            tf_keras.Input(shape=(d,)),
            tf_keras.layers.Dense(height // 4 * width // 4 * 2 * f, activation='relu',
                                  kernel_initializer=init(config.seed + 3)),
            tf_keras.layers.Reshape((height // 4, width // 4, 2 * f)),
            tf_keras.layers.Conv2DTranspose(f, 3, strides=2, padding='same', activation='relu',
                                            kernel_initializer=init(config.seed + 4)),
            tf_keras.layers.Conv2DTranspose(f, 3, strides=2, padding='same', activation='relu',
                                            kernel_initializer=init(config.seed + 5)),
            tf_keras.layers.Conv2D(channels * outputs, 1,
                                   kernel_initializer=init(config.seed + 6)),
            tf_keras.layers.Reshape((height, width, channels, outputs)),
        ], name='decoder')
        # RealNVP couplings on the posterior, alternating which half is masked.
        self.flow_networks = []
        flow = []
        masked = d // 2
        for i in range(config.encoder_flow_layers):
            network = _real_nvp_network(masked, d - masked, 2 * d, config.seed + 10 + i)
            self.flow_networks.append(network)
            flow += [tfb.RealNVP(num_masked=masked,
                                 shift_and_log_scale_fn=self._coupling_fn(network)),
                     tfb.Permute(list(range(d))[::-1])]
        # Chain applies its bijectors last-to-first in forward: reverse the list so
        # the first coupling built acts first on the Gaussian sample.
        self._flow = tfb.Chain(flow[::-1]) if flow else None
        self.prior = tfd.MultivariateNormalDiag(loc=tf.zeros(d))
        largest = max(math.prod(layer.output_shape[1:]) for layer in self.decoder.layers)
        self.decode_rows = max(1, DECODE_BYTES // (4 * largest))
        self._log_weights_fn = tf.function(self._log_weights, input_signature=[
            tf.TensorSpec((None,) + self.image_shape, tf.uint8),
            tf.TensorSpec((None, d), tf.float32)])

    @staticmethod
    def _coupling_fn(network):
        def shift_and_log_scale(x, output_units):
            del output_units
            shift, raw = tf.split(network(x), 2, axis=-1)
            return shift, _MAX_LOG_SCALE * tf.tanh(raw / _MAX_LOG_SCALE)
        return shift_and_log_scale

    def get_config(self) -> Dict[str, Any]:
        return dict(family='vae', **self.config.to_dict())

    def posterior(self, images) -> tfd.Distribution:
        """`q(z | x)` for uint8 images."""
        x = tf.cast(images, tf.float32) / 127.5 - 1.
        loc, raw = tf.split(self.encoder(x), 2, axis=-1)
        base = tfd.MultivariateNormalDiag(loc=loc, scale_diag=tf.exp(
            _MAX_LOG_SCALE * tf.tanh(raw / _MAX_LOG_SCALE)))
        return base if self._flow is None else tfd.TransformedDistribution(base, self._flow)

    def likelihood(self, z) -> tfd.Distribution:
        """`p(x | z)`: a distribution over uint8 images `[..., H, W, C]`."""
        params = self.decoder(z)
        if self.config.likelihood == 'categorical':
            return _Categorical(logits=params)
        return _DiscretizedLogistic(params[..., 0], params[..., 1])

    def _log_weights(self, images, eps):
        """`log p(x | z) + log p(z) - log q(z | x)` at `z` from standard normal `eps`
        `[K, d]`, shared across the batch; returns `[K, batch]`.

        The `K x batch` draws are decoded `self.decode_rows` at a time, whatever
        the batch: the decoder's largest output for those rows stays within
        `DECODE_BYTES`, so each pass's intermediates stay in the CPU's cache."""
        images = tf.convert_to_tensor(images)
        q = self.posterior(images)
        base = q if self._flow is None else q.distribution
        z = base.loc + base.scale.diag * eps[:, tf.newaxis, :]  # [K, batch, d]
        log_w = -base.log_prob(z)
        num_k, batch = tf.shape(z)[0], tf.shape(z)[1]
        rows, chunk = num_k * batch, self.decode_rows
        # Row k * batch + i is draw k of image i.
        z = tf.reshape(z, [rows, self.config.latent_dim])
        if self._flow is not None:  # log q(z) by the change of variables.
            log_w += tf.reshape(self._flow.forward_log_det_jacobian(z, event_ndims=1),
                                [num_k, batch])
            z = self._flow.forward(z)
        log_w += tf.reshape(self.prior.log_prob(z), [num_k, batch])
        num_chunks = (rows + chunk - 1) // chunk
        padding = [[0, num_chunks * chunk - rows]]  # The padding rows decode image 0.
        z = tf.pad(z, padding + [[0, 0]])
        image_of_row = tf.pad(tf.range(rows) % batch, padding)

        def decode(i):
            start = i * chunk
            return self.likelihood(z[start:start + chunk]).log_prob(
                tf.gather(images, image_of_row[start:start + chunk]))

        # One chunk at a time: chunks in flight together would share the cache.
        log_px = tf.map_fn(decode, tf.range(num_chunks), parallel_iterations=1,
                           fn_output_signature=tf.TensorSpec([chunk], tf.float32))
        return log_w + tf.reshape(tf.reshape(log_px, [-1])[:rows], [num_k, batch])

    def _scoring_log_weights(self, images) -> tf.Tensor:
        """`[K, batch]` log-weights at the K draws scoring shares across images."""
        eps = tf.random.stateless_normal([self.config.num_importance_samples,
                                          self.config.latent_dim],
                                         seed=[self.config.seed, 17])
        return self._log_weights_fn(images, eps)

    @staticmethod
    def _terms(log_w) -> Dict[str, tf.Tensor]:
        num_k = tf.cast(tf.shape(log_w)[0], tf.float32)
        return {LOG_PROB: tf.reduce_logsumexp(log_w, axis=0) - tf.math.log(num_k),
                'elbo': tf.reduce_mean(log_w, axis=0)}

    def log_prob_terms(self, images, noise=None) -> Dict[str, tf.Tensor]:
        """IWAE and ELBO with `config.num_importance_samples` draws; `noise` unused."""
        del noise
        images = check_images(images, self.image_shape)
        return self._terms(self._scoring_log_weights(images))

    @property
    def statistic_names(self):
        return VAE_STATISTICS

    def _forward_statistics(self, images) -> Dict[str, tf.Tensor]:
        """`log_prob_terms(images)` and the encoder's and decoder's statistics of
        `statistic_names`: the norm of the Gaussian posterior's mean
        (`posterior_loc_norm`, before any posterior flow), the mean of its log
        standard deviations, its KL divergence from the prior `N(0, I)` in closed
        form, the log-likelihood of the image decoded from the posterior mean
        (`reconstruction_log_prob`, the mean passed through the posterior flow),
        the spread of the K importance log-weights (`log_weight_std`), and the
        likelihood path's two decoder statistics (Huang et al., "Inference, Fast
        and Slow"): the norm of the image's distance from the decoded mean,
        `||x - E[x | z]||`, and the norm of the decoded standard deviations,
        `||std[x | z]||`, both in pixel levels (0-255) at that `z`."""
        images = check_images(images, self.image_shape)
        log_w = self._scoring_log_weights(images)
        q = self.posterior(images)
        base = q if self._flow is None else q.distribution
        loc, scale = base.loc, base.scale.diag
        z = loc if self._flow is None else self._flow.forward(loc)
        decoded = self.likelihood(z)
        mean, std = decoded.pixel_mean_and_stddev()
        flat = [tf.shape(images)[0], -1]
        return {**self._terms(log_w),
                'posterior_loc_norm': tf.norm(loc, axis=-1),
                'posterior_log_scale_mean': tf.reduce_mean(tf.math.log(scale), axis=-1),
                'posterior_kl': tf.reduce_sum(
                    0.5 * (tf.square(loc) + tf.square(scale) - 1.) - tf.math.log(scale),
                    axis=-1),
                'reconstruction_log_prob': decoded.log_prob(images),
                'log_weight_std': tf.math.reduce_std(log_w, axis=0),
                'decoder_residual_norm': tf.norm(
                    tf.reshape(tf.cast(images, tf.float32) - mean, flat), axis=-1),
                'decoder_std_norm': tf.norm(tf.reshape(std, flat), axis=-1)}

    def importance_weighted_log_prob(self, images, num_samples: int, seed=(0, 0)):
        """The IWAE estimate with `num_samples` fresh draws (for studies of K)."""
        images = check_images(images, self.image_shape)
        eps = tf.random.stateless_normal([num_samples, self.config.latent_dim], seed=seed)
        log_w = self._log_weights_fn(images, eps)
        return tf.reduce_logsumexp(log_w, axis=0) - math.log(num_samples)

    def training_log_prob(self, images, noise=None) -> tf.Tensor:
        """The one-sample ELBO per image (a fresh draw per image)."""
        del noise
        q = self.posterior(images)
        z = q.sample()
        return (self.likelihood(z).log_prob(images) + self.prior.log_prob(z)
                - q.log_prob(z))

    def sample(self, num_images, temperature: float = 1.0, seed=None) -> tf.Tensor:
        """Decoded samples of `z ~ N(0, temperature^2 I)`, uint8."""
        z = temperature * self.prior.sample(num_images, seed=seed)
        return tf.cast(self.likelihood(z).sample(seed=seed), tf.uint8)


class _Categorical(tfd.Independent):
    """256-way categoricals per pixel channel over uint8 images."""

    def __init__(self, logits):
        super().__init__(tfd.Categorical(logits=logits), reinterpreted_batch_ndims=3)

    def _log_prob(self, k):
        # -log(sum_j exp(logit[j] - logit[k])) per pixel channel, summed over the
        # image: one pass fewer than logit[k] - logsumexp(logits), which first
        # takes the maximum, and about twice as fast as tfd.Categorical's
        # log_softmax, which writes out every normalised logit. This is the cost
        # of each of the K importance samples. The sum is at least 1 (j = k);
        # should a logit exceed logit[k] by more than float32's exp can take, the
        # whole batch is recomputed with the maximum subtracted.
        logits = self.distribution.logits
        k = tf.broadcast_to(tf.cast(k, tf.int32), tf.shape(logits)[:-1])
        picked = tf.gather(logits, k[..., tf.newaxis], batch_dims=len(logits.shape) - 1)
        fast = -tf.reduce_sum(tf.math.log(tf.reduce_sum(tf.exp(logits - picked), axis=-1)),
                              axis=[-3, -2, -1])

        def stable():
            return tf.reduce_sum(picked[..., 0] - tf.reduce_logsumexp(logits, axis=-1),
                                 axis=[-3, -2, -1])

        return tf.cond(tf.reduce_all(tf.math.is_finite(fast)), lambda: fast, stable)

    def pixel_mean_and_stddev(self):
        """The mean and standard deviation of each pixel channel's level (0-255)."""
        probs = tf.nn.softmax(self.distribution.logits, axis=-1)
        levels = tf.range(256, dtype=probs.dtype)
        mean = tf.reduce_sum(probs * levels, axis=-1)
        variance = tf.reduce_sum(probs * tf.square(levels - mean[..., tf.newaxis]), axis=-1)
        return mean, tf.sqrt(variance)


class _DiscretizedLogistic(tfd.Distribution):
    """Independent discretized logistics over uint8 images (see
    `discretized_logistic_log_prob`)."""

    def __init__(self, loc, log_scale):
        parameters = dict(locals())
        self._loc = loc
        self._log_scale = tf.clip_by_value(log_scale, -7., _MAX_LOG_SCALE)
        super().__init__(dtype=tf.float32, reparameterization_type=tfd.NOT_REPARAMETERIZED,
                         validate_args=False, allow_nan_stats=True, parameters=parameters,
                         name='DiscretizedLogistic')

    def _event_shape(self):
        return self._loc.shape[-3:]

    def _batch_shape(self):
        return self._loc.shape[:-3]

    def _log_prob(self, k):
        return tf.reduce_sum(discretized_logistic_log_prob(k, self._loc, self._log_scale),
                             axis=[-3, -2, -1])

    def pixel_mean_and_stddev(self):
        """The logistic's mean and standard deviation per pixel channel, in pixel
        levels (the loc and scale live on [-1, 1]; the bins' edges and rounding
        are left out)."""
        return ((self._loc + 1.) * 127.5,
                tf.exp(self._log_scale) * (math.pi / math.sqrt(3.)) * 127.5)

    def _sample_n(self, n, seed=None):
        shape = tf.concat([[n], tf.shape(self._loc)], axis=0)
        u = tf.random.uniform(shape, 1e-5, 1. - 1e-5, seed=seed)
        x = self._loc + tf.exp(self._log_scale) * (tf.math.log(u) - tf.math.log1p(-u))
        return tf.clip_by_value(tf.round((x + 1.) * 127.5), 0., 255.)
