"""Tests of FlowModel: likelihood, its terms, training variables, bad input."""

import math

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized

from tests import bijector_checks
from tests.bijectors.glow_test import _leaves
from tfp_ood.bijectors import ActNorm, Coupling, InvertibleConv1x1
from tfp_ood.config import GlowConfig
from tfp_ood.models import FlowModel

SHAPE = (16, 16, 3)


def _model(coupling='affine', shape=SHAPE, seed=0):
    config = GlowConfig(image_shape=shape, num_levels=2, num_steps_per_level=2,
                        hidden_channels=8, coupling=coupling, seed=seed)
    return FlowModel.from_config(config)


def _uint8(n, shape=SHAPE, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n,) + shape, dtype=np.uint8)


class FlowModelTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.named_parameters(('Glow', 'affine'), ('CVGlow', 'additive'))
    def test_terms_sum_exactly_and_match_tfp(self, coupling):
        model = _model(coupling)
        images = _uint8(6)
        model.initialize(images)
        bijector_checks.perturb_variables(model, 0.05)
        terms = {k: v.numpy() for k, v in model.log_prob_terms(images).items()}
        # Exact by construction, in float32.
        self.assertAllEqual(terms['log_prob'],
                            terms['log_pz'] + terms['log_det'] + terms['dequant_const'])
        self.assertAllEqual(terms['dequant_const'], np.full(6, -SHAPE[0] * SHAPE[1] * SHAPE[2]
                                                            * np.float32(math.log(256))))
        # Against TFP's own TransformedDistribution on the dequantized inputs.
        x = (images.astype(np.float32) + 0.5) / 256 - 0.5
        expected = model.distribution.log_prob(x).numpy() + model.dequant_const
        self.assertAllClose(terms['log_prob'], expected, rtol=1e-5)
        # And the distribution term against the base density at the latent, plus the
        # split priors' log-determinants, computed leaf by leaf.
        z = model.bijector.inverse(tf.identity(x))
        self.assertAllClose(terms['log_pz'] + terms['log_det'],
                            model.base_distribution.log_prob(z)
                            + model.bijector.inverse_log_det_jacobian(x, event_ndims=3),
                            rtol=1e-5)
        bpd = model.score_batch(images)['bits_per_dim'].numpy()
        self.assertAllClose(bpd, -terms['log_prob'] / (np.prod(SHAPE) * np.log(2)), rtol=1e-6)
        # Every level's share: they add up to the two terms.
        levels = len(model.levels)
        self.assertEqual(levels, 2)
        self.assertAllClose(sum(terms[f'level{i}_log_pz'] for i in range(levels)),
                            terms['log_pz'], rtol=1e-5)
        self.assertAllClose(sum(terms[f'level{i}_log_det'] for i in range(levels)),
                            terms['log_det'], rtol=1e-5, atol=1e-3)
        self.assertEqual(set(model.term_names), set(terms) - {'log_prob'})

    def test_cv_glow_volume_is_constant(self):
        model = _model('additive')
        model.initialize(_uint8(32, seed=1))
        bijector_checks.perturb_variables(model, 0.05)
        a = model.log_prob_terms(_uint8(4, seed=2))
        b = model.log_prob_terms(np.zeros((3,) + SHAPE, np.uint8))
        volume = a['log_det'].numpy()
        self.assertNotEqual(volume[0], 0.)  # ActNorm and 1x1 convs do contribute.
        self.assertAllEqual(volume, np.full(4, volume[0]))
        self.assertAllEqual(b['log_det'].numpy(), np.full(3, volume[0]))
        self.assertNotAllClose(a['log_pz'][:3], b['log_pz'])

    def test_glow_volume_depends_on_input(self):
        model = _model('affine')
        model.initialize(_uint8(32, seed=1))
        bijector_checks.perturb_variables(model, 0.05)
        volume = model.log_prob_terms(_uint8(4, seed=2))['log_det'].numpy()
        self.assertGreater(np.ptp(volume), 1e-3)

    def test_every_network_weight_is_trainable_and_trains(self):
        model = _model('affine')
        leaves = _leaves(model.bijector)
        expected = set()
        for leaf in leaves:
            if isinstance(leaf, Coupling):
                self.assertGreater(len(leaf.network.trainable_weights), 0)
                expected |= {v.ref() for v in leaf.network.trainable_weights}
            if isinstance(leaf, ActNorm):
                expected |= {leaf.loc.ref(), leaf.log_scale.ref()}
            if isinstance(leaf, InvertibleConv1x1):
                expected |= {leaf.lower.ref(), leaf.upper.ref(), leaf.log_abs_diag.ref()}
        found = {v.ref() for v in model.trainable_variables}
        self.assertEqual(found, expected)
        self.assertEqual(len(model.trainable_variables), len(expected))

        images = _uint8(16, seed=3)
        model.initialize(images)
        before = [v.numpy().copy() for v in model.trainable_variables]
        optimizer = tf_keras.optimizers.Adam(1e-3)
        # Zero-initialised output layers pass no gradient to the layers before them on
        # the very first step, so every weight must have moved after two steps.
        for _ in range(2):
            with tf.GradientTape() as tape:
                loss = -tf.reduce_mean(model.log_prob(images))
            grads = tape.gradient(loss, model.trainable_variables)
            self.assertTrue(all(g is not None for g in grads))
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
        unchanged = [v.name for v, b in zip(model.trainable_variables, before)
                     if np.array_equal(v.numpy(), b)]
        self.assertEqual(unchanged, [])

    def test_score_batch_traces_once_for_any_batch_size(self):
        model = _model()
        for n in (1, 7, 3):
            self.assertEqual(model.score_batch(_uint8(n))['log_prob'].shape, (n,))
        self.assertEqual(model.score_batch.experimental_get_tracing_count(), 1)

    def test_sample(self):
        model = _model()
        model.initialize(_uint8(16))
        samples = model.sample(3, temperature=0.7, seed=1)
        self.assertEqual(samples.dtype, tf.uint8)
        self.assertEqual(samples.shape, (3,) + SHAPE)

    def test_bad_images(self):
        model = _model()
        with self.assertRaisesRegex(ValueError, r'expected a rank-4 batch.*got rank 3'):
            model.log_prob(_uint8(1)[0])
        with self.assertRaisesRegex(ValueError, r'expected images of shape \[batch, 16, 16, 3\]'
                                                r'.*got \[2, 16, 16, 1\]'):
            model.log_prob(np.zeros((2, 16, 16, 1), np.uint8))
        with self.assertRaisesRegex(ValueError, r'expected images of shape.*got \[2, 32, 32, 3\]'):
            model.log_prob(np.zeros((2, 32, 32, 3), np.uint8))
        with self.assertRaisesRegex(ValueError, 'got dtype float32'):
            model.log_prob(np.zeros((2,) + SHAPE, np.float32))
        with self.assertRaisesRegex(ValueError, 'values from -1 to 300'):
            model.log_prob(np.array([-1, 300, 4, 5]).reshape(4, 1, 1, 1) * np.ones(SHAPE, int))
        ints = _uint8(2).astype(np.int64)  # In-range integers are accepted.
        self.assertAllClose(model.log_prob(ints), model.log_prob(ints.astype(np.uint8)))


if __name__ == '__main__':
    tf.test.main()
