"""Training: one `fit` for every model family of the package (the public face of
`tfp_ood.training`, whose modules hold the pieces).

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

**Starting from a trained model.** `TrainConfig(init_from=path)` starts a run
from the weights of a tfp_ood SavedModel of the same configuration, seed
included (a shipped model, or any `tfp-ood export`), instead of the
data-dependent initialisation: to train a shipped model further, or to
fine-tune it on one's own images. The optimizer starts afresh; a resumed run
reads its own checkpoint, not the SavedModel.
"""

from tfp_ood.training.averaging import WeightAverages
from tfp_ood.training.config import TrainConfig
from tfp_ood.training.errors import ConfigMismatchError, RunLockedError, TrainingDivergedError
from tfp_ood.training.fit import TrainResult, fit, start_from, train_on_dataset, train_on_images
from tfp_ood.training.hooks import Hook, LoopState
from tfp_ood.training.loop import run_loop
from tfp_ood.training.run_directory import (LOCK_FILE, RunDirectory, load_run_config,
                                            nonfinite_variables, restore_latest)
from tfp_ood.training.step import LinearWarmup, StepOutputs, make_train_step

__all__ = ['ConfigMismatchError', 'Hook', 'LOCK_FILE', 'LinearWarmup', 'LoopState',
           'RunDirectory', 'RunLockedError', 'StepOutputs', 'TrainConfig', 'TrainResult',
           'TrainingDivergedError', 'WeightAverages', 'fit', 'load_run_config',
           'make_train_step', 'nonfinite_variables', 'restore_latest', 'run_loop', 'start_from',
           'train_on_dataset', 'train_on_images']
