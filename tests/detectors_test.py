"""Tests of tfp_ood.detectors: every score against a hand computation, AUROC on
separable and identical sets, and bad input."""

import io
import dataclasses
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy import stats

import tfp_ood
from tfp_ood import detectors, estimators, export, image_statistics, models
from tfp_ood.config import GlowConfig
from tfp_ood.models import DensityModel

SHAPE = (4, 4, 1)
D = int(np.prod(SHAPE))


class _Gaussian(DensityModel):
    """Independent Gaussians `N(loc, scale^2)` on the pixel values: a model whose
    log-likelihood is known in closed form."""

    def __init__(self, loc, scale, shape=SHAPE):
        super().__init__(shape, name='gaussian')
        self.loc, self.scale = float(loc), float(scale)

    def log_prob_terms(self, images, noise=None):
        x = tf.cast(images, tf.float32)
        log_density = (-0.5 * ((x - self.loc) / self.scale) ** 2
                       - math.log(self.scale) - 0.5 * math.log(2 * math.pi))
        return {'log_prob': tf.reduce_sum(log_density, axis=[1, 2, 3])}

    def log_prob_(self, images):
        return stats.norm(self.loc, self.scale).logpdf(images.astype(np.float64)).sum(
            axis=(1, 2, 3))


def stats_norm_pdf(x):
    return np.exp(-x * x / 2) / np.sqrt(2 * np.pi)


def _images(n, low=0, high=256, seed=0, shape=SHAPE):
    return np.random.default_rng(seed).integers(low, high, (n,) + shape, dtype=np.uint8)


class LikelihoodRatioTest(tf.test.TestCase):

    def test_ratio_of_two_gaussians(self):
        foreground, background = _Gaussian(100., 30.), _Gaussian(128., 70.)
        images = _images(50)
        scores = detectors.LikelihoodRatio(foreground, background).score(images)
        expected = -(foreground.log_prob_(images) - background.log_prob_(images)) / (D * np.log(2))
        self.assertAllClose(scores.ood_score, expected, rtol=1e-5)
        self.assertAllClose(scores.components['log_ratio'],
                            foreground.log_prob_(images) - background.log_prob_(images),
                            rtol=1e-5)
        self.assertEqual(scores.detector, 'likelihood_ratio')

    def test_refuses_models_of_different_shapes(self):
        with self.assertRaisesRegex(ValueError, 'different shapes'):
            detectors.LikelihoodRatio(_Gaussian(0, 1), _Gaussian(0, 1, shape=(2, 2, 1)))


class InputComplexityTest(tf.test.TestCase):

    def test_score_is_bits_per_dim_minus_compressed_bits_per_dim(self):
        model = _Gaussian(128., 60.)
        images = _images(20)
        scores = detectors.InputComplexity(model).score(images)
        lengths = np.array([8 * len(tf.io.encode_png(i, compression=9).numpy())
                            for i in images])
        bpd = -model.log_prob_(images) / (D * np.log(2))
        self.assertAllClose(scores.components['compressed_bits'], lengths)
        self.assertAllClose(scores.ood_score, bpd - lengths / D, rtol=1e-5)

    def test_png_agrees_with_an_independent_encoder_and_constant_images_are_short(self):
        images = np.concatenate([_images(30, shape=(32, 32, 3)),
                                 np.full((2, 32, 32, 3), 128, np.uint8)])
        ours = detectors.compressed_bits(images, 'png')

        def pillow(image):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format='PNG', compress_level=9)
            return 8 * len(buffer.getvalue())

        theirs = np.array([pillow(i) for i in images])
        # Same format and zlib level; the encoders' filter choices differ slightly.
        self.assertLess(np.max(np.abs(ours - theirs) / theirs), 0.05)
        self.assertLess(ours[-1], 0.1 * ours[0])  # A constant image compresses well.
        j2k = detectors.compressed_bits(images[:2], 'jpeg2000')
        self.assertAllGreater(j2k, 0)

    def test_jpegxl_lengths_are_lossless_codes_at_the_chosen_effort(self):
        import imagecodecs
        rgb = _images(4, shape=(32, 32, 3))
        gray = np.full((2, 28, 28, 1), 7, np.uint8)
        gray[1, 5:20, 5:9] = 250
        for images in (rgb, gray):
            bits = detectors.compressed_bits(images, 'jpegxl')
            for image, length in zip(images, bits):
                pixels = image[..., 0] if image.shape[-1] == 1 else image
                code = imagecodecs.jpegxl_encode(pixels, lossless=True, effort=9)
                self.assertEqual(length, 8 * len(code))
                self.assertAllEqual(imagecodecs.jpegxl_decode(code), pixels)  # Lossless.
        self.assertLess(detectors.compressed_bits(gray[:1], 'jpegxl')[0],
                        detectors.compressed_bits(gray[:1], 'png')[0])
        fast = detectors.compressed_bits(rgb[:1], 'jpegxl', level=1)[0]
        code = imagecodecs.jpegxl_encode(rgb[0], lossless=True, effort=1)
        self.assertEqual(fast, 8 * len(code))

    def test_lengths_are_remembered_by_content_codec_and_level(self):
        calls = []

        def encode(image, level):
            calls.append(level)
            return int(image.sum()) + level

        images = _images(3)
        compressor = detectors.Compressor(encoders={'counting': (encode, 1)})
        first = compressor.bits(images, 'counting')
        first[:] = -1  # The caller's copy; the remembered lengths are unchanged.
        again = compressor.bits(images.copy(), 'counting')
        self.assertEqual(len(calls), 3)
        self.assertAllEqual(again, [int(i.sum()) + 1 for i in images])
        compressor.bits(images, 'counting', level=2)
        changed = images.copy()
        changed[0, 0, 0, 0] ^= 1
        compressor.bits(changed, 'counting')
        self.assertEqual(len(calls), 9)
        # Another compressor has a cache of its own.
        detectors.Compressor(encoders={'counting': (encode, 1)}).bits(images, 'counting')
        self.assertEqual(len(calls), 12)

    def test_bad_input(self):
        with self.assertRaisesRegex(ValueError, 'Unknown codec'):
            detectors.InputComplexity(_Gaussian(0, 1), codec='flif')
        with self.assertRaisesRegex(ValueError, 'uint8'):
            detectors.compressed_bits(np.zeros((2, 4, 4, 1), np.float32))


