r"""tf.data's autotuning on against off, for scoring and for training.

`tfp_ood.evaluate.score` and the trainer's batches run their `tf.data`
pipelines with autotuning off (`tfp_ood.data.without_autotune`). Measured
here, in one process, back to back in each of `--rounds` rounds (the first of
the pair alternating, so a machine whose speed drifts moves both alike):

- `score`: images/s scoring `--images` images under the Glow of `--config`
  from an in-memory array, the pipeline with autotuning on and off;
- `train`: images/s over `--train-steps` training steps (batch
  `--train-batch`) of the same Glow, the batches' pipeline with autotuning
  on and off.

Each row gives the medians, the spread, every round and `off_over_on` (the
median of the rounds' ratios).

    python benchmarks/autotune.py --json benchmarks/results/autotune.json   # ~8 min
    python benchmarks/autotune.py --image-size 64 --train-steps 0 --rounds 8 \
        --json benchmarks/results/autotune_64.json                          # ~6 min
    python benchmarks/autotune.py --config tiny --images 32 --train-steps 2 --train-batch 8 \
        --rounds 1                                                     # tests
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _autotune(enabled: bool):
    """`tfp_ood.data.without_autotune` as it is (`enabled=False`) or turned into
    a pass-through (autotuning left on, TensorFlow's default)."""
    from tfp_ood import data
    if enabled:
        return mock.patch.object(data, 'without_autotune', lambda ds: ds)
    return mock.patch.object(data, 'without_autotune', data.without_autotune)


def _paired(run, rounds: int) -> dict:
    """`run(enabled)` -> images/s, for autotuning on and off, alternating."""
    rates = {'on': [], 'off': []}
    for i in range(rounds):
        for mode in (('on', 'off') if i % 2 == 0 else ('off', 'on')):
            with _autotune(mode == 'on'):
                rates[mode].append(run())
    ratios = [off / on for on, off in zip(rates['on'], rates['off'])]
    out = {f'{mode}_images_per_s': statistics.median(v) for mode, v in rates.items()}
    out.update({f'{mode}_per_round': v for mode, v in rates.items()})
    out.update(off_over_on=statistics.median(ratios), off_over_on_per_round=ratios)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default='cpu', help='the Glow size (default: cpu)')
    p.add_argument('--image-size', type=int, default=32, help='H = W of the RGB images')
    p.add_argument('--images', type=int, default=2000)
    p.add_argument('--train-steps', type=int, default=30, help='0: no training row')
    p.add_argument('--train-batch', type=int, default=64)
    p.add_argument('--rounds', type=int, default=6)
    p.add_argument('--json', default=None, help='write the results here')
    args = p.parse_args(argv)
    import numpy as np
    from tfp_ood import models, train
    from tfp_ood.evaluate import score
    from machine import machine, write_json
    shape = (args.image_size, args.image_size, 3)
    images = np.random.default_rng(0).integers(0, 256, (args.images,) + shape, np.uint8)
    model = models.named_model('glow', args.config, shape)
    model.initialize(images[:16])
    score(model, images[:64], progress=False)  # Traced once, for both.

    def scoring():
        start = time.perf_counter()
        score(model, images, progress=False)
        return len(images) / (time.perf_counter() - start)

    def training():
        config = train.TrainConfig(num_steps=args.train_steps, batch_size=args.train_batch,
                                   num_init_images=16, eval_every=10 ** 6,
                                   checkpoint_every=10 ** 6, log_every=10 ** 6)
        trained = models.named_model('glow', args.config, shape)
        with tempfile.TemporaryDirectory() as workdir:
            start = time.perf_counter()
            train.fit(trained, images, config, workdir, progress=False)
            seconds = time.perf_counter() - start
        return args.train_steps * args.train_batch / seconds

    results = {'machine': machine(), 'config': args.config, 'image_shape': list(shape),
               'score': dict(_paired(scoring, args.rounds), num_images=args.images)}
    if args.train_steps:
        results['train'] = dict(_paired(training, args.rounds), steps=args.train_steps,
                                batch_size=args.train_batch)
    for task in [t for t in ('score', 'train') if t in results]:
        row = results[task]
        print(f'{task}: autotuning on {row["on_images_per_s"]:.1f} images/s '
              f'(rounds {min(row["on_per_round"]):.1f}-{max(row["on_per_round"]):.1f}), off '
              f'{row["off_images_per_s"]:.1f} ({min(row["off_per_round"]):.1f}-'
              f'{max(row["off_per_round"]):.1f}); off / on {row["off_over_on"]:.2f}', flush=True)
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == '__main__':
    main()
