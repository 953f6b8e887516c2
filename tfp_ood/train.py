"""Training: one `fit` for every model family of the package.

`fit(model, train_images, config, workdir)` minimises the mean bits/dim of
uniformly dequantized training images with Adam (linear warm-up, gradient
clipping by global norm), and writes into `workdir` the files `RunDirectory`
lists: configuration, checkpoints, TensorBoard logs, evaluation history and
provenance. Its pieces are public for other loops: `make_train_step` (the
traced step), `RunDirectory`, and `run_loop` with `Hook`s (evaluation,
checkpoints, summaries, provenance, the progress bar).

**Resuming.** Calling `fit` again with the same configuration and `workdir`
resumes from the last checkpoint with the same optimizer state, step counter
and data position: batch `s` is a function of `(seed, s)` alone (a fresh
permutation of the training set per epoch, and dequantization noise drawn from
`(seed, s)`), so a resumed run sees exactly the batches the uninterrupted run
would have. A checkpoint is written every `checkpoint_every` steps and when the
run ends, including on SIGINT or SIGTERM; after SIGKILL at most
`checkpoint_every` steps are lost. A `workdir` holding a run of another
configuration is refused before anything is loaded.

**Distribution.** `fit` runs under any `tf.distribute.Strategy` with no code
change: pass `strategy=` and build the model inside `strategy.scope()`. Each
global batch is split across replicas, and gradients and losses are summed
across them, so the update does not depend on the number of devices (up to
floating-point summation order). On several GPUs use
`tf.distribute.MirroredStrategy()`; across machines
`tf.distribute.MultiWorkerMirroredStrategy()`, launching the same command on
every machine with `TF_CONFIG` describing the cluster (see the README).

**Non-finite steps.** A step whose loss or gradient norm is not finite is
skipped (no parameter or optimizer update) and counted; after
`max_consecutive_nonfinite` skipped steps in a row `fit` stops with
`TrainingDivergedError`, keeping the last good checkpoint.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging
from tqdm.auto import tqdm

from tfp_ood import data, distribute, models, outputs
from tfp_ood.config import complete_model_config
from tfp_ood.data import perturb
from tfp_ood.evaluate import score
from tfp_ood.models.base import DensityModel, check_images
from tfp_ood.summaries import Summaries
from tfp_ood.training.config import TrainConfig

__all__ = ['ConfigMismatchError', 'Hook', 'LinearWarmup', 'LoopState', 'RunDirectory',
           'RunLockedError', 'StepOutputs', 'TrainConfig', 'TrainResult', 'TrainingDivergedError',
           'WeightAverages', 'fit', 'load_run_config', 'make_train_step', 'nonfinite_variables',
           'restore_latest', 'run_loop', 'train_on_dataset']

# Training-config fields that may change between a run and its resumption.
_RESUMABLE_CHANGES = ('num_steps', 'checkpoint_every', 'eval_every', 'log_every',
                      'keep_checkpoints', 'num_eval_images', 'sample_every')


class TrainingDivergedError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class ConfigMismatchError(ValueError):
    """The work directory holds a run of another configuration."""


@dataclasses.dataclass
class TrainResult:
    """What `fit` did: the final step, the evaluation history and the stop reason."""

    step: int
    wall_time: float
    skipped_steps: int
    history: List[Dict[str, Any]]
    stop_reason: str


class LinearWarmup(tf_keras.optimizers.schedules.LearningRateSchedule):
    """`learning_rate * min(1, (step + 1) / warmup_steps)`."""

    def __init__(self, learning_rate: float, warmup_steps: int):
        self.learning_rate = learning_rate
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        if not self.warmup_steps:
            return tf.constant(self.learning_rate, tf.float32)
        fraction = tf.cast(step + 1, tf.float32) / float(self.warmup_steps)
        return self.learning_rate * tf.minimum(1.0, fraction)

    def get_config(self):
        return {'learning_rate': self.learning_rate, 'warmup_steps': self.warmup_steps}


def load_run_config(workdir: str) -> Optional[Dict[str, Any]]:
    """The `config.json` of a run directory, or `None` if there is none."""
    return RunDirectory(workdir).read_config()


def _complete(model_config: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """`config.complete_model_config`, or the value itself if it is not a model's."""
    try:
        return complete_model_config(model_config)
    except (TypeError, ValueError):
        return model_config