class TypicalityTest(tf.test.TestCase):

    def test_entropy_statistic_and_bootstrap_threshold(self):
        model = _Gaussian(128., 40.)
        train = _images(400, seed=1)
        detector = detectors.Typicality(model, batch_size=4, false_alarm_rate=0.05,
                                        num_bootstrap=20000)
        detector.fit(train)
        detector.bootstrap_threshold(_images(400, seed=2))
        train_bpd = -model.log_prob_(train) / (D * np.log(2))
        self.assertAllClose(detector.entropy, train_bpd.mean(), rtol=1e-6)
        test = _images(40, seed=3)
        bpd = -model.log_prob_(test) / (D * np.log(2))
        expected = np.abs(bpd.reshape(10, 4).mean(axis=1) - train_bpd.mean())
        self.assertAllClose(detector.score(test).ood_score, expected, rtol=1e-6)
        # Uniform pixel values: the per-image bpd is a sum of D i.i.d. terms, so the
        # batch mean of M = 4 is near-Gaussian with a known standard deviation and the
        # 95% quantile of |mean - H| is about 1.96 of it.
        x = np.arange(256.)
        per_value = -stats.norm(128., 40.).logpdf(x) / np.log(2)
        sigma = per_value.std() / np.sqrt(D * 4)
        self.assertAllClose(detector.threshold, 1.96 * sigma, rtol=0.1)

    def test_bad_input(self):
        with self.assertRaisesRegex(ValueError, 'M\\) must be >= 1'):
            detectors.Typicality(_Gaussian(0, 1), batch_size=0)
        detector = detectors.Typicality(_Gaussian(128, 40), batch_size=8)
        with self.assertRaisesRegex(ValueError, 'fit'):
            detector.score(_images(16))
        detector.fit(_images(16))
        with self.assertRaisesRegex(ValueError, 'fewer than one batch of M = 8'):
            detector.score(_images(5))
        with self.assertRaisesRegex(ValueError, 'empty'):
            detector.fit(np.zeros((0,) + SHAPE, np.uint8))


