"""Training: one `fit` for every model family of the package.

`fit(model, train_images, config, workdir)` minimises the mean bits/dim of
uniformly dequantized training images with Adam (linear warm-up, gradient
clipping by global norm), and writes into `workdir`:

```none
workdir/
  config.json        the model and training configuration of the run
  checkpoints/       tf.train.CheckpointManager: model, optimizer, step, wall time
  logs/              TensorBoard (tfp_ood.summaries)
  history.jsonl      one line per evaluation: step, wall time, bits/dim per set
  provenance.json    what trained the model: data, steps, wall time, final bits/dim
```

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
import math
import os
import shutil
import signal
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging
from tqdm.auto import tqdm

from tfp_ood.data import perturb
from tfp_ood.evaluate import score
from tfp_ood.models.base import DensityModel, check_images
from tfp_ood.summaries import Summaries

__all__ = ['ConfigMismatchError', 'LinearWarmup', 'RunLockedError', 'TrainConfig',
           'TrainResult', 'TrainingDivergedError', 'fit', 'load_run_config',
           'nonfinite_variables', 'restore_latest', 'train_on_dataset']

# Training-config fields that may change between a run and its resumption.
_RESUMABLE_CHANGES = ('num_steps', 'checkpoint_every', 'eval_every', 'log_every',
                      'keep_checkpoints', 'num_eval_images', 'sample_every')


def _field(default, help_text: str, flag: Optional[str] = None):
    """A `TrainConfig` field with its command-line help (and flag name, if not the field's)."""
    return dataclasses.field(default=default, metadata={'help': help_text, 'flag': flag})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
      num_steps: total optimizer steps (skipped non-finite steps count).
      batch_size: global batch size (split across replicas).
      learning_rate: peak Adam learning rate.
      warmup_steps: steps of linear warm-up from 0 to `learning_rate`.
      clip_norm: gradients are clipped to this global norm.
      max_consecutive_nonfinite: stop after this many skipped steps in a row.
      checkpoint_every: steps between checkpoints.
      eval_every: steps between evaluations of the held-out sets.
      log_every: steps between training scalars.
      sample_every: steps between sample images (0: with every evaluation).
      num_init_images: training images for data-dependent initialisation.
      num_eval_images: at most this many images of each held-out set.
      keep_checkpoints: checkpoints kept on disk.
      seed: seed of the data order and the dequantization noise.
      mutation_rate: each value of every training image is replaced with this
        probability by a uniform draw from 0..255 (`tfp_ood.data.perturb`);
        `> 0` trains the background model of the likelihood-ratio detector
        (Ren et al., 2019).
      weight_decay: L2 penalty `weight_decay * sum(kernel**2)` over every
        convolution and dense kernel, added to the per-image negative
        log-likelihood in nats (Ren et al.'s `lambda`; in the bits/dim loss it
        is divided by `D ln 2`). The kernels of the `cpu` Glows sum to about
        6,000 in squares, so `0.01` adds a few percent to their loss.
    """

    num_steps: int = _field(10000, 'total training steps', flag='steps')
    batch_size: int = _field(64, 'global batch size')
    learning_rate: float = _field(1e-3, 'peak Adam learning rate')
    warmup_steps: int = _field(500, 'steps of linear warm-up')
    clip_norm: float = _field(50.0, 'gradient clip norm')
    max_consecutive_nonfinite: int = _field(
        20, 'stop after this many non-finite steps in a row')
    checkpoint_every: int = _field(500, 'steps per checkpoint')
    eval_every: int = _field(1000, 'steps per evaluation of the held-out sets')
    log_every: int = _field(50, 'steps per training scalars (TensorBoard)')
    sample_every: int = _field(0, 'steps per sample images (0: with every evaluation)')
    num_init_images: int = _field(512, 'training images for the data-dependent initialisation')
    num_eval_images: int = _field(2000, 'images per held-out set')
    keep_checkpoints: int = _field(3, 'checkpoints kept on disk')
    seed: int = _field(0, 'seed of the weights, the data order and the dequantization noise')
    mutation_rate: float = _field(
        0.0, 'replace each training value with this probability by a uniform draw from '
        '0..255 (a background model for the likelihood-ratio detector)')
    weight_decay: float = _field(0.0, 'L2 penalty on every kernel, per image in nats')

    def __post_init__(self):
        for name in ('num_steps', 'batch_size', 'checkpoint_every', 'eval_every', 'log_every',
                     'max_consecutive_nonfinite', 'num_init_images', 'keep_checkpoints'):
            if getattr(self, name) < 1:
                raise ValueError(f'TrainConfig.{name} must be >= 1; got {getattr(self, name)}.')
        # `not x > 0` also refuses NaN; clipping to an infinite norm gives NaN gradients.
        if not (0 < self.learning_rate < math.inf and 0 < self.clip_norm < math.inf
                and self.warmup_steps >= 0):
            raise ValueError(f'learning_rate and clip_norm must be finite and > 0 and '
                             f'warmup_steps >= 0; got {self.learning_rate}, {self.clip_norm}, '
                             f'{self.warmup_steps}.')
        if not 0.0 <= self.mutation_rate <= 1.0:
            raise ValueError(f'mutation_rate must be in [0, 1]; got {self.mutation_rate}.')
        if not 0.0 <= self.weight_decay < float('inf'):
            raise ValueError(f'weight_decay must be finite and >= 0; got {self.weight_decay}.')


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
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _check_same_run(saved: Dict[str, Any], current: Dict[str, Any], workdir: str) -> None:
    problems = []
    if saved.get('model') != current['model']:
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


def _make_train_step(model: DensityModel, optimizer, strategy, config: TrainConfig):
    variables = model.trainable_variables
    decayed = _decayed(model) if config.weight_decay else []
    # Nats per image -> the loss's bits/dim; each replica adds its share, since
    # the replicas' losses are summed.
    decay_scale = config.weight_decay / (model.num_dims * np.log(2.0)
                                         * strategy.num_replicas_in_sync)

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
        with tf.GradientTape() as tape:
            bpd = model.bits_per_dim(model.training_log_prob(images, noise))
            bpd = tf.reduce_sum(bpd) / config.batch_size
            loss = bpd
            if decayed:
                loss += decay_scale * tf.add_n([tf.reduce_sum(tf.square(v)) for v in decayed])
        grads = tape.gradient(loss, variables)
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        loss, bpd = context.all_reduce(tf.distribute.ReduceOp.SUM, [loss, bpd])
        grads, norm = tf.clip_by_global_norm(grads, config.clip_norm)
        ok = tf.math.is_finite(norm) & tf.math.is_finite(loss)
        context.merge_call(apply_if_finite, args=(grads, ok))
        return loss, bpd, norm, ok

    @tf.function
    def train_step(images, noise):
        outputs = strategy.run(replica_step, args=(images, noise))
        # Identical on every replica (all-reduced): take the first.
        return tuple(strategy.experimental_local_results(o)[0] for o in outputs)

    return train_step


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event):
    """Turns SIGINT and SIGTERM into a request to checkpoint and stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame):
        del frame
        stop.set()
        stop.signal = signal.Signals(signum).name

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class RunLockedError(RuntimeError):
    """Another live process is training in the same run directory."""