def _check_same_run(saved: Dict[str, Any], current: Dict[str, Any], workdir: str) -> None:
    problems = []
    if _complete(saved.get('model')) != _complete(current['model']):
        problems.append(f'model {saved.get("model")} != {current["model"]}')
    # Runs written before a field existed ran with its default.
    defaults = dataclasses.asdict(TrainConfig())
    saved_train = {k: v for k, v in {**defaults, **saved.get('train', {})}.items()
                   if k not in _RESUMABLE_CHANGES}
    current_train = {k: v for k, v in current['train'].items() if k not in _RESUMABLE_CHANGES}
    if saved_train != current_train:
        diff = sorted(k for k in set(saved_train) | set(current_train)
                      if saved_train.get(k) != current_train.get(k))
        problems.append('training settings ' + ', '.join(
            f'{k}: {saved_train.get(k)} != {current_train.get(k)}' for k in diff))
    if saved.get('data') != current['data']:
        problems.append(f'data {saved.get("data")} != {current["data"]}')
    if problems:
        raise ConfigMismatchError(
            f'{workdir} holds a run of another configuration; refusing to resume from its '
            f'checkpoints ({"; ".join(problems)}). Use a new directory, or the same '
            f'configuration to resume.')


def _refuse_to_repeat_a_divergence(workdir: str) -> None:
    """A run that stopped on non-finite steps would diverge again from the same
    checkpoint with the same settings: say what to change instead."""
    path = os.path.join(workdir, 'provenance.json')
    if not os.path.exists(path):
        return
    with open(path) as f:
        try:
            provenance = json.load(f)
        except ValueError:
            return
    if str(provenance.get('stop_reason', '')).startswith('error: TrainingDivergedError'):
        raise TrainingDivergedError(
            f'{workdir} diverged at step {provenance.get("steps")} (see its provenance.json); '
            f'resuming with the same settings would diverge again. Start a new run directory '
            f'with a lower learning_rate (--learning-rate) or clip_norm (--clip-norm), or '
            f'delete {workdir} to start over.')


def _batch(images: np.ndarray, step: int, batch_size: int, seed: int):
    """Indices and dequantization noise of global batch `step` (a function of step)."""
    steps_per_epoch = len(images) // batch_size
    epoch, position = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(images))
    index = np.sort(order[position * batch_size:(position + 1) * batch_size])
    noise = np.random.default_rng([seed, 1_000_003, step]).random(
        (batch_size,) + images.shape[1:], dtype=np.float32)
    return index, noise


def _distributed_batches(strategy, images: np.ndarray, config: TrainConfig, start: int):
    """Per-replica slices of the global batches from step `start` on."""
    shape = images.shape[1:]

    def dataset_fn(context: tf.distribute.InputContext):
        per_replica = context.get_per_replica_batch_size(config.batch_size)
        replicas = context.num_replicas_in_sync // context.num_input_pipelines
        first = context.input_pipeline_id * replicas

        def generate():
            for step in range(start, config.num_steps):
                index, noise = _batch(images, step, config.batch_size, config.seed)
                batch = images[index]
                if config.mutation_rate:
                    batch = perturb(batch, config.mutation_rate,
                                    np.random.default_rng([config.seed, 2_000_003, step]))
                for replica in range(first, first + replicas):
                    part = slice(replica * per_replica, (replica + 1) * per_replica)
                    yield batch[part], noise[part]

        spec = (tf.TensorSpec((per_replica,) + shape, tf.uint8),
                tf.TensorSpec((per_replica,) + shape, tf.float32))
        return tf.data.Dataset.from_generator(generate, output_signature=spec).prefetch(4)

    return strategy.distribute_datasets_from_function(dataset_fn)


def _decayed(model: DensityModel) -> List[tf.Variable]:
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
            raise ValueError(f'WeightAverages: decay must be in (0, 1); got {decay}.')
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