class DetectorMetricsTest(tf.test.TestCase):

    def test_separable_sets_give_auroc_one_and_identical_sets_about_half(self):
        model = _Gaussian(128., 30.)
        near, far = _images(300, 100, 156, seed=4), _images(300, 0, 20, seed=5)
        raw = detectors.RawLikelihood(model)
        metrics = detectors.detector_metrics(raw.score(near), raw.score(far))
        self.assertEqual(metrics['auroc'], 1.0)
        same = detectors.detector_metrics(raw.score(_images(2000, seed=6)),
                                          raw.score(_images(2000, seed=7)))
        self.assertAllClose(same['auroc'], 0.5, atol=0.04)

    def test_waic_and_density_of_states(self):
        members = [_Gaussian(128., 30.), _Gaussian(120., 35.), _Gaussian(135., 28.)]
        images = _images(30)
        waic = detectors.WAIC(members).score(images)
        log_probs = np.stack([m.log_prob_(images) for m in members])
        expected = -(log_probs.mean(0) - log_probs.var(0)) / (D * np.log(2))
        self.assertAllClose(waic.ood_score, expected, rtol=1e-4)
        with self.assertRaisesRegex(ValueError, 'at least two'):
            detectors.WAIC(members[:1])
        # A KDE of the log-likelihood of mid-grey images: dark images are far from them.
        dos = detectors.DensityOfStates(members[0]).fit(_images(500, 100, 156, seed=8))
        metrics = detectors.detector_metrics(dos.score(_images(200, 100, 156, seed=9)),
                                             dos.score(_images(200, 0, 20, seed=10)))
        self.assertEqual(metrics['auroc'], 1.0)
        with self.assertRaisesRegex(ValueError, 'no \\[\'log_pz\'\\]'):
            detectors.DensityOfStates(members[0], statistics=('log_pz',)).fit(_images(10))

    def test_flow_terms_and_compressed_length_as_statistics(self):
        model = models.from_config(dict(family='glow', **GlowConfig.named(
            'tiny', (8, 8, 3)).to_dict()))
        train = _images(64, shape=(8, 8, 3))
        model.initialize(train)
        dos = detectors.DensityOfStates(model, ('log_pz', 'log_det'), codec='png').fit(train)
        self.assertEqual(dos.statistic_names, ('log_pz', 'log_det', 'compressed_bits'))
        scores = dos.score(_images(8, shape=(8, 8, 3), seed=1))
        self.assertEqual(scores.ood_score.shape, (8,))
        self.assertTrue(np.all(np.isfinite(scores.ood_score)))
        # Several codecs: one statistic each, the lengths the codecs give.
        both = detectors.named('density_of_states_levels_png_jpeg2000', model).fit(train)
        self.assertEqual(both.statistic_names,
                         ('level0_log_pz', 'level0_log_det', 'level1_log_pz', 'level1_log_det',
                          'png_bits', 'jpeg2000_bits'))
        test = _images(8, shape=(8, 8, 3), seed=1)
        components = both.score(test).components
        # Terms computed already (by the evaluator) give the same scores, the model not rerun.
        terms = tfp_ood.score(model, test, progress=False).scores
        self.assertAllEqual(both.score(test, terms=[terms]).ood_score,
                            both.score(test).ood_score)
        with self.assertRaisesRegex(ValueError, 'terms given are of \\[7\\] images; 8 images'):
            both.score(test, terms=[{k: v[:7] for k, v in terms.items()}])
        with self.assertRaisesRegex(ValueError, 'terms of 2 models given'):
            both.score(test, terms=[terms, terms])
        for codec in ('png', 'jpeg2000'):
            self.assertAllEqual(components[f'{codec}_bits'], detectors.compressed_bits(test, codec))
        with self.assertRaisesRegex(ValueError, 'jpeg2000_bits .*has no TensorFlow op'):
            both.graph_score([model.score_batch(tf.constant(test))], tf.constant(test))
        with self.assertRaisesRegex(ValueError, "Unknown codec 'gif'"):
            detectors.DensityOfStates(model, ('log_pz',), codec=('png', 'gif'))
        ours = detectors.named('density_of_states_gaussian', model)
        self.assertEqual((ours.estimator, ours.codecs), ('gaussian', ('png', 'jpeg2000', 'jpegxl')))
        for codec in ('jpeg2000', 'jpegxl'):
            scores = detectors.named(f'input_complexity_{codec}', model).score(test)
            self.assertAllClose(scores.components['compressed_bits'],
                                detectors.compressed_bits(test, codec))

    def test_gaussian_estimator_is_the_multivariate_normal_of_the_standardised_statistics(self):
        shape = (16, 16, 1)
        model = _Gaussian(128., 60., shape)
        # Images of several contrasts: the log-likelihood and the PNG length vary together.
        train = np.concatenate([_images(20, 128 - w, 128 + w, seed=w, shape=shape)
                                for w in (3, 12, 90)])
        test = np.concatenate([_images(6, 60, 200, seed=1, shape=shape),
                               np.full((2,) + shape, 9, np.uint8)])
        dos = detectors.DensityOfStates(model, ('log_prob',), codec='png',
                                        estimator='gaussian').fit(train)
        # By hand: the training statistics standardised, their maximum-likelihood
        # mean and covariance (plus the 1e-6 ridge), scipy's log-density.

        def statistics(x):
            return np.stack([model.log_prob_(x), detectors.compressed_bits(x)], 1)

        fit = statistics(train)
        mean, scale = fit.mean(0), fit.std(0)
        z = (fit - mean) / scale
        self.assertGreater(abs(np.corrcoef(z, rowvar=False)[0, 1]), 0.5)
        expected = -stats.multivariate_normal(
            z.mean(0), np.cov(z, rowvar=False, bias=True) + 1e-6 * np.eye(2)).logpdf(
                (statistics(test) - mean) / scale)
        scores = dos.score(test)
        self.assertAllClose(scores.ood_score, expected, rtol=1e-5)
        # The in-graph log-density (what export_detector saves) is the same.
        graph, _ = dos.graph_score([model.score_batch(tf.constant(test))], tf.constant(test))
        self.assertAllClose(graph, scores.ood_score, rtol=1e-6)
        # Its fit reloads to the same scores; a KDE's fit is refused.
        state = json.loads(json.dumps(dos.get_state()))
        self.assertEqual(state['estimator'], 'gaussian')
        again = detectors.DensityOfStates(model, ('log_prob',), codec='png',
                                          estimator='gaussian').set_state(state)
        self.assertAllEqual(again.score(test).ood_score, scores.ood_score)
        with self.assertRaisesRegex(ValueError, 'saved fit is a gaussian, not a kde'):
            detectors.DensityOfStates(model, ('log_prob',), codec='png').set_state(state)
        with self.assertRaisesRegex(ValueError, "Unknown estimator 'svm'"):
            detectors.DensityOfStates(model, estimator='svm')

    def test_fitting_and_scoring_many_detectors_leaves_no_retracing_warning(self):
        # Each fit and score traces its own graph once; TensorFlow counts the
        # traces of one method across instances and would warn after five.
        model, images = _Gaussian(128., 60.), _images(8)
        with self.assertNoLogs('tensorflow', level='WARNING'):
            for _ in range(7):
                detectors.DensityOfStates(model, ('log_prob',)).fit(images).score(images)
        with self.assertLogs('tensorflow', level='WARNING'):  # Quiet only inside the calls.
            tf.get_logger().warning('f triggered tf.function retracing')

    def test_every_kind_of_dataset_the_docs_list_and_clear_errors_for_model_dirs(self):
        model = models.from_config(dict(family='glow', **GlowConfig.named(
            'tiny', (8, 8, 3)).to_dict()))
        train = _images(48, shape=(8, 8, 3))
        model.initialize(train)
        test = _images(6, shape=(8, 8, 3), seed=5)
        dos = detectors.named('density_of_states_levels', model).fit(train)
        expected = dos.score(test).ood_score
        kinds = {
            'plain': tf.data.Dataset.from_tensor_slices(test),
            'batched': tf.data.Dataset.from_tensor_slices(test).batch(4),
            'tuples': tf.data.Dataset.from_tensor_slices((test, np.zeros(6, np.int64))),
            'dicts': tf.data.Dataset.from_tensor_slices({'image': test}),
        }
        for kind, dataset in kinds.items():
            self.assertAllClose(dos.score(dataset).ood_score, expected, rtol=1e-6, msg=kind)
            refit = detectors.named('density_of_states_levels', model).fit(
                tf.data.Dataset.from_tensor_slices(train).batch(7))
            self.assertAllClose(refit.score(dataset).ood_score, expected, rtol=1e-6, msg=kind)
        with self.assertRaisesRegex(TypeError, "a list of SavedModel folders, e.g. "):
            detectors.fit_detector('density_of_states', 'saved_models/glow_cifar10', train, train)
        with self.assertRaisesRegex(ValueError, 'must name one SavedModel'):
            detectors.fit_detector('density_of_states', [], train, train)
        with self.assertRaisesRegex(ValueError, 'the dataset is empty'):
            dos.score(tf.data.Dataset.from_tensor_slices(test[:0]))

    def test_bad_images_are_clear_errors(self):
        raw = detectors.RawLikelihood(_Gaussian(0, 1))
        with self.assertRaisesRegex(ValueError, 'uint8'):
            raw.score(np.zeros((2,) + SHAPE, np.float32))
        with self.assertRaisesRegex(ValueError, 'shape'):
            raw.score(np.zeros((2, 5, 5, 1), np.uint8))
        with self.assertRaisesRegex(ValueError, 'different detectors'):
            detectors.detector_metrics(
                raw.score(_images(4)),
                detectors.WAIC([_Gaussian(0, 1), _Gaussian(1, 1)]).score(_images(4)))


