r"""The main job's scoring handed out a model at a time, against a set at a time.

`tfp_ood.report.score_all` scores on two threads, each taking a whole model,
the expensive ones (limited to their first images) first. The alternative,
written out here, hands out (model, set) pairs: the expensive models' first,
the models two at a time with their sets interleaved, so that a thread done
with its model takes the next set of another instead of idling while the other
scores the slowest model alone. (On the main job one thread idled for 11 s at
the end; this measured whether handing out sets wins that back. Not
measurably: two threads on one model take longer than on two, and
`score_all` kept a model per thread.)

Measured in one process on the main job's work (`python examples/cifar_svhn.py`
without flags: the shipped CIFAR-10 models, the embedded samples' CIFAR-10 and
SVHN test sets, 1,000 constant and 1,000 uniform-noise images, the gray
versions of the two test sets; the PixelCNN++ scoring the first 250 images of
each set and the VAE the first 20), back to back in each of `--rounds` rounds
(the first of the pair alternating, so a machine whose speed drifts moves both
alike). The models are restored and every function traced before the rounds,
so the rounds time the scoring alone (in the main job each model is also
restored in the thread that first scores it). The row gives seconds per pass
over the work, the medians, every round, `per_set_over_per_model` (the median
of the rounds' ratios; below 1 the alternative is faster) and the largest
difference between the two ways' bits/dim.

    python benchmarks/scheduling.py --json benchmarks/results/scheduling.json   # ~8 min
    python benchmarks/scheduling.py --config tiny --images 4 --rounds 2 \
        --models glow_cifar10 vae_cifar10                                      # tests
"""

import argparse
import concurrent.futures
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (32, 32, 3)
# The main job's CIFAR-10 models: (shipped name, family).
MODELS = (('glow_cifar10', 'glow'), ('cvglow_cifar10', 'cv_glow'),
          ('pixelcnn_cifar10', 'pixelcnn'), ('vae_cifar10', 'vae'))


def by_set(models, datasets, max_images):
    """`report.score_all`'s work handed out as (model, set) pairs."""
    from tfp_ood import report
    from tfp_ood.evaluate import score

    def score_set(task):
        name, set_name = task
        ds = datasets[set_name]
        if max_images.get(name):
            ds = ds.take(max_images[name])
        return score(models[name], ds, name=set_name, progress=False, model_name=name)

    threads = report.SCORING_THREADS
    order = sorted(models, key=lambda name: not max_images.get(name))
    tasks = [(name, set_name) for i in range(0, len(order), threads)
             for set_name in datasets for name in order[i:i + threads]]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        done = dict(zip(tasks, pool.map(score_set, tasks)))
    return {(name, set_name): done[name, set_name] for name in models for set_name in datasets}


def _work(config: str, images: int, names):
    """The models, the sets and the per-model image limits to score."""
    import numpy as np
    import tensorflow as tf
    from tfp_ood import analysis, data, export, models
    from tfp_ood.experiments.common import NUM_SYNTHETIC, SLOW_FAMILY_IMAGES
    if config == 'shipped':
        loaded = {name: export.load(os.path.join(REPO, 'saved_models', name))
                  for name, _ in MODELS if name in names}
        sets = {f'{name}/test': data.load(name, 'test', source='samples')
                for name in ('cifar10', 'svhn_cropped')}
        synthetic = NUM_SYNTHETIC
        limits = {family: samples for family, (samples, _) in SLOW_FAMILY_IMAGES.items()}
    else:
        rng = np.random.default_rng(0)
        loaded = {}
        for name, family in [m for m in MODELS if m[0] in names]:
            model = models.named_model(family, config, SHAPE)
            if hasattr(model, 'initialize'):
                model.initialize(rng.integers(0, 256, (16,) + SHAPE, np.uint8))
            loaded[name] = model
        sets = {f'{name}/test': tf.data.Dataset.from_tensor_slices(
            {'image': rng.integers(0, 256, (images,) + SHAPE, np.uint8),
             'label': np.zeros(images, np.int64)}) for name in ('cifar10', 'svhn_cropped')}
        synthetic = images
        limits = {family: max(1, images // 4) for family in SLOW_FAMILY_IMAGES}
    sets['constant_128'] = data.constant_images(128, SHAPE, synthetic)
    sets['uniform_noise'] = data.uniform_noise_images(SHAPE, synthetic, seed=0)
    analysis.add_gray_versions(sets, ('cifar10/test', 'svhn_cropped/test'))
    max_images = {name: limits[family] for name, family in MODELS
                  if name in names and family in limits}
    return loaded, sets, max_images


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default='shipped',
                   help="'shipped' (saved_models/, the embedded samples) or a named size of "
                        "untrained models on random images (e.g. 'tiny', for tests)")
    p.add_argument('--images', type=int, default=12,
                   help='images per set with --config other than shipped')
    p.add_argument('--models', nargs='+', default=[name for name, _ in MODELS],
                   choices=[name for name, _ in MODELS], help='score only these (default: all)')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--json', default=None, help='write the results here')
    args = p.parse_args(argv)
    import numpy as np
    from tfp_ood import report
    from machine import machine, write_json
    models, sets, max_images = _work(args.config, args.images, args.models)
    ways = {'per_model': lambda: report.score_all(models, sets, progress=False,
                                                  max_images=max_images),
            'per_set': lambda: by_set(models, sets, max_images)}
    first = {way: run() for way, run in ways.items()}  # Restored and traced, for both.
    difference = max(float(np.max(np.abs(first['per_set'][key].bits_per_dim
                                         - first['per_model'][key].bits_per_dim)))
                     for key in first['per_model'])
    seconds = {way: [] for way in ways}
    for i in range(args.rounds):
        for way in (('per_model', 'per_set') if i % 2 == 0 else ('per_set', 'per_model')):
            start = time.perf_counter()
            ways[way]()
            seconds[way].append(time.perf_counter() - start)
    ratios = [new / old for new, old in zip(seconds['per_set'], seconds['per_model'])]
    results = {'machine': machine(), 'config': args.config, 'models': list(models),
               'max_images': max_images, 'sets': list(sets),
               'max_abs_bpd_difference': difference,
               'per_set_over_per_model': statistics.median(ratios),
               'per_set_over_per_model_per_round': ratios}
    for way, values in seconds.items():
        results[f'{way}_seconds'] = statistics.median(values)
        results[f'{way}_per_round'] = values
    print(f'a model at a time (score_all) {results["per_model_seconds"]:.2f} s (rounds '
          f'{min(seconds["per_model"]):.2f}-{max(seconds["per_model"]):.2f}), a set at a time '
          f'{results["per_set_seconds"]:.2f} s ({min(seconds["per_set"]):.2f}-'
          f'{max(seconds["per_set"]):.2f}); per set / per model '
          f'{results["per_set_over_per_model"]:.3f}; bits/dim differ by at most '
          f'{difference:.2g}', flush=True)
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == '__main__':
    main()
