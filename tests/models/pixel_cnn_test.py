"""PixelCNN++: causality, per-pixel log-likelihoods, trainable weights."""

import pytest
import numpy as np
import tensorflow as tf
import tf_keras

from tfp_ood.models import PixelCNNConfig, PixelCNNModel

SHAPE = (4, 4, 3)


def _model():
    return PixelCNNModel(PixelCNNConfig.named('tiny', SHAPE))


def _images(n=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + SHAPE, dtype=np.uint8)


class PixelCNNTest(tf.test.TestCase):

    def _assert_causal(self, model):
        x = tf.constant(_images(1).astype(np.float32))
        with tf.GradientTape() as tape:
            tape.watch(x)
            per_pixel = model.distribution.pixel_log_prob(x)[0]  # [H, W]
        jacobian = tape.jacobian(per_pixel, x).numpy()[:, :, 0]  # [H, W, H, W, C]
        height, width, _ = SHAPE
        for i in range(height):
            for j in range(width):
                grad = np.abs(jacobian[i, j]).reshape(height * width, -1).sum(-1)
                position = i * width + j
                self.assertTrue(np.all(grad[position + 1:] == 0.),
                                f'pixel ({i}, {j}) depends on later pixels: {grad}')
                if position:  # And it does look at the pixels before it.
                    self.assertGreater(grad[:position].sum(), 0.)

    @pytest.mark.slow(minutes=0.2)
    def test_causal_at_initialisation_and_after_training(self):
        model = _model()
        self._assert_causal(model)
        optimizer = tf_keras.optimizers.Adam(1e-2)
        for _ in range(2):
            with tf.GradientTape() as tape:
                loss = -tf.reduce_mean(model.training_log_prob(_images(4)))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
        self._assert_causal(model)

    def test_pixel_log_probs_sum_to_tfp_log_prob(self):
        model = _model()
        images = _images()
        per_pixel = model.pixel_log_prob(images)
        self.assertEqual(per_pixel.shape, (3, 4, 4))
        self.assertAllClose(tf.reduce_sum(per_pixel, [1, 2]), model.log_prob(images), rtol=1e-5)
        # The TFP distribution itself, on float pixel values.
        self.assertAllClose(model.distribution.log_prob(images.astype(np.float32)),
                            model.log_prob(images), rtol=1e-6)
        self.assertAllClose(model.score_batch(images)['log_prob'], model.log_prob(images),
                            rtol=1e-5)

    def test_every_network_weight_is_trainable(self):
        model = _model()
        self.assertEqual({v.ref() for v in model.trainable_variables},
                         {v.ref() for v in model.network.trainable_variables})
        self.assertGreater(len(model.trainable_variables), 10)
        self.assertEqual(model.get_config()['family'], 'pixelcnn')

    def test_sample(self):
        samples = _model().sample(2, seed=1)
        self.assertEqual(samples.shape, (2,) + SHAPE)
        self.assertEqual(samples.dtype, tf.uint8)
        with self.assertRaisesRegex(ValueError, 'temperature 1 only'):
            _model().sample(2, temperature=0.7)


if __name__ == '__main__':
    tf.test.main()