class StepOutputs(NamedTuple):
    """What one training step returns (all scalars).

    Attributes:
      loss: the minimised objective: `bits_per_dim` plus the weight-decay
        penalty in the same units.
      bits_per_dim: mean bits/dim of the batch.
      grad_norm: global gradient norm before clipping.
      applied: whether the update was applied (loss and norm finite).
    """

    loss: tf.Tensor
    bits_per_dim: tf.Tensor
    grad_norm: tf.Tensor
    applied: tf.Tensor


def make_train_step(model: DensityModel, optimizer: tf_keras.optimizers.Optimizer,
                    config: TrainConfig, strategy: Optional[tf.distribute.Strategy] = None,
                    jit_compile: bool = False):
    """`fit`'s training step: `step(images, noise) -> StepOutputs`, a `tf.function`.

    Minimises the mean bits/dim of the batch dequantized with `noise`, plus
    `config.weight_decay` on every kernel; clips the gradients to
    `config.clip_norm`; applies them with `optimizer` only if the loss and
    the norm are finite.

    Args:
      model: the `DensityModel` (built, and initialised where it needs data).
      optimizer: a built `tf_keras` optimizer.
      config: the `TrainConfig` (batch size, clip norm, weight decay).
      strategy: a `tf.distribute.Strategy`; `images` and `noise` are then its
        distributed per-replica values, and gradients and losses are summed
        across replicas. Default value: the current (default) strategy.
      jit_compile: compile the step with XLA. XLA cannot compile through
        `tf.distribute`, so this step runs on the caller's device with no
        strategy (`strategy` must be `None`).
    """
    variables = model.trainable_variables
    decayed = _decayed(model) if config.weight_decay else []
    replicas = 1 if jit_compile else (strategy or tf.distribute.get_strategy()
                                      ).num_replicas_in_sync
    # Nats per image -> the loss's bits/dim; each replica adds its share, since
    # the replicas' losses are summed.
    decay_scale = config.weight_decay / (model.num_dims * np.log(2.0) * replicas)

    def loss_and_gradients(images, noise):
        with tf.GradientTape() as tape:
            bpd = model.bits_per_dim(model.training_log_prob(images, noise))
            bpd = tf.reduce_sum(bpd) / config.batch_size
            loss = bpd
            if decayed:
                loss += decay_scale * tf.add_n([tf.reduce_sum(tf.square(v)) for v in decayed])
        return loss, bpd, tape.gradient(loss, variables)

    def clip(grads, loss):
        grads, norm = tf.clip_by_global_norm(grads, config.clip_norm)
        return grads, norm, tf.math.is_finite(norm) & tf.math.is_finite(loss)

    if jit_compile:
        if strategy is not None:
            raise ValueError('make_train_step: jit_compile=True runs without a strategy.')

        def plain_step(images, noise):
            loss, bpd, grads = loss_and_gradients(images, noise)
            grads, norm, ok = clip(grads, loss)

            def apply():
                optimizer.apply_gradients(zip(grads, variables))
                return tf.constant(True)

            return StepOutputs(loss, bpd, norm, tf.cond(ok, apply, lambda: tf.constant(False)))

        return tf.function(plain_step, jit_compile=True)

    strategy = strategy or tf.distribute.get_strategy()

    def apply_if_finite(distribution, grads, ok):
        # A cond whose branch calls apply_gradients (which calls merge_call) must
        # run in cross-replica context, as tf_keras's LossScaleOptimizer does.
        ok = distribution.experimental_local_results(ok)[0]

        def apply():
            distribution.extended.call_for_each_replica(
                lambda g: optimizer.apply_gradients(zip(g, variables),
                                                    skip_gradients_aggregation=True),
                args=(grads,))
            return tf.constant(True)

        return tf.cond(ok, apply, lambda: tf.constant(False))

    def replica_step(images, noise):
        context = tf.distribute.get_replica_context()
        loss, bpd, grads = loss_and_gradients(images, noise)
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        loss, bpd = context.all_reduce(tf.distribute.ReduceOp.SUM, [loss, bpd])
        grads, norm, ok = clip(grads, loss)
        context.merge_call(apply_if_finite, args=(grads, ok))
        return loss, bpd, norm, ok

    @tf.function
    def train_step(images, noise):
        outputs = strategy.run(replica_step, args=(images, noise))
        # Identical on every replica (all-reduced): take the first.
        return StepOutputs(*(strategy.experimental_local_results(o)[0] for o in outputs))

    return train_step


