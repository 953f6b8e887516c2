"""Tests of the single bijectors: ActNorm, 1x1 conv, squeeze, coupling, channels."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import bijector_checks
from tfp_ood.bijectors import (DISTRIBUTION, VOLUME, ActNorm, ApplyToChannels, Coupling,
                               InvertibleConv1x1, Squeeze, coupling_network_fn,
                               exit_network_fn, inverse_and_log_det_terms)

SHAPE = (4, 4, 4)


def _random(shape, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def _coupling(affine=True, hidden=8, shape=SHAPE, term=VOLUME, scale='symmetric'):
    half = shape[-1] // 2
    network = coupling_network_fn(hidden)((shape[0], shape[1], half),
                                          (2 if affine else 1) * (shape[-1] - half), 3)
    return Coupling(shape, network, log_det_term=term, scale=scale)


def _bijectors():
    act_norm = ActNorm(SHAPE)
    act_norm.initialize(_random((16,) + SHAPE, 5) * 3. + 1.)
    inner = _coupling(shape=(4, 4, 2))
    return {
        'act_norm': act_norm,
        'conv1x1': InvertibleConv1x1(SHAPE, seed=1),
        'coupling_affine': _coupling(True),
        'coupling_contracting': _coupling(True, scale='contracting'),
        'coupling_additive': _coupling(False),
        'apply_to_channels': ApplyToChannels(inner, SHAPE, 2),
    }


class LayersTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.named_parameters(
        ('ActNorm', 'act_norm'), ('Conv1x1', 'conv1x1'),
        ('AffineCoupling', 'coupling_affine'), ('AdditiveCoupling', 'coupling_additive'),
        ('ContractingCoupling', 'coupling_contracting'),
        ('ApplyToChannels', 'apply_to_channels'))
    def test_bijective_and_log_det(self, key):
        bijector = _bijectors()[key]
        bijector_checks.perturb_variables(bijector, 0.1, seed=2)
        y = _random((3,) + SHAPE)
        bijector_checks.assert_bijective_and_finite(self, bijector, y)
        bijector_checks.assert_log_det_matches_jacobian(self, bijector, y)

    @parameterized.named_parameters(('Scalar', ()), ('One', (1,)), ('OneOne', (1, 1)),
                                    ('TwoThree', (2, 3)))
    def test_batch_shapes(self, batch_shape):
        for key, bijector in _bijectors().items():
            bijector_checks.perturb_variables(bijector, 0.1, seed=3)
            y = _random(batch_shape + SHAPE, 1)
            x, ildj = bijector.inverse_and_log_det(y)
            self.assertEqual(tuple(x.shape), batch_shape + SHAPE, key)
            self.assertIn(tuple(ildj.shape), (batch_shape, ()), key)
            self.assertAllClose(bijector.forward(x), y, atol=1e-4, msg=key)

    def test_eager_equals_tf_function(self):
        for key, bijector in _bijectors().items():
            bijector_checks.perturb_variables(bijector, 0.1, seed=4)
            y = _random((5,) + SHAPE, 2)
            fn = tf.function(bijector.inverse_and_log_det,
                             input_signature=[tf.TensorSpec((None,) + SHAPE)])
            for eager, graph in zip(bijector.inverse_and_log_det(y), fn(y)):
                self.assertAllClose(eager, graph, atol=1e-5, msg=key)

    def test_act_norm_data_dependent_init_standardises(self):
        act_norm = ActNorm(SHAPE)
        y = _random((64,) + SHAPE) * tf.constant([1., 2., 3., 4.]) + 7.
        act_norm.initialize(y)
        x = act_norm.inverse(y).numpy().reshape(-1, 4)
        self.assertAllClose(x.mean(0), np.zeros(4), atol=1e-5)
        self.assertAllClose(x.std(0), np.ones(4), atol=1e-3)

    def test_squeeze_shapes_and_zero_log_det(self):
        squeeze = Squeeze((4, 6, 3))
        y = _random((2, 4, 6, 3))
        x = squeeze.inverse(y)
        self.assertEqual(x.shape, (2, 2, 3, 12))
        self.assertAllEqual(squeeze.forward(tf.identity(x)), y)
        self.assertEqual(float(squeeze.inverse_log_det_jacobian(y, event_ndims=3)), 0.)
        self.assertEqual(squeeze.forward_event_shape([2, 3, 12]), [4, 6, 3])

    def test_contracting_scale_only_shrinks_from_image_to_latent(self):
        # Whatever the network outputs, the transformed half of the latent is at
        # most as far from the shifted input as the input is (the symmetric
        # scale may stretch it by up to e^3), and the log-determinant is <= 0.
        symmetric, contracting = _coupling(), _coupling(scale='contracting')
        bijector_checks.perturb_variables(symmetric, 3., seed=4)  # Large raw scales.
        contracting.network.set_weights(symmetric.network.get_weights())
        y = _random((8,) + SHAPE, 6) * 5.
        half = SHAPE[-1] // 2
        for bijector, may_stretch in ((symmetric, True), (contracting, False)):
            shift, log_scale = bijector._shift_and_log_scale(y[..., :half])
            x, ildj = bijector.inverse_and_log_det(y)
            ratio = tf.abs(x[..., half:]) / (tf.abs(y[..., half:] - shift) + 1e-12)
            if may_stretch:
                self.assertGreater(float(tf.reduce_max(ratio)), 1.5)
            else:
                self.assertLessEqual(float(tf.reduce_max(ratio)), 1. + 1e-6)
                self.assertAllLessEqual(ildj, 0.)
        # With a zero network (the zero-initialised last layer) it scales by sigmoid(2).
        zero = _coupling(scale='contracting')
        x, _ = zero.inverse_and_log_det(y)
        self.assertAllClose(x[..., half:], y[..., half:] * tf.sigmoid(2.), rtol=1e-5)

    def test_additive_coupling_is_constant_volume(self):
        coupling = _coupling(affine=False)
        self.assertTrue(coupling.is_constant_jacobian)
        self.assertFalse(_coupling(affine=True).is_constant_jacobian)

    def test_log_det_terms_follow_declared_term(self):
        prior = _coupling(term=DISTRIBUTION)
        bijector_checks.perturb_variables(prior, 0.1)
        y = _random((3,) + SHAPE)
        _, terms = inverse_and_log_det_terms(prior, y)
        self.assertAllEqual(terms.volume, np.zeros(3))
        self.assertAllClose(terms.distribution,
                            prior.inverse_log_det_jacobian(y, event_ndims=3))

    def test_bad_inputs(self):
        conv = InvertibleConv1x1(SHAPE)
        with self.assertRaisesRegex(ValueError, r'expected events of shape \[4, 4, 4\].*'
                                                r'got \[4, 4, 3\]'):
            conv.inverse(tf.zeros([2, 4, 4, 3]))
        with self.assertRaisesRegex(ValueError, 'got rank 2'):
            conv.inverse(tf.zeros([4, 4]))
        with self.assertRaisesRegex(ValueError, 'divisible by the factor 2'):
            Squeeze((5, 4, 3))
        network = exit_network_fn()((4, 4, 2), 3, 0)
        with self.assertRaisesRegex(ValueError, r'must output 2 \(additive\) or 4 \(affine\)'):
            Coupling(SHAPE, network)
        with self.assertRaisesRegex(ValueError, 'scale must be one of'):
            _coupling(scale='bounded')
        with self.assertRaisesRegex(ValueError, 'log_det_term'):
            _coupling(term='bogus')


if __name__ == '__main__':
    tf.test.main()
