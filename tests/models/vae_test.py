"""VAEs: importance weighting against the ELBO, normalised likelihoods, weights."""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from absl.testing import parameterized

from tfp_ood.models import VAE, VAEConfig, vae
from tfp_ood.models.vae import DECODE_BYTES, discretized_logistic_log_prob

tfd = tfp.distributions

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

    @parameterized.named_parameters(*VARIANTS)
    def test_log_weights_are_tfps_per_draw_in_passes_of_any_size(self, variant):
        # Each draw's log-weight from TFP's own distributions, one draw of the
        # whole batch at a time: the package decodes the K x batch draws in
        # passes of `decode_rows` (padding the last), which must not matter.
        model = _model(variant, k=7)
        images = _images(5)
        eps = tf.random.stateless_normal([7, model.config.latent_dim], seed=[4, 2])
        q = model.posterior(images)
        base = q if model._flow is None else q.distribution
        expected = []
        for k in range(7):
            z = base.loc + base.scale.diag * eps[k]
            z = z if model._flow is None else model._flow.forward(z)
            if variant == 'conv_categorical':
                log_px = tfd.Independent(tfd.Categorical(logits=model.decoder(z)),
                                         3).log_prob(images)
            else:  # Normalised in test_discretized_logistic_is_stable_and_normalised.
                log_px = model.likelihood(z).log_prob(images)
            expected.append(log_px + model.prior.log_prob(z) - q.log_prob(z))
        for rows in (1, 3, 35, 36, 1000):  # 35 = K x batch; 36 and 1000 pad.
            model.decode_rows = rows
            self.assertAllClose(model._log_weights(images, eps), expected, rtol=1e-5,
                                msg=f'decode_rows={rows}')

    def test_decode_rows_keep_the_largest_output_within_the_budget(self):
        for shape, likelihood in (((32, 32, 3), 'categorical'), ((32, 32, 3), 'logistic'),
                                  ((28, 28, 1), 'categorical')):
            model = VAE(VAEConfig.named('tiny', shape, likelihood=likelihood))
            per_row = 4 * max(np.prod(layer.output_shape[1:]) for layer in model.decoder.layers)
            self.assertLessEqual(model.decode_rows * per_row, DECODE_BYTES)
            self.assertGreater((model.decode_rows + 1) * per_row, DECODE_BYTES)
        # 256 logits for each of a CIFAR-10 image's 3,072 pixel channels: 3 a pass.
        self.assertEqual(VAE(VAEConfig.named('tiny', (32, 32, 3))).decode_rows, 3)

    def test_categorical_log_prob_survives_logits_far_above_the_pixels(self):
        # A logit 200 above the image's own overflows exp(logit - logit[k]): the
        # batch is recomputed with the maximum subtracted, finite and exact.
        logits = np.random.default_rng(1).normal(size=(2,) + SHAPE + (256,)).astype(np.float32)
        images = _images(2)
        far = logits.copy()
        far[1, 0, 0, 0, (int(images[1, 0, 0, 0]) + 1) % 256] = 200.
        for values in (logits, far):
            ours = vae._Categorical(tf.constant(values)).log_prob(images)
            tfps = tfd.Independent(tfd.Categorical(logits=values), 3).log_prob(images)
            self.assertAllClose(ours, tfps, rtol=1e-6)
            self.assertTrue(np.all(np.isfinite(ours)))
        # And its gradient is TFP's, as training uses it.
        x = tf.constant(logits)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            ours = vae._Categorical(x).log_prob(images)
            tfps = tfd.Independent(tfd.Categorical(logits=x), 3).log_prob(images)
        self.assertAllClose(tape.gradient(ours, x), tape.gradient(tfps, x), atol=1e-6)

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