class CalibrationTest(tf.test.TestCase):

    def test_threshold_keeps_exactly_the_requested_fraction(self):
        scores = np.random.default_rng(0).permutation(np.arange(1000.))
        calibration = detectors.calibrate(detectors.DetectorScores('x', scores, {}), 0.95)
        self.assertEqual(calibration.threshold, 949.)
        self.assertEqual(int(np.sum(~calibration.decide(scores))), 950)
        self.assertEqual(list(calibration.decide(np.array([949., 949.5, np.nan, -np.inf]))),
                         [False, True, True, False])
        with_nan = np.concatenate([np.arange(99.), [np.nan]])
        self.assertEqual(detectors.calibrate(
            detectors.DetectorScores('x', with_nan, {}), 0.99).threshold, 98.)
        with self.assertRaisesRegex(ValueError, 'finite score'):
            detectors.calibrate(detectors.DetectorScores('x', with_nan, {}), 1.0)
        with self.assertRaisesRegex(ValueError, 'true_positive_rate'):
            detectors.calibrate(detectors.DetectorScores('x', scores, {}), 0.)

    @pytest.mark.slow(minutes=0.15)
    def test_a_saved_fit_reloads_to_identical_decisions(self):
        directory = self.create_tempdir().full_path
        model = models.from_config(dict(family='glow', **GlowConfig.named(
            'tiny', (8, 8, 3)).to_dict()))
        train = _images(96, shape=(8, 8, 3))
        model.initialize(train)
        model_dir = export.export(model, os.path.join(directory, 'models', 'flow'))
        other = _images(40, high=60, shape=(8, 8, 3), seed=4)
        for name in ('density_of_states_levels', 'typicality', 'input_complexity'):
            fitted = detectors.fit_detector(name, [model_dir], train[:64], train[64:],
                                            provenance={'fit': 'train[:64]'})
            path = fitted.save(os.path.join(directory, 'models', f'{name}.json'))
            reloaded = detectors.load_detector(path)
            self.assertEqual(reloaded.calibration.threshold, fitted.calibration.threshold)
            self.assertEqual(reloaded.provenance, {'fit': 'train[:64]'})
            a, b = fitted.detect(other), reloaded.detect(other)
            self.assertAllEqual(a.ood_score, b.ood_score, msg=name)
            self.assertAllEqual(a.components['is_ood'], b.components['is_ood'], msg=name)
            # The validation images are kept at the requested rate.
            kept = ~fitted.calibration.decide(fitted.detect(train[64:]).ood_score)
            self.assertGreaterEqual(kept.mean(), 0.95, name)
        with open(os.path.join(directory, 'bad.json'), 'w') as f:
            f.write('{"format": "other"}')
        with self.assertRaisesRegex(ValueError, 'not a fitted detector'):
            detectors.load_detector(os.path.join(directory, 'bad.json'))
        with self.assertRaisesRegex(ValueError, 'Unknown detector'):
            detectors.named('nope', model)

    def test_a_fit_refuses_a_model_that_is_not_the_one_it_was_fitted_on(self):
        directory = self.create_tempdir().full_path
        config = GlowConfig.named('tiny', (8, 8, 3))
        model = models.from_config(dict(family='glow', **config.to_dict()))
        train = _images(64, shape=(8, 8, 3))
        model.initialize(train)
        model_dir = export.export(model, os.path.join(directory, 'flow'))
        fitted = detectors.fit_detector('density_of_states', [model_dir], train[:32], train[32:])
        path = fitted.save(os.path.join(directory, 'fit.json'))
        detectors.load_detector(path)  # The same model: loads.
        # The same export written again: the same identity.
        export.export(model, model_dir, overwrite=True)
        detectors.load_detector(path)
        # A fit written before a configuration field existed (its model's recorded
        # configuration lacks it, the field at its default): the same model.
        with open(path) as f:
            record = json.load(f)
        del record['model_identities'][0]['config']['coupling_scale']
        older = os.path.join(directory, 'older_fit.json')
        with open(older, 'w') as f:
            json.dump(record, f)
        detectors.load_detector(older)
        # Re-exported in place with other weights.
        model.trainable_variables[0].assign_add(tf.ones_like(model.trainable_variables[0]))
        export.export(model, model_dir, overwrite=True)
        with self.assertRaisesRegex(ValueError, 'fitted on other weights than those now at'):
            detectors.load_detector(path)
        # Pointed at another model of the same image shape.
        wider = models.from_config(dict(family='glow', **dataclasses.replace(
            config, hidden_channels=2 * config.hidden_channels).to_dict()))
        wider.initialize(train)
        export.export(wider, model_dir, overwrite=True)
        with self.assertRaisesRegex(ValueError, 'its configuration differs'):
            detectors.load_detector(path)

    def test_validation_sets_that_cannot_set_a_threshold_are_refused_or_warned(self):
        directory = self.create_tempdir().full_path
        model = models.from_config(dict(family='glow', **GlowConfig.named(
            'tiny', (8, 8, 3)).to_dict()))
        train = _images(96, shape=(8, 8, 3))
        model.initialize(train)
        model_dir = export.export(model, os.path.join(directory, 'flow'))
        with self.assertRaisesRegex(ValueError, 'every one of the 32 validation images is also'):
            detectors.fit_detector('density_of_states', [model_dir], train[:64], train[32:64])
        with self.assertRaisesRegex(ValueError, '19 validation images cannot set a threshold '
                                                'that flags 5.0% of them \\(at least 20'):
            detectors.fit_detector('density_of_states', [model_dir], train[:64], train[64:83])
        with self.assertWarnsRegex(UserWarning, '8 of the 32 validation images are also fit'):
            detectors.fit_detector('density_of_states', [model_dir], train[:64], train[56:88])
        with self.assertWarnsRegex(UserWarning, 'only 32 validation images: fewer than 400'):
            detectors.fit_detector('density_of_states', [model_dir], train[:64], train[64:])
        self.assertEqual(detectors.minimum_validation_images(0.95), 400)
        self.assertEqual(detectors.minimum_validation_images(0.99), 2000)

    def test_bootstrap_interval_of_the_threshold(self):
        rng = np.random.default_rng(0)
        many = detectors.calibrate(detectors.DetectorScores('x', rng.normal(size=10000), {}))
        few = detectors.calibrate(detectors.DetectorScores('x', rng.normal(size=40), {}))
        wide, narrow = few.interval(), many.interval()
        self.assertEqual(narrow, many.interval())  # Seeded.
        low, high = narrow['flagged']
        self.assertTrue(0.04 < low < 0.05 < high < 0.06, narrow)
        self.assertLess(narrow['threshold'][0], many.threshold)
        self.assertGreater(narrow['threshold'][1], many.threshold)
        # The 95th percentile of 40 draws: flagged rates from 0% to over 10%.
        self.assertEqual(wide['flagged'][0], 0.)
        self.assertGreater(wide['flagged'][1], 0.1)
        # The thresholds' interval against the normal quantile's sampling spread.
        spread = narrow['threshold'][1] - narrow['threshold'][0]
        expected = 2 * 1.96 * np.sqrt(0.95 * 0.05 / 10000) / stats_norm_pdf(1.645)
        self.assertAllClose(spread, expected, rtol=0.25)

    def test_a_fit_is_validated_when_it_is_read(self):
        directory = self.create_tempdir().full_path
        model = models.from_config(dict(family='glow', **GlowConfig.named(
            'tiny', (8, 8, 3)).to_dict()))
        train = _images(64, shape=(8, 8, 3))
        model.initialize(train)
        model_dir = export.export(model, os.path.join(directory, 'flow'))
        path = detectors.fit_detector('density_of_states', [model_dir], train[:32],
                                      train[32:]).save(os.path.join(directory, 'fit.json'))
        with open(path) as f:
            good = json.load(f)
        broken = {
            'threshold': [None, 'high', float('nan'), float('inf'), -float('inf'), True],
            'true_positive_rate': [None, 5, 0, -0.1],
            'models': [None, [], 'flow', [3]],
            'state': [None, [1]],
            'validation_scores': [None, [], ['a']],
            'detector': ['nope', None],
        }
        for field, values in broken.items():
            for value in values + ['missing']:
                record = dict(good)
                if value == 'missing':
                    del record[field]
                else:
                    record[field] = value
                with open(path, 'w') as f:
                    json.dump(record, f)
                with self.assertRaisesRegex(ValueError, f'"{field}" must be|not a fitted',
                                            msg=f'{field}={value!r}'):
                    detectors.load_detector(path)
        # A state that does not fit the detector: one line, not a traceback from inside.
        for state in ({}, {'statistics': ['log_prob'], 'values': [[1.0]]},
                      dict(good['state'], estimator='copod'),
                      dict(good['state'], values=good['state']['values'][:1]),  # One row.
                      dict(good['state'], scale=[0.] * len(good['state']['scale'])),
                      dict(good['state'], parameters=dict(good['state']['parameters'],
                                                          bandwidth=0.))):
            with open(path, 'w') as f:
                json.dump(dict(good, state=state), f)
            with self.assertRaisesRegex(ValueError, 'does not describe a fitted'):
                detectors.load_detector(path)
        with self.assertRaisesRegex(ValueError, 'is a folder'):
            detectors.load_detector(model_dir)
        # A fit copied away from its model: the path it names, and what to do.
        elsewhere = os.path.join(directory, 'elsewhere')
        os.makedirs(elsewhere)
        with open(os.path.join(elsewhere, 'fit.json'), 'w') as f:
            json.dump(good, f)
        with self.assertRaisesRegex(ValueError, 'is not at .*elsewhere/flow.*relative to its '
                                                'own folder'):
            detectors.load_detector(os.path.join(elsewhere, 'fit.json'))
        # Another detector's name over this one's state.
        with open(path, 'w') as f:
            json.dump(dict(good, detector='typicality'), f)
        with self.assertRaisesRegex(ValueError, 'does not describe a fitted typicality'):
            detectors.load_detector(path)


