"""VAEs: importance weighting against the ELBO, normalised likelihoods, weights."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tfp_ood.models import VAE, VAEConfig
from tfp_ood.models.vae import discretized_logistic_log_prob

SHAPE = (8, 8, 3)
VARIANTS = (('ConvCategorical', 'conv_categorical'), ('RealNVPEncoder', 'rnvp_encoder'))


def _model(variant, k=16):
    return VAE(VAEConfig.named('tiny', SHAPE, variant=variant, num_importance_samples=k))


def _images(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + SHAPE, dtype=np.uint8)


class VAETest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.named_parameters(*VARIANTS)
    def test_iwae_at_least_elbo_and_grows_with_k(self, variant):
        model = _model(variant)
        images = _images()
        terms = model.log_prob_terms(images)
        self.assertTrue(np.all(terms['log_prob'].numpy() >= terms['elbo'].numpy() - 1e-4))
        # E[IWAE_K] does not decrease with K: means over images and independent
        # draws, compared within three standard errors of their difference.
        stats = []
        for k in (1, 10, 100):
            per_draw = [np.mean(model.importance_weighted_log_prob(images, k, seed=(s, k)))
                        for s in range(12)]
            stats.append((np.mean(per_draw), np.std(per_draw) / np.sqrt(len(per_draw))))
        for (m1, se1), (m2, se2) in zip(stats, stats[1:]):
            self.assertLessEqual(m1, m2 + 3 * np.hypot(se1, se2) + 1e-4, stats)

    @parameterized.named_parameters(*VARIANTS)
    def test_scores_do_not_depend_on_batch(self, variant):
        model = _model(variant)
        images = _images()
        whole = model.score_batch(images)
        for key in ('log_prob', 'elbo'):
            self.assertAllClose(model.score_batch(images[:2])[key], whole[key][:2], rtol=1e-5)

    @parameterized.named_parameters(*VARIANTS)
    def test_likelihood_sums_to_one_over_256_values(self, variant):
        model = _model(variant)
        z = model.prior.sample(1, seed=3)
        values = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None, None],
                                 (256,) + SHAPE)
        # Pixel channels are independent given z: check each one's 256 probabilities.
        likelihood = model.likelihood(tf.repeat(z, 256, axis=0))
        if variant == 'conv_categorical':
            per_value = likelihood.distribution.log_prob(tf.cast(values, tf.int32))
            # The image log-likelihood (our gather + logsumexp) is the sum of TFP's
            # per-pixel categorical log-probabilities.
            self.assertAllClose(likelihood.log_prob(values),
                                tf.reduce_sum(per_value, axis=[1, 2, 3]), rtol=1e-5)
        else:
            per_value = discretized_logistic_log_prob(values, likelihood._loc,
                                                      likelihood._log_scale)
        self.assertAllClose(tf.reduce_logsumexp(per_value, axis=0), np.zeros(SHAPE), atol=1e-4)

    def test_discretized_logistic_is_stable_and_normalised(self):
        k = np.arange(256, dtype=np.float32)[:, None]
        loc = tf.constant([[-1.2, -0.3, 0.0, 0.99, 1.5]])
        log_scale = tf.constant([[-7.0, -2.0, 1.0, -6.0, 3.0]])
        log_p = discretized_logistic_log_prob(k, loc, log_scale).numpy()
        self.assertTrue(np.all(np.isfinite(log_p)))
        self.assertAllClose(np.exp(log_p).sum(0), np.ones(5), atol=1e-3)
        with tf.GradientTape() as tape:
            tape.watch(log_scale)
            value = tf.reduce_sum(discretized_logistic_log_prob(k, loc, log_scale))
        self.assertTrue(np.all(np.isfinite(tape.gradient(value, log_scale).numpy())))

    @parameterized.named_parameters(*VARIANTS)
    def test_every_weight_is_trainable(self, variant):
        model = _model(variant)
        networks = [model.encoder, model.decoder] + model.flow_networks
        expected = {v.ref() for n in networks for v in n.trainable_weights}
        self.assertEqual({v.ref() for v in model.trainable_variables}, expected)
        if variant == 'rnvp_encoder':
            self.assertLen(model.flow_networks, 4)
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(model.training_log_prob(_images()))
        grads = tape.gradient(loss, model.trainable_variables)
        self.assertTrue(all(g is not None for g in grads))

    def test_bad_configs(self):
        with self.assertRaisesRegex(ValueError, 'divisible by 4'):
            VAEConfig(image_shape=(30, 30, 3))
        with self.assertRaisesRegex(ValueError, 'likelihood must be one of'):
            VAEConfig(likelihood='gaussian')
        with self.assertRaisesRegex(ValueError, 'Unknown VAE variant'):
            VAEConfig.named('tiny', variant='iaf')


if __name__ == '__main__':
    tf.test.main()
