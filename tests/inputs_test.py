"""Tests of tfp_ood.inputs: folders of every image format, conversions said,
undecodable files skipped, shapes, held-out fractions, .npz files, and TFDS
datasets outside the registry (tfds.testing.mock_data)."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from tfp_ood import inputs


def _rgb(rng, h=8, w=8):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


class FolderTest(tf.test.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.create_tempdir().full_path
        self.rng = np.random.default_rng(0)

    def _save(self, relative, array, mode=None, **kwargs):
        path = os.path.join(self.dir, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(array, mode).save(path, **kwargs)
        return array

    def test_every_format_converted_to_the_models_channels_and_said(self):
        rgb = self._save('a.png', _rgb(self.rng))
        gray = self._save('sub/b.png', self.rng.integers(0, 256, (8, 8), dtype=np.uint8))
        rgba = self._save('sub/c.png', self.rng.integers(0, 256, (8, 8, 4), dtype=np.uint8),
                          'RGBA')
        self._save('sub/deeper/d.bmp', _rgb(self.rng))
        self._save('e.webp', _rgb(self.rng), lossless=True)
        palette = Image.fromarray(_rgb(self.rng)).convert('P')
        palette.save(os.path.join(self.dir, 'f.gif'))
        self._save('g.tiff', _rgb(self.rng))
        with open(os.path.join(self.dir, 'notes.txt'), 'w') as f:
            f.write('not an image')  # Not an image file name: never read.
        read = inputs.read_folder(self.dir, (8, 8, 3))
        self.assertEqual(read.files, ['a.png', 'e.webp', 'f.gif', 'g.tiff', 'sub/b.png',
                                      'sub/c.png', 'sub/deeper/d.bmp'])
        self.assertEqual(read.images.shape, (7, 8, 8, 3))
        self.assertAllEqual(read.images[0], rgb)  # Lossless formats: the pixels as saved.
        self.assertAllEqual(read.images[4], np.repeat(gray[..., None], 3, -1))
        self.assertAllEqual(read.images[5], rgba[..., :3])
        self.assertAllEqual(read.images[2], np.asarray(palette.convert('RGB')))
        self.assertEqual(read.notes, {'grayscale -> RGB': 1, 'RGBA -> RGB (alpha dropped)': 1,
                                      'palette -> RGB': 1})
        self.assertEqual(read.skipped, [])
        self.assertIn('dir: 1 image grayscale -> RGB'.replace('dir', read.name),
                      read.describe())
        # One channel for a grayscale model: RGB by its luma.
        gray_model = inputs.read_folder(self.dir, (8, 8, 1))
        self.assertEqual(gray_model.images.shape, (7, 8, 8, 1))
        self.assertAllEqual(gray_model.images[4], gray[..., None])
        self.assertEqual(gray_model.notes['RGB -> grayscale'], 6)

    def test_undecodable_files_are_skipped_unless_every_one_is(self):
        self._save('a.png', _rgb(self.rng))
        with open(os.path.join(self.dir, 'broken.png'), 'wb') as f:
            f.write(b'\x89PNG\r\n\x1a\n not really')
        with open(os.path.join(self.dir, 'truncated.jpg'), 'wb') as f:
            buffer = Image.fromarray(_rgb(self.rng, 32, 32))
            path = os.path.join(self.dir, 'whole.jpg')
            buffer.save(path)
            with open(path, 'rb') as whole:
                f.write(whole.read()[:100])
        os.remove(path)
        os.symlink(os.path.join(self.dir, 'gone.png'), os.path.join(self.dir, 'link.png'))
        os.makedirs(os.path.join(self.dir, 'folder.png'))  # A folder: searched, not read.
        read = inputs.read_folder(self.dir, (8, 8, 3))
        self.assertEqual(read.files, ['a.png'])
        self.assertEqual([name for name, _ in read.skipped],
                         ['broken.png', 'link.png', 'truncated.jpg'])
        self.assertTrue(all(reason for _, reason in read.skipped))
        listing = os.path.join(self.dir, 'skipped.txt')
        read.write_skipped(listing)
        with open(listing) as f:
            self.assertEqual([line.split('\t')[0] for line in f.read().splitlines()],
                             ['broken.png', 'link.png', 'truncated.jpg'])
        self.assertIn('3 files could not be decoded', read.describe()[-1])
        os.remove(os.path.join(self.dir, 'a.png'))
        with self.assertRaisesRegex(ValueError, 'none of the 3 image files .* could be '
                                                'decoded'):
            inputs.read_folder(self.dir, (8, 8, 3))
        with self.assertRaisesRegex(ValueError, 'no folder at'):
            inputs.read_folder(os.path.join(self.dir, 'nope'))
        with self.assertRaisesRegex(ValueError, 'no image files'):
            inputs.read_folder(self.create_tempdir().full_path)

    def test_the_stream_gives_the_images_read_at_once_and_what_it_skipped(self):
        self._save('a.png', _rgb(self.rng))
        self._save('b/c.png', self.rng.integers(0, 256, (8, 8), dtype=np.uint8))
        self._save('d.png', _rgb(self.rng, 6, 6))
        with open(os.path.join(self.dir, 'b', 'truncated.png'), 'wb') as f:
            whole = os.path.join(self.dir, 'whole.png')
            Image.fromarray(_rgb(self.rng, 32, 32)).save(whole)
            with open(whole, 'rb') as g:
                f.write(g.read()[:60])  # The header reads; the pixels do not.
            os.remove(whole)
        at_once = inputs.read_folder(self.dir, (8, 8, 3), resize=True)
        stream = inputs.FolderStream(self.dir, (8, 8, 3), resize=True)
        self.assertEqual(stream.files, ['a.png', 'b/c.png', 'b/truncated.png', 'd.png'])
        streamed = [(image, label) for image, label in stream.dataset.as_numpy_iterator()]
        self.assertAllEqual(np.stack([i for i, _ in streamed]), at_once.images)
        self.assertAllEqual([label for _, label in streamed], [-1, -1, -1])
        read = stream.image_set_read()
        self.assertIsNone(read.images)
        self.assertEqual(read.files, at_once.files)
        self.assertEqual(read.files, ['a.png', 'b/c.png', 'd.png'])
        self.assertEqual([f for f, _ in read.skipped], ['b/truncated.png'])
        self.assertEqual(read.notes, at_once.notes)
        self.assertEqual(read.notes, {'grayscale -> RGB': 1, 'resized to 8x8': 1})

    @pytest.mark.slow(minutes=0.4)
    def test_folder_images_decode_only_what_is_indexed_and_train_as_the_array_does(self):
        for i in range(20):
            self._save(f'{i:02d}.png', _rgb(self.rng))
        with open(os.path.join(self.dir, '05.png'), 'wb') as f:
            f.write(b'broken')  # Found by the check, before training.
        at_once = inputs.read_folder(self.dir, (8, 8, 3))
        lazy = inputs.FolderStream(self.dir, (8, 8, 3)).lazy_image_set()
        self.assertIsInstance(lazy.images, inputs.FolderImages)
        self.assertEqual((lazy.files, lazy.skipped), (at_once.files, at_once.skipped))
        self.assertEqual(lazy.images.shape, (19, 8, 8, 3))
        self.assertAllEqual(lazy.images[3], at_once.images[3])
        self.assertAllEqual(lazy.images[2:5], at_once.images[2:5])
        self.assertAllEqual(lazy.images[np.array([0, 7, 18])], at_once.images[[0, 7, 18]])
        self.assertAllEqual(np.asarray(lazy.images), at_once.images)
        rest, held = lazy.split(0.25, seed=2)
        rest_at_once, held_at_once = at_once.split(0.25, seed=2)
        self.assertIsInstance(rest.images, inputs.FolderImages)
        self.assertAllEqual(np.asarray(held.images), held_at_once.images)
        self.assertEqual(rest.files, rest_at_once.files)
        # Training on the folder sees the very batches training on the array does.
        from tfp_ood import models, train
        config = train.TrainConfig(num_steps=2, batch_size=4, num_init_images=8,
                                   eval_every=100, checkpoint_every=100, log_every=100)
        weights = []
        for images in (at_once.images, lazy.images):
            model = models.named_model('glow', 'tiny', (8, 8, 3))
            train.fit(model, images, config, self.create_tempdir().full_path, progress=False)
            weights.append([v.numpy() for v in model.trainable_variables])
        for a, b in zip(*weights):
            self.assertAllEqual(a, b)

    def test_detectors_read_a_folder_a_chunk_at_a_time_with_the_arrays_numbers(self):
        # Fit, calibrate and score from FolderImages in chunks of 7 (a remainder
        # joins the chunk before it) against the same images in memory.
        from unittest import mock

        from tfp_ood import detectors, models
        from tfp_ood.detectors import base
        for i in range(30):
            self._save(f'{i:02d}.png', _rgb(self.rng))
        lazy = inputs.FolderStream(self.dir, (8, 8, 3)).lazy_image_set().images
        at_once = np.asarray(lazy)
        largest = []
        read = inputs.FolderImages.__getitem__

        def counted(images, key):
            out = read(images, key)
            largest.append(len(out) if np.ndim(out) == 4 else 1)
            return out

        model = models.named_model('glow', 'tiny', (8, 8, 3))
        model.initialize(at_once[:8])
        with mock.patch.object(base, 'CHUNK_IMAGES', 7), \
                mock.patch.object(inputs.FolderImages, '__getitem__', counted):
            # The density of states keeps `max_fit_images`: only those decode to fit.
            for make in (lambda: detectors.DensityOfStates(
                    model, ('log_pz', 'log_det', 'png9_bits'), estimator='ledoit_wolf',
                    max_fit_images=8),
                    lambda: detectors.Typicality(model, batch_size=3)):
                scores = []
                for images in (at_once, lazy):
                    largest.clear()
                    detector = make().fit(images[:20] if images is at_once
                                          else lazy.take(range(20)))
                    scores.append(detector.score(images))
                    if images is lazy:
                        self.assertLessEqual(max(largest), 9)  # 7, 7 + a remainder of 2, or 8.
                # The model's numbers within two float32 ulps (oneDNN's AVX2 kernels
                # round a batch of one image differently: 1.1e-7 apart measured under
                # benchmarks/avx2_only.py, bit for bit with AVX-512); the density and
                # the score, under a covariance fitted on 8 images, within what its
                # conditioning makes of that (3.1e-6 apart there).
                self.assertEqual(set(scores[0].components), set(scores[1].components))
                for name, component in scores[0].components.items():
                    self.assertAllClose(component, scores[1].components[name], atol=0,
                                        rtol=1e-4 if name == 'log_density' else 3e-7, msg=name)
                self.assertAllClose(scores[0].ood_score, scores[1].ood_score, rtol=1e-4)
            self.assertEqual(base.chunks(np.zeros(30), 3),
                             [(0, 6), (6, 12), (12, 18), (18, 24), (24, 30)])
            self.assertEqual(base.chunks(np.zeros(13), 3), [(0, 6), (6, 13)])

    def test_sizes_other_than_the_target_are_an_error_listing_them_unless_resized(self):
        for i in range(3):
            self._save(f'{i}.png', _rgb(self.rng, 8, 8))
        self._save('wide.png', _rgb(self.rng, 8, 12))
        self._save('tall.png', _rgb(self.rng, 10, 8))
        # No target: the most common shape is the model's.
        with self.assertRaisesRegex(ValueError, r'2 of 5 images are not 8x8, the most common '
                                                r'size.*tall.png \(10x8\), wide.png \(8x12\)'
                                                r'.*--resize'):
            inputs.read_folder(self.dir)
        read = inputs.read_folder(self.dir, resize=True)
        self.assertEqual(read.images.shape, (5, 8, 8, 3))
        self.assertEqual(read.notes, {'resized to 8x8': 2})
        with self.assertRaisesRegex(ValueError, '5 of 5 images are not 4x4, the size the '
                                                'model takes'):
            inputs.read_folder(self.dir, (4, 4, 3))

    def test_held_out_fraction_is_deterministic_and_disjoint(self):
        images = inputs.ImageSet('set', np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1),
                                 files=[f'{i}.png' for i in range(50)])
        rest, held = images.split(0.2, seed=3)
        self.assertEqual((len(rest), len(held)), (40, 10))
        again = images.split(0.2, seed=3)[1]
        self.assertAllEqual(held.images, again.images)
        self.assertEqual(held.files, again.files)
        self.assertEmpty(set(rest.files) & set(held.files))
        self.assertEqual(sorted(rest.files + held.files, key=lambda f: int(f[:-4])),
                         images.files)
        self.assertNotEqual(held.files, images.split(0.2, seed=4)[1].files)
        with self.assertRaisesRegex(ValueError, 'in \\(0, 1\\)'):
            images.split(1.0)
        with self.assertRaisesRegex(ValueError, 'both need at least one image'):
            images.take([0], 'one').split(0.5)


class NpzAndDatasetTest(tf.test.TestCase):

    def test_npz_channels_converted_and_sizes_only_with_resize(self):
        path = os.path.join(self.create_tempdir().full_path, 'set.npz')
        gray = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
        np.savez(path, images=gray, labels=np.arange(4))
        read = inputs.read_npz_set(path, (8, 8, 3))
        self.assertAllEqual(read.images, np.repeat(gray, 3, -1))
        self.assertEqual(read.notes, {'grayscale -> RGB': 4})
        self.assertAllEqual(read.labels, np.arange(4))
        self.assertAllEqual(inputs.read_npz_set(path, None).images, gray)
        with self.assertRaisesRegex(ValueError, 'pass --resize'):
            inputs.read_npz_set(path, (4, 4, 1))
        self.assertEqual(inputs.read_npz_set(path, (4, 4, 1), resize=True).images.shape,
                         (4, 4, 4, 1))

    def test_any_tfds_image_dataset_and_unknown_names(self):
        # oxford_flowers102: not in the registry, images of many sizes, labelled.
        with tfds.testing.mock_data(num_examples=6):
            with self.assertRaisesRegex(ValueError, 'pass --resize'):
                inputs.load_dataset('oxford_flowers102', 'train', (16, 16, 3))
            read = inputs.load_dataset('oxford_flowers102', 'train', (16, 16, 3), resize=True)
            self.assertEqual(read.images.shape, (6, 16, 16, 3))
            self.assertEqual(read.labels.shape, (6,))
            self.assertEqual(read.name, 'oxford_flowers102/train')
            # A registry dataset reads as tfp_ood.data.load does.
            cifar = inputs.load_dataset('cifar10', 'test', (32, 32, 3), source='tfds')
            self.assertEqual(cifar.images.shape, (6, 32, 32, 3))
        with self.assertRaisesRegex(ValueError, "Unknown dataset 'no_such_dataset'"):
            inputs.load_dataset('no_such_dataset', 'train', (16, 16, 3))
        with self.assertRaisesRegex(ValueError, 'read from TFDS only'):
            inputs.load_dataset('oxford_flowers102', 'train', (16, 16, 3), source='local')


if __name__ == '__main__':
    tf.test.main()