_PLAIN_TF = '''
import json, sys
import numpy as np
import tensorflow as tf
images = tf.constant(np.load(sys.argv[1])['images'])
outputs = []
for path in sys.argv[2:]:
    out = tf.saved_model.load(path).signatures['serving_default'](images=images)
    outputs.append({k: v.numpy().tolist() for k, v in out.items()})
leaked = sorted(m for m in sys.modules
                if m.split('.')[0] in ('tfp_ood', 'tensorflow_probability', 'tf_keras'))
print(json.dumps({'outputs': outputs, 'leaked_modules': leaked}))
'''


def run_plain_tensorflow(test, detector_dirs, images_npz):
    """Each exported detector's outputs on `images_npz`, in the order of
    `detector_dirs`, all run in one fresh process with only TensorFlow; fails
    `test` if it errs or imports tfp_ood, TFP or tf_keras."""
    import subprocess
    import sys
    run = subprocess.run([sys.executable, '-c', _PLAIN_TF, images_npz, *detector_dirs],
                         capture_output=True, text=True, timeout=300)
    test.assertEqual(run.returncode, 0, run.stderr[-3000:])
    report = json.loads(run.stdout.strip().splitlines()[-1])
    test.assertEqual(report['leaked_modules'], [])
    return report['outputs']


