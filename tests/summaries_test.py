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
