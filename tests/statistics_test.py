"""Tests of the statistics along a model's computation, the image statistics, the
estimators over them, the selection of statistics and the validation shifts:
each against a hand computation, scikit-learn or SciPy."""

import io
import json
import os
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy import stats
from sklearn.covariance import OAS, LedoitWolf
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KernelDensity

from tfp_ood import detectors, estimators, export, image_statistics, models, selection, shifts
from tfp_ood.config import GlowConfig
from tfp_ood.models.base import dequantize
from tfp_ood.models.vae import _MAX_LOG_SCALE as MAX_LOG_SCALE


def _images(n, shape=(8, 8, 3), seed=0, high=256):
    return np.random.default_rng(seed).integers(0, high, (n,) + shape, dtype=np.uint8)


def _perturbed_glow(shape=(8, 8, 3)):
    model = models.from_config(dict(family='glow', **GlowConfig.named('tiny', shape).to_dict()))
    model.initialize(_images(64, shape))
    for v in model.trainable_variables:  # Away from the identity couplings of initialisation.
        v.assign_add(0.05 * tf.random.stateless_normal(v.shape, seed=[3, 4]))
    return model


class FlowStatisticsTest(tf.test.TestCase):

    def test_step_statistics_against_a_walk_through_the_bijectors_by_hand(self):
        model = _perturbed_glow()
        images = _images(5, seed=1)
        statistics = model.statistics(images)
        self.assertEqual(set(statistics) - set(model.log_prob_terms(images)),
                         set(model.statistic_names))
        # Walk the flow by hand, each bijector through its public one-pass inverse.
        y = dequantize(tf.constant(images))
        for i, level in enumerate(model.levels):
            y, _ = level.squeeze.inverse_and_log_det(y)
            for j, step in enumerate(level.steps):
                log_det = 0.
                for bijector in step:
                    y, ildj = bijector.inverse_and_log_det(y)
                    log_det += ildj
                self.assertAllClose(statistics[f'level{i}_step{j}_log_det'],
                                    log_det + np.zeros(5), rtol=1e-5, atol=1e-3)
                self.assertAllClose(statistics[f'level{i}_step{j}_mean_square'],
                                    np.mean(np.square(y), axis=(1, 2, 3)), rtol=1e-5)
            if level.split_prior is not None:
                y, ildj = level.split_prior.inverse_and_log_det(y)
                kept = level.next_level.image_event_shape[-1]
                latent, y = y[..., kept:], y[..., :kept]
                self.assertAllClose(statistics[f'level{i}_prior_log_det'], ildj, rtol=1e-5)
            else:
                latent = y
            self.assertAllClose(statistics[f'level{i}_latent_mean_square'],
                                np.mean(np.square(latent), axis=(1, 2, 3)), rtol=1e-5)
            # The steps' log-determinants sum to the level's volume term.
            self.assertAllClose(
                sum(statistics[f'level{i}_step{j}_log_det'] for j in range(len(level.steps))),
                statistics[f'level{i}_log_det'], rtol=1e-5, atol=1e-3)

    def test_the_evaluator_returns_them_on_request_only(self):
        model = _perturbed_glow()
        images = _images(6, seed=2)
        plain = tfp_score(model, images)
        full = tfp_score(model, images, statistics=True)
        self.assertNotIn('level0_step0_log_det', plain)
        for k, v in plain.items():
            self.assertAllClose(full[k], v, rtol=1e-6, msg=k)
        self.assertIn('level1_latent_mean_square', full)
        self.assertNotIn('level1_prior_log_det', full)  # The last level has no prior.


class GradientStatisticsTest(tf.test.TestCase):

    def _by_hand(self, model, images):
        """Per image, a tape of its own log-likelihood alone, and the log of the
        norm of the gradient over each group's variables, in NumPy."""
        out = {name: [] for name in model.gradient_statistic_names}
        for image in images:
            with tf.GradientTape(persistent=True) as tape:
                log_prob = model.log_prob(image[None])[0]
            for name, group in zip(model.gradient_statistic_names,
                                   model.parameter_groups().values()):
                grads = tape.gradient(log_prob, group)
                squares = sum(np.sum(np.square(g.numpy())) for g in grads if g is not None)
                out[name].append(0.5 * np.log(squares))
        return out

    def test_against_a_tape_per_image_for_a_flow_and_a_pixelcnn(self):
        # The flow's are vectorised over the batch; the PixelCNN++'s one at a time.
        pixelcnn = models.named_model('pixelcnn', 'tiny', (8, 8, 3))
        pixelcnn.log_prob(_images(2))  # Builds (and initialises) its weight norms.
        for model in (_perturbed_glow(), pixelcnn):
            images = _images(4, seed=3)
            statistics = model.statistics(images, gradients=True)
            statistics = {k: v.numpy() for k, v in statistics.items()}
            self.assertEqual(set(statistics) - set(model.statistics(images)),
                             set(model.gradient_statistic_names))
            for name, expected in self._by_hand(model, images).items():
                self.assertAllClose(statistics[name], expected, rtol=1e-4, atol=1e-4,
                                    msg=name)
            # Each image's own gradient: another batch around it does not change it.
            alone = model.gradient_statistics(images[1:2])
            for name in model.gradient_statistic_names:
                self.assertAllClose(alone[name], statistics[name][1:2], rtol=1e-4, atol=1e-4)

    def test_groups_hold_every_variable_once_under_names_that_survive_a_rebuild(self):
        glow = _perturbed_glow()
        groups = glow.parameter_groups()
        self.assertEqual(list(groups)[:4], ['level0_step0_act_norm', 'level0_step0_conv1x1',
                                            'level0_step0_coupling', 'level0_prior'])
        for model in (glow, models.named_model('vae', 'tiny', (8, 8, 3))):
            model.log_prob(_images(2))
            held = [v.ref() for vs in model.parameter_groups().values() for v in vs]
            self.assertEqual(len(held), len(set(held)))
            self.assertEqual(set(held), {v.ref() for v in model.trainable_variables})
        # Keras numbers layers by how many were built before: the names do not.
        names = [models.named_model('pixelcnn', 'tiny', (8, 8, 3)) for _ in range(2)]
        for model in names:
            model.log_prob(_images(2))
        self.assertEqual(names[0].gradient_statistic_names, names[1].gradient_statistic_names)
        self.assertEqual(names[0].gradient_statistic_names[0], 'param_group0_log_grad_norm')

    def test_the_evaluator_returns_them_on_request_only_in_small_batches(self):
        model = _perturbed_glow()
        images = _images(5, seed=4)
        forward = tfp_score(model, images, statistics=True)
        full = tfp_score(model, images, statistics='gradients')
        self.assertNotIn('level0_prior_log_grad_norm', forward)
        self.assertEqual(set(full) - set(forward), set(model.gradient_statistic_names))
        for k, v in forward.items():
            self.assertAllClose(full[k], v, rtol=1e-6, msg=k)
        with self.assertRaisesRegex(ValueError, "statistics must be False, True or 'gradients'"):
            tfp_score(model, images, statistics='gradient')
        saved = export.load(export.export(model, os.path.join(self.create_tempdir().full_path,
                                                              'glow')))
        self.assertEqual(saved.gradient_statistic_names, ())  # No variables to take them over.