LOCK_FILE = 'run.lock'


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Alive, another user's.
        return True
    return True


@contextlib.contextmanager
def _run_lock(workdir: str):
    """Holds `workdir/run.lock` for the run; refuses a live holder, replaces a stale one.

    The lock names the process and the machine that holds it. It is removed
    on any exit of the run; after a crash (SIGKILL, power loss) it is left
    behind, and the next run on the same machine sees that its process is gone
    and takes it over.
    """
    path = os.path.join(workdir, LOCK_FILE)
    me = {'pid': os.getpid(), 'host': socket.gethostname()}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path) as f:
                    holder = json.load(f)
                pid, host = int(holder['pid']), str(holder['host'])
            except (OSError, ValueError, KeyError, TypeError):
                pid, host = None, me['host']  # Unreadable: a crash while writing it.
            if pid is not None and host != me['host']:
                raise RunLockedError(
                    f'{workdir} is being trained by process {pid} on {host} (lock {path}); '
                    f'if that run is gone, delete the lock file.') from None
            if pid is not None and _process_alive(pid):
                raise RunLockedError(
                    f'{workdir} is being trained by process {pid} on this machine (lock '
                    f'{path}); wait for it or stop it, or use another run directory.') from None
            logging.warning('Taking over the stale lock %s (its process %s is gone).',
                            path, pid)
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, 'w') as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        try:
            with open(path) as f:
                mine = json.load(f) == me
        except (OSError, ValueError):
            mine = False
        if mine:
            os.remove(path)


def _restore_newest_readable(checkpoint: tf.train.Checkpoint, directory: str,
                             full: bool) -> Optional[str]:
    """Restores the newest checkpoint in `directory` that reads, newest first.

    A checkpoint cut short (the process killed while writing it, a full disk)
    is skipped with a warning, and the one before it restored; folders of
    unfinished writes (`*_temp*`) are removed. Returns the path restored, or
    `None` if the directory has no checkpoint.

    Raises:
      ValueError: there are checkpoints but none of them reads.
    """
    if os.path.isdir(directory):
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


