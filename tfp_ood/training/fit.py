"""`fit`: one training for every model family, resumable, under any strategy.
"""

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf
import tf_keras

from tfp_ood import data, distribute, export, models, outputs
from tfp_ood.config import complete_model_config
from tfp_ood.errors import InputError
from tfp_ood.inputs import LazyImages
from tfp_ood.models.base import DensityModel, check_images
from tfp_ood.summaries import Summaries
from tfp_ood.training import hooks
from tfp_ood.training.averaging import WeightAverages, averages_for, checkpointed
from tfp_ood.training.batches import distributed_batches
from tfp_ood.training.config import TrainConfig
from tfp_ood.training.loop import StopRequest, run_loop
from tfp_ood.training.run_directory import (RunDirectory, check_same_run,
                                            refuse_to_repeat_a_divergence,
                                            restore_newest_readable)
from tfp_ood.training.step import LinearWarmup, make_train_step

__all__ = ['TrainResult', 'fit', 'start_from', 'train_on_dataset', 'train_on_images']


@dataclasses.dataclass
class TrainResult:
    """What `fit` did: the final step, the evaluation history and the stop reason."""

    step: int
    wall_time: float
    skipped_steps: int
    history: List[Dict[str, Any]]
    stop_reason: str


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
      train_images: uint8 `[N, H, W, C]`, `N >= batch_size`: an array, or a
        `tfp_ood.inputs.LazyImages` (a folder, .npz file or TFDS dataset read
        batch by batch, so the run's memory does not grow with the number of
        images).
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


def _checked_images(model, train_images, eval_sets, config, strategy):
    """The training and held-out images as arrays, refused before any training if
    they cannot train or be evaluated."""
    if isinstance(train_images, LazyImages):  # Read batch by batch, not here.
        if train_images.shape[1:] != tuple(model.image_shape):
            raise InputError(f'train_images: images of {list(train_images.shape[1:])}; the '
                             f'model takes {list(model.image_shape)}.')
    else:
        train_images = check_images(train_images, model.image_shape, 'train_images').numpy()
    if len(train_images) < config.batch_size:
        raise InputError(f'train_images: {len(train_images)} images are fewer than one '
                         f'batch of {config.batch_size}.')
    if config.batch_size % strategy.num_replicas_in_sync:
        raise InputError(f'batch_size {config.batch_size} is not divisible by the '
                         f'{strategy.num_replicas_in_sync} replicas.')
    eval_sets = {name: check_images(images[:config.num_eval_images], model.image_shape,
                                    f'eval_sets[{name!r}]').numpy()
                 for name, images in (eval_sets or {}).items()}
    for name, images in eval_sets.items():  # Before any training, not at the first evaluation.
        if not len(images):
            raise InputError(f'eval_sets[{name!r}] holds no images.')
    return train_images, eval_sets


@dataclasses.dataclass
class _Trainer:
    """The state `fit` checkpoints: the optimizer, the averages and the counters."""

    schedule: LinearWarmup
    optimizer: tf_keras.optimizers.Optimizer
    averages: Optional[WeightAverages]
    step: tf.Variable
    skipped: tf.Variable
    clock: hooks.Clock

    @classmethod
    def build(cls, model: DensityModel, config: TrainConfig, strategy) -> '_Trainer':
        with strategy.scope():
            schedule = LinearWarmup(config.learning_rate, config.warmup_steps)
            optimizer = tf_keras.optimizers.Adam(schedule)
            optimizer.build(model.trainable_variables)
            averages = averages_for(model, config.ema_decay)
        # Host-side counters, outside the strategy's scope (not mirrored).
        return cls(schedule, optimizer, averages,
                   tf.Variable(0, dtype=tf.int64, trainable=False, name='step'),
                   tf.Variable(0, dtype=tf.int64, trainable=False, name='skipped'),
                   hooks.Clock())

    def checkpoint(self, model: DensityModel) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(model=model, optimizer=self.optimizer, step=self.step,
                                   wall_time=self.clock.variable, skipped=self.skipped,
                                   **checkpointed(self.averages))

    def learning_rate(self) -> float:
        return float(self.schedule(self.optimizer.iterations.numpy()))


def start_from(model: DensityModel, path: str) -> DensityModel:
    """Reads the weights of the tfp_ood SavedModel at `path` into `model`, a
    model of the same configuration; returns it.

    The configuration includes the model's seed: besides the initial weights,
    it draws constants that are not variables (the permutation and signs of
    each invertible 1x1 convolution's LU factors), so a model of another seed
    holding the same variables is another model.

    Raises:
      InputError: `path` holds a model of another configuration.
      FileNotFoundError: `path` is not a tfp_ood export.
    """
    # Completed with the defaults of fields added after the export was written.
    saved = complete_model_config(export.read_metadata(path)['model'])
    own = complete_model_config(model.get_config())
    if saved != own:
        differ = sorted(k for k in set(saved) | set(own) if saved.get(k) != own.get(k))
        raise InputError(f'init_from: {path} holds another model than the run\'s; they differ '
                         + ', '.join(f'in {k} ({saved.get(k)!r} there, {own.get(k)!r} here)'
                                     for k in differ) + '.')
    return export.read_variables(model, path)