class _StopRequest:
    """SIGINT and SIGTERM, turned into a request to checkpoint and stop."""

    def __init__(self):
        self.signal_name: Optional[str] = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum, frame):
            del frame
            self.signal_name = signal.Signals(signum).name

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


class RunLockedError(RuntimeError):
    """Another live process is training in the same run directory."""


LOCK_FILE = 'run.lock'


def _run_lock(workdir: str):
    """Holds `workdir/run.lock` for the run (`tfp_ood.outputs.hold_lock`): a live
    holder is refused, a stale one (its process gone after a crash) taken over."""
    return outputs.hold_lock(os.path.join(workdir, LOCK_FILE), f'{workdir} is being trained',
                             'wait for it or stop it, or use another run directory',
                             RunLockedError)


def _restore_newest_readable(checkpoint: tf.train.Checkpoint, directory: str,
                             full: bool, tidy: bool = True) -> Optional[str]:
    """Restores the newest checkpoint in `directory` that reads, newest first.

    A checkpoint cut short (the process killed while writing it, a full disk)
    is skipped with a warning, and the one before it restored; folders of
    unfinished writes (`*_temp*`) are removed if `tidy` (the directory is this
    process's to write). Returns the path restored, or `None` if the directory
    has no checkpoint.

    Raises:
      ValueError: there are checkpoints but none of them reads.
    """
    if tidy and os.path.isdir(directory):
        for name in os.listdir(directory):
            if '_temp' in name and os.path.isdir(os.path.join(directory, name)):
                logging.warning('Removing %s: an unfinished checkpoint write.', name)
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    state = tf.train.get_checkpoint_state(directory)
    paths = list(state.all_model_checkpoint_paths) if state else []
    errors = []
    for path in reversed(paths):
        try:
            status = checkpoint.read(path)
            if full:
                status.assert_existing_objects_matched()
            else:
                status.expect_partial()
        except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:
            # A truncated file: "IndexError: Read less bytes than requested".
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            logging.warning('Checkpoint %s does not read (%s); trying the one before it.',
                            path, message)
            errors.append(f'{os.path.basename(path)}: {message}')
            continue
        if errors:
            logging.warning('Restored %s instead of the newer checkpoints that do not read.',
                            os.path.basename(path))
        return path
    if errors:
        raise ValueError(f'No checkpoint in {directory} reads: {"; ".join(errors)}.')
    return None


def _averages(model: DensityModel, ema_decay: float) -> Optional[WeightAverages]:
    """The run's `WeightAverages`, or `None` for a run that keeps none."""
    return WeightAverages(model, ema_decay) if ema_decay else None


def _checkpointed(averages: Optional[WeightAverages]) -> Dict[str, WeightAverages]:
    """The checkpoint's entry for the averages (none for a run without them, so
    runs from before them still restore)."""
    return {'averages': averages} if averages else {}


def restore_latest(model: DensityModel, workdir: str) -> int:
    """Loads the model weights of the last checkpoint in `workdir`; returns its step.

    The weights are the run's moving averages where it kept them
    (`TrainConfig.ema_decay`). The optimizer state is not needed (and not
    loaded) for scoring or export.
    """
    saved = load_run_config(workdir)
    if saved is None:
        raise FileNotFoundError(f'{workdir} is not a training run: no config.json.')
    if _complete(saved['model']) != _complete(model.get_config()):
        raise ConfigMismatchError(f'The checkpoint in {workdir} is of model '
                                  f'{saved["model"]}, not {model.get_config()}.')
    step = tf.Variable(0, dtype=tf.int64)
    averages = _averages(model, saved.get('train', {}).get('ema_decay', 0.0))
    path = _restore_newest_readable(tf.train.Checkpoint(model=model, step=step,
                                                        **_checkpointed(averages)),
                                    os.path.join(workdir, 'checkpoints'), full=False)
    if path is None:
        raise FileNotFoundError(f'No checkpoint in {os.path.join(workdir, "checkpoints")}.')
    if averages:
        averages.assign_to_model()
    bad = nonfinite_variables(model)
    if bad:
        raise ValueError(f'The checkpoint {path} holds {len(bad)} non-finite variables (e.g. '
                         f'{bad[0]}); every score of the model would be NaN.')
    return int(step)