def restore_latest(model: DensityModel, workdir: str) -> int:
    """Loads the model weights of the last checkpoint in `workdir`; returns its step.

    The optimizer state is not needed (and not loaded) for scoring or export.
    """
    saved = load_run_config(workdir)
    if saved is None:
        raise FileNotFoundError(f'{workdir} is not a training run: no config.json.')
    if saved['model'] != model.get_config():
        raise ConfigMismatchError(f'The checkpoint in {workdir} is of model '
                                  f'{saved["model"]}, not {model.get_config()}.')
    step = tf.Variable(0, dtype=tf.int64)
    path = _restore_newest_readable(tf.train.Checkpoint(model=model, step=step),
                                    os.path.join(workdir, 'checkpoints'), full=False)
    if path is None:
        raise FileNotFoundError(f'No checkpoint in {os.path.join(workdir, "checkpoints")}.')
    bad = nonfinite_variables(model)
    if bad:
        raise ValueError(f'The checkpoint {path} holds {len(bad)} non-finite variables (e.g. '
                         f'{bad[0]}); every score of the model would be NaN.')
    return int(step)


def nonfinite_variables(model: DensityModel) -> List[str]:
    """Names of the model's variables that hold NaN or infinite values."""
    return [v.name for v in model.trainable_variables
            if v.dtype.is_floating and not bool(tf.reduce_all(tf.math.is_finite(v)))]


