"""TensorBoard summaries of training and scoring.

Tags written:

- `train/bits_per_dim`, `train/learning_rate`, `train/grad_norm`,
  `train/images_per_s`, `train/skipped_steps` (scalars), and `train/loss` (the
  bits/dim plus the weight-decay penalty) when there is weight decay;
- `eval/<set>/bits_per_dim` (scalar) and `eval/<set>/log_prob`, plus for flows
  `eval/<set>/log_pz` and `eval/<set>/log_det` (histograms of per-image values);
- `samples/temperature_0.7`, `samples/temperature_1.0` (images, flows);
- `config` (text: the run's configuration as JSON);
- `pr/<in> vs <out>` (precision-recall curves of telling two sets apart,
  TensorBoard's PR-curve plugin) where an in/out comparison is written.

A run resumed from a checkpoint at step `s` first drops the events after `s`
from the event files already in the log directory (`drop_events_after`): the
steps between the checkpoint and the interruption are trained again, and
TensorBoard would otherwise show them twice.
"""

import glob
import json
import os
from typing import Any, Dict, Mapping, Optional

import numpy as np
import tensorflow as tf
from tensorflow.core.util import event_pb2

from tfp_ood.evaluate import ScoreResult
from tfp_ood.terms import LOG_DET, LOG_PROB, LOG_PZ

__all__ = ['Summaries', 'HISTOGRAM_TERMS', 'SAMPLE_TEMPERATURES', 'drop_events_after']

HISTOGRAM_TERMS = (LOG_PROB, LOG_PZ, LOG_DET)
SAMPLE_TEMPERATURES = (0.7, 1.0)


def drop_events_after(logdir: str, step: int) -> int:
    """Removes the summaries of steps after `step` from the event files in `logdir`.

    Each event file that holds such summaries is rewritten without them (into
    a temporary file, then moved into place). A record cut short at the end
    of a file (the process killed while writing it) is dropped too.

    Returns:
      The number of events removed.
    """
    removed = 0
    for path in sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))):
        kept, dropped = [], 0
        try:
            for record in tf.data.TFRecordDataset(path):
                event = event_pb2.Event.FromString(record.numpy())
                if event.HasField('summary') and event.step > step:
                    dropped += 1
                else:
                    kept.append(record.numpy())
        except tf.errors.DataLossError:  # A truncated last record.
            dropped += 1
        if dropped:
            with tf.io.TFRecordWriter(path + '.tmp') as writer:
                for record in kept:
                    writer.write(record)
            os.replace(path + '.tmp', path)
            removed += dropped
    return removed


class Summaries:
    """A TensorBoard event-file writer for one run directory.

    Args:
      logdir: the directory of the event files.
      resume_step: the step a resumed run restarts from: the summaries of
        later steps already in `logdir` are removed first.
    """

    def __init__(self, logdir: str, resume_step: Optional[int] = None):
        self.logdir = logdir
        if resume_step is not None:
            drop_events_after(logdir, resume_step)
        self._writer = tf.summary.create_file_writer(logdir)

    def config(self, config: Mapping[str, Any], step: int = 0) -> None:
        self.text('config', '```\n' + json.dumps(config, indent=2, sort_keys=True) + '\n```',
                  step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        with self._writer.as_default():
            tf.summary.text(tag, text, step=step)

    def histograms(self, values: Mapping[str, np.ndarray], step: int) -> None:
        """Histograms of the finite values of each array."""
        with self._writer.as_default():
            for tag, array in values.items():
                array = np.asarray(array, np.float64)
                tf.summary.histogram(tag, array[np.isfinite(array)], step=step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        with self._writer.as_default():
            for tag, value in values.items():
                tf.summary.scalar(tag, value, step=step)

    def scores(self, results: Mapping[str, ScoreResult], step: int,
               prefix: str = 'eval') -> Dict[str, float]:
        """Mean bits/dim and histograms of the per-image terms of each set.

        Non-finite values are left out of the histograms (they are counted in
        `ScoreResult.summary()`).

        Returns:
          `{'<prefix>/<set>/bits_per_dim': mean}`.
        """
        means = {}
        with self._writer.as_default():
            for name, result in results.items():
                summary = result.summary()
                tag = f'{prefix}/{name}/bits_per_dim'
                means[tag] = summary['bpd_mean']
                tf.summary.scalar(tag, summary['bpd_mean'], step=step)
                if summary['num_nonfinite']:
                    tf.summary.scalar(f'{prefix}/{name}/num_nonfinite',
                                      summary['num_nonfinite'], step=step)
                for key in HISTOGRAM_TERMS:
                    if key in result.scores:
                        values = result.scores[key]
                        tf.summary.histogram(f'{prefix}/{name}/{key}',
                                             values[np.isfinite(values)], step=step)
        return means

    def pr_curve(self, tag: str, in_scores: np.ndarray, out_scores: np.ndarray,
                 step: int = 0, num_thresholds: int = 201,
                 description: Optional[str] = None) -> Dict[str, np.ndarray]:
        """The precision-recall curve of telling `in_scores` from `out_scores`.

        The scores are OOD scores (higher = more out-of-distribution, as
        `tfp_ood.metrics.ood_metrics` takes them; non-finite ones rank as
        the most out-of-distribution), and the in-distribution set is the
        positive class: an image at or below a threshold is called
        in-distribution. The curve is exact at `num_thresholds` thresholds,
        the quantiles of the pooled scores, and written as raw counts for
        TensorBoard's PR-curve plugin (its threshold axis is the quantile,
        from the highest score down).

        Returns:
          `{'precision', 'recall', 'thresholds'}`, descending thresholds.
        """
        from tensorboard.plugins.pr_curve import summary as pr_summary
        # In "higher = positive" form, as the plugin's counts are.
        scores = [np.where(np.isfinite(v), -v, -np.inf).astype(np.float64)
                  for v in (np.asarray(in_scores), np.asarray(out_scores))]
        pooled = np.concatenate(scores)
        finite = pooled[np.isfinite(pooled)]
        thresholds = np.quantile(finite, np.linspace(0., 1., num_thresholds)) \
            if finite.size else np.zeros(num_thresholds)
        tp = np.array([np.sum(scores[0] >= t) for t in thresholds], np.float64)
        fp = np.array([np.sum(scores[1] >= t) for t in thresholds], np.float64)
        fn, tn = len(scores[0]) - tp, len(scores[1]) - fp
        precision = tp / np.maximum(tp + fp, 1.)
        recall = tp / max(len(scores[0]), 1)
        proto = pr_summary.raw_data_pb(
            tag, true_positive_counts=tp, false_positive_counts=fp, true_negative_counts=tn,
            false_negative_counts=fn, precision=precision, recall=recall,
            num_thresholds=num_thresholds, description=description)
        with self._writer.as_default():
            tf.summary.experimental.write_raw_pb(proto.SerializeToString(), step=step)
        return {'precision': precision, 'recall': recall, 'thresholds': -thresholds}

    def images(self, tag: str, images, step: int, max_outputs: int = 16) -> None:
        with self._writer.as_default():
            tf.summary.image(tag, images, step=step, max_outputs=max_outputs)

    def samples(self, model, step: int, num_images: int = 16,
                seed: Optional[int] = 0) -> None:
        """Image summaries of samples at the model's `sample_temperatures`
        (`SAMPLE_TEMPERATURES`, 0.7 and 1.0, for flows and VAEs)."""
        if not model.can_sample:
            return
        for temperature in model.sample_temperatures:
            images = model.sample(num_images, temperature=temperature, seed=seed)
            self.images(f'samples/temperature_{temperature}', images, step, num_images)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        self._writer.close()
