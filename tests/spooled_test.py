"""Spooled image sets (tfp_ood.spooled): .npz files and TFDS datasets read once,
a chunk at a time, into a file, then by row; the same pixels, labels, notes,
scores and training batches as the sets read into memory."""

import gc
import os
from unittest import mock

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tfp_ood import data, inputs, spooled


class SpoolTest(tf.test.TestCase):

    def test_rows_come_back_in_any_order_and_the_folder_goes_with_the_spool(self):
        images = np.random.default_rng(0).integers(0, 256, (23, 4, 5, 3), dtype=np.uint8)
        spool = spooled.Spool((4, 5, 3), 'a/b c')
        for start in range(0, 23, 10):
            spool.append(images[start:start + 10])
        spool.finish()
        self.assertEqual(spool.count, 23)
        self.assertEqual(os.path.getsize(spool.path), images.nbytes)
        for indices in ([], [5], [22, 0, 1, 2, 9, 3], [7, 7, 8, 6], list(range(23))[::-1]):
            self.assertAllEqual(spool.read(indices), images[indices])
        lazy = spooled.SpooledImages(spool)
        self.assertAllEqual(lazy[3], images[3])
        self.assertAllEqual(lazy[4:19:3], images[4:19:3])
        self.assertAllEqual(np.asarray(lazy.take([20, 1])), images[[20, 1]])
        self.assertEqual(lazy.take([20, 1]).shape, (2, 4, 5, 3))
        self.assertEqual(len(set(lazy.identities())), 23)
        self.assertEqual(lazy.take([3]).identities(), lazy.take([0, 3]).identities()[1:])
        with self.assertRaises(ValueError):
            spool.append(images[:, :2])
        folder = spool.folder
        del spool, lazy
        gc.collect()
        self.assertFalse(os.path.exists(folder))