def _fit(model, train_images, config, run, shared, eval_sets, strategy, data_info, progress):
    """`fit`, writing into `run` and resuming from `shared` (the same run
    directory, except for a worker that is not the chief)."""
    train_images, eval_sets = _checked_images(model, train_images, eval_sets, config, strategy)
    run_config = {'model': model.get_config(), 'train': dataclasses.asdict(config),
                  'data': dict(data_info)}
    saved = shared.read_config()
    if saved is not None:
        check_same_run(saved, run_config, shared.path)
        refuse_to_repeat_a_divergence(shared.path)
    run.write_config(run_config)

    trainer = _Trainer.build(model, config, strategy)
    checkpoint = trainer.checkpoint(model)
    manager = tf.train.CheckpointManager(checkpoint, run.checkpoints,
                                         max_to_keep=config.keep_checkpoints)
    if restore_newest_readable(checkpoint, shared.checkpoints, full=True,
                               tidy=shared is run) is None:
        model.initialize(train_images[:config.num_init_images], seed=config.seed)
        if config.init_from:
            start_from(model, config.init_from)
            run.write_started_from(config.init_from, export.read_metadata(config.init_from))
        if trainer.averages:
            trainer.averages.reset()
    start = int(trainer.step)
    distribute.check_same(strategy, start, f'the step to resume {shared.path} from')
    state = hooks.LoopState(step=start, start=start, history=run.truncate_history(start))
    summaries = Summaries(run.logs, resume_step=start)
    if start == 0:
        summaries.config(run_config)

    stop = StopRequest()
    with stop.installed():
        run_loop(make_train_step(model, optimizer=trainer.optimizer, config=config,
                                 strategy=strategy),
                 distributed_batches(strategy, train_images, config, start), state,
                 _hooks(model, trainer, manager, summaries, run, eval_sets, config, data_info,
                        progress),
                 config, trainer.skipped, trainer.step, stop)
    distribute.barrier(strategy)  # The workers leave when the chief has written the run.
    return TrainResult(step=state.step, wall_time=float(trainer.clock.variable),
                       skipped_steps=int(trainer.skipped), history=state.history,
                       stop_reason=state.stop_reason)


def _hooks(model, trainer, manager, summaries, run, eval_sets, config, data_info, progress):
    """`fit`'s hooks, in the order they run after each step."""
    return [hooks.ProgressBar(config, progress),
            hooks.TrainingScalars(summaries, config, trainer.learning_rate, trainer.skipped),
            *([hooks.Averaging(trainer.averages)] if trainer.averages else []),
            hooks.Evaluation(model, eval_sets, config, summaries, run, trainer.clock,
                             trainer.averages),
            hooks.Checkpointing(model, manager, config, trainer.clock),
            hooks.Provenance(run, config, data_info, trainer.clock, trainer.skipped, summaries,
                             model.precision)]


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
        raise InputError(f'Unknown model {family!r}; expected one of {models.MODEL_NAMES}.')
    spec = data.DATASETS.get(dataset)
    if spec is None:
        raise InputError(f'Unknown dataset {dataset!r}; expected one of {sorted(data.DATASETS)}.')

    def images(name, split_):
        return data.images_array(data.load(name, split_, data_dir=data_dir, source=source,
                                           download=download))

    train_images = images(dataset, split)
    eval_sets = {f'{name}/{split_}': images(name, split_)
                 for name, split_ in (eval_specs or [(dataset, 'test')])}
    return train_on_images(family, config_name, train_images, workdir, config, eval_sets,
                           {'dataset': dataset, 'split': split}, strategy, progress,
                           precision, model_overrides)


def train_on_images(family: str, config_name: str, train_images: np.ndarray, workdir: str,
                    config: TrainConfig, eval_sets: Optional[Mapping[str, np.ndarray]] = None,
                    data_info: Optional[Mapping[str, Any]] = None,
                    strategy: Optional[tf.distribute.Strategy] = None,
                    progress: bool = True, precision: str = 'float32',
                    model_overrides: Optional[Dict[str, Any]] = None
                    ) -> Tuple[DensityModel, TrainResult]:
    """Builds a named model for the shape of `train_images` (uint8 `[N, H, W,
    C]`: a folder's, an array's, any dataset's) and trains it with `fit`,
    scoring the first `config.num_eval_images` of each of `eval_sets`; the
    arguments are those of `train_on_dataset`, `data_info` what the images are
    (recorded in the run's configuration and provenance)."""
    if family not in models.MODEL_NAMES:
        raise InputError(f'Unknown model {family!r}; expected one of {models.MODEL_NAMES}.')
    shape = tuple(int(d) for d in np.shape(train_images)[1:])
    strategy = strategy or tf.distribute.get_strategy()
    # Started from an export, the model is the export's (its seed draws
    # constants that are not variables); `config.seed` orders the data.
    seed = (export.read_metadata(config.init_from)['model'].get('seed', 0)
            if config.init_from else config.seed)
    with strategy.scope():
        model = models.named_model(family, config_name, shape, seed=seed,
                                   precision=precision, **(model_overrides or {}))
    result = fit(model, train_images, config, workdir, eval_sets=eval_sets, strategy=strategy,
                 progress=progress, data_info=dict(data_info or {},
                                                   num_images=int(len(train_images))))
    return model, result