class PixelCNNAndVAEStatisticsTest(tf.test.TestCase):

    def test_pixelcnn_map_summaries_against_numpy(self):
        model = models.named_model('pixelcnn', 'tiny', (8, 8, 3))
        images = _images(4, seed=3)
        statistics = {k: v.numpy() for k, v in model.statistics(images).items()}
        self.assertEqual(set(statistics), {'log_prob', *model.statistic_names})
        self.assertAllClose(statistics['log_prob'], model.log_prob(images), rtol=1e-5)
        nll = -model.pixel_log_prob(images).numpy()
        flat = nll.reshape(4, -1)
        for q in (10, 50, 90, 99):
            self.assertAllClose(statistics[f'pixel_nll_q{q}'], np.percentile(flat, q, axis=1),
                                rtol=1e-5)
        self.assertAllClose(statistics['pixel_nll_std'], flat.std(axis=1), rtol=1e-4)
        self.assertAllClose(statistics['pixel_nll_max'], flat.max(axis=1), rtol=1e-6)
        self.assertAllClose(statistics['pixel_nll_top10'],
                            np.sort(flat, axis=1)[:, -6:].mean(axis=1), rtol=1e-5)  # 64 // 10.
        tv = (np.abs(np.diff(nll, axis=1)).mean(axis=(1, 2))
              + np.abs(np.diff(nll, axis=2)).mean(axis=(1, 2)))
        self.assertAllClose(statistics['pixel_nll_map_tv'], tv, rtol=1e-5)

    def test_vae_statistics_against_the_posterior_by_hand(self):
        for family in ('vae', 'vae_rnvp'):  # Without and with a posterior flow.
            with self.subTest(family=family):
                model = models.named_model(family, 'tiny', (8, 8, 3))
                images = _images(3, seed=4)
                statistics = {k: v.numpy() for k, v in model.statistics(images).items()}
                self.assertEqual(set(statistics), {'log_prob', 'elbo', *model.statistic_names})
                for k, v in model.log_prob_terms(images).items():
                    self.assertAllClose(statistics[k], v, rtol=1e-6, msg=k)
                # The encoder by hand: loc and log-scale from its output.
                out = model.encoder(tf.cast(images, tf.float32) / 127.5 - 1.).numpy()
                loc, raw = np.split(out, 2, axis=-1)
                log_scale = MAX_LOG_SCALE * np.tanh(raw / MAX_LOG_SCALE)
                self.assertAllClose(statistics['posterior_loc_norm'],
                                    np.linalg.norm(loc, axis=-1), rtol=1e-5)
                self.assertAllClose(statistics['posterior_log_scale_mean'],
                                    log_scale.mean(axis=-1), rtol=1e-5, atol=1e-6)
                # The closed-form KL against TFP's.
                base = tfd_normal(loc, np.exp(log_scale))
                prior = tfd_normal(np.zeros_like(loc), np.ones_like(loc))
                self.assertAllClose(statistics['posterior_kl'], base.kl_divergence(prior),
                                    rtol=1e-4, atol=1e-5)
                z = loc if model._flow is None else model._flow.forward(loc)
                self.assertAllClose(statistics['reconstruction_log_prob'],
                                    model.likelihood(z).log_prob(images), rtol=1e-5)
                # The decoder's mean and standard deviation per pixel channel, by hand:
                # from the 256 levels' probabilities, or the logistic's loc and scale.
                params = model.decoder(z).numpy().astype(np.float64)
                if model.config.likelihood == 'categorical':
                    probs = np.exp(params - params.max(-1, keepdims=True))
                    probs /= probs.sum(-1, keepdims=True)
                    mean = (probs * np.arange(256)).sum(-1)
                    std = np.sqrt((probs * (np.arange(256) - mean[..., None]) ** 2).sum(-1))
                else:
                    mean = (params[..., 0] + 1) * 127.5
                    std = (np.exp(np.clip(params[..., 1], -7., MAX_LOG_SCALE))
                           * np.pi / np.sqrt(3) * 127.5)
                residual = (images - mean).reshape(3, -1)
                self.assertAllClose(statistics['decoder_residual_norm'],
                                    np.linalg.norm(residual, axis=-1), rtol=1e-4)
                self.assertAllClose(statistics['decoder_std_norm'],
                                    np.linalg.norm(std.reshape(3, -1), axis=-1), rtol=1e-4)
                eps = tf.random.stateless_normal([model.config.num_importance_samples,
                                                  model.config.latent_dim],
                                                 seed=[model.config.seed, 17])
                log_w = model._log_weights_fn(images, eps).numpy()
                self.assertAllClose(statistics['log_weight_std'], log_w.std(axis=0),
                                    rtol=1e-4)