def nonfinite_variables(model: DensityModel) -> List[str]:
    """Names of the model's variables that hold NaN or infinite values."""
    return [v.name for v in model.trainable_variables
            if v.dtype.is_floating and not bool(tf.reduce_all(tf.math.is_finite(v)))]


def _write_json(path: str, value: Any) -> None:
    """Writes JSON into a temporary file, then moves it into place."""
    with open(path + '.tmp', 'w') as f:
        json.dump(value, f, indent=2)
    os.replace(path + '.tmp', path)


class RunDirectory:
    """The files of one training run.

    ```none
    path/
      config.json        the model and training configuration of the run
      checkpoints/       tf.train.CheckpointManager: model, optimizer, step, wall time
      logs/              TensorBoard (tfp_ood.summaries)
      history.jsonl      one line per evaluation: step, wall time, bits/dim per set
      provenance.json    what trained the model: data, steps, wall time, final bits/dim
      run.lock           while a process trains in it
    ```
    """

    def __init__(self, path: str):
        self.path = path
        self.checkpoints = os.path.join(path, 'checkpoints')
        self.logs = os.path.join(path, 'logs')
        self.config_path = os.path.join(path, 'config.json')
        self.history_path = os.path.join(path, 'history.jsonl')
        self.provenance_path = os.path.join(path, 'provenance.json')

    def create(self) -> None:
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f'{self.path} is a file, not a run directory.')
        os.makedirs(self.path, exist_ok=True)

    def lock(self):
        """A context that holds `run.lock` (see `RunLockedError`)."""
        return _run_lock(self.path)

    def read_config(self) -> Optional[Dict[str, Any]]:
        if not os.path.exists(self.config_path):
            return None
        with open(self.config_path) as f:
            return json.load(f)

    def write_config(self, run_config: Mapping[str, Any]) -> None:
        _write_json(self.config_path, dict(run_config))

    def history(self, up_to_step: Optional[int] = None) -> List[Dict[str, Any]]:
        """The evaluation rows (of steps `<= up_to_step`)."""
        if not os.path.exists(self.history_path):
            return []
        with open(self.history_path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return [r for r in rows if up_to_step is None or r['step'] <= up_to_step]

    def truncate_history(self, step: int) -> List[Dict[str, Any]]:
        """Drops the rows past `step` (a run resumed from its checkpoint at `step`)."""
        rows = self.history(step)
        with open(self.history_path + '.tmp', 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in rows)
        os.replace(self.history_path + '.tmp', self.history_path)
        return rows

    def append_history(self, row: Mapping[str, Any]) -> None:
        with open(self.history_path, 'a') as f:
            f.write(json.dumps(dict(row)) + '\n')

    def read_provenance(self) -> Dict[str, Any]:
        if not os.path.exists(self.provenance_path):
            return {}
        with open(self.provenance_path) as f:
            try:
                return json.load(f)
            except ValueError:
                return {}

    def write_provenance(self, provenance: Mapping[str, Any]) -> None:
        _write_json(self.provenance_path, dict(provenance))


@dataclasses.dataclass
class LoopState:
    """What the training loop's hooks see.

    Attributes:
      step: steps done (the checkpoint's step when the loop begins).
      start: the step the loop began at.
      outputs: the last step's `StepOutputs` (as numbers), or `None`.
      history: the evaluation rows so far.
      stop_reason: `'completed'`, `'stopped by SIGINT'`, or `'error: ...'`.
    """

    step: int
    start: int
    outputs: Optional[StepOutputs] = None
    history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    stop_reason: str = 'completed'


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


class _Clock:
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


class _TrainingScalars(Hook):
    """Every `log_every` steps: the means of the applied steps since the last write."""

    def __init__(self, summaries: Summaries, config: TrainConfig, learning_rate: Callable,
                 skipped: tf.Variable, progress_bar):
        self.summaries, self.config, self.learning_rate = summaries, config, learning_rate
        self.skipped, self.bar = skipped, progress_bar
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
        self.bar.set_postfix(bpd=f'{mean.bits_per_dim:.3f}', img_s=f'{images_per_s:.0f}')
        self._values, self._since = [], time.monotonic()


class _Averaging(Hook):
    """After every applied step: one update of the moving averages of the weights."""

    def __init__(self, averages: WeightAverages):
        self.averages = averages

    def after_step(self, state):
        if state.outputs.applied:
            self.averages.update()


class _Evaluation(Hook):
    """Every `eval_every` steps and at the last: held-out bits/dim into the history,
    TensorBoard (and samples every `sample_every`)."""

    def __init__(self, model: DensityModel, eval_sets: Mapping[str, np.ndarray],
                 config: TrainConfig, summaries: Summaries, run: RunDirectory, clock: _Clock,
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


class _Checkpointing(Hook):
    """Every `checkpoint_every` steps and when the loop ends; never non-finite weights."""

    def __init__(self, model: DensityModel, manager: tf.train.CheckpointManager,
                 config: TrainConfig, clock: _Clock):
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


class _Provenance(Hook):
    """When the loop ends: what produced the last checkpoint, into provenance.json."""

    def __init__(self, run: RunDirectory, config: TrainConfig, data_info: Mapping[str, Any],
                 clock: _Clock, skipped: tf.Variable, summaries: Summaries, precision: str):
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


def run_loop(train_step: Callable, batches, state: LoopState, hooks: Sequence[Hook],
             config: TrainConfig, skipped: tf.Variable, step_variable: tf.Variable,
             stop: Optional[_StopRequest] = None) -> LoopState:
    """The training loop: a step per batch, then every hook's `after_step`.

    Stops when the batches end, when `stop` is requested (after the hooks of
    that step), or with `TrainingDivergedError` after
    `config.max_consecutive_nonfinite` skipped steps in a row. Every hook's
    `end` runs however the loop ends.
    """
    consecutive = 0
    for hook in hooks:
        hook.begin(state)
    try:
        for images, noise in batches:
            outputs = StepOutputs(*(o.numpy() for o in train_step(images, noise)))
            state.step += 1
            state.outputs = outputs
            step_variable.assign(state.step)
            if outputs.applied:
                consecutive = 0
            else:
                consecutive += 1
                skipped.assign_add(1)
                if consecutive >= config.max_consecutive_nonfinite:
                    raise TrainingDivergedError(
                        f'{consecutive} consecutive steps with a non-finite loss or gradient '
                        f'(last loss {float(outputs.loss)}, gradient norm '
                        f'{float(outputs.grad_norm)}) at step {state.step}; stopping. The last '
                        f'good checkpoint is kept. Try a lower learning_rate or clip_norm.')
            for hook in hooks:
                hook.after_step(state)
            if stop is not None and stop.requested:
                state.stop_reason = f'stopped by {stop.signal_name}'
                break
    except BaseException as e:
        state.stop_reason = f'error: {type(e).__name__}: {e}'[:300]
        raise
    finally:
        for hook in hooks:
            hook.end(state)
    return state


class _ProgressBar(Hook):
    """A tqdm bar of the steps: redrawn every second on a terminal, every minute in a log."""

    def __init__(self, config: TrainConfig, enabled: bool):
        self.config, self.enabled, self.bar = config, enabled, None

    def begin(self, state):
        self.bar = tqdm(initial=state.step, total=self.config.num_steps, desc='training',
                        unit='step', disable=not self.enabled,
                        mininterval=1.0 if sys.stderr.isatty() else 60.0)

    def set_postfix(self, **values):
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def after_step(self, state):
        self.bar.update(1)

    def end(self, state):
        self.bar.close()


def fit(model: DensityModel,
        train_images: np.ndarray,
        config: TrainConfig,
        workdir: str,
        eval_sets: Optional[Mapping[str, np.ndarray]] = None,
        strategy: Optional[tf.distribute.Strategy] = None,
        data_info: Optional[Mapping[str, Any]] = None,
        progress: bool = True) -> TrainResult:
    """Trains `model` on `train_images`, resuming from `workdir` if it holds the run.

    Args:
      model: any `DensityModel` with `get_config()`; built inside
        `strategy.scope()` when a strategy is given.
      train_images: uint8 `[N, H, W, C]`, `N >= batch_size`.
      config: the `TrainConfig`.
      workdir: run directory (created if missing; see `RunDirectory`).
      eval_sets: held-out uint8 image arrays by name, scored every
        `eval_every` steps (at most `num_eval_images` each).
      strategy: a `tf.distribute.Strategy`.
        Default value: the current (default) strategy.
      data_info: what `train_images` is, e.g. `{'dataset': 'cifar10', 'split':
        'train'}`; part of the run's identity and of the provenance.
      progress: show a progress bar with bits/dim and images/s.

    Returns:
      A `TrainResult`.

    Raises:
      ConfigMismatchError: `workdir` holds a run of another configuration.
      RunLockedError: another live process is training in `workdir`.
      TrainingDivergedError: too many non-finite steps in a row.
      ValueError: bad images or too few of them; `workdir` is a file.
    """
    strategy = strategy or tf.distribute.get_strategy()
    run = RunDirectory(workdir)
    if distribute.is_chief(strategy):
        run.create()
        with run.lock():  # One training per run directory.
            return _fit(model, train_images, config, run, run, eval_sets, strategy,
                        data_info or {}, progress)
    # Another worker of a multi-worker strategy: it resumes from the chief's
    # checkpoints, and writes its own (saving runs collective ops, so every
    # worker saves) with its logs into a folder of its own, removed at the end.
    # It evaluates nothing: the chief's history is the run's.
    index = strategy.cluster_resolver.task_id
    with outputs.temporary_folder(prefix=f'tfp_ood_worker{index}_') as scratch:
        return _fit(model, train_images, config, RunDirectory(scratch), run, {}, strategy,
                    data_info or {}, progress)


def _fit(model, train_images, config, run, shared, eval_sets, strategy, data_info, progress):
    """`fit`, writing into `run` and resuming from `shared` (the same run
    directory, except for a worker that is not the chief)."""
    train_images = check_images(train_images, model.image_shape, 'train_images').numpy()
    if len(train_images) < config.batch_size:
        raise ValueError(f'train_images: {len(train_images)} images are fewer than one '
                         f'batch of {config.batch_size}.')
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f'batch_size {config.batch_size} is not divisible by the '
                         f'{strategy.num_replicas_in_sync} replicas.')
    eval_sets = {name: check_images(images[:config.num_eval_images], model.image_shape,
                                    f'eval_sets[{name!r}]').numpy()
                 for name, images in (eval_sets or {}).items()}
    for name, images in eval_sets.items():  # Before any training, not at the first evaluation.
        if not len(images):
            raise ValueError(f'eval_sets[{name!r}] holds no images.')
    run_config = {'model': model.get_config(), 'train': dataclasses.asdict(config),
                  'data': dict(data_info)}
    saved = shared.read_config()
    if saved is not None:
        _check_same_run(saved, run_config, shared.path)
        _refuse_to_repeat_a_divergence(shared.path)
    run.write_config(run_config)

    with strategy.scope():
        schedule = LinearWarmup(config.learning_rate, config.warmup_steps)
        optimizer = tf_keras.optimizers.Adam(schedule)
        optimizer.build(model.trainable_variables)
        averages = _averages(model, config.ema_decay)
    # Host-side counters, outside the strategy's scope (not mirrored).
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name='step')
    skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name='skipped')
    clock = _Clock()
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var,
                                     wall_time=clock.variable, skipped=skipped,
                                     **_checkpointed(averages))
    manager = tf.train.CheckpointManager(checkpoint, run.checkpoints,
                                         max_to_keep=config.keep_checkpoints)
    if _restore_newest_readable(checkpoint, shared.checkpoints, full=True,
                                tidy=shared is run) is None:
        model.initialize(train_images[:config.num_init_images], seed=config.seed)
        if averages:
            averages.reset()
    start = int(step_var)
    distribute.check_same(strategy, start, f'the step to resume {shared.path} from')
    state = LoopState(step=start, start=start, history=run.truncate_history(start))
    summaries = Summaries(run.logs, resume_step=start)
    if start == 0:
        summaries.config(run_config)

    bar = _ProgressBar(config, progress)
    hooks = [bar,
             _TrainingScalars(summaries, config,
                              lambda: float(schedule(optimizer.iterations.numpy())), skipped, bar),
             *([_Averaging(averages)] if averages else []),
             _Evaluation(model, eval_sets, config, summaries, run, clock, averages),
             _Checkpointing(model, manager, config, clock),
             _Provenance(run, config, data_info, clock, skipped, summaries,
                         getattr(model, 'precision', 'float32'))]
    stop = _StopRequest()
    with stop.installed():
        run_loop(make_train_step(model, optimizer, config, strategy),
                 _distributed_batches(strategy, train_images, config, start), state, hooks,
                 config, skipped, step_var, stop)
    distribute.barrier(strategy)  # The workers leave when the chief has written the run.
    return TrainResult(step=state.step, wall_time=float(clock.variable),
                       skipped_steps=int(skipped), history=state.history,
                       stop_reason=state.stop_reason)


