"""The analyses: statistics against NumPy, stable log-mean-exp, WAIC by hand."""

import os
import pytest
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_ood import analysis, plotting
from tfp_ood.config import GlowConfig
from tfp_ood.models import FlowModel


class AnalysisTest(tf.test.TestCase):

    def test_channel_statistics_match_numpy(self):
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (5000, 4, 6, 3), dtype=np.uint8)
        images[..., 2] //= 4  # A channel with less variance.
        stats = analysis.channel_statistics(images, name='x')
        x = images.astype(np.float64) / 255.
        self.assertEqual(stats.num_images, 5000)
        self.assertAllClose(stats.mean, x.mean(axis=(0, 1, 2)))
        self.assertAllClose(stats.std, x.reshape(-1, 3).std(axis=0))
        self.assertAllClose(stats.pixel_mean, x.mean(axis=0))
        self.assertAllClose(stats.pixel_variance, x.var(axis=0))
        ds = tf.data.Dataset.from_tensor_slices({'image': images})
        from_dataset = analysis.channel_statistics(ds)
        self.assertAllClose(from_dataset.pixel_variance, stats.pixel_variance)
        self.assertEqual(stats.to_dict()['name'], 'x')
        path = plotting.plot_channel_statistics([stats, from_dataset], os.path.join(
            self.create_tempdir().full_path, 'stats.png'))
        with open(path, 'rb') as f:
            self.assertEqual(f.read(4), b'\x89PNG')
        with self.assertRaisesRegex(ValueError, r'expected \[N, H, W, C\]'):
            analysis.channel_statistics(images[0])

    def test_log_mean_exp_is_stable_around_minus_1e4(self):
        values = np.array([[-10000.], [-10001.], [-10002.]])
        expected = -10000. + np.log(np.mean(np.exp([0., -1., -2.])))
        self.assertAllClose(analysis.log_mean_exp(values, axis=0), [expected], atol=1e-9)
        self.assertAllClose(analysis.ensemble_scores([[-10000.], [-10001.], [-10002.]]),
                            [expected], atol=1e-9)
        self.assertEqual(analysis.log_mean_exp(np.array([[-np.inf], [-np.inf]]))[0], -np.inf)

    def test_graying_rows(self):
        from tfp_ood.evaluate import ScoreResult

        def result(bpd):
            scores = {'log_prob': -np.ones(2), 'bits_per_dim': np.array(bpd, float)}
            return ScoreResult('x', scores, np.zeros(2), (4, 4, 3))

        # Which set is the gray version of which comes from the mapping, not the names.
        rows = analysis.graying_rows({('m', 'a'): result([4., 4.]),
                                      ('m', 'gray a'): result([3., 3.5]),
                                      ('m', 'b'): result([2., 2.]),
                                      ('m', 'b (gray)'): result([1., 1.])}, {'a': 'gray a'})
        self.assertEqual(rows, [{'model': 'm', 'set': 'a', 'bpd_colour': 4.,
                                 'bpd_gray': 3.25, 'difference': -0.75}])

    def test_waic_hand_computed(self):
        # Members give log p = (1, 3) for image 0 and (2, 2) for image 1:
        # mean 2 and 2, variance 1 and 0, so WAIC = 1 and 2.
        self.assertAllClose(analysis.waic([[1., 2.], [3., 2.]]), [1., 2.])
        with self.assertRaisesRegex(ValueError, 'at least two'):
            analysis.waic([[1., 2.]])


def _linear_cv_glow(shape=(4, 4, 3)):
    """A CV-Glow whose coupling networks stay zero: a linear, constant-volume flow."""
    model = FlowModel.from_config(GlowConfig(image_shape=shape, num_levels=2,
                                             num_steps_per_level=2, hidden_channels=4,
                                             coupling='additive'))
    rng = np.random.default_rng(1)
    model.initialize(rng.integers(0, 256, (64,) + shape, dtype=np.uint8))
    for v in model.trainable_variables:
        if 'conv1x1' in v.name:
            v.assign_add(0.3 * rng.standard_normal(v.shape).astype(np.float32))
    return model


def _stats(mean, variance, name):
    shape = mean.shape
    return analysis.ChannelStatistics(name, 0, np.zeros(shape[-1]), np.zeros(shape[-1]),
                                      mean, variance)


