"""Tests of the data layer: local arrays, TFDS (mocked), splits, synthetic data."""

import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl.testing import parameterized

from tfp_ood import data, samples


def _write_npz(directory, name, split, n=20, shape=(32, 32, 3), labels=True):
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones(shape, np.uint8)
    arrays = {'images': images}
    if labels:
        arrays['labels'] = np.arange(n, dtype=np.int64) % 10
    np.savez(data.local_path(name, split, directory), **arrays)
    return images


def _first_pixels(ds):
    return [int(e['image'][0, 0, 0]) for e in ds.as_numpy_iterator()]


class LocalArraysTest(tf.test.TestCase, parameterized.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.create_tempdir().full_path
        _write_npz(self.dir, 'cifar10', 'test', n=20)
        _write_npz(self.dir, 'cifar10', 'train', n=10)

    @parameterized.named_parameters(
        ('Whole', 'test', list(range(20))),
        ('Head', 'test[:5]', list(range(5))),
        ('Tail', 'test[15:]', list(range(15, 20))),
        ('Negative', 'test[-3:]', [17, 18, 19]),
        ('Percent', 'test[10%:20%]', [2, 3]),
        ('Sum', 'train[:2]+test[:1]', [0, 1, 0]))
    def test_split_slicing(self, split, expected):
        ds = data.load('cifar10', split, data_dir=self.dir)
        self.assertEqual(_first_pixels(ds), expected)
        spec = ds.element_spec
        self.assertEqual(spec['image'].dtype, tf.uint8)
        self.assertEqual(spec['image'].shape, (32, 32, 3))
        self.assertEqual(spec['label'].dtype, tf.int64)

    def test_environment_variable_and_labels(self):
        os.environ[data.DATA_DIR_ENV] = self.dir
        try:
            images, labels = data.load_arrays('cifar10', 'test[3:6]')
        finally:
            del os.environ[data.DATA_DIR_ENV]
        self.assertEqual(images.shape, (3, 32, 32, 3))
        self.assertAllEqual(labels, [3, 4, 5])

    def test_missing_labels_are_minus_one(self):
        _write_npz(self.dir, 'mnist', 'test', n=4, shape=(28, 28, 1), labels=False)
        ds = data.load('mnist', 'test', data_dir=self.dir)
        self.assertAllEqual([e['label'] for e in ds.as_numpy_iterator()], [-1] * 4)

    def test_offline_without_copy_fails_fast_and_names_what_it_looked_for(self):
        start = time.monotonic()
        with self.assertRaises(data.DataNotFoundError) as cm:
            data.load('svhn_cropped', 'test', data_dir=self.dir,
                      tfds_data_dir=self.create_tempdir().full_path)
        self.assertLess(time.monotonic() - start, 10.)
        message = str(cm.exception)
        self.assertIn(os.path.join(self.dir, 'svhn_cropped_test.npz'), message)
        self.assertIn("TFDS dataset 'svhn_cropped'", message)
        with self.assertRaisesRegex(data.DataNotFoundError, 'no data directory was given'):
            data.load('mnist', 'test', tfds_data_dir=self.create_tempdir().full_path)
        with self.assertRaisesRegex(data.DataNotFoundError, 'svhn_cropped_test.npz'):
            data.load('svhn_cropped', 'test', data_dir=self.dir, source='local')

    def test_a_data_directory_that_does_not_exist_is_named(self):
        missing = os.path.join(self.dir, 'no_such_folder')
        for source in ('auto', 'local'):
            with self.assertRaisesRegex(data.DataNotFoundError,
                                        f'data directory {missing} does not exist'):
                data.load('cifar10', 'test', data_dir=missing, source=source)

    def test_bad_names_and_splits(self):
        with self.assertRaisesRegex(ValueError, r"Unknown dataset 'cifar11'; expected one of"):
            data.load('cifar11', 'test', data_dir=self.dir)
        with self.assertRaisesRegex(ValueError, r"Unknown split 'valid' of 'cifar10'; expected "
                                                r"one of \('train', 'test'\)"):
            data.load('cifar10', 'valid', data_dir=self.dir)
        with self.assertRaisesRegex(ValueError, "Cannot parse split 'test\\[:x\\]'") as caught:
            data.load('cifar10', 'test[:x]', data_dir=self.dir)
        self.assertNotIn('\n', str(caught.exception))  # One line for the command line.
        with self.assertRaisesRegex(ValueError, r'asks for \[0:50\] of a split with 20'):
            data.load('cifar10', 'test[:50]', data_dir=self.dir)
        with self.assertRaisesRegex(ValueError, 'selects no images'):
            data.load('cifar10', 'test[5:5]', data_dir=self.dir)
        with self.assertRaisesRegex(ValueError, 'source must be one of'):
            data.load('cifar10', 'test', data_dir=self.dir, source='web')

    def test_malformed_file(self):
        np.savez(data.local_path('cifar10', 'test', self.dir),
                 images=np.zeros((2, 28, 28, 1), np.uint8))
        with self.assertRaisesRegex(ValueError, r'must be \[32, 32, 3\]; the file holds '
                                                r'\[28, 28, 1\]'):
            data.load('cifar10', 'test', data_dir=self.dir)
        np.savez(data.local_path('cifar10', 'test', self.dir), x=np.zeros(2))
        with self.assertRaisesRegex(ValueError, 'expected an array named "images"'):
            data.load('cifar10', 'test', data_dir=self.dir)

    def test_celeb_a_is_cropped_and_resized(self):
        _write_npz(self.dir, 'celeb_a', 'test', n=3, shape=(218, 178, 3), labels=False)
        ds = data.load('celeb_a', 'test', data_dir=self.dir)
        images = np.stack([e['image'] for e in ds.as_numpy_iterator()])
        self.assertEqual(images.shape, (3, 32, 32, 3))
        self.assertAllEqual(images[:, 5, 5, 0], [0, 1, 2])  # Constant images stay constant.


class TfdsTest(tf.test.TestCase):

    def test_tfds_path_with_mock_data(self):
        # mock_data makes num_examples per split and ignores slicing; the slicing
        # itself is TFDS's (tested on local arrays above for our own parser).
        with tfds.testing.mock_data(num_examples=12):
            ds = data.load('cifar10', 'train[:5]')
            self.assertLen(list(ds), 12)
            self.assertEqual(ds.element_spec['image'].shape, (32, 32, 3))
            self.assertEqual(ds.element_spec['label'].dtype, tf.int64)
            svhn = data.load('svhn_cropped', 'test', source='tfds')
            self.assertLen(list(svhn), 12)

    def test_tfds_unlabelled_and_resized(self):
        with tfds.testing.mock_data(num_examples=2):
            ds = data.load('celeb_a', 'test')
            for example in ds.as_numpy_iterator():
                self.assertEqual(example['image'].shape, (32, 32, 3))
                self.assertEqual(example['image'].dtype, np.uint8)
                self.assertEqual(example['label'], -1)


class EmbeddedSamplesTest(tf.test.TestCase):

    def test_samples_match_manifest(self):
        with open(os.path.join(samples.SAMPLES_DIR, 'manifest.json')) as f:
            manifest = json.load(f)
        self.assertEqual(sorted(manifest), sorted(samples.SAMPLES))
        for name, spec in data.DATASETS.items():
            if name not in samples.SAMPLES:
                continue
            ds = data.load(name, 'test', source='samples')
            images = data.images_array(ds)
            self.assertEqual(images.shape, (2000,) + spec.image_shape)
            self.assertEqual(list(images.shape), manifest[name]['shape'])
            self.assertEqual(images.dtype, np.uint8)
            self.assertGreater(images.std(), 20)  # Real images, not blanks.
        self.assertEqual(manifest['svhn_cropped']['indices'], [8000, 10000])
        self.assertLen(list(data.load('mnist', 'test[:10]', source='samples')), 10)
        with self.assertRaisesRegex(ValueError, 'embedded samples hold the "test" split'):
            data.load('cifar10', 'train', source='samples')
        with self.assertRaisesRegex(ValueError, 'embedded samples'):
            data.load('cifar100', 'test', source='samples')

    def test_samples_equal_the_full_arrays(self):
        shared = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              '..', 'shared', 'data')
        if not os.path.exists(os.path.join(shared, 'svhn_cropped_test.npz')):
            self.skipTest('../shared/data is not beside the repository')
        sample, _ = data.load_arrays('svhn_cropped', 'test', data_dir=samples.SAMPLES_DIR)
        full, _ = data.load_arrays('svhn_cropped', 'test[8000:10000]', data_dir=shared)
        self.assertAllEqual(sample, full)

    def test_build_writes_each_slice_and_its_manifest(self):
        # `python -m tfp_ood.samples DATA_DIR` on small stand-ins for the full arrays.
        source, out = self.create_tempdir().full_path, self.create_tempdir().full_path
        rng = np.random.default_rng(0)
        arrays = {}
        for name, (_, stop) in samples.SAMPLES.items():
            arrays[name] = (rng.integers(0, 256, (stop + 3, 2, 2, 1), dtype=np.uint8),
                            rng.integers(0, 10, stop + 3))
            np.savez(os.path.join(source, f'{name}_test.npz'), images=arrays[name][0],
                     labels=arrays[name][1])
        manifest = samples.build(source, out)
        with open(os.path.join(out, 'manifest.json')) as f:
            self.assertEqual(json.load(f), manifest)
        for name, (start, stop) in samples.SAMPLES.items():
            with open(os.path.join(source, f'{name}_test.npz'), 'rb') as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            self.assertEqual(manifest[name], {
                'file': f'{name}_test.npz', 'source': f'{name}_test.npz',
                'source_sha256': digest, 'indices': [start, stop],
                'shape': [stop - start, 2, 2, 1]})
            with np.load(os.path.join(out, f'{name}_test.npz')) as f:
                self.assertAllEqual(f['images'], arrays[name][0][start:stop])
                self.assertAllEqual(f['labels'], arrays[name][1][start:stop])
        # A source too short for its slice is named.
        np.savez(os.path.join(source, 'svhn_cropped_test.npz'),
                 images=np.zeros((9000, 2, 2, 1), np.uint8), labels=np.zeros(9000))
        with self.assertRaisesRegex(data.InputError, 'has 9000 images; need 10000'):
            samples.build(source, out)
        run = subprocess.run([sys.executable, '-m', 'tfp_ood.samples'], capture_output=True,
                             text=True, timeout=60)
        self.assertEqual(run.returncode, 1)
        self.assertIn('usage: python -m tfp_ood.samples DATA_DIR', run.stderr)


