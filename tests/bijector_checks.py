"""Shared assertions for the package's bijectors (after TFP's bijector_test_util)."""

import numpy as np
import tensorflow as tf

from tfp_ood.bijectors import inverse_and_log_det_terms


def perturb_variables(module: tf.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Adds noise to every trainable variable, so that zero-initialised layers
    (which make a fresh flow the identity) do not hide bugs."""
    rng = np.random.default_rng(seed)
    for v in module.trainable_variables:
        v.assign_add(scale * rng.standard_normal(v.shape).astype(np.float32))


def assert_bijective_and_finite(test: tf.test.TestCase, bijector, y, atol=1e-4):
    """Round trips in both directions, with `tf.identity` between passes to defeat
    TFP's bijector cache (which would make `forward(inverse(y)) is y` trivially)."""
    x = bijector.inverse(tf.identity(y))
    y_again = bijector.forward(tf.identity(x))
    x_again = bijector.inverse(tf.identity(y_again))
    x_, y_, y_again_, x_again_ = (t.numpy() for t in (x, y, y_again, x_again))
    test.assertTrue(np.all(np.isfinite(x_)))
    test.assertFalse(np.allclose(x_, y_), 'the bijector acts as the identity')
    test.assertAllClose(y_, y_again_, atol=atol)
    test.assertAllClose(x_, x_again_, atol=atol)
    # The one-pass protocol gives the same inverse and total log-determinant.
    x_walk, terms = inverse_and_log_det_terms(bijector, tf.identity(y))
    ildj = bijector.inverse_log_det_jacobian(tf.identity(y), event_ndims=3)
    fldj = bijector.forward_log_det_jacobian(tf.identity(x), event_ndims=3)
    test.assertAllClose(x_walk, x_, atol=atol)
    total = terms.total.numpy()
    test.assertAllClose(total, np.broadcast_to(ildj.numpy(), total.shape), rtol=1e-5, atol=1e-3)
    test.assertAllClose(np.broadcast_to(fldj.numpy(), total.shape), -total, rtol=1e-5, atol=1e-3)


def assert_log_det_matches_jacobian(test: tf.test.TestCase, bijector, y, rtol=1e-4, atol=1e-3):
    """`inverse_log_det_jacobian` against log|det| of the autodiff Jacobian.

    `y` is `[N, H, W, C]`; the Jacobian of the flattened inverse is
    `[N, D, D]` (keep `D` small).
    """
    shape = y.shape
    flat = tf.reshape(y, [shape[0], -1])
    with tf.GradientTape() as tape:
        tape.watch(flat)
        x = bijector.inverse(tf.reshape(flat, shape))
        x_flat = tf.reshape(x, [shape[0], -1])
    jacobian = tape.batch_jacobian(x_flat, flat)
    _, expected = np.linalg.slogdet(jacobian.numpy().astype(np.float64))
    ildj = bijector.inverse_log_det_jacobian(tf.identity(y), event_ndims=3).numpy()
    _, terms = inverse_and_log_det_terms(bijector, tf.identity(y))
    total = terms.total.numpy()
    test.assertAllClose(np.broadcast_to(ildj, expected.shape), expected, rtol=rtol, atol=atol)
    test.assertAllClose(total, expected, rtol=rtol, atol=atol)
