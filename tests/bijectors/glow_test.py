"""Tests of Glow and CV-Glow as bijector chains."""

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from absl.testing import parameterized

from tests import bijector_checks
from tfp_ood.bijectors import (ActNorm, ApplyToChannels, Chain, Coupling, Invert,
                               InvertibleConv1x1, Squeeze, Step, cv_glow, glow,
                               inverse_and_log_det_terms)
from tfp_ood.config import GlowConfig

tfb = tfp.bijectors
SHAPES = (('32x32x3', (32, 32, 3)), ('28x28x1', (28, 28, 1)), ('16x16x3', (16, 16, 3)))


def _config(shape, coupling='affine', levels=2, steps=1, hidden=8):
    return GlowConfig(image_shape=shape, num_levels=levels, num_steps_per_level=steps,
                      hidden_channels=hidden, coupling=coupling)


def _leaves(bijector):
    """Every leaf bijector of a flow, descending into chains and channel blocks."""
    if hasattr(bijector, 'bijectors'):
        return [leaf for b in bijector.bijectors for leaf in _leaves(b)]
    if isinstance(bijector, ApplyToChannels):
        return _leaves(bijector.bijector)
    return [bijector]


def _images(shape, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.uniform(-0.5, 0.5, size=(n,) + shape).astype(np.float32))


class GlowTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.named_parameters(
        *[(f'Glow{name}', shape, 'affine') for name, shape in SHAPES],
        *[(f'CVGlow{name}', shape, 'additive') for name, shape in SHAPES])
    def test_invertible_without_cache(self, shape, coupling):
        flow = glow(_config(shape, coupling))
        bijector_checks.perturb_variables(flow, 0.05)
        bijector_checks.assert_bijective_and_finite(self, flow, _images(shape), atol=1e-3)

    @parameterized.named_parameters(('Glow', 'affine', 'symmetric'),
                                    ('GlowContracting', 'affine', 'contracting'),
                                    ('CVGlow', 'additive', 'symmetric'))
    def test_log_det_matches_autodiff_jacobian(self, coupling, scale):
        flow = glow(dataclasses.replace(_config((4, 4, 3), coupling, steps=2),
                                        coupling_scale=scale))
        y = _images((4, 4, 3), n=3)
        inverse_and_log_det_terms(flow, y, data_init=True)  # Non-trivial ActNorms.
        bijector_checks.perturb_variables(flow, 0.1, seed=1)
        bijector_checks.assert_log_det_matches_jacobian(self, flow, y)

    def test_contracting_scale_is_for_the_flow_steps_only(self):
        flow = glow(dataclasses.replace(_config((16, 16, 3)), coupling_scale='contracting'))
        couplings = [b for b in _leaves(flow) if isinstance(b, Coupling)]
        self.assertEqual({b.scale for b in couplings if b.log_det_term == 'volume'},
                         {'contracting'})
        # A split prior's log-scale is a log standard deviation.
        self.assertEqual({b.scale for b in couplings if b.log_det_term == 'distribution'},
                         {'symmetric'})

    def test_structure(self):
        config = _config((16, 16, 3), levels=3, steps=2)
        leaves = _leaves(glow(config))
        count = lambda t: sum(isinstance(b, t) for b in leaves)  # noqa: E731
        self.assertEqual(count(ActNorm), 3 * 2)
        self.assertEqual(count(InvertibleConv1x1), 3 * 2)
        couplings = [b for b in leaves if isinstance(b, Coupling)]
        self.assertEqual(sum(b.log_det_term == 'volume' for b in couplings), 3 * 2)
        self.assertEqual(sum(b.log_det_term == 'distribution' for b in couplings), 2)
        self.assertTrue(all(b.is_affine for b in couplings))
        self.assertFalse(any(b.is_affine for b in _leaves(cv_glow(config))
                             if isinstance(b, Coupling)))

    def test_starts_as_identity_up_to_orthogonal_mixing(self):
        # Zero-initialised networks: only the 1x1 rotations act, so the volume is 0
        # and the latent has the same norm as the input (TFP's exit net would scale
        # the factored-out half by e^2, docs/stack.md, note 11).
        flow = glow(_config((16, 16, 3)))
        y = _images((16, 16, 3))
        x, terms = inverse_and_log_det_terms(flow, y)
        self.assertAllClose(terms.volume, np.zeros(4), atol=1e-3)
        self.assertAllClose(terms.distribution, np.zeros(4), atol=1e-6)
        self.assertAllClose(tf.norm(tf.reshape(x, [4, -1]), axis=1),
                            tf.norm(tf.reshape(y, [4, -1]), axis=1), rtol=1e-4)

    def test_unknown_batch_size_in_tf_function(self):
        shape = (16, 16, 3)
        flow = glow(_config(shape))
        bijector_checks.perturb_variables(flow, 0.05)

        @tf.function(input_signature=[tf.TensorSpec((None,) + shape)])
        def inverse(y):
            x, terms = inverse_and_log_det_terms(flow, y)
            return x, terms.total, flow.forward(x)

        for n in (1, 5):
            y = _images(shape, n=n)
            x, ildj, y_again = inverse(y)
            self.assertEqual(x.shape, (n,) + shape)
            self.assertEqual(ildj.shape, (n,))
            self.assertAllClose(y_again, y, atol=1e-4)
        self.assertEqual(inverse.experimental_get_tracing_count(), 1)

    def test_levels_name_their_parts(self):
        config = _config((16, 16, 3), levels=3, steps=2)
        flow = glow(config)
        self.assertLen(flow.levels, 3)
        self.assertEqual([len(level.steps) for level in flow.levels], [2, 2, 2])
        for level in flow.levels:
            for step in level.steps:
                self.assertIsInstance(step, Step)
                self.assertIsInstance(step.act_norm, ActNorm)
                self.assertIsInstance(step.conv1x1, InvertibleConv1x1)
                self.assertEqual(step.coupling.log_det_term, 'volume')
        self.assertEqual([level.split_prior is None for level in flow.levels],
                         [False, False, True])
        self.assertIs(flow.levels[0].next_level, flow.levels[1])
        self.assertEqual(flow.levels[1].squeeze.image_event_shape, (8, 8, 6))

    @parameterized.named_parameters(('Glow', 'affine'), ('CVGlow', 'additive'))
    def test_level_terms_sum_to_the_totals(self, coupling):
        shape = (16, 16, 3)
        flow = glow(_config(shape, coupling, levels=3))
        y = _images(shape, n=5)
        inverse_and_log_det_terms(flow, y, data_init=True)
        bijector_checks.perturb_variables(flow, 0.05)
        x, terms = flow.inverse_and_log_det_terms(y)
        self.assertLen(terms.levels, 3)
        self.assertAllClose(sum(level.volume for level in terms.levels), terms.volume,
                            rtol=1e-6, atol=1e-4)
        self.assertAllClose(sum(level.prior_log_det for level in terms.levels),
                            terms.distribution, rtol=1e-6, atol=1e-4)
        self.assertAllEqual(terms.levels[-1].prior_log_det, np.zeros(5))  # No split.
        # Each level's latent is a disjoint part of z: together, the base log-density.
        base = -0.5 * np.sum(x.numpy() ** 2, axis=(1, 2, 3)) - 0.5 * np.log(2 * np.pi) * 768
        self.assertAllClose(sum(level.latent_log_prob for level in terms.levels), base,
                            rtol=1e-5)

    def test_compositions_take_the_package_bijectors_only(self):
        with self.assertRaisesRegex(TypeError, 'Chain composes the package.*got Exp'):
            Chain([ActNorm((4, 4, 2)), tfb.Exp()])
        with self.assertRaisesRegex(TypeError, 'inverse_and_log_det_terms composes'):
            inverse_and_log_det_terms(tfb.Exp(), tf.zeros([1, 4, 4, 2]))
        with self.assertRaisesRegex(ValueError, 'maps to latent events of shape'):
            Chain([Squeeze((4, 4, 2)), ActNorm((4, 4, 2))])
        with self.assertRaisesRegex(ValueError, 'parameter-free'):
            Invert(ActNorm((4, 4, 2)))
        unsqueeze = Invert(Squeeze((4, 4, 2)))
        y = _images((2, 2, 8), n=3)
        x, terms = unsqueeze.inverse_and_log_det_terms(tf.identity(y))
        self.assertEqual(x.shape, (3, 4, 4, 2))
        self.assertAllEqual(x, tf.nn.depth_to_space(y, 2))
        self.assertAllEqual(unsqueeze.forward(tf.identity(x)), y)
        self.assertAllEqual(terms.total, np.zeros(3))

    def test_configs(self):
        self.assertEqual(GlowConfig.named('paper').num_steps_per_level, 8)
        self.assertEqual(GlowConfig.named('paper').hidden_channels, 400)
        paper_mnist = GlowConfig.named('paper', (28, 28, 1))
        self.assertEqual((paper_mnist.num_levels, paper_mnist.num_steps_per_level,
                          paper_mnist.hidden_channels), (2, 16, 200))
        config = GlowConfig.named('tiny', (16, 16, 3), coupling='additive')
        self.assertEqual(config.family, 'cv_glow')
        self.assertEqual(GlowConfig.from_dict(config.to_dict()), config)
        with self.assertRaisesRegex(ValueError, r'divisible by 2\*\*num_levels = 8'):
            GlowConfig(image_shape=(28, 28, 1), num_levels=3)
        with self.assertRaisesRegex(ValueError, "coupling must be one of"):
            GlowConfig(coupling='affline')
        with self.assertRaisesRegex(ValueError, "Unknown Glow configuration 'huge'"):
            GlowConfig.named('huge')


if __name__ == '__main__':
    tf.test.main()
