"""Training, one module a piece (`tfp_ood.train` is its public face):

- `config`: `TrainConfig`, the flags of `tfp-ood train` (no TensorFlow);
- `errors`: what a user can act on (`ConfigMismatchError`, `RunLockedError`,
  `TrainingDivergedError`);
- `run_directory`: the one place that knows a run's files (`RunDirectory`),
  whether a run may resume one, and restoring its checkpoints;
- `batches`: global batch `s` as a function of `(seed, s)`, per replica;
- `averaging`: moving averages of the weights;
- `step`: the traced training step and the learning-rate schedule;
- `hooks`, `loop`: the loop and what it does besides training;
- `fit`: `fit`, `train_on_dataset` and `train_on_images`.

Importing this package imports no TensorFlow.
"""
