"""What the training loop does besides training, one `Hook` each: scalars for
TensorBoard, moving averages, held-out evaluation, checkpoints, provenance and
the progress bar.
"""

import contextlib
import dataclasses
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import tensorflow as tf
from absl import logging
from tqdm.auto import tqdm

from tfp_ood.evaluate import score
from tfp_ood.models.base import DensityModel
from tfp_ood.summaries import Summaries
from tfp_ood.training.averaging import WeightAverages
from tfp_ood.training.config import TrainConfig
from tfp_ood.training.errors import TrainingDivergedError
from tfp_ood.training.run_directory import RunDirectory, nonfinite_variables
from tfp_ood.training.step import StepOutputs

__all__ = ['Averaging', 'Checkpointing', 'Clock', 'Evaluation', 'Hook', 'LoopState', 'ProgressBar',
           'Provenance', 'TrainingScalars']


@dataclasses.dataclass
class LoopState:
    """What the training loop's hooks see.

    Attributes:
      step: steps done (the checkpoint's step when the loop begins).
      start: the step the loop began at.
      outputs: the last step's `StepOutputs` (as numbers), or `None`.
      history: the evaluation rows so far.
      stop_reason: `'completed'`, `'stopped by SIGINT'`, or `'error: ...'`.
      postfix: the latest training figures for the progress bar (bits/dim,
        images per second).
    """

    step: int
    start: int
    outputs: Optional[StepOutputs] = None
    history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    stop_reason: str = 'completed'
    postfix: Dict[str, str] = dataclasses.field(default_factory=dict)


class Hook:
    """Something the training loop does besides training.

    `begin(state)` before the first step, `after_step(state)` after every step,
    `end(state)` once however the loop ends (completed, stopped by a signal,
    an error), in the order the hooks were given.
    """

    def begin(self, state: LoopState) -> None:
        pass

    def after_step(self, state: LoopState) -> None:
        pass

    def end(self, state: LoopState) -> None:
        pass


class Clock:
    """Training wall time, kept in a checkpointed variable across resumptions."""

    def __init__(self):
        self.variable = tf.Variable(0., dtype=tf.float64, trainable=False, name='wall_time')
        self._since = time.monotonic()

    def elapsed(self) -> float:
        return float(self.variable) + time.monotonic() - self._since

    def settle(self) -> None:
        """Adds the time since the last call to the variable (before a checkpoint)."""
        now = time.monotonic()
        self.variable.assign(float(self.variable) + now - self._since)
        self._since = now


class TrainingScalars(Hook):
    """Every `log_every` steps: the means of the applied steps since the last write."""

    def __init__(self, summaries: Summaries, config: TrainConfig, learning_rate: Callable,
                 skipped: tf.Variable):
        self.summaries, self.config, self.learning_rate = summaries, config, learning_rate
        self.skipped = skipped
        self._values: List[StepOutputs] = []
        self._since = time.monotonic()

    def after_step(self, state):
        if state.outputs.applied:
            self._values.append(state.outputs)
        if state.step % self.config.log_every or not self._values:
            return
        mean = StepOutputs(*np.mean([list(v) for v in self._values], axis=0))
        images_per_s = self.config.log_every * self.config.batch_size / (
            time.monotonic() - self._since)
        scalars = {'train/bits_per_dim': mean.bits_per_dim, 'train/grad_norm': mean.grad_norm,
                   'train/learning_rate': self.learning_rate(),
                   'train/images_per_s': images_per_s,
                   'train/skipped_steps': int(self.skipped)}
        if self.config.weight_decay:  # Otherwise the loss is the bits/dim.
            scalars['train/loss'] = mean.loss
        self.summaries.scalars(scalars, state.step)
        state.postfix = {'bpd': f'{mean.bits_per_dim:.3f}', 'img_s': f'{images_per_s:.0f}'}
        self._values, self._since = [], time.monotonic()


class Averaging(Hook):
    """After every applied step: one update of the moving averages of the weights."""

    def __init__(self, averages: WeightAverages):
        self.averages = averages

    def after_step(self, state):
        if state.outputs.applied:
            self.averages.update()