def tfd_normal(loc, scale):
    import tensorflow_probability as tfp
    return tfp.distributions.MultivariateNormalDiag(loc=loc, scale_diag=scale)


def tfp_score(model, images, **kwargs):
    from tfp_ood.evaluate import score
    return score(model, images, progress=False, **kwargs).scores


def _colour_transformed(image):
    """JPEG 2000's reversible colour transform of one image, int64."""
    x = image.astype(np.int64)
    if x.shape[-1] == 3:
        r, g, b = x[..., 0], x[..., 1], x[..., 2]
        x = np.stack([(r + 2 * g + b) // 4, b - g, r - g], -1)
    return x


def _laplace_bits_by_hand(residual):
    """Bits of absolute residuals `[H, W, C]`, each under a Laplace whose scale is
    1/2 plus the mean of its four causal neighbours (zero outside), one by one."""
    height, width, channels = residual.shape
    bits = 0.
    for i in range(height):
        for j in range(width):
            for k in range(channels):
                s = 0.5 + 0.25 * sum(residual[i + di, j + dj, k]
                                     for di, dj in ((0, -1), (-1, -1), (-1, 0), (-1, 1))
                                     if 0 <= i + di < height and 0 <= j + dj < width)
                bits += residual[i, j, k] / (s * np.log(2)) + np.log2(2 * s)
    return bits


def _lift_53_by_hand(signal):
    """One level of JPEG 2000's reversible 5/3 lifting of a 1-D integer signal of
    even length, element by element, with symmetric extension."""
    x = [int(v) for v in signal]
    n = len(x) // 2
    d = [x[2 * i + 1] - (x[2 * i] + x[min(2 * i + 2, 2 * n - 2)]) // 2 for i in range(n)]
    s = [x[2 * i] + (d[max(i - 1, 0)] + d[i] + 2) // 4 for i in range(n)]
    return s, d


def _unlift_53(s, d):
    """The inverse of `_lift_53_by_hand` (JPEG 2000's reconstruction)."""
    n = len(s)
    even = [s[i] - (d[max(i - 1, 0)] + d[i] + 2) // 4 for i in range(n)]
    odd = [d[i] + (even[i] + even[min(i + 1, n - 1)]) // 2 for i in range(n)]
    return [v for pair in zip(even, odd) for v in pair]


class ImageStatisticsTest(tf.test.TestCase):

    def test_against_numpy_and_lossless_round_trips(self):
        images = np.concatenate([_images(4), np.full((1, 8, 8, 3), 9, np.uint8)])
        out = image_statistics.image_statistics(images, list(image_statistics.IMAGE_STATISTICS))
        x = images.astype(np.float64)
        dx, dy = np.diff(x, axis=2), np.diff(x, axis=1)
        self.assertAllClose(out['total_variation'],
                            np.abs(dx).mean((1, 2, 3)) + np.abs(dy).mean((1, 2, 3)))
        self.assertAllClose(out['gradient_mean_square'],
                            (dx ** 2).mean((1, 2, 3)) + (dy ** 2).mean((1, 2, 3)))
        laplacian = (4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2]
                     - x[:, 1:-1, 2:])
        self.assertAllClose(out['laplacian_mean_abs'], np.abs(laplacian).mean((1, 2, 3)))
        self.assertAllEqual(out['total_variation'][-1], 0.)
        for level in (1, 6, 9):
            self.assertAllEqual(out[f'png{level}_bits'], detectors.compressed_bits(images, 'png',
                                                                                   level))
        png = Image.open(io.BytesIO(tf.io.encode_png(images[0], compression=9).numpy()))
        self.assertAllEqual(np.asarray(png), images[0])  # A real, lossless PNG of the image.
        for quality in (30, 60, 90, 98):
            encoded = tf.io.encode_jpeg(images[1], quality=quality,
                                        chroma_downsampling=False).numpy()
            self.assertEqual(out[f'jpeg{quality}_bits'][1], 8 * len(encoded))
            self.assertEqual(Image.open(io.BytesIO(encoded)).format, 'JPEG')
        # Simpler images are shorter at every setting: the constant image is shortest.
        for name in out:
            if name.endswith('_bits'):
                self.assertEqual(int(np.argmin(out[name])), 4, name)
        arrays = image_statistics.image_statistics_array(images, ['png9_bits'], batch_size=2)
        self.assertAllEqual(arrays['png9_bits'], out['png9_bits'])

    def test_arrays_of_every_statistic_for_images_of_several_shapes_in_turn(self):
        # One process scoring CIFAR-10-shaped and then FashionMNIST-shaped images
        # (the detector search does): the traced function keeps each shape's
        # height and width static, which the wavelet's levels need.
        names = list(image_statistics.IMAGE_STATISTICS)
        for images in (_images(5, (8, 8, 3)), _images(3, (12, 10, 1), seed=1),
                       _images(7, (8, 8, 3), seed=2)):
            arrays = image_statistics.image_statistics_array(images, names, batch_size=4)
            eager = image_statistics.image_statistics(images, names)
            for name in names:
                self.assertAllClose(arrays[name], eager[name], rtol=1e-6, msg=name)

    def test_loco_bits_against_a_pixel_by_pixel_computation(self):
        def by_hand(image):
            x = _colour_transformed(image)
            height, width, channels = x.shape

            def at(a, i, j, k):
                return a[i, j, k] if 0 <= i < height and 0 <= j < width else 0

            residual = np.zeros(x.shape)
            for i in range(height):
                for j in range(width):
                    for k in range(channels):
                        a, b, c = at(x, i, j - 1, k), at(x, i - 1, j, k), at(x, i - 1, j - 1, k)
                        if c >= max(a, b):
                            prediction = min(a, b)
                        elif c <= min(a, b):
                            prediction = max(a, b)
                        else:
                            prediction = a + b - c
                        residual[i, j, k] = abs(x[i, j, k] - prediction)
            return _laplace_bits_by_hand(residual)

        images = np.concatenate([_images(3, (6, 6, 3)), np.full((1, 6, 6, 3), 9, np.uint8)])
        gray = np.random.default_rng(3).integers(0, 256, (2, 5, 7, 1), np.uint8)
        for batch in (images, gray):
            out = image_statistics.image_statistics(batch, ['loco_bits'])['loco_bits']
            self.assertAllClose(out, [by_hand(image) for image in batch], rtol=1e-5)
        # A constant image costs its first row and column only, and so does a
        # plane (the predictor's a + b - c is exact inside it): both far below noise.
        plane = (3 * np.arange(16)[:, None, None] + 2 * np.arange(16)[None, :, None]
                 + np.array([0, 10, 20])).astype(np.uint8)[None]
        constant = np.full((1, 16, 16, 3), 9, np.uint8)
        out = image_statistics.image_statistics(
            np.concatenate([_images(2, (16, 16, 3)), constant, plane]), ['loco_bits'])
        out = out['loco_bits'].numpy()
        self.assertLess(max(out[2:]), out[:2].min() / 4)

    def test_wavelet_bands_are_the_5_3_lifting_and_wavelet_bits_their_cost(self):
        # One row by hand: [1, 5, 3, 9] -> d = [5 - 2, 9 - 3], s = [1 + 2, 3 + 2]; and
        # [4, 0, 0, 1] shows the floors of negative numbers (s[0] = 4 + floor(-2 / 4)).
        self.assertEqual(_lift_53_by_hand([1, 5, 3, 9]), ([3, 5], [3, 6]))
        self.assertEqual(_lift_53_by_hand([4, 0, 0, 1]), ([3, 0], [-2, 1]))

        def bands_by_hand(image, levels, colour_transform=True):
            def lift(x, axis):  # Every row (axis 1) or column (axis 0), one at a time.
                x = np.moveaxis(x, axis, -1)
                lifted = [[_lift_53_by_hand(line) for line in plane] for plane in x]
                s = np.array([[pair[0] for pair in plane] for plane in lifted])
                d = np.array([[pair[1] for pair in plane] for plane in lifted])
                return np.moveaxis(s, -1, axis), np.moveaxis(d, -1, axis)

            x = _colour_transformed(image) if colour_transform else image.astype(np.int64)
            low, bands = np.moveaxis(x, -1, 0), []
            for _ in range(levels):
                if low.shape[1] % 2 or low.shape[2] % 2:
                    break
                column_low, column_high = lift(low, 2)
                low, low_high = lift(column_low, 1)
                high_low, high_high = lift(column_high, 1)
                bands += [low_high, high_low, high_high]
            return [np.moveaxis(b, 0, -1) for b in bands + [low]]

        rng = np.random.default_rng(5)
        for shape, levels in (((8, 12, 3), 2), ((12, 8, 1), 2), ((4, 6, 3), 2), ((8, 8, 3), 3)):
            images = rng.integers(0, 256, (2,) + shape, dtype=np.uint8)
            out = image_statistics.wavelet_bands(images, levels)
            for image, index in zip(images, range(len(images))):
                expected = bands_by_hand(image, levels)
                self.assertEqual(len(out), len(expected))
                for band, hand in zip(out, expected):
                    self.assertAllEqual(band[index], hand)
            # The bands hold as many integers as the image, and give it back exactly.
            self.assertEqual(sum(int(np.prod(b.shape[1:])) for b in out), int(np.prod(shape)))
        for row in rng.integers(-600, 600, (20, 10)):
            self.assertEqual(_unlift_53(*_lift_53_by_hand(row)), list(row))
        # 4x6 stops after one level (its low band is 2x3): 3 detail bands and the low.
        self.assertLen(image_statistics.wavelet_bands(np.zeros((1, 4, 6, 3), np.uint8)), 4)

        constant = np.full((1, 8, 12, 3), 9, np.uint8)
        images = np.concatenate([_images(2, (8, 12, 3), seed=6), constant])
        out = image_statistics.image_statistics(images, ['wavelet_bits', 'wavelet_rgb_bits'])
        for name, colour_transform in (('wavelet_bits', True), ('wavelet_rgb_bits', False)):
            self.assertAllClose(out[name], [
                sum(_laplace_bits_by_hand(np.abs(b).astype(np.float64))
                    for b in bands_by_hand(image, 2, colour_transform)) for image in images],
                rtol=1e-5)
        rgb = image_statistics.wavelet_bands(images, 2, colour_transform=False)
        for band, hand in zip(rgb, bands_by_hand(images[0], 2, colour_transform=False)):
            self.assertAllEqual(band[0], hand)
        # A graph that does not know the height and width gets a clear error.
        with self.assertRaisesRegex(Exception, 'known height and width'):  # Autograph's wrap.
            tf.function(image_statistics.wavelet_bands).get_concrete_function(
                tf.TensorSpec([None, None, None, 3], tf.uint8))
        # One channel has no colour transform: the two are the same.
        gray = _images(2, (8, 8, 1), seed=9)
        out = image_statistics.image_statistics(gray, ['wavelet_bits', 'wavelet_rgb_bits'])
        self.assertAllEqual(out['wavelet_bits'], out['wavelet_rgb_bits'])
        # The 5/3 predict step is exact on a linear ramp, so a plane's detail
        # coefficients vanish but at the far edges (symmetric extension): far below noise.
        plane = (3 * np.arange(16)[:, None, None] + 2 * np.arange(16)[None, :, None]
                 + np.array([0, 10, 20])).astype(np.uint8)[None]
        first = image_statistics.wavelet_bands(plane, 1)
        self.assertAllEqual(first[0][0, :-1], np.zeros([7, 8, 3]))  # High along the height,
        self.assertAllEqual(first[1][0, :, :-1], np.zeros([8, 7, 3]))  # along the width.
        bits = image_statistics.image_statistics(np.concatenate([_images(2, (16, 16, 3)), plane]),
                                                 ['wavelet_bits'])['wavelet_bits'].numpy()
        self.assertLess(bits[2], bits[:2].min() / 4)

    def test_bad_input(self):
        with self.assertRaisesRegex(ValueError, 'Unknown image statistics'):
            image_statistics.image_statistics(_images(2), ['flif_bits'])
        with self.assertRaisesRegex(ValueError, 'uint8 images'):
            image_statistics.image_statistics(np.zeros((2, 8, 8, 2), np.uint8), ['png9_bits'])


def _data(n=400, d=3, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) @ mix, rng.normal(size=(50, d)) @ mix * 1.5


class EstimatorsTest(tf.test.TestCase):

    def test_gaussians_and_kde_against_scipy_and_scikit_learn(self):
        train, test = _data()
        cov = np.cov(train, rowvar=False, bias=True) + 1e-6 * np.eye(3)
        expected = {
            'gaussian': stats.multivariate_normal(train.mean(0), cov).logpdf(test),
            'ledoit_wolf': stats.multivariate_normal(
                train.mean(0), LedoitWolf().fit(train).covariance_ + 1e-6 * np.eye(3)
            ).logpdf(test),
            'oas': stats.multivariate_normal(
                train.mean(0), OAS().fit(train).covariance_ + 1e-6 * np.eye(3)).logpdf(test),
            'kde': KernelDensity(bandwidth=400 ** (-1 / 7)).fit(train).score_samples(test),
            'gmm': GaussianMixture(4, covariance_type='full', reg_covar=1e-4,
                                   random_state=0).fit(train).score_samples(test),
        }
        for name, log_density in expected.items():
            estimator = estimators.ESTIMATORS[name]().fit(train)
            self.assertAllClose(-estimator.score(test), log_density, rtol=1e-6, atol=1e-8,
                                msg=name)
            restored = estimators.from_state(name, json.loads(json.dumps(
                estimator.get_state())))
            self.assertAllClose(restored.score(test), estimator.score(test), rtol=1e-12,
                                msg=name)

    def test_copod_against_a_hand_computation(self):
        train = np.array([[0., 5.], [1., 3.], [2., 4.], [10., 0.]])  # Skewed right, left.
        test = np.array([[1., 3.], [20., -1.], [-5., 9.]])
        estimator = estimators.COPOD().fit(train)
        n = 4
        expected = []
        for row in test:
            left = [-np.log((np.sum(train[:, j] <= row[j]) + 1) / (n + 1)) for j in range(2)]
            right = [-np.log((np.sum(train[:, j] >= row[j]) + 1) / (n + 1)) for j in range(2)]
            skewness = stats.skew(train, axis=0)
            skewed = [left[j] if skewness[j] < 0 else right[j] for j in range(2)]
            expected.append(max(sum(left), sum(right), sum(skewed)))
        self.assertAllClose(estimator.score(test), expected)
        self.assertGreater(float(estimator.score(test)[1]), float(estimator.score(test)[0]))

    def test_tippett_against_a_hand_computation(self):
        train = np.array([[0., 5.], [1., 3.], [2., 4.], [10., 0.]])
        test = np.array([[1., 3.], [20., -1.], [-5., 4.], [2., 2.]])
        estimator = estimators.Tippett().fit(train)
        n = 4
        expected = [max(-np.log(min(np.sum(train[:, j] <= row[j]) + 1,
                                    np.sum(train[:, j] >= row[j]) + 1) / (n + 1))
                        for j in range(2)) for row in test]
        self.assertAllClose(estimator.score(test), expected)
        restored = estimators.from_state('tippett', json.loads(json.dumps(
            estimator.get_state())))
        self.assertAllEqual(restored.score(test), estimator.score(test))

    def test_tippett_keeps_a_lone_statistics_signal_where_sums_dilute_it(self):
        # One statistic of six moves (by 3 standard deviations); the others are
        # noise. COPOD's sum of evidence dilutes it most, a Gaussian less; the
        # minimum p-value least, losing what testing six at once costs.
        rng = np.random.default_rng(3)
        train, held_out, shifted = (rng.normal(size=(n, 6)) for n in (2000, 1000, 1000))
        shifted[:, 0] += 3.
        alone = selection.validation_aurocs('gaussian', train[:, :1], held_out[:, :1],
                                            {'s': shifted[:, :1]})['s']
        aurocs = {name: selection.validation_aurocs(name, train, held_out, {'s': shifted})['s']
                  for name in ('tippett', 'copod', 'ledoit_wolf')}
        self.assertGreater(alone, 0.95)
        self.assertBetween(aurocs['tippett'], alone - 0.08, alone)
        self.assertGreater(aurocs['tippett'], aurocs['ledoit_wolf'] + 0.005)
        self.assertGreater(aurocs['tippett'], aurocs['copod'] + 0.02)

    def test_validation_metrics_equal_each_set_scored_alone(self):
        # validation_metrics scores every set in one estimator call; by hand here,
        # each set on its own, non-finite rows ranked most out-of-distribution.
        from tfp_ood.metrics import auroc_and_fpr
        rng = np.random.default_rng(5)
        train, held_out = rng.normal(size=(300, 3)), rng.normal(size=(90, 3))
        shifted = {'near': rng.normal(0.3, 1., (70, 3)), 'far': rng.normal(2., 1., (40, 3)),
                   'held_out': rng.normal(1., 2., (25, 3))}  # A set may take any name.
        shifted['far'][3, 1] = np.nan
        mean, scale = train.mean(axis=0), train.std(axis=0)
        for name in estimators.ESTIMATORS:
            density = estimators.ESTIMATORS[name]().fit((train - mean) / scale)

            def alone(values):
                values = (values - mean) / scale
                ok = np.all(np.isfinite(values), axis=1)
                out = np.full(len(values), np.inf)
                out[ok] = density.score(values[ok]).numpy()
                return out

            with mock.patch.object(selection, 'SCORE_ROWS', 64):  # Blocks across sets.
                metrics = selection.validation_metrics(name, train, held_out, shifted)
            self.assertEqual(list(metrics), list(shifted))
            for k, v in shifted.items():
                expected = auroc_and_fpr(alone(held_out), alone(v), nonfinite='most_ood')
                self.assertAllClose(metrics[k]['auroc'], expected['auroc'], atol=1e-12,
                                    msg=f'{name} {k}')
                self.assertAllClose(metrics[k]['detection_rate'],
                                    1. - expected['fpr_at_95_tpr'], atol=1e-12)

    def test_bad_input(self):
        with self.assertRaisesRegex(ValueError, 'finite statistics'):
            estimators.Gaussian().fit(np.array([[1., np.nan], [2., 3.]]))
        with self.assertRaisesRegex(ValueError, 'finite statistics'):
            estimators.KDE().fit(np.ones((1, 2)))
        with self.assertRaisesRegex(ValueError, 'bandwidth must be > 0'):
            estimators.KDE(0.)
        with self.assertRaisesRegex(ValueError, 'covariance must be one of'):
            estimators.Gaussian('diagonal')
        with self.assertRaisesRegex(ValueError, 'Unknown estimator'):
            estimators.from_state('svm', {})


class SelectionTest(tf.test.TestCase):

    def test_a_useless_statistic_is_left_out_and_the_rule_holds(self):
        rng = np.random.default_rng(0)

        def sample(n, shift_good=0., shift_other=0.):
            return {'good': rng.normal(shift_good, 1., n), 'useless': rng.normal(0., 1., n),
                    'other': rng.normal(shift_other, 1., n), 'constant': np.ones(n)}

        train, held = sample(2000), sample(1000)
        shifted = {'a': sample(1000, shift_good=3.),
                   'b': sample(1000, shift_good=2., shift_other=2.)}
        chosen = selection.select_statistics(train, held, shifted,
                                             ['useless', 'constant', 'good', 'other'],
                                             'ledoit_wolf')
        self.assertEqual(chosen.statistics[0], 'good')
        self.assertNotIn('useless', chosen.statistics)
        self.assertNotIn('constant', chosen.statistics)
        self.assertEqual(chosen.loses_to_a_part, {})
        for k, v in chosen.aurocs.items():
            self.assertGreaterEqual(v, chosen.singles['good'][k])
        self.assertLess(abs(chosen.singles['useless']['a'] - 0.5), 0.05)
        self.assertAlmostEqual(chosen.mean_auroc, np.mean(list(chosen.aurocs.values())))
        # Without the rule, the objective alone decides.
        free = selection.select_statistics(train, held, shifted, ['good', 'other'], 'gaussian',
                                           rule_tolerance=np.inf)
        self.assertGreaterEqual(free.mean_auroc, np.mean(list(chosen.singles['good'].values())))
        # A given design is scored the same way.
        again = selection.evaluate_design(train, held, shifted, chosen.statistics, 'ledoit_wolf')
        self.assertEqual(again.aurocs, chosen.aurocs)
        self.assertEqual(set(again.singles), set(chosen.statistics))
        with self.assertRaisesRegex(ValueError, 'has no'):
            selection.select_statistics(train, held, {'a': {'good': np.zeros(3)}},
                                        ['good', 'other'])
        with self.assertRaisesRegex(ValueError, 'no validation OOD sets'):
            selection.select_statistics(train, held, {}, ['good'])
        with self.assertRaisesRegex(ValueError, 'Unknown criterion'):
            selection.select_statistics(train, held, shifted, ['good'], criterion='f1')

    def test_the_detection_rate_is_the_fraction_flagged_at_95_percent_tpr(self):
        rng = np.random.default_rng(1)
        train, held = {'s': rng.normal(0., 1., 4000)}, {'s': rng.normal(0., 1., 1000)}
        shifted = {'far': {'s': rng.normal(4., 1., 500)}, 'near': {'s': rng.normal(1., 1., 500)}}
        design = selection.evaluate_design(train, held, shifted, ['s'], 'gaussian',
                                           criterion='detection_rate')
        # By hand: a one-dimensional Gaussian scores by |s - mean|; flagged means
        # scored above the 95th percentile of the held-out scores.
        centre, scale = train['s'].mean(), train['s'].std()
        distance = lambda v: np.abs((v - centre) / scale)  # noqa: E731
        threshold = np.sort(distance(held['s']))[int(np.ceil(0.95 * 1000)) - 1]
        for k, v in shifted.items():
            self.assertAlmostEqual(design.detection_rates[k],
                                   np.mean(distance(v['s']) > threshold), delta=2e-3)
        self.assertAlmostEqual(design.score, np.mean(list(design.detection_rates.values())))
        self.assertGreater(design.detection_rates['far'], 0.9)
        # Two statistics a detector can tell apart only by the rate: 'wide' moves a
        # few images far (high rate, AUROC near 0.5 plus a little), 'narrow' moves
        # every image a little (higher AUROC, few flagged).

        def sample(n, wide=False, narrow=False):
            w = rng.normal(0., 1., n)
            if wide:
                w[:n // 4] += 8.
            return {'wide': w, 'narrow': rng.normal(1.2 if narrow else 0., 1., n)}
        train, held = sample(4000), sample(1000)
        shifted = {'a': {**sample(1000), 'wide': sample(1000, wide=True)['wide'],
                         'narrow': sample(1000, narrow=True)['narrow']}}
        by_auroc = selection.select_statistics(train, held, shifted, ['wide', 'narrow'],
                                               'gaussian', max_statistics=1)
        by_rate = selection.select_statistics(train, held, shifted, ['wide', 'narrow'],
                                              'gaussian', max_statistics=1,
                                              criterion='detection_rate')
        self.assertEqual(by_auroc.statistics, ['narrow'])
        self.assertEqual(by_rate.statistics, ['wide'])
        self.assertEqual(by_rate.steps, [by_rate.mean_detection_rate])

    def test_best_single_statistics_name_the_sets_a_statistic_can_detect(self):
        rng = np.random.default_rng(2)

        def sample(n, shift=0.):
            return {'good': rng.normal(shift, 1., n), 'noise': rng.normal(0., 1., n),
                    'constant': np.ones(n)}

        train, held = sample(3000), sample(1000)
        shifted = {'easy': sample(1000, shift=4.), 'hidden': sample(1000)}
        best = selection.best_single_statistics(train, held, shifted,
                                                ['good', 'noise', 'constant'])
        self.assertEqual(best['easy'][1], 'good')
        self.assertGreater(best['easy'][0], 0.99)
        # Nothing separates 'hidden': the best of two chance-level AUROCs.
        self.assertLess(abs(best['hidden'][0] - 0.5), 0.05)
        one = selection.validation_aurocs('gaussian', train['good'][:, None],
                                          held['good'][:, None],
                                          {'easy': shifted['easy']['good'][:, None]})
        self.assertEqual(best['easy'][0], one['easy'])


class ShiftsTest(tf.test.TestCase):

    def test_each_shift_does_what_it_says(self):
        images = _images(6, (8, 8, 3), seed=3)
        made = shifts.make_shifts(images, seed=1)
        self.assertEqual(tuple(made), shifts.SHIFTS)
        for name, shifted in made.items():
            self.assertEqual((shifted.dtype, shifted.shape), (np.uint8, images.shape), name)
        self.assertAllEqual(made['invert'], 255 - images)
        self.assertAllEqual(made['vertical_flip'], images[:, ::-1])
        luma = np.round(images.astype(np.float64) @ [0.299, 0.587, 0.114])
        self.assertAllEqual(made['grayscale'][..., 1], luma)
        # Pixel shuffle: the same 4x4 blocks, moved.

        def blocks(x):
            return sorted(x[r:r + 4, c:c + 4].tobytes() for r in (0, 4) for c in (0, 4))
        for a, b in zip(images, made['pixel_shuffle']):
            self.assertEqual(blocks(a), blocks(b))
        self.assertAllEqual(shifts.make_shifts(images, seed=1)['pixel_shuffle'],
                            made['pixel_shuffle'])
        constant = np.full((2, 8, 8, 1), 77, np.uint8)
        for name in ('blur', 'low_resolution', 'jpeg'):
            self.assertAllClose(shifts.shift(name, constant), constant, atol=1, msg=name)
        self.assertNotIn('grayscale', shifts.make_shifts(constant))
        # Blur and lower resolution make images simpler: shorter PNGs.
        png = detectors.compressed_bits
        for name in ('blur', 'low_resolution'):
            self.assertLess(png(made[name]).mean(), png(images).mean(), name)
        with self.assertRaisesRegex(ValueError, 'Unknown shift'):
            shifts.shift('rotate', images)

    def test_mild_shifts_sit_between_the_images_and_the_strong_shifts(self):
        rng = np.random.default_rng(4)
        # Smooth random images (noise blurred and upsampled), so JPEG and blur bite gradually.
        coarse = rng.integers(0, 256, (8, 8, 8, 3)).astype(np.float32)
        images = tf.cast(tf.image.resize(coarse, (16, 16), 'bicubic'), tf.float32)
        images = np.clip(np.round(images.numpy() + rng.normal(0, 12, images.shape)), 0, 255
                         ).astype(np.uint8)
        made = shifts.make_shifts(images, seed=2)

        def distance(name):
            return np.abs(made[name].astype(np.float64) - images).mean()
        for strong in ('blur', 'low_resolution', 'jpeg'):
            self.assertLess(0, distance(f'{strong}_mild'), strong)
            self.assertLess(distance(f'{strong}_mild'), distance(strong), strong)
        # The mild blur is the 7-tap Gaussian of standard deviation 0.5.
        taps = np.exp(-0.5 * (np.arange(-3, 4) / .5) ** 2)
        taps /= taps.sum()
        padded = np.pad(images.astype(np.float64), [(0, 0), (3, 3), (3, 3), (0, 0)], 'reflect')
        rows = sum(t * padded[:, i:i + 16] for i, t in enumerate(taps))
        blurred = sum(t * rows[:, :, i:i + 16] for i, t in enumerate(taps))
        self.assertAllClose(made['blur_mild'], np.round(blurred), atol=1)
        # The mild shuffle moves whole 8x8 blocks: the 4x4 shuffle's blocks are smaller.

        def blocks(x, size):
            return sorted(x[r:r + size, c:c + size].tobytes()
                          for r in range(0, 16, size) for c in range(0, 16, size))
        for a, b in zip(images, made['pixel_shuffle_mild']):
            self.assertEqual(blocks(a, 8), blocks(b, 8))
        self.assertFalse(all(blocks(a, 8) == blocks(b, 8)
                             for a, b in zip(images, made['pixel_shuffle'])))

    def test_contrast_and_noise_move_the_variance_alone(self):
        rng = np.random.default_rng(5)
        images = rng.integers(40, 216, (5, 8, 8, 3)).astype(np.uint8)
        made = shifts.make_shifts(images, seed=3)
        x = images.astype(np.float64)
        for name, factor in (('contrast', .4), ('contrast_mild', .75)):
            # Each image's and channel's deviations from its mean, scaled (CIFAR-10-C).
            mean = x.mean(axis=(1, 2), keepdims=True)
            self.assertAllEqual(made[name], np.round((x - mean) * factor + mean), msg=name)
            self.assertAllClose(made[name].mean(axis=(1, 2)), mean[:, 0, 0], atol=0.5, msg=name)
            self.assertAllClose(made[name].std(axis=(1, 2)) / x.std(axis=(1, 2)),
                                np.full((5, 3), factor), atol=0.05, msg=name)
        noise = made['gaussian_noise'].astype(np.float64) - x  # No clipping at 40-215.
        self.assertLess(abs(noise.mean()), 1.5)
        self.assertAllClose(noise.std(), 0.04 * 255, rtol=0.1)
        self.assertAllEqual(shifts.make_shifts(images, seed=3)['gaussian_noise'],
                            made['gaussian_noise'])
        self.assertNotAllEqual(shifts.make_shifts(images, seed=4)['gaussian_noise'],
                               made['gaussian_noise'])


class SelectedDesignTest(tf.test.TestCase):

    def test_design_checks(self):
        with self.assertRaisesRegex(ValueError, 'estimator must be one of'):
            detectors.check_design({'statistics': ['log_pz'], 'codecs': [], 'estimator': 'x'})
        with self.assertRaisesRegex(ValueError, 'needs "statistics"'):
            detectors.check_design({'statistics': 'log_pz', 'estimator': 'kde'})
        with self.assertRaisesRegex(ValueError, 'at least one statistic'):
            detectors.check_design({'statistics': [], 'codecs': [], 'estimator': 'kde'})
        with self.assertRaisesRegex(ValueError, 'needs a design'):
            detectors.named(detectors.SELECTED, _perturbed_glow())

    @pytest.mark.slow
    def test_fits_reload_and_export_to_the_python_scores_in_plain_tensorflow(self):
        from tests.detectors_test import run_plain_tensorflow
        directory = self.create_tempdir().full_path
        model = _perturbed_glow()
        model_dir = export.export(model, os.path.join(directory, 'glow'))
        train = _images(160, seed=6)
        images = np.concatenate([_images(10, seed=7), np.zeros((2, 8, 8, 3), np.uint8)])
        np.savez(os.path.join(directory, 'x.npz'), images=images)
        statistics = ['level0_step0_log_det', 'level1_latent_mean_square', 'level0_log_pz',
                      'jpeg90_bits', 'total_variation', 'loco_bits', 'wavelet_rgb_bits',
                      'level0_prior_log_det']
        estimators, expected, paths = ('ledoit_wolf', 'copod', 'gmm', 'tippett'), [], []
        for estimator in estimators:
            # One design reads a gradient norm too (each traces the per-image gradients).
            design = {'statistics': statistics + (['level1_step0_coupling_log_grad_norm']
                                                  if estimator == 'copod' else []),
                      'codecs': [], 'estimator': estimator}
            fitted = detectors.fit_detector(detectors.SELECTED, [model_dir], train[:100],
                                            train[100:], design=design)
            expected.append(fitted.detect(images))
            self.assertAllClose(expected[-1].components['level0_step0_log_det'],
                                model.statistics(images)['level0_step0_log_det'])
            reloaded = detectors.load_detector(fitted.save(os.path.join(directory,
                                                                        f'{estimator}.json')))
            self.assertAllEqual(reloaded.detect(images).ood_score, expected[-1].ood_score)
            paths.append(fitted.export(os.path.join(directory, f'detector_{estimator}')))
        # The four SavedModels in one fresh process with only TensorFlow.
        for estimator, scores, outputs in zip(
                estimators, expected,
                run_plain_tensorflow(self, paths, os.path.join(directory, 'x.npz'))):
            self.assertAllClose(outputs['ood_score'], scores.ood_score, rtol=1e-5,
                                atol=1e-6, msg=estimator)
            self.assertAllEqual(outputs['is_ood'], scores.components['is_ood'],
                                msg=estimator)
        # With a Python-only codec the design fits but does not export.
        design = {'statistics': ['level0_log_pz'], 'codecs': ['jpegxl'], 'estimator': 'oas'}
        fitted = detectors.fit_detector(detectors.SELECTED, [model_dir], train[:100],
                                        train[100:], design=design)
        with self.assertRaisesRegex(ValueError, 'jpegxl, which has no TensorFlow op'):
            fitted.export(os.path.join(directory, 'refused'))


if __name__ == '__main__':
    tf.test.main()
