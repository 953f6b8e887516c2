"""Tests of the shared evaluator."""

import os

import numpy as np
import tensorflow as tf

from tfp_ood import data
from tfp_ood import export, models
from tfp_ood.config import GlowConfig, VAEConfig
from tfp_ood.evaluate import ScoreResult, score
from tfp_ood.metrics import ood_metrics
from tfp_ood.models import DensityModel, FlowModel

SHAPE = (8, 8, 3)


def _uint8(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n,) + SHAPE, dtype=np.uint8)


class _NaNForDarkImages(DensityModel):
    """A stand-in model whose log-likelihood is NaN for all-zero images."""

    def log_prob_terms(self, images, noise=None):
        mean = tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2, 3])
        return {'log_prob': tf.where(mean > 0, -mean, np.nan)}


class EvaluateTest(tf.test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.model = FlowModel.from_config(GlowConfig(
            image_shape=SHAPE, num_levels=2, num_steps_per_level=1, hidden_channels=8))
        cls.model.initialize(_uint8(32, seed=9))
        for v in cls.model.trainable_variables:  # Non-trivial networks.
            v.assign_add(0.05 * tf.random.stateless_normal(v.shape, seed=[1, 2]))

    def test_the_pipeline_runs_with_autotuning_off(self):
        # Measured no slower and up to 1.18x faster on two cores
        # (benchmarks/autotune.py); the option holds for the whole pipeline.
        from unittest import mock
        used, real = [], data.without_autotune
        with mock.patch.object(data, 'without_autotune',
                               lambda ds: used.append(real(ds)) or used[-1]):
            result = score(self.model, _uint8(5), batch_size=2, progress=False)
        self.assertEqual(result.num_images, 5)
        self.assertLen(used, 1)
        self.assertFalse(used[0].options().autotune.enabled)
        self.assertTrue(tf.data.Dataset.range(2).options().autotune.enabled is not False)

    def test_scores_equal_direct_calls_and_do_not_depend_on_batch_size(self):
        images = _uint8(37)
        labels = np.arange(37) % 10
        ds = tf.data.Dataset.from_tensor_slices({'image': images, 'label': labels})
        direct = {k: v.numpy() for k, v in self.model.log_prob_terms(images).items()}
        results = [score(self.model, ds, name='x', batch_size=b, progress=False)
                   for b in (1, 8, 64)]
        for result in results:
            self.assertEqual(result.num_images, 37)
            self.assertAllEqual(result.labels, labels)
            for key in ('log_prob', 'log_pz', 'log_det', 'dequant_const'):
                self.assertAllClose(result.scores[key], direct[key], rtol=1e-5, atol=1e-3)
            self.assertAllClose(result.bits_per_dim,
                                -direct['log_prob'] / (np.prod(SHAPE) * np.log(2)), rtol=1e-5)
        # Arrays, tuples, bare images and pre-batched datasets all work.
        for data_ in (images, tf.data.Dataset.from_tensor_slices((images, labels)),
                      tf.data.Dataset.from_tensor_slices(images).batch(5)):
            self.assertAllClose(score(self.model, data_, progress=False).log_prob,
                                direct['log_prob'], rtol=1e-5)

    def test_identical_images_are_scored_once_with_each_ones_own_scores(self):
        from unittest import mock
        distinct = _uint8(4, seed=5)
        images = distinct[[0, 1, 0, 2, 2, 2, 3, 0, 1]]  # Repeats within and across batches.
        alone = [score(self.model, image[None], progress=False) for image in images]
        scored, real = [], self.model.score_batch
        with mock.patch.object(self.model, 'score_batch',
                               lambda batch: scored.append(len(batch)) or real(batch)):
            result = score(self.model, images, batch_size=5, progress=False)
        self.assertEqual(scored, [3, 4])  # Distinct images of [0 1 0 2 2] and [2 3 0 1].
        for key in ('log_prob', 'log_pz', 'log_det', 'bits_per_dim'):
            self.assertAllClose(result.scores[key], [a.scores[key][0] for a in alone],
                                rtol=1e-5, atol=1e-3)
        # Statistics (arrays of any rank per image) follow their images too.
        stats = score(self.model, images, batch_size=5, progress=False, statistics=True)
        for key, value in stats.scores.items():
            self.assertAllClose(value, value[[0, 1, 0, 3, 3, 3, 6, 0, 1]], rtol=1e-6, msg=key)

    def test_xla_scores_equal_plain_scores(self):
        images = _uint8(21)
        plain = score(self.model, images, batch_size=8, progress=False)
        xla = score(self.model, images, batch_size=8, progress=False, jit_compile=True)
        for key in ('log_prob', 'log_pz', 'log_det', 'bits_per_dim'):
            self.assertAllClose(xla.scores[key], plain.scores[key], rtol=1e-5, atol=1e-3)

    def test_a_model_xla_cannot_compile_is_named_not_taken_for_a_shape_error(self):
        # A restored VAE decodes in passes whose number XLA cannot know when it
        # compiles. Before, this read "expected images of shape [8, 8, 3]".
        vae = models.from_config(dict(family='vae', **VAEConfig.named(
            'tiny', SHAPE, num_importance_samples=2).to_dict()))
        vae.log_prob(_uint8(1))  # Builds the networks.
        vae = export.load(export.export(vae, os.path.join(self.create_tempdir(), 'vae')))
        with self.assertRaisesRegex(ValueError, r'x: XLA cannot compile the scoring of \w+ '
                                                r'\(.*Range.*\); score it without jit_compile'):
            score(vae, _uint8(3), name='x', progress=False, jit_compile=True)
        self.assertEqual(score(vae, _uint8(3), progress=False).num_images, 3)

    def test_a_models_own_error_is_raised_as_it_is(self):
        class _Failing(DensityModel):
            def log_prob_terms(self, images, noise=None):
                mean = tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2, 3])
                return {'log_prob': tf.debugging.check_numerics(mean / 0. - mean / 0., 'broken')}

        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, 'broken'):
            score(_Failing(SHAPE, name='failing'), _uint8(2), progress=False)

    def test_synthetic_and_grayscale_datasets(self):
        result = score(self.model, data.grayscale(data.constant_images(128, SHAPE, 3)),
                       progress=False)
        self.assertEqual(result.num_images, 3)
        self.assertAllEqual(result.labels, [-1] * 3)
        self.assertEqual(np.ptp(result.log_prob), 0.)

    def test_save_load_summary(self):
        result = score(self.model, _uint8(5), name='cifar10/test', progress=False)
        path = os.path.join(self.create_tempdir().full_path, 'scores.npz')
        result.save(path)
        loaded = ScoreResult.load(path)
        self.assertEqual(loaded.name, 'cifar10/test')
        self.assertEqual(loaded.image_shape, SHAPE)
        for key, value in result.scores.items():
            self.assertAllEqual(loaded.scores[key], value)
        summary = loaded.summary()
        self.assertAlmostEqual(summary['bpd_mean'], float(np.mean(result.bits_per_dim)), 5)
        self.assertEqual(summary['num_nonfinite'], 0)

    def test_bad_inputs(self):
        floats = tf.data.Dataset.from_tensor_slices(np.zeros((2,) + SHAPE, np.float32))
        with self.assertRaisesRegex(ValueError, r'svhn: expected uint8 images.*holds float32'):
            score(self.model, floats, name='svhn', progress=False)
        wrong = tf.data.Dataset.from_tensor_slices(np.zeros((2, 8, 8, 1), np.uint8))
        with self.assertRaisesRegex(ValueError, r'expected images of shape \[8, 8, 3\].*'
                                                r'\(8, 8, 1\)'):
            score(self.model, wrong, progress=False)
        with self.assertRaisesRegex(ValueError, r'expected images of shape \[batch, 8, 8, 3\]'):
            score(self.model, np.zeros((2, 16, 16, 3), np.uint8), progress=False)
        with self.assertRaisesRegex(ValueError, 'got dtype float64'):
            score(self.model, np.zeros((2,) + SHAPE), progress=False)
        with self.assertRaisesRegex(ValueError, 'values from 256 to 256'):
            score(self.model, np.full((2,) + SHAPE, 256), progress=False)
        empty = tf.data.Dataset.from_tensor_slices(np.zeros((0,) + SHAPE, np.uint8))
        with self.assertRaisesRegex(ValueError, 'empty: the dataset is empty'):
            score(self.model, empty, name='empty', progress=False)
        with self.assertRaisesRegex(ValueError, 'without an "image" key'):
            score(self.model, tf.data.Dataset.from_tensor_slices({'x': [1]}), progress=False)

    def test_array_likes_and_what_is_not_images(self):
        images = _uint8(3)
        expected = score(self.model, images, progress=False).log_prob
        for like in (list(images), tuple(images), images.tolist()):
            self.assertAllClose(score(self.model, like, progress=False).log_prob, expected)
        for bad in (None, 'images', 3, (x for x in images), {'image': images}):
            with self.assertRaisesRegex(ValueError, 'expected uint8 images'):
                score(self.model, bad, progress=False)
        with self.assertRaisesRegex(ValueError, 'different shapes'):
            score(self.model, [images[0], images[0, :4]], progress=False)

    def test_datasets_of_unknown_shape_or_string_labels(self):
        def generator(shape):
            def gen():
                yield np.zeros(SHAPE, np.uint8)
                yield np.zeros(shape, np.uint8)
            return tf.data.Dataset.from_generator(
                gen, output_signature=tf.TensorSpec((None, None, 3), tf.uint8))

        self.assertEqual(score(self.model, generator(SHAPE), progress=False).num_images, 2)
        with self.assertRaisesRegex(ValueError, r'unknown: expected images of shape \[8, 8, 3\]'):
            score(self.model, generator((4, 4, 3)), name='unknown', progress=False)
        strings = tf.data.Dataset.from_tensor_slices(
            {'image': _uint8(2), 'label': tf.constant(['cat', 'dog'])})
        with self.assertRaisesRegex(ValueError, 'labels must be integers.*string'):
            score(self.model, strings, progress=False)

    def test_nonfinite_scores_are_counted_not_dropped(self):
        images = _uint8(6)
        images[[1, 4]] = 0
        result = score(_NaNForDarkImages(SHAPE), images, progress=False)
        self.assertEqual(result.num_images, 6)
        self.assertEqual(result.num_nonfinite, 2)
        self.assertEqual(result.summary()['num_nonfinite'], 2)
        with self.assertRaisesRegex(ValueError, '2 of 6 scores are not finite'):
            ood_metrics(result.bits_per_dim, np.zeros(3))
        metrics = ood_metrics(result.bits_per_dim, np.zeros(3), nonfinite='most_ood')
        self.assertEqual(metrics['num_nonfinite_in'], 2)


if __name__ == '__main__':
    tf.test.main()
