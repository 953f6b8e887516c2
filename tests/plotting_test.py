"""Tests of the figures: files written, axis ranges, bad input, and no global
matplotlib state changed by importing the package."""

import os
import re
import subprocess
import sys

import pytest
import numpy as np
import tensorflow as tf

from tfp_ood import plotting
from tfp_ood.evaluate import ScoreResult

SHAPE = (8, 8, 3)
PNG = b'\x89PNG\r\n\x1a\n'


def _result(name, seed=0, n=20):
    """A flow-like ScoreResult with random terms."""
    rng = np.random.default_rng(seed)
    log_pz, log_det = rng.normal(-300, 20, n), rng.normal(100, 5, n)
    log_prob = log_pz + log_det
    return ScoreResult(name, {'log_prob': log_prob, 'bits_per_dim': -log_prob / 192 / np.log(2),
                              'log_pz': log_pz, 'log_det': log_det},
                       np.full(n, -1), SHAPE, model='m')


class PlottingTest(tf.test.TestCase):

    def test_histograms_are_written(self):
        a, b = _result('a', seed=1), _result('b', seed=2)
        directory = self.create_tempdir().full_path
        for path in (plotting.plot_histograms([a, b], os.path.join(directory, 'bpd.png')),
                     plotting.plot_term_histograms([a, b], os.path.join(directory, 't.png'))):
            with open(path, 'rb') as f:
                self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n')
        history = [{'step': 100, 'a/bits_per_dim': 5.0, 'b/bits_per_dim': 4.0},
                   {'step': 200, 'a/bits_per_dim': 4.5, 'b/bits_per_dim': 3.5}]
        curves = plotting.plot_training_curves(history, os.path.join(directory, 'curves.png'))
        with open(curves, 'rb') as f:
            self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n')
        with self.assertRaisesRegex(ValueError, 'no "<set>/bits_per_dim"'):
            plotting.plot_training_curves([{'step': 1}], os.path.join(directory, 'x.png'))
        with self.assertRaisesRegex(ValueError, "score 'log_pz' missing"):
            c = ScoreResult('c', {'log_prob': np.zeros(2), 'bits_per_dim': np.zeros(2)},
                            np.zeros(2), SHAPE)
            plotting.plot_histograms([c], os.path.join(directory, 'c.png'), key='log_pz')

    def test_histogram_range_quantiles(self):
        values = [np.concatenate([np.linspace(0., 1., 99), [-1e7]]), np.linspace(0., 1., 100)]
        self.assertEqual(plotting._histogram_range(values, None), (-1e7, 1.))
        low, high = plotting._histogram_range(values, (0.01, 0.99))
        self.assertGreater(low, -1.)  # The outlier is outside the plotted range...
        self.assertLess(high, 1.)
        self.assertAllClose((low, high), np.quantile(np.concatenate(values), (0.01, 0.99)))
        # ...and a constant score still gets a bin.
        self.assertEqual(plotting._histogram_range([np.full(3, 2.)], (0.01, 0.99)), (1.5, 2.5))
        path = plotting.plot_histograms(
            [ScoreResult(f's{i}', {'waic': v, 'log_prob': v, 'bits_per_dim': v}, np.zeros(100),
                         SHAPE) for i, v in enumerate(values)],
            os.path.join(self.create_tempdir().full_path, 'w.png'), key='waic',
            quantiles=(0.01, 0.99))
        self.assertTrue(os.path.exists(path))

    def test_panels_one_per_model(self):
        path = plotting.plot_histogram_panels(
            [[_result('a'), _result('b', 1)], [_result('c', 2, n=5), _result('d', 3, n=5)],
             [_result('e', 4)]], os.path.join(self.create_tempdir().full_path, 'p.png'))
        with open(path, 'rb') as f:
            self.assertEqual(f.read(8), PNG)
        with self.assertRaisesRegex(ValueError, 'at least one score set'):
            plotting.plot_histogram_panels([[]], 'x.png')

    @pytest.mark.slow(minutes=0.15)
    def test_importing_the_package_leaves_the_matplotlib_backend_alone(self):
        code = ('import matplotlib; matplotlib.use("svg"); import tfp_ood; '
                'print(matplotlib.get_backend())')
        run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                             timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        self.assertEqual(run.stdout.strip(), 'svg')


if __name__ == '__main__':
    tf.test.main()


def test_detect_figures_name_files_and_say_what_lies_beyond_the_axis(tmp_path):
    from unittest import mock
    figures = []
    with mock.patch.object(plotting, '_save', lambda fig, path: figures.append(fig) or path):
        images = np.zeros((3, 4, 4, 1), np.uint8)
        names = ['cat.png', 'sub/a_very_long_file_name_of_a_dog.jpeg', 'x.png']
        plotting.plot_contact_sheet(images, np.array([3.0, 1.0, 2.0]), str(tmp_path / 'c.png'),
                                    names=names)
        validation = np.linspace(0.0, 1.0, 1000)
        scores = np.concatenate([validation, [1e6, 2e6, -1e6]])  # Far beyond the axis.
        plotting.plot_detection(scores, validation, 0.95, str(tmp_path / 'h.png'))
    sheet, histogram = figures
    titles = [ax.get_title() for ax in sheet.axes if ax.get_title()]
    assert titles[:3] == ['cat.png\n3', 'x.png\n2',
                          'a_very_long_file_nam\ne_of_a_dog.jpeg\n1'], titles
    assert plotting._wrapped('p' * 30 + '0123456789' + 'q' * 30) == (
        'p' * 20 + '\n' + 'p' * 9 + '…' + 'q' * 10 + '\n' + 'q' * 20)
    assert 'file, score' in sheet._suptitle.get_text()
    legend = [t.get_text() for t in histogram.axes[0].get_legend().get_texts()]
    assert any(re.fullmatch(r'your images \(1003, 52 flagged\); (\d+) below the axis, (\d+) '
                            r'above the axis, in its end bin', t) for t in legend), legend
    assert plotting.beyond_range(np.array([-1.0, 0.5, 2.0, 3.0]), 0.0, 1.0) == (1, 2)
    with pytest.raises(ValueError, match='2 names for 3 images'):
        plotting.plot_contact_sheet(images, np.zeros(3), str(tmp_path / 'd.png'), names=['a', 'b'])
