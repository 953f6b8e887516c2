"""Sizes the `cpu` Glow configuration: training images/s at batch 64 per architecture.

The `cpu` config is the largest Glow whose training step (forward, backward,
Adam update; uniform dequantization noise drawn in the step) still runs at
>= 100 images/s at batch 64 on the machine at hand. Candidates run
alternately in one process, median of several timed repeats each.

    python benchmarks/glow_cpu_config.py [--shape 32,32,3] [--repeats 5]
"""

import argparse
import itertools
import json
import statistics
import time

import numpy as np
import tensorflow as tf
import tf_keras

from tfp_ood.config import GlowConfig
from tfp_ood.models import FlowModel

CANDIDATES = {
    (32, 32, 3): [(3, 4, 64), (3, 8, 64), (3, 8, 128), (3, 8, 160), (3, 8, 192)],
    (28, 28, 1): [(2, 8, 64), (2, 16, 64), (2, 16, 96), (2, 16, 112), (2, 16, 128)],
}


def make_step(model, optimizer, batch_size):
    spec = tf.TensorSpec((batch_size,) + model.image_shape, tf.uint8)

    @tf.function(input_signature=[spec])
    def step(images):
        noise = tf.random.uniform(tf.shape(images))
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model.bits_per_dim(model.log_prob(images, noise)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--shape', default='32,32,3')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--steps', type=int, default=5, help='steps per timed repeat')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    shape = tuple(int(d) for d in args.shape.split(','))
    images = np.random.default_rng(0).integers(0, 256, (args.batch_size,) + shape, np.uint8)
    runs = {}
    for levels, steps, hidden in CANDIDATES[shape]:
        config = GlowConfig(image_shape=shape, num_levels=levels, num_steps_per_level=steps,
                            hidden_channels=hidden)
        model = FlowModel.from_config(config)
        model.initialize(images)
        step = make_step(model, tf_keras.optimizers.Adam(1e-4), args.batch_size)
        step(images)  # Trace.
        params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        runs[(levels, steps, hidden)] = dict(step=step, params=params, times=[])
    for _, key in itertools.product(range(args.repeats), runs):  # Alternate candidates.
        run = runs[key]
        start = time.perf_counter()
        for _ in range(args.steps):
            run['step'](images).numpy()
        run['times'].append(time.perf_counter() - start)
    report = []
    for (levels, steps, hidden), run in runs.items():
        ips = args.batch_size * args.steps / statistics.median(run['times'])
        report.append(dict(levels=levels, steps=steps, hidden=hidden, params=run['params'],
                           train_images_per_s=round(ips, 1)))
        print(f'{levels} x {steps} x {hidden:4d}  params {run["params"]:9,d}  '
              f'train {ips:6.1f} images/s')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(shape=shape, batch_size=args.batch_size, runs=report), f, indent=1)


if __name__ == '__main__':
    main()
