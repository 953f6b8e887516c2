"""Moving averages of the weights (Polyak averaging) and the weights weight decay applies to.
"""

import contextlib
from typing import Dict, List, Optional

import tensorflow as tf

from tfp_ood.errors import InputError
from tfp_ood.models.base import DensityModel

__all__ = ['WeightAverages', 'averages_for', 'checkpointed', 'decayed_variables']


def decayed_variables(model: DensityModel) -> List[tf.Variable]:
    """The variables `TrainConfig.weight_decay` applies to: every layer's kernel."""
    return [v for v in model.trainable_variables
            if v.name.split('/')[-1].split(':')[0] == 'kernel']


class WeightAverages(tf.Module):
    """Exponential moving averages of a model's trainable variables (Polyak averaging).

    After the `n`-th update (`n` from 0) each average is
    `a <- d_n * a + (1 - d_n) * w` with `d_n = min(decay, (1 + n) / (10 + n))`,
    `tf.train.ExponentialMovingAverage`'s schedule with `num_updates`: early
    averages forget the initial weights quickly. A likelihood ratio is the
    small difference of two models' log-likelihoods, and the weights of one
    training step to the next move it more than it moves between models
    (docs/detectors.md); the averages are what a run evaluates and exports
    when `TrainConfig.ema_decay > 0`. Checkpointed with the run.

    Args:
      model: the model whose `trainable_variables` are averaged.
      decay: the largest decay, in `(0, 1)`.
    """

    def __init__(self, model: DensityModel, decay: float):
        super().__init__(name='weight_averages')
        if not 0.0 < decay < 1.0:
            raise InputError(f'WeightAverages: decay must be in (0, 1); got {decay}.')
        self.decay = float(decay)
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name='updates')
        self.averages = [tf.Variable(v.read_value(), trainable=False,
                                     name=v.name.split(':')[0].replace('/', '_'))
                         for v in model.trainable_variables]
        # A closure, not an attribute: the model's variables are the model's, not
        # dependencies of the averages in a checkpoint.
        weights = list(model.trainable_variables)
        self._weights = lambda: weights

    def reset(self) -> None:
        """Every average to the current weights, as if no update had been made."""
        for average, w in zip(self.averages, self._weights()):
            average.assign(w)
        self.updates.assign(0)

    @tf.function
    def _update(self):
        n = tf.cast(self.updates, tf.float32)
        decay = tf.minimum(self.decay, (1. + n) / (10. + n))
        for average, w in zip(self.averages, self._weights()):
            average.assign(decay * average + (1. - decay) * w)
        self.updates.assign_add(1)

    def update(self) -> None:
        """One update of every average from the current weights."""
        self._update()

    def assign_to_model(self) -> None:
        """Replaces the model's weights by their averages (for export and scoring)."""
        for average, w in zip(self.averages, self._weights()):
            w.assign(average)

    @contextlib.contextmanager
    def swapped_in(self):
        """The model holds the averages inside the block, its own weights after it."""
        own = [tf.identity(w) for w in self._weights()]
        self.assign_to_model()
        try:
            yield
        finally:
            for w, value in zip(self._weights(), own):
                w.assign(value)


def averages_for(model: DensityModel, ema_decay: float) -> Optional[WeightAverages]:
    """The run's `WeightAverages`, or `None` for a run that keeps none."""
    return WeightAverages(model, ema_decay) if ema_decay else None


def checkpointed(averages: Optional[WeightAverages]) -> Dict[str, WeightAverages]:
    """The checkpoint's entry for the averages (none for a run without them, so
    runs from before them still restore)."""
    return {'averages': averages} if averages else {}
