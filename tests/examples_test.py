"""End-to-end runs of the example scripts: on tiny synthetic data with tiny models
trained from scratch, and with no flags on the embedded samples and shipped models."""

import csv
import json
import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'examples'))

import cifar_svhn  # noqa: E402
import fashion_mnist  # noqa: E402


def _write(directory, name, split, n, shape):
    rng = np.random.default_rng(len(name) + n)
    np.savez(os.path.join(directory, f'{name}_{split}.npz'),
             images=rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
             labels=rng.integers(0, 10, n).astype(np.int64))


def _tiny(directory, out, *extra):
    return ['--retrain', '--config', 'tiny', '--steps', '2', '--batch-size', '8',
            '--data-dir', directory, '--out', out, '--workdir', os.path.join(out, 'runs'),
            '--num-images', '16', '--num-synthetic', '8', '--num-train-images', '16',
            '--no-progress', *extra]


def _rows(out):
    with open(os.path.join(out, 'bpd_table.csv')) as f:
        return list(csv.DictReader(f))


class ExamplesTest(tf.test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.data = tempfile.mkdtemp(prefix='tfp_ood_examples_data_')
        _write(cls.data, 'cifar10', 'train', 64, (32, 32, 3))
        _write(cls.data, 'cifar10', 'test', 32, (32, 32, 3))
        # The offline SVHN split: test[:7000] trains, test[7000:] is held out.
        _write(cls.data, 'svhn_cropped', 'test', 7032, (32, 32, 3))
        _write(cls.data, 'fashion_mnist', 'train', 64, (28, 28, 1))
        _write(cls.data, 'fashion_mnist', 'test', 32, (28, 28, 1))
        _write(cls.data, 'mnist', 'test', 32, (28, 28, 1))

    def test_cifar_svhn_retrain_tiny(self):
        out = self.create_tempdir().full_path
        outcome = cifar_svhn.main(_tiny(self.data, out))
        self.assertEqual(sorted(outcome['metrics']), ['cvglow_cifar10', 'glow_cifar10'])
        scored = {(r['model'], r['scored_set']) for r in _rows(out)}
        for model in ('glow_cifar10', 'cvglow_cifar10'):
            for name in ('cifar10/train', 'cifar10/test', 'svhn_cropped/test',
                         'constant_128', 'uniform_noise', 'cifar10/test (gray)',
                         'svhn_cropped/test (gray)'):
                self.assertIn((model, name), scored)
            for name in (f'{model}_log_prob.png', f'{model}_terms.png',
                         os.path.join('models', model, 'saved_model.pb'),
                         os.path.join('tensorboard', model)):
                self.assertTrue(os.path.exists(os.path.join(out, name)), name)
        with open(os.path.join(out, 'bpd_table.md')) as f:
            table = f.read()
        self.assertIn('| glow_cifar10 | cifar10 | cifar10/test | 16 |', table)
        self.assertIn('3.464', table)  # The paper's number beside ours.
        with open(os.path.join(out, 'metrics.json')) as f:
            metrics = json.load(f)
        self.assertEqual(metrics['glow_cifar10']['out_set'], 'svhn_cropped/test')
        self.assertEqual(len(outcome['graying']), 4)  # 2 models x (CIFAR-10, SVHN).
        self.assertTrue(os.path.exists(os.path.join(out, 'graying.md')))

    def test_cifar_svhn_reverse_tiny(self):
        out = self.create_tempdir().full_path
        outcome = cifar_svhn.main(_tiny(self.data, out, '--reverse'))
        self.assertEqual(list(outcome['metrics']), ['glow_svhn'])
        rows = {r['scored_set']: r for r in _rows(out)}
        self.assertIn('svhn_cropped/test[:7000]', rows)  # The training slice.
        self.assertEqual(rows['svhn_cropped/test[7000:]']['paper_bpd'], '2.057')
        with open(os.path.join(out, 'runs', 'glow_svhn', 'provenance.json')) as f:
            self.assertEqual(json.load(f)['data']['split'], 'test[:7000]')

    def test_fashion_mnist_retrain_tiny(self):
        out = self.create_tempdir().full_path
        fashion_mnist.main(_tiny(self.data, out))
        scored = {r['scored_set'] for r in _rows(out)}
        self.assertEqual(scored, {'fashion_mnist/train', 'fashion_mnist/test', 'mnist/test',
                                  'constant_0', 'uniform_noise'})
        self.assertTrue(os.path.exists(os.path.join(out, 'glow_fashion_mnist_log_prob.png')))


if __name__ == '__main__':
    tf.test.main()