class SyntheticTest(tf.test.TestCase):

    def test_constant_and_noise(self):
        images = np.stack([e['image'] for e in
                           data.constant_images(128, (8, 8, 3), 4).as_numpy_iterator()])
        self.assertEqual(images.shape, (4, 8, 8, 3))
        self.assertTrue(np.all(images == 128))
        noise = np.stack([e['image'] for e in
                          data.uniform_noise_images((28, 28, 1), 50, seed=1).as_numpy_iterator()])
        self.assertEqual(noise.dtype, np.uint8)
        self.assertGreater(noise.std(), 60)  # Uniform on 0..255: std 73.9.
        again = next(data.uniform_noise_images((28, 28, 1), 50, seed=1).as_numpy_iterator())
        self.assertAllEqual(again['image'], noise[0])
        with self.assertRaisesRegex(ValueError, 'value must be in 0..255; got 256'):
            data.constant_images(256, (8, 8, 3), 1)

    def test_perturb(self):
        images = np.random.default_rng(0).integers(0, 256, (200, 8, 8, 3), dtype=np.uint8)
        original = images.copy()
        for rate in (0.1, 0.3):
            out = data.perturb(images, rate, np.random.default_rng(1))
            self.assertEqual(out.dtype, np.uint8)
            self.assertEqual(out.shape, images.shape)
            # Chosen with probability `rate`, kept by chance 1 time in 256.
            self.assertAllClose(np.mean(out != images), rate * 255 / 256, atol=0.01)
        self.assertAllEqual(images, original)  # The input is not modified.
        self.assertAllEqual(data.perturb(images, 0., np.random.default_rng(1)), images)
        changed = data.perturb(np.zeros((4000, 1, 1, 1), np.uint8), 1., np.random.default_rng(2))
        self.assertAllClose(np.mean(changed), 127.5, atol=3)  # Uniform over 0..255.
        with self.assertRaisesRegex(ValueError, 'uint8'):
            data.perturb(images.astype(np.float32), 0.1, np.random.default_rng(0))
        with self.assertRaisesRegex(ValueError, r'\[0, 1\]'):
            data.perturb(images, 1.2, np.random.default_rng(0))

    def test_tint_blends_each_image_between_two_colours(self):
        gray = np.array([[0, 255], [51, 128]], np.uint8).reshape(1, 2, 2, 1)
        images = np.concatenate([gray, 255 - gray])
        tinted = data.tint(images, seed=3)
        self.assertEqual(tinted.shape, (2, 2, 2, 3))
        self.assertEqual(tinted.dtype, np.uint8)
        # By hand: the same draws, background at 0, foreground at 255, linear between.
        background, foreground = np.random.default_rng(3).integers(0, 256, (2, 2, 3))
        for i, v in np.ndindex(2, 4):
            value = images[i].reshape(-1)[v]
            want = np.round(background[i] + (foreground[i] - background[i]) * value / 255.)
            self.assertAllEqual(tinted[i].reshape(-1, 3)[v], want)
        self.assertAllEqual(tinted[0, 0, 0], background[0])
        self.assertAllEqual(tinted[0, 0, 1], foreground[0])
        self.assertFalse(np.array_equal(tinted[0, 0, 0], tinted[1, 0, 1]))  # Own colours.
        self.assertAllEqual(data.tint(images, seed=3), tinted)  # Seeded.
        for bad in (images.astype(np.float32), np.repeat(images, 3, axis=-1)):
            with self.assertRaisesRegex(ValueError, r'uint8 \[N, H, W, 1\]'):
                data.tint(bad)

    def test_grayscale(self):
        rgb = np.array([[[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]]], np.uint8)
        gray = data.to_grayscale(rgb).numpy()
        luma = np.round(rgb.astype(np.float64) @ [0.2989, 0.5870, 0.1140])
        self.assertAllClose(gray[..., 0], luma, atol=1)
        self.assertAllEqual(gray[..., 0], gray[..., 1])
        self.assertAllEqual(gray[..., 0], gray[..., 2])
        ds = data.grayscale(tf.data.Dataset.from_tensor_slices({'image': rgb, 'label': [3]}))
        example = next(ds.as_numpy_iterator())
        self.assertAllEqual(example['image'], gray[0])
        self.assertEqual(example['label'], 3)
        mono = np.zeros((1, 4, 4, 1), np.uint8)
        self.assertAllEqual(data.to_grayscale(mono), mono)


if __name__ == '__main__':
    tf.test.main()


def test_read_npz_refuses_what_is_not_integer_labels_and_uint8_arrays(tmp_path):
    import pytest

    from tfp_ood.errors import InputError
    images = np.zeros((3, 4, 4, 1), np.uint8)
    path = str(tmp_path / 'a.npz')
    np.savez(path, images=images, labels=np.array([1, 2, 3]))
    got_images, got_labels = data.read_npz(path)
    np.testing.assert_array_equal(got_labels, [1, 2, 3])
    np.savez(path, images=images, labels=np.array(['cat', 'dog', 'cat']))
    with pytest.raises(InputError, match=r'"labels" must be integers; got <U3'):
        data.read_npz(path)
    np.savez(path, images=np.array([images[0], None], dtype=object))
    with pytest.raises(InputError, match='an array of Python objects cannot be read'):
        data.read_npz(path)
