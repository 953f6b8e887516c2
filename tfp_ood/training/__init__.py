"""Training, in pieces: `tfp_ood.training.config` (`TrainConfig`) so far; the loop,
its hooks and the run directory are in `tfp_ood.train`.

Importing this package imports no TensorFlow.
"""
