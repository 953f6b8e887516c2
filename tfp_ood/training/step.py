"""The traced training step and its learning-rate schedule.
"""

from typing import NamedTuple, Optional

import numpy as np
import tensorflow as tf
import tf_keras

from tfp_ood.errors import InputError
from tfp_ood.models.base import DensityModel
from tfp_ood.training.averaging import decayed_variables
from tfp_ood.training.config import TrainConfig

__all__ = ['LinearWarmup', 'StepOutputs', 'make_train_step']


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
    if jit_compile and strategy is not None:
        raise InputError('make_train_step: jit_compile=True runs without a strategy.')
    strategy = None if jit_compile else (strategy or tf.distribute.get_strategy())
    loss_and_gradients = _loss_and_gradients(
        model, config, 1 if strategy is None else strategy.num_replicas_in_sync)
    variables = model.trainable_variables

    def clip(grads, loss):
        grads, norm = tf.clip_by_global_norm(grads, config.clip_norm)
        return grads, norm, tf.math.is_finite(norm) & tf.math.is_finite(loss)

    if jit_compile:
        def plain_step(images, noise):
            loss, bpd, grads = loss_and_gradients(images, noise)
            grads, norm, ok = clip(grads, loss)

            def apply():
                optimizer.apply_gradients(zip(grads, variables))
                return tf.constant(True)

            return StepOutputs(loss, bpd, norm, tf.cond(ok, apply, lambda: tf.constant(False)))

        return tf.function(plain_step, jit_compile=True, autograph=False)

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

    @tf.function(autograph=False)
    def train_step(images, noise):
        outputs = strategy.run(replica_step, args=(images, noise))
        # Identical on every replica (all-reduced): take the first.
        return StepOutputs(*(strategy.experimental_local_results(o)[0] for o in outputs))

    return train_step


def _loss_and_gradients(model: DensityModel, config: TrainConfig, replicas: int):
    """`fn(images, noise) -> (loss, bits/dim, gradients)` of one replica's share:
    its images' bits/dim summed over the global batch, plus its share of the
    weight decay (the replicas' losses are summed)."""
    variables = model.trainable_variables
    decayed = decayed_variables(model) if config.weight_decay else []
    # Nats per image -> the loss's bits/dim.
    decay_scale = config.weight_decay / (model.num_dims * np.log(2.0) * replicas)

    def loss_and_gradients(images, noise):
        with tf.GradientTape() as tape:
            bpd = model.bits_per_dim(model.training_log_prob(images, noise))
            bpd = tf.reduce_sum(bpd) / config.batch_size
            loss = bpd
            if decayed:
                loss += decay_scale * tf.add_n([tf.reduce_sum(tf.square(v)) for v in decayed])
        return loss, bpd, tape.gradient(loss, variables)

    return loss_and_gradients