class RegistryTest(tf.test.TestCase):

    def test_every_name_has_a_factory_and_unfitted_detectors_say_so(self):
        self.assertEqual(tuple(detectors.DETECTORS), tfp_ood.config.DETECTOR_NAMES)
        model = _Gaussian(128., 40.)
        for name in ('raw_likelihood', 'input_complexity', 'typicality', 'density_of_states'):
            detector = detectors.named(name, model)
            self.assertEqual(detector.name, name)
            if detector.needs_fit:
                with self.assertRaises(detectors.NotFittedError):
                    detector.score(_images(4))
        with self.assertRaisesRegex(ValueError, "Unknown detector 'nope'"):
            detectors.named('nope', model)
        with self.assertRaisesRegex(ValueError, 'needs a background model'):
            detectors.named('likelihood_ratio', model)
        with self.assertRaisesRegex(ValueError, 'needs a flow with per-level terms'):
            detectors.named('density_of_states_levels', model)


def _tiny_vae(shape=(8, 8, 3), num_importance_samples=4):
    vae = models.from_config(dict(family='vae', **models.VAEConfig.named(
        'tiny', shape, num_importance_samples=num_importance_samples).to_dict()))
    vae.log_prob(_images(2, shape=shape))  # Builds the networks.
    for v in vae.trainable_variables:  # Away from initialisation, so images differ.
        v.assign_add(0.3 * tf.random.stateless_normal(v.shape, seed=[5, 6]))
    return vae


