"""The files of one training run, in the one place that knows their layout
(`RunDirectory`): its configuration and whether a new run may resume it, its
lock, its checkpoints (the newest readable one restored), history and
provenance.
"""

import dataclasses
import json
import os
import shutil
from typing import Any, Dict, List, Mapping, Optional

import tensorflow as tf
from absl import logging

from tfp_ood import outputs
from tfp_ood.config import complete_model_config
from tfp_ood.errors import InputError
from tfp_ood.models.base import DensityModel
from tfp_ood.training.averaging import averages_for, checkpointed
from tfp_ood.training.config import TrainConfig
from tfp_ood.training.errors import ConfigMismatchError, RunLockedError, TrainingDivergedError

__all__ = ['LOCK_FILE', 'RunDirectory', 'check_same_run', 'load_run_config', 'nonfinite_variables',
           'refuse_to_repeat_a_divergence', 'restore_latest', 'restore_newest_readable']


# Training-config fields that may change between a run and its resumption.
_RESUMABLE_CHANGES = ('num_steps', 'checkpoint_every', 'eval_every', 'log_every',
                      'keep_checkpoints', 'num_eval_images', 'sample_every')


LOCK_FILE = 'run.lock'


def _run_lock(workdir: str):
    """Holds `workdir/run.lock` for the run (`tfp_ood.outputs.hold_lock`): a live
    holder is refused, a stale one (its process gone after a crash) taken over."""
    return outputs.hold_lock(os.path.join(workdir, LOCK_FILE), f'{workdir} is being trained',
                             'wait for it or stop it, or use another run directory',
                             RunLockedError)


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
      started_from.json  a run started from an export (`init_from`): that export's
                         configuration and provenance, so the lineage outlives it
      skipped.txt        the files of an images folder that could not be decoded (if any)
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
        self.started_from_path = os.path.join(path, 'started_from.json')
        self.skipped_path = os.path.join(path, 'skipped.txt')

    def create(self) -> None:
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise InputError(f'{self.path} is a file, not a run directory.')
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
        """`provenance.json`, with `started_from` (`started_from.json`) for a run
        started from an export: what an export of the run records."""
        provenance = {}
        if os.path.exists(self.provenance_path):
            with open(self.provenance_path) as f:
                try:
                    provenance = json.load(f)
                except ValueError:
                    provenance = {}
        if os.path.exists(self.started_from_path):
            with open(self.started_from_path) as f:
                provenance['started_from'] = json.load(f)
        return provenance

    def write_started_from(self, path: str, metadata: Mapping[str, Any]) -> None:
        """Records the export at `path` (its metadata asset `metadata`) that the
        run's weights started from."""
        _write_json(self.started_from_path, {
            'path': path, 'model': metadata.get('model'),
            'provenance': metadata.get('provenance', {})})

    def write_provenance(self, provenance: Mapping[str, Any]) -> None:
        _write_json(self.provenance_path, dict(provenance))


def load_run_config(workdir: str) -> Optional[Dict[str, Any]]:
    """The `config.json` of a run directory, or `None` if there is none."""
    return RunDirectory(workdir).read_config()


def _complete(model_config: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """`config.complete_model_config`, or the value itself if it is not a model's."""
    try:
        return complete_model_config(model_config)
    except (TypeError, ValueError):
        return model_config


def check_same_run(saved: Dict[str, Any], current: Dict[str, Any], workdir: str) -> None:
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


def refuse_to_repeat_a_divergence(workdir: str) -> None:
    """A run that stopped on non-finite steps would diverge again from the same
    checkpoint with the same settings: say what to change instead."""
    provenance = RunDirectory(workdir).read_provenance()
    if str(provenance.get('stop_reason', '')).startswith('error: TrainingDivergedError'):
        raise TrainingDivergedError(
            f'{workdir} diverged at step {provenance.get("steps")} (see its provenance.json); '
            f'resuming with the same settings would diverge again. Start a new run directory '
            f'with a lower learning_rate (--learning-rate) or clip_norm (--clip-norm), or '
            f'delete {workdir} to start over.')


def restore_newest_readable(checkpoint: tf.train.Checkpoint, directory: str,
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
        raise InputError(f'No checkpoint in {directory} reads: {"; ".join(errors)}.')
    return None


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
    averages = averages_for(model, saved.get('train', {}).get('ema_decay', 0.0))
    directory = RunDirectory(workdir).checkpoints
    path = restore_newest_readable(tf.train.Checkpoint(model=model, step=step,
                                                       **checkpointed(averages)),
                                   directory, full=False)
    if path is None:
        raise FileNotFoundError(f'No checkpoint in {directory}.')
    if averages:
        averages.assign_to_model()
    bad = nonfinite_variables(model)
    if bad:
        raise InputError(f'The checkpoint {path} holds {len(bad)} non-finite variables (e.g. '
                         f'{bad[0]}); every score of the model would be NaN.')
    return int(step)


def nonfinite_variables(model: DensityModel) -> List[str]:
    """Names of the model's variables that hold NaN or infinite values."""
    return [v.name for v in model.trainable_variables
            if v.dtype.is_floating and not bool(tf.reduce_all(tf.math.is_finite(v)))]
