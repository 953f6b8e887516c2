"""The analyses: statistics against NumPy, stable log-mean-exp, WAIC by hand."""

import numpy as np
import tensorflow as tf

from tfp_ood import analysis


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
        with self.assertRaisesRegex(ValueError, r'expected \[N, H, W, C\]'):
            analysis.channel_statistics(images[0])

    def test_log_mean_exp_is_stable_around_minus_1e4(self):
        values = np.array([[-10000.], [-10001.], [-10002.]])
        expected = -10000. + np.log(np.mean(np.exp([0., -1., -2.])))
        self.assertAllClose(analysis.log_mean_exp(values, axis=0), [expected], atol=1e-9)
        self.assertAllClose(analysis.ensemble_scores([[-10000.], [-10001.], [-10002.]]),
                            [expected], atol=1e-9)
        self.assertEqual(analysis.log_mean_exp(np.array([[-np.inf], [-np.inf]]))[0], -np.inf)

    def test_waic_hand_computed(self):
        # Members give log p = (1, 3) for image 0 and (2, 2) for image 1:
        # mean 2 and 2, variance 1 and 0, so WAIC = 1 and 2.
        self.assertAllClose(analysis.waic([[1., 2.], [3., 2.]]), [1., 2.])
        with self.assertRaisesRegex(ValueError, 'at least two'):
            analysis.waic([[1., 2.]])


if __name__ == '__main__':
    tf.test.main()