class LikelihoodPathTest(tf.test.TestCase):

    def test_copod_over_a_vaes_four_statistics_read_in_one_pass(self):
        directory = self.create_tempdir().full_path
        vae = _tiny_vae()
        model_dir = export.export(vae, os.path.join(directory, 'vae'))
        train, images = _images(64, shape=(8, 8, 3)), _images(24, shape=(8, 8, 3), seed=3)
        detector = detectors.named('likelihood_path', vae).fit(train)
        self.assertEqual(detector.statistics, detectors.LIKELIHOOD_PATH)
        self.assertEqual(detector.estimator, 'copod')
        # By hand: each statistic from the VAE's own statistics, standardised by
        # the fit images' mean and deviation, under scikit-learn-checked COPOD.

        def four(x):
            scores = tfp_ood.score(vae, x, statistics=True, progress=False).scores
            return np.stack([np.asarray(scores[k], np.float64)
                             for k in detectors.LIKELIHOOD_PATH], axis=1)
        fit = four(train)
        mean, scale = fit.mean(axis=0), fit.std(axis=0)
        copod = estimators.ESTIMATORS['copod']().fit((fit - mean) / scale)
        expected = copod.score((four(images) - mean) / scale).numpy()
        self.assertAllClose(detector.score(images).ood_score, expected, rtol=1e-6)
        # The fitted detector rebuilds the VAE with one importance sample (one pass of
        # each network, not four decoder passes); the statistics do not depend on it.
        fitted = detectors.fit_detector('likelihood_path', [model_dir], train, images)
        self.assertEqual(fitted.detector.models[0].config.num_importance_samples, 1)
        self.assertAllClose(fitted.detect(images).ood_score, expected, rtol=1e-5)
        path = fitted.save(os.path.join(directory, 'lpath.json'))
        self.assertAllClose(detectors.load_detector(path).detect(images).ood_score, expected,
                            rtol=1e-5)
        # Other models have no encoder or decoder to read.
        with self.assertRaisesRegex(ValueError, 'likelihood_path reads a VAE'):
            detectors.named('likelihood_path', _Gaussian(128., 40.))
        with self.assertRaisesRegex(ValueError, 'only a VAE takes num_importance_samples'):
            glow = models.from_config(dict(family='glow', **GlowConfig.named(
                'tiny', (8, 8, 3)).to_dict()))
            glow.initialize(train)
            export.restore(export.export(glow, os.path.join(directory, 'glow')),
                           num_importance_samples=1)