class Evaluation(Hook):
    """Every `eval_every` steps and at the last: held-out bits/dim into the history,
    TensorBoard (and samples every `sample_every`)."""

    def __init__(self, model: DensityModel, eval_sets: Mapping[str, np.ndarray],
                 config: TrainConfig, summaries: Summaries, run: RunDirectory, clock: Clock,
                 averages: Optional[WeightAverages] = None):
        self.model, self.eval_sets, self.config = model, eval_sets, config
        self.summaries, self.run, self.clock = summaries, run, clock
        self.averages = averages

    def after_step(self, state):
        step = state.step
        if not self.eval_sets or (step % self.config.eval_every and
                                  step != self.config.num_steps):
            return
        # The weights the run exports: the averages where it keeps them.
        with self.averages.swapped_in() if self.averages else contextlib.nullcontext():
            self._evaluate(state, step)

    def _evaluate(self, state, step):
        results = {name: score(self.model, images, name=name, progress=False)
                   for name, images in self.eval_sets.items()}
        means = self.summaries.scores(results, step)
        row = {'step': step, 'wall_time': self.clock.elapsed(),
               **{k[len('eval/'):]: v for k, v in means.items()}}
        state.history.append(row)
        self.run.append_history(row)
        sample_every = self.config.sample_every or self.config.eval_every
        if step % sample_every == 0 or step == self.config.num_steps:
            self.summaries.samples(self.model, step)


class Checkpointing(Hook):
    """Every `checkpoint_every` steps and when the loop ends; never non-finite weights."""

    def __init__(self, model: DensityModel, manager: tf.train.CheckpointManager,
                 config: TrainConfig, clock: Clock):
        self.model, self.manager, self.config, self.clock = model, manager, config, clock
        self.last_saved = None

    def begin(self, state):
        self.last_saved = state.step

    def _save(self, step: int, on_exit: bool) -> None:
        self.clock.settle()
        bad = nonfinite_variables(self.model)
        if bad:  # Never a checkpoint that every later score would be NaN from.
            message = (f'Not saving step {step}: {len(bad)} variables are not finite (e.g. '
                       f'{bad[0]}); the last good checkpoint is in {self.manager.directory}.')
            if on_exit:  # Leave the run's own error (or stop) as the reason.
                logging.warning(message)
                return
            raise TrainingDivergedError(message)
        self.manager.save(checkpoint_number=step)
        self.last_saved = step

    def after_step(self, state):
        if state.step % self.config.checkpoint_every == 0:
            self._save(state.step, on_exit=False)

    def end(self, state):
        if state.step > self.last_saved or not self.manager.latest_checkpoint:
            self._save(state.step, on_exit=True)


class Provenance(Hook):
    """When the loop ends: what produced the last checkpoint, into provenance.json."""

    def __init__(self, run: RunDirectory, config: TrainConfig, data_info: Mapping[str, Any],
                 clock: Clock, skipped: tf.Variable, summaries: Summaries, precision: str):
        self.run, self.config, self.data_info = run, config, dict(data_info)
        self.clock, self.skipped, self.summaries = clock, skipped, summaries
        self.precision = precision

    def end(self, state):
        self.summaries.flush()
        last = state.history[-1] if state.history else {}
        self.run.write_provenance({
            'data': self.data_info, 'steps': state.step,
            'wall_time_s': round(float(self.clock.variable), 1),
            'skipped_steps': int(self.skipped),
            'final_eval': {k: v for k, v in last.items() if k not in ('step', 'wall_time')},
            'final_eval_step': last.get('step'),
            'train_config': dataclasses.asdict(self.config), 'stop_reason': state.stop_reason,
            'precision': self.precision})


class ProgressBar(Hook):
    """A tqdm bar of the steps: redrawn every second on a terminal, every minute in a log."""

    def __init__(self, config: TrainConfig, enabled: bool):
        self.config, self.enabled, self.bar, self.postfix = config, enabled, None, {}

    def begin(self, state):
        self.bar = tqdm(initial=state.step, total=self.config.num_steps, desc='training',
                        unit='step', disable=not self.enabled,
                        mininterval=1.0 if sys.stderr.isatty() else 60.0)

    def after_step(self, state):
        if state.postfix != self.postfix:  # The figures `TrainingScalars` last wrote.
            self.postfix = dict(state.postfix)
            self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(1)

    def end(self, state):
        self.bar.close()