def train_on_dataset(family: str, config_name: str, dataset: str, split: str,
                     workdir: str, config: TrainConfig,
                     eval_specs: Optional[List[Tuple[str, str]]] = None,
                     data_dir: Optional[str] = None, source: str = 'auto',
                     download: bool = False, strategy: Optional[tf.distribute.Strategy] = None,
                     progress: bool = True,
                     precision: str = 'float32',
                     model_overrides: Optional[Dict[str, Any]] = None
                     ) -> Tuple[DensityModel, TrainResult]:
    """Builds a named model for a registry dataset and trains it with `fit`.

    What `tfp-ood train` and the examples' `--retrain` run.

    Args:
      family: a model name of `tfp_ood.models.MODEL_NAMES` (`'glow'`,
        `'cv_glow'`, `'pixelcnn'`, `'vae'`, `'vae_rnvp'`).
      config_name: a named configuration (`'paper'`, `'cpu'`, `'tiny'`).
      dataset: training dataset (registry name) and `split` its split.
      workdir: run directory.
      config: the `TrainConfig`; `config.seed` also seeds the weights.
      eval_specs: held-out `(dataset, split)` pairs, scored during training.
        Default value: the test split of `dataset`.
      data_dir, source, download: as in `tfp_ood.data.load`.
      strategy: a `tf.distribute.Strategy`.
      precision: where a flow's coupling networks compute (`'float32'` or
        `'bfloat16'`; see `tfp_ood.bijectors.glow`).
      model_overrides: fields of the model configuration that differ from the
        named size's, e.g. `{'coupling_scale': 'contracting'}`.

    Returns:
      The trained model and the `TrainResult`.
    """
    if family not in models.MODEL_NAMES:
        raise ValueError(f'Unknown model {family!r}; expected one of {models.MODEL_NAMES}.')
    spec = data.DATASETS.get(dataset)
    if spec is None:
        raise ValueError(f'Unknown dataset {dataset!r}; expected one of {sorted(data.DATASETS)}.')

    def images(name, split_):
        return data.images_array(data.load(name, split_, data_dir=data_dir, source=source,
                                           download=download))

    train_images = images(dataset, split)
    eval_sets = {f'{name}/{split_}': images(name, split_)[:config.num_eval_images]
                 for name, split_ in (eval_specs or [(dataset, 'test')])}
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = models.named_model(family, config_name, spec.image_shape, seed=config.seed,
                                   precision=precision, **(model_overrides or {}))
    result = fit(model, train_images, config, workdir, eval_sets=eval_sets, strategy=strategy,
                 progress=progress, data_info={'dataset': dataset, 'split': split,
                                               'num_images': int(len(train_images))})
    return model, result