class ShippedDetectorsTest(tf.test.TestCase):
    """The shipped fits, read by this version, score real images as the
    SavedModels exported from them do (their graphs were traced when they
    were exported)."""

    @pytest.mark.slow
    def test_shipped_fits_give_their_saved_models_scores(self):
        from tfp_ood import data
        shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               'saved_models')
        for name, in_set, out_set in (('detector_cifar10', 'cifar10', 'svhn_cropped'),
                                      ('detector_fashion_mnist', 'fashion_mnist', 'mnist')):
            with self.subTest(detector=name):
                images = np.concatenate([
                    data.images_array(data.load(s, 'test', source='samples'))[:48]
                    for s in (in_set, out_set)])
                fitted = detectors.load_detector(os.path.join(shipped, name + '.json'))
                python = fitted.detect(images)
                graph = tf.saved_model.load(os.path.join(shipped, name)).signatures[
                    'serving_default'](images=tf.constant(images))
                # The scores to float32 rounding (the two graphs may order a sum
                # differently: 2e-5 at most on scores of 0-16), the decisions the same.
                self.assertAllClose(python.ood_score, graph['ood_score'], rtol=1e-5, atol=1e-4)
                self.assertAllEqual(python.components['is_ood'], graph['is_ood'])
                # The real sets are told apart, as the README's table says.
                auroc = tfp_ood.ood_metrics(python.ood_score[:48], python.ood_score[48:])
                self.assertGreater(auroc['auroc'], 0.8)


class ShippedFitPathsTest(tf.test.TestCase):

    def test_every_shipped_fit_names_models_beside_it(self):
        # A fit stores its models' paths relative to itself: one written elsewhere and
        # copied into saved_models/ would point out of a clone.
        shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               'saved_models')
        fits = sorted(f for f in os.listdir(shipped) if f.startswith('detector_')
                      and f.endswith('.json'))
        self.assertNotEmpty(fits)
        for name in fits:
            with open(os.path.join(shipped, name)) as f:
                models = json.load(f)['models']
            for model in models:
                self.assertEqual(os.path.dirname(model), '', (name, model))
                self.assertTrue(os.path.isdir(os.path.join(shipped, model)), (name, model))


class ExportedDetectorTest(tf.test.TestCase):

    def test_in_graph_png_length_equals_the_reference(self):
        images = np.concatenate([_images(6, shape=(8, 8, 3)),
                                 np.full((2, 8, 8, 3), 7, np.uint8)])
        self.assertAllEqual(image_statistics.png_bits(tf.constant(images)),
                            [8 * len(tf.io.encode_png(i, compression=9).numpy())
                             for i in images])
        self.assertAllEqual(detectors.compressed_bits(images),
                            image_statistics.png_bits(tf.constant(images)))

    @pytest.mark.slow
    def test_exported_detectors_give_the_python_scores_in_plain_tensorflow(self):
        directory = self.create_tempdir().full_path
        model = models.from_config(dict(family='glow', **GlowConfig.named(
            'tiny', (8, 8, 3)).to_dict()))
        train = _images(96, shape=(8, 8, 3))
        model.initialize(train)
        for v in model.trainable_variables:
            v.assign_add(0.05 * tf.random.stateless_normal(v.shape, seed=[3, 4]))
        model_dir = export.export(model, os.path.join(directory, 'glow'))
        images = np.concatenate([_images(12, shape=(8, 8, 3), seed=5),
                                 np.zeros((2, 8, 8, 3), np.uint8)])
        np.savez(os.path.join(directory, 'x.npz'), images=images)
        names = ('density_of_states_levels', 'input_complexity')  # KDE and codec in-graph.
        fits = [detectors.fit_detector(name, [model_dir], train[:64], train[64:])
                for name in names]
        # COPOD over a VAE's encoder and decoder statistics, the VAE in one pass.
        vae_dir = export.export(_tiny_vae(), os.path.join(directory, 'vae'))
        names += ('likelihood_path',)
        fits.append(detectors.fit_detector('likelihood_path', [vae_dir], train[:64], train[64:]))
        paths = [fitted.export(os.path.join(directory, f'detector_{name}'))
                 for name, fitted in zip(names, fits)]
        all_outputs = run_plain_tensorflow(self, paths, os.path.join(directory, 'x.npz'))
        for name, fitted, path, outputs in zip(names, fits, paths, all_outputs):
            expected = fitted.detect(images)
            self.assertAllClose(outputs['ood_score'], expected.ood_score, rtol=1e-5,
                                atol=1e-6, msg=name)
            self.assertAllEqual(outputs['is_ood'], expected.components['is_ood'], msg=name)
            with open(os.path.join(path, 'assets', 'tfp_ood.json')) as f:
                self.assertEqual(json.load(f)['threshold'], fitted.calibration.threshold)
        # JPEG 2000 has no TensorFlow op: refused before anything is traced or written.
        for name, refused in (('input_complexity_jpeg2000', 'jpeg2000, which has'),
                              ('density_of_states_levels_png_jpeg2000', 'jpeg2000, which has'),
                              ('density_of_states_gaussian', 'jpeg2000, jpegxl, which have')):
            fitted = detectors.fit_detector(name, [model_dir], train[:64], train[64:])
            path = os.path.join(directory, f'detector_{name}')
            with self.assertRaisesRegex(ValueError, f'{refused} no TensorFlow op'):
                fitted.export(path)
            self.assertFalse(os.path.exists(path))


if __name__ == '__main__':
    tf.test.main()