def _read_history(path: str, up_to_step: int) -> List[Dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r['step'] <= up_to_step]


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
      workdir: run directory (created if missing).
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
      ValueError: bad images or too few of them.
    """
    strategy = strategy or tf.distribute.get_strategy()
    os.makedirs(workdir, exist_ok=True)
    # One training per run directory (the chief's, under a multi-worker strategy).
    lock = _run_lock(workdir) if strategy.extended.should_checkpoint else contextlib.nullcontext()
    with lock:
        return _fit(model, train_images, config, workdir, eval_sets, strategy, data_info,
                    progress)


def _fit(model, train_images, config, workdir, eval_sets, strategy, data_info, progress):
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
    run_config = {'model': model.get_config(), 'train': dataclasses.asdict(config),
                  'data': dict(data_info or {})}
    saved = load_run_config(workdir)
    if saved is not None:
        _check_same_run(saved, run_config, workdir)
        _refuse_to_repeat_a_divergence(workdir)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
        json.dump(run_config, f, indent=2)

    with strategy.scope():
        schedule = LinearWarmup(config.learning_rate, config.warmup_steps)
        optimizer = tf_keras.optimizers.Adam(schedule)
        optimizer.build(model.trainable_variables)
    # Host-side counters, outside the strategy's scope (not mirrored).
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name='step')
    wall_var = tf.Variable(0., dtype=tf.float64, trainable=False, name='wall_time')
    skipped_var = tf.Variable(0, dtype=tf.int64, trainable=False, name='skipped')
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var,
                                     wall_time=wall_var, skipped=skipped_var)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(workdir, 'checkpoints'),
                                         max_to_keep=config.keep_checkpoints)
    if _restore_newest_readable(checkpoint, manager.directory, full=True) is None:
        init = train_images[:config.num_init_images]
        model.initialize(init, seed=config.seed)
    start = int(step_var)
    history_path = os.path.join(workdir, 'history.jsonl')
    history = _read_history(history_path, start)
    with open(history_path, 'w') as f:  # Drop rows past the restored step.
        f.writelines(json.dumps(r) + '\n' for r in history)

    summaries = Summaries(os.path.join(workdir, 'logs'), resume_step=start)
    if start == 0:
        summaries.config(run_config)
    train_step = _make_train_step(model, optimizer, strategy, config)
    batches = _distributed_batches(strategy, train_images, config, start)

    def evaluate(step):
        results = {name: score(model, images, name=name, progress=False)
                   for name, images in eval_sets.items()}
        means = summaries.scores(results, step)
        row = {'step': step, 'wall_time': float(wall_var) + time.monotonic() - t0,
               **{k[len('eval/'):]: v for k, v in means.items()}}
        history.append(row)
        with open(history_path, 'a') as f:
            f.write(json.dumps(row) + '\n')
        sample_every = config.sample_every or config.eval_every
        if step % sample_every == 0 or step == config.num_steps:
            summaries.samples(model, step)
        return row

    def save(step, on_exit=False):
        wall_var.assign(float(wall_var) + time.monotonic() - t0)
        bad = nonfinite_variables(model)
        if bad:  # Never a checkpoint that every later score would be NaN from.
            message = (f'Not saving step {step}: {len(bad)} variables are not finite (e.g. '
                       f'{bad[0]}); the last good checkpoint is in {manager.directory}.')
            if on_exit:  # Leave the run's own error (or stop) as the reason.
                logging.warning(message)
                return time.monotonic()
            raise TrainingDivergedError(message)
        manager.save(checkpoint_number=step)
        return time.monotonic()

    stop = threading.Event()
    stop.signal = None
    step, consecutive, last_saved = start, 0, start
    losses, bpds, norms, interval_start = [], [], [], time.monotonic()
    t0 = time.monotonic()
    stop_reason = 'completed'
    try:
        # Redraw every second on a terminal, every minute into a log file.
        interval = 1.0 if sys.stderr.isatty() else 60.0
        with _stop_on_signals(stop), tqdm(initial=start, total=config.num_steps,
                                          desc='training', unit='step', disable=not progress,
                                          mininterval=interval) as bar:
            for images, noise in batches:
                loss, bpd, norm, ok = train_step(images, noise)
                step += 1
                step_var.assign(step)
                if bool(ok):
                    consecutive = 0
                    losses.append(float(loss))
                    bpds.append(float(bpd))
                    norms.append(float(norm))
                else:
                    consecutive += 1
                    skipped_var.assign_add(1)
                    if consecutive >= config.max_consecutive_nonfinite:
                        raise TrainingDivergedError(
                            f'{consecutive} consecutive steps with a non-finite loss or '
                            f'gradient (last loss {float(loss)}, gradient norm '
                            f'{float(norm)}) at step {step}; stopping. The last good '
                            f'checkpoint is in {manager.directory}. Try a lower '
                            f'learning_rate or clip_norm.')
                bar.update(1)
                if step % config.log_every == 0 and losses:
                    elapsed = time.monotonic() - interval_start
                    images_per_s = config.log_every * config.batch_size / elapsed
                    summaries.scalars({
                        'train/loss': np.mean(losses), 'train/bits_per_dim': np.mean(bpds),
                        'train/grad_norm': np.mean(norms),
                        'train/learning_rate': float(schedule(optimizer.iterations.numpy())),
                        'train/images_per_s': images_per_s,
                        'train/skipped_steps': int(skipped_var)}, step)
                    bar.set_postfix(bpd=f'{np.mean(bpds):.3f}', img_s=f'{images_per_s:.0f}')
                    losses, bpds, norms, interval_start = [], [], [], time.monotonic()
                if eval_sets and (step % config.eval_every == 0 or step == config.num_steps):
                    evaluate(step)
                if step % config.checkpoint_every == 0:
                    t0, last_saved = save(step), step
                if stop.is_set():
                    stop_reason = f'stopped by {stop.signal}'
                    break
    except BaseException as e:
        stop_reason = f'error: {type(e).__name__}: {e}'[:300]
        raise
    finally:
        if step > last_saved or not manager.latest_checkpoint:
            t0 = save(step, on_exit=True)
        summaries.flush()
        # Provenance of the last checkpoint, however the run ended.
        final = {k: v for k, v in (history[-1] if history else {}).items()
                 if k not in ('step', 'wall_time')}
        provenance = {'data': dict(data_info or {}), 'steps': step,
                      'wall_time_s': round(float(wall_var), 1),
                      'skipped_steps': int(skipped_var), 'final_eval': final,
                      'final_eval_step': history[-1]['step'] if history else None,
                      'train_config': dataclasses.asdict(config), 'stop_reason': stop_reason}
        with open(os.path.join(workdir, 'provenance.json'), 'w') as f:
            json.dump(provenance, f, indent=2)
    return TrainResult(step=step, wall_time=float(wall_var), skipped_steps=int(skipped_var),
                       history=history, stop_reason=stop_reason)


def train_on_dataset(family: str, config_name: str, dataset: str, split: str,
                     workdir: str, config: TrainConfig,
                     eval_specs: Optional[List[Tuple[str, str]]] = None,
                     data_dir: Optional[str] = None, source: str = 'auto',
                     download: bool = False, strategy: Optional[tf.distribute.Strategy] = None,
                     progress: bool = True) -> Tuple[DensityModel, TrainResult]:
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

    Returns:
      The trained model and the `TrainResult`.
    """
    from tfp_ood import data, models  # Avoids a cycle: models need nothing from here.
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
        model = models.named_model(family, config_name, spec.image_shape, seed=config.seed)
    result = fit(model, train_images, config, workdir, eval_sets=eval_sets, strategy=strategy,
                 progress=progress, data_info={'dataset': dataset, 'split': split,
                                               'num_images': int(len(train_images))})
    return model, result
