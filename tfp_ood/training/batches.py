"""The training batches: global batch `s` is a function of `(seed, s)` alone, so a
resumed run sees exactly the batches the uninterrupted run would have.
"""

import numpy as np
import tensorflow as tf

from tfp_ood import data
from tfp_ood.training.config import TrainConfig

__all__ = ['distributed_batches', 'global_batch']


def global_batch(images: np.ndarray, step: int, batch_size: int, seed: int):
    """Indices and dequantization noise of global batch `step` (a function of step)."""
    steps_per_epoch = len(images) // batch_size
    epoch, position = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(images))
    index = np.sort(order[position * batch_size:(position + 1) * batch_size])
    noise = np.random.default_rng([seed, 1_000_003, step]).random(
        (batch_size,) + images.shape[1:], dtype=np.float32)
    return index, noise


def distributed_batches(strategy, images: np.ndarray, config: TrainConfig, start: int):
    """Per-replica slices of the global batches from step `start` on."""
    shape = images.shape[1:]

    def dataset_fn(context: tf.distribute.InputContext):
        per_replica = context.get_per_replica_batch_size(config.batch_size)
        replicas = context.num_replicas_in_sync // context.num_input_pipelines
        first = context.input_pipeline_id * replicas

        def generate():
            for step in range(start, config.num_steps):
                index, noise = global_batch(images, step, config.batch_size, config.seed)
                batch = images[index]
                if config.mutation_rate:
                    batch = data.perturb(batch, config.mutation_rate,
                                         np.random.default_rng([config.seed, 2_000_003, step]))
                for replica in range(first, first + replicas):
                    part = slice(replica * per_replica, (replica + 1) * per_replica)
                    yield batch[part], noise[part]

        spec = (tf.TensorSpec((per_replica,) + shape, tf.uint8),
                tf.TensorSpec((per_replica,) + shape, tf.float32))
        return data.without_autotune(
            tf.data.Dataset.from_generator(generate, output_signature=spec).prefetch(4))

    return strategy.distribute_datasets_from_function(dataset_fn)