class SecondOrderTest(tf.test.TestCase):

    @pytest.mark.slow(minutes=0.2)
    def test_hessian_diagonal_equals_full_hessian(self):
        shape = (4, 4, 3)
        model = FlowModel.from_config(GlowConfig(image_shape=shape, num_levels=2,
                                                 num_steps_per_level=1, hidden_channels=4))
        for v in model.trainable_variables:  # Non-zero, non-linear couplings.
            v.assign_add(0.2 * tf.random.stateless_normal(v.shape, seed=[5, 6]))
        x0 = np.random.default_rng(0).uniform(-0.3, 0.3, shape).astype(np.float32)
        diagonal = analysis.log_prob_hessian_diagonal(model, x0, batch_size=20)
        x = tf.constant(x0.reshape(1, -1))
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                log_prob = model.distribution.log_prob(tf.reshape(x, (1,) + shape))
            gradient = inner.gradient(log_prob, x)
        hessian = outer.batch_jacobian(gradient, x)[0].numpy()
        self.assertGreater(np.abs(np.diag(hessian) - np.diag(hessian).mean()).max(), 1e-3)
        self.assertAllClose(diagonal.reshape(-1), np.diag(hessian), rtol=1e-3, atol=1e-3)

    @pytest.mark.slow(minutes=0.3)
    def test_exact_for_a_linear_constant_volume_flow_on_gaussian_data(self):
        shape = (4, 4, 3)
        model = _linear_cv_glow(shape)
        rng = np.random.default_rng(2)
        scale = 255. / 256.
        mean01 = rng.uniform(0.3, 0.7, shape)  # Pixels in [0, 1].
        var_p = rng.uniform(0.02, 0.06, shape)
        var_q = var_p * rng.uniform(0.2, 0.9, shape)  # q: lower variance, like SVHN.
        result = analysis.second_order_difference(model, _stats(mean01, var_p, 'p'),
                                                  _stats(mean01, var_q, 'q'))
        # Exact: log p(x) = -1/2 |A (x - m)|^2 + const for the linear flow, so
        # E_q - E_p = -1/2 sum_i |A[:, i]|^2 (var_q - var_p)_i in model units.
        x = tf.zeros((1,) + shape)
        with tf.GradientTape() as tape:
            tape.watch(x)
            z = tf.reshape(model.bijector.inverse(x), [1, -1])
        jacobian = tape.batch_jacobian(z, x)[0].numpy().reshape(z.shape[1], -1)
        column_norms = np.sum(jacobian ** 2, axis=0)
        exact = -0.5 * np.sum(column_norms * (var_q - var_p).reshape(-1) * scale ** 2)
        self.assertGreater(result.predicted, 0.)  # Lower variance: higher likelihood.
        self.assertAllClose(result.predicted, exact, rtol=1e-4)
        # And the measured difference of Monte Carlo means agrees within its error.
        m = (mean01 * 255. + 0.5) / 256. - 0.5
        n = 20000
        draws = {name: (m + np.sqrt(v) * scale * rng.standard_normal((n,) + shape))
                 .astype(np.float32) for name, v in (('p', var_p), ('q', var_q))}
        logs = {k: model.distribution.log_prob(v).numpy() for k, v in draws.items()}
        measured = logs['q'].mean() - logs['p'].mean()
        error = np.hypot(logs['q'].std(), logs['p'].std()) / np.sqrt(n)
        self.assertLess(abs(measured - result.predicted), 4 * error + 1e-3)
        # The paper's channel-wise form uses the effective alphas and the per-channel
        # sums of variance differences.
        self.assertEqual(result.effective_alpha_squared.shape, (3,))
        self.assertAllClose(result.channel_variance_difference, (var_q - var_p).sum((0, 1)))
        self.assertEqual(result.paper_alpha_squared.shape, (3,))
        self.assertTrue(np.isfinite(result.predicted_paper_alpha))
        # log p is exactly quadratic for the linear flow, so the full expansion (with
        # the correlated samples' whole covariance and mean) equals the measured
        # difference of the sample means exactly, whatever the expansion point.
        mixing = rng.standard_normal((48, 48)) * 0.02
        flat = {k: v.reshape(n, -1) for k, v in draws.items()}
        correlated = {k: (v @ mixing + v).reshape((n,) + shape).astype(np.float32)[:500]
                      for k, v in flat.items()}
        logs = {k: model.distribution.log_prob(v).numpy().astype(np.float64)
                for k, v in correlated.items()}
        full = analysis.quadratic_expansion_difference(model, m + 0.01, correlated['p'],
                                                       correlated['q'], batch_size=128)
        self.assertAllClose(full, logs['q'].mean() - logs['p'].mean(), rtol=1e-3, atol=1e-2)

    def test_paper_alpha_is_the_exact_curvature_of_one_scaled_step(self):
        # One level, one step, identity coupling, a 1x1 convolution that is a
        # permuted diagonal: the Hessian of log p at pixel (h, w, c') is exactly
        # -(d_c' exp(-s_c'))^2, which is the paper's alpha^2 with the ActNorm
        # scale folded in.
        shape = (4, 4, 3)
        model = FlowModel.from_config(GlowConfig(image_shape=shape, num_levels=1,
                                                 num_steps_per_level=1, hidden_channels=4,
                                                 coupling='additive'))
        rng = np.random.default_rng(4)
        for b in model.bijector.bijectors:
            if 'act_norm' in b.name:
                b.log_scale.assign(rng.uniform(-1., 1., 12).astype(np.float32))
            if 'conv1x1' in b.name:
                b.lower.assign(tf.zeros_like(b.lower))
                b.upper.assign(tf.zeros_like(b.upper))
                b.log_abs_diag.assign(rng.uniform(-1., 1., 12).astype(np.float32))
        alpha_sq = analysis.paper_alpha(model)
        hessian = analysis.log_prob_hessian_diagonal(model, np.zeros(shape, np.float32))
        self.assertAllClose(alpha_sq, np.mean(-hessian, axis=(0, 1)), rtol=1e-5)
        self.assertGreater(np.ptp(alpha_sq), 0.1)  # The channels really differ.
        with self.assertRaisesRegex(ValueError, 'multi-scale Glow'):
            analysis.paper_alpha(FlowModel(tfp.bijectors.Identity(), shape))


if __name__ == '__main__':
    tf.test.main()
