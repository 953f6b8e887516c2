"""Tests of the TensorBoard summaries: tags, and the events of a resumed run."""

import collections
import glob
import os

import numpy as np
import tensorflow as tf

from tfp_ood import summaries
from tfp_ood.evaluate import ScoreResult


def _steps(logdir):
    steps = collections.defaultdict(list)
    for path in glob.glob(os.path.join(logdir, 'events.*')):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                steps[value.tag].append(event.step)
    return steps


class SummariesTest(tf.test.TestCase):

    def test_scores_write_the_mean_and_finite_histograms(self):
        logdir = self.create_tempdir().full_path
        writer = summaries.Summaries(logdir)
        scores = {'log_prob': np.array([-1., np.nan, -3.]),
                  'bits_per_dim': np.array([1., np.nan, 3.])}
        means = writer.scores({'set': ScoreResult('set', scores, np.zeros(3), (2, 2, 1))}, 7)
        writer.flush()
        self.assertEqual(means, {'eval/set/bits_per_dim': 2.0})
        steps = _steps(logdir)
        for tag in ('eval/set/bits_per_dim', 'eval/set/num_nonfinite', 'eval/set/log_prob'):
            self.assertEqual(steps[tag], [7], tag)

    def test_a_resumed_writer_drops_the_steps_after_its_checkpoint(self):
        logdir = self.create_tempdir().full_path
        first = summaries.Summaries(logdir)
        for step in range(1, 6):
            first.scalars({'train/x': float(step)}, step)
        first.text('config', 'c', 0)
        first.flush()
        resumed = summaries.Summaries(logdir, resume_step=3)
        for step in range(4, 7):
            resumed.scalars({'train/x': float(step)}, step)
        resumed.flush()
        steps = _steps(logdir)
        self.assertEqual(sorted(steps['train/x']), [1, 2, 3, 4, 5, 6])
        self.assertEqual(steps['config'], [0])
        self.assertEqual(summaries.drop_events_after(logdir, 100), 0)  # Nothing to drop.


if __name__ == '__main__':
    tf.test.main()


class PrCurveTest(tf.test.TestCase):

    def test_exact_counts_at_the_quantiles_and_the_plugin_tag(self):
        logdir = self.create_tempdir().full_path
        writer = summaries.Summaries(logdir)
        # OOD scores: the in-distribution set scores lower.
        curve = writer.pr_curve('pr/a vs b', np.array([-3., -4., np.nan]),
                                np.array([-1., -2.]), num_thresholds=5)
        writer.flush()
        # Thresholds are the pooled finite scores' quantiles, from the highest down:
        # -1, -1.75, -2.5, -3.25, -4. The NaN in-distribution score ranks as the most
        # out-of-distribution: never at or below a threshold.
        self.assertAllClose(curve['thresholds'], [-1., -1.75, -2.5, -3.25, -4.])
        self.assertAllClose(curve['recall'], [2 / 3, 2 / 3, 2 / 3, 1 / 3, 1 / 3])
        self.assertAllClose(curve['precision'], [0.5, 2 / 3, 1., 1., 1.])
        plugins = set()
        for path in glob.glob(os.path.join(logdir, 'events.*')):
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    if value.tag.startswith('pr/a vs b'):  # The plugin adds '/pr_curves'.
                        plugins.add(value.metadata.plugin_data.plugin_name)
        self.assertEqual(plugins, {'pr_curves'})
