"""Sizes the `cpu` configurations: training images/s per candidate architecture.

The `cpu` Glow is the largest whose training step (forward, backward, Adam
update; uniform dequantization noise drawn in the step) still runs at >= 100
images/s at batch 64 on the machine at hand; the `cpu` PixelCNN the largest at
>= 30 images/s at batch 32. Candidates run alternately in one process, median
of several timed repeats each.

    python benchmarks/cpu_config.py [--family glow] [--shape 32,32,3] [--repeats 5]
    python benchmarks/cpu_config.py --family pixelcnn --batch-size 32
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
from tfp_ood.models import FlowModel, PixelCNNConfig, PixelCNNModel

# Glow: (levels, steps per level, hidden channels) per image shape.
# PixelCNN: (num_resnet, num_hierarchies, num_filters, num_logistic_mix).
CANDIDATES = {
    ('glow', (32, 32, 3)): [(3, 4, 64), (3, 8, 64), (3, 8, 128), (3, 8, 160), (3, 8, 192)],
    ('glow', (28, 28, 1)): [(2, 8, 64), (2, 16, 64), (2, 16, 96), (2, 16, 112),
                            (2, 16, 128)],
    ('pixelcnn', (32, 32, 3)): [(1, 1, 32, 5), (1, 2, 32, 5), (2, 2, 32, 5), (1, 2, 64, 5),
                                (2, 3, 64, 10)],
}


def build(family, shape, sizes):
    if family == 'glow':
        levels, steps, hidden = sizes
        return FlowModel.from_config(GlowConfig(image_shape=shape, num_levels=levels,
                                                num_steps_per_level=steps,
                                                hidden_channels=hidden))
    resnet, hierarchies, filters, mix = sizes
    return PixelCNNModel(PixelCNNConfig(shape, resnet, hierarchies, filters, mix, 0.0))


def make_step(model, optimizer, batch_size):
    spec = tf.TensorSpec((batch_size,) + model.image_shape, tf.uint8)

    @tf.function(input_signature=[spec])
    def step(images):
        noise = tf.random.uniform(tf.shape(images))
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model.bits_per_dim(model.training_log_prob(images, noise)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--family', default='glow', choices=('glow', 'pixelcnn'))
    parser.add_argument('--shape', default='32,32,3')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--steps', type=int, default=5, help='steps per timed repeat')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    shape = tuple(int(d) for d in args.shape.split(','))
    images = np.random.default_rng(0).integers(0, 256, (args.batch_size,) + shape, np.uint8)
    runs = {}
    for sizes in CANDIDATES[(args.family, shape)]:
        model = build(args.family, shape, sizes)
        model.initialize(images)
        step = make_step(model, tf_keras.optimizers.Adam(1e-4), args.batch_size)
        step(images)  # Trace.
        params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        runs[sizes] = dict(step=step, params=params, times=[])
    for _, key in itertools.product(range(args.repeats), runs):  # Alternate candidates.
        run = runs[key]
        start = time.perf_counter()
        for _ in range(args.steps):
            run['step'](images).numpy()
        run['times'].append(time.perf_counter() - start)
    report = []
    for sizes, run in runs.items():
        ips = args.batch_size * args.steps / statistics.median(run['times'])
        report.append(dict(sizes=list(sizes), params=run['params'],
                           train_images_per_s=round(ips, 1)))
        print(f'{" x ".join(map(str, sizes)):16s} params {run["params"]:9,d}  '
              f'train {ips:6.1f} images/s')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(family=args.family, shape=shape, batch_size=args.batch_size,
                           runs=report), f, indent=1)


if __name__ == '__main__':
    main()