class NpzTest(tf.test.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.create_tempdir().full_path

    def test_chunks_give_the_in_memory_conversion_and_count_every_image(self):
        gray = np.random.default_rng(1).integers(0, 256, (13, 10, 12, 1), dtype=np.uint8)
        path = os.path.join(self.dir, 'gray.npz')
        np.savez_compressed(path, images=gray, labels=np.arange(13, dtype=np.int32))
        with mock.patch.object(spooled, 'CHUNK_BYTES', 3 * 120):  # Chunks of 3 images.
            read = inputs.read_npz_set(path, (6, 6, 3), resize=True)
        self.assertIsInstance(read.images, spooled.SpooledImages)
        self.assertAllEqual(np.asarray(read.images), data.resize_images(gray, (6, 6, 3)))
        self.assertEqual(read.notes, {'grayscale -> RGB': 13, 'resized to 6x6': 13})
        self.assertAllEqual(read.labels, np.arange(13))
        self.assertEqual(read.name, 'gray')
        self.assertAllEqual(np.asarray(inputs.read_npz_set(path, None).images), gray)

    def test_bad_files_are_one_clear_error_before_anything_is_spooled(self):
        def saved(name, **arrays):
            path = os.path.join(self.dir, name)
            np.savez(path, **arrays)
            return path

        ok = np.zeros((4, 8, 8, 3), np.uint8)
        for path, message in (
                (saved('floats.npz', images=ok.astype(np.float32)), 'must be uint8'),
                (saved('flat.npz', images=ok[..., 0]), r'must be uint8 \[N, H, W, C\]'),
                (saved('objects.npz', images=np.array([None, 1], object)), 'Python objects'),
                (saved('unnamed.npz', pixels=ok), 'expected an array named "images"'),
                (saved('short.npz', images=ok, labels=np.arange(3)), '4 images but 3 labels'),
                (saved('text.npz', images=ok, labels=np.array(list('abcd'))),
                 '"labels" must be integers'),
                (saved('small.npz', images=ok), 'pass --resize')):
            with self.subTest(path=os.path.basename(path)), \
                    self.assertRaisesRegex(ValueError, message):
                inputs.read_npz_set(path, (4, 4, 3))
        with open(saved('whole.npz', images=ok), 'rb') as f:
            whole = f.read()
        for name, content in (('cut.npz', whole[:len(whole) // 2]), ('empty.npz', b'')):
            with open(os.path.join(self.dir, name), 'wb') as f:
                f.write(content)
            with self.assertRaisesRegex(ValueError, 'not a readable .npz file'):
                inputs.read_npz_set(os.path.join(self.dir, name), (8, 8, 3))
        with self.assertRaisesRegex(data.DataNotFoundError, 'No file'):
            inputs.read_npz_set(os.path.join(self.dir, 'nope.npz'), (8, 8, 3))

    def test_scoring_and_training_read_it_as_they_read_the_array(self):
        from tfp_ood import evaluate, models, train
        images = np.random.default_rng(2).integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)
        path = os.path.join(self.dir, 'set.npz')
        np.savez_compressed(path, images=images)
        lazy = inputs.read_npz_set(path, (8, 8, 3)).images
        model = models.named_model('glow', 'tiny', (8, 8, 3))
        model.initialize(images[:8])
        with mock.patch.object(evaluate, 'LAZY_CHUNK', 5):
            scores = [evaluate.score(model, x, batch_size=7, progress=False)
                      for x in (images, lazy)]
        self.assertAllEqual(scores[0].log_prob, scores[1].log_prob)
        config = train.TrainConfig(num_steps=2, batch_size=4, num_init_images=8,
                                   eval_every=100, checkpoint_every=100, log_every=100)
        weights = []
        for train_images in (images, lazy):
            model = models.named_model('glow', 'tiny', (8, 8, 3))
            train.fit(model, train_images, config, self.create_tempdir().full_path,
                      eval_sets={'held': train_images[:5]}, progress=False)
            weights.append([v.numpy() for v in model.trainable_variables])
        for a, b in zip(*weights):
            self.assertAllEqual(a, b)


class TfdsTest(tf.test.TestCase):

    def test_images_of_many_sizes_decode_in_the_pipeline_as_one_by_one(self):
        # oxford_flowers102: outside the registry, images of many sizes, labelled.
        with tfds.testing.mock_data(num_examples=7):
            expected = [(e['image'], e['label']) for e in tfds.load(
                'oxford_flowers102', split='train', shuffle_files=False).as_numpy_iterator()]
            read = inputs.load_dataset('oxford_flowers102', 'train', (16, 16, 1), resize=True)
        self.assertIsInstance(read.images, spooled.SpooledImages)
        self.assertAllEqual(read.labels, [label for _, label in expected])
        for got, (image, _) in zip(np.asarray(read.images), expected):
            self.assertAllEqual(got, data.resize_images(image[None], (16, 16, 1))[0])
        self.assertEqual(read.notes, {'RGB -> grayscale': 7, 'resized to 16x16': 7})

    def test_a_fixed_shape_needs_no_first_pass_and_sizes_are_checked_first(self):
        with tfds.testing.mock_data(num_examples=5):
            expected = np.stack([e['image'] for e in tfds.load(
                'mnist', split='test', shuffle_files=False).as_numpy_iterator()])
            with mock.patch.object(tf.io, 'decode_image', wraps=tf.io.decode_image) as decode:
                read = spooled.spool_tfds('mnist', 'test', (28, 28, 3))
            self.assertEqual(decode.call_count, 1)  # Traced once, in the one pass.
            self.assertAllEqual(np.asarray(read.images), np.repeat(expected, 3, -1))
            self.assertEqual(read.notes, {'grayscale -> RGB': 5})
            self.assertAllEqual(np.asarray(spooled.spool_tfds('mnist', 'test', None).images),
                                expected)
            with self.assertRaisesRegex(ValueError, r'5 of 5 images are not 32x32.*'
                                        r'mnist/test\[0\] \(28x28\).*pass --resize'):
                spooled.spool_tfds('mnist', 'test', (32, 32, 1))


if __name__ == '__main__':
    tf.test.main()
