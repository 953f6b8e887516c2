r"""How long a SavedModel export and its load take, with and without the model's
own traced functions in it.

A `tf.Module` adds to a SavedModel every `tf.function` among its attributes,
tracing each first. A tfp_ood model's `score_batch`, and its `statistics_batch`
and `xla_score_batch` (properties, which that listing builds), were written
into every export that way, though the export serves its own signatures and
nothing loads those copies. `DensityModel` now leaves them out
(`DensityModel._trackable_children`); the peer here is `tf.Module`'s own
listing, put back for its half of each round.

For each Glow configuration (`--configs`), a freshly built model is exported
and loaded (`tfp_ood.export.load`) with each listing, alternating for
`--rounds` rounds (the first of the pair alternating, so a machine whose speed
drifts moves both alike). Each figure is the median over the rounds, with the
spread; `*_with_over_without` is the median of the rounds' ratios. The two
exports' `log_prob` signatures give the same numbers, which is checked.

    python benchmarks/export.py --json benchmarks/results/export.json   # ~3 min
    python benchmarks/export.py --configs tiny --rounds 1                # tests
"""

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
LISTINGS = ('with_functions', 'without_functions')


@contextlib.contextmanager
def _listing(name: str):
    """`DensityModel`'s SavedModel listing as `name` says, for the block."""
    import tensorflow as tf
    from tfp_ood.models import base
    ours = base.DensityModel._trackable_children
    if name == 'with_functions':  # tf.Module's own: every tf.function attribute too.
        base.DensityModel._trackable_children = tf.Module._trackable_children
    try:
        yield
    finally:
        base.DensityModel._trackable_children = ours


def _once(config: str, listing: str, folder: str, images):
    """(export seconds, load seconds, log_prob of `images`) for a new Glow."""
    from tfp_ood import export, models
    model = models.named_model('glow', config, images.shape[1:])
    model.initialize(images)
    path = os.path.join(tempfile.mkdtemp(dir=folder), 'model')
    with _listing(listing):
        start = time.perf_counter()
        export.export(model, path)
        exported = time.perf_counter() - start
    start = time.perf_counter()
    loaded = export.load(path)
    seconds = time.perf_counter() - start
    return exported, seconds, loaded.score_batch(images)['log_prob'].numpy()


def _summary(values):
    return {'median': statistics.median(values), 'min': min(values), 'max': max(values)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--configs', nargs='+', default=['tiny', 'cpu'])
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--json', default=None, help='write the results here')
    args = p.parse_args(argv)
    import numpy as np
    from machine import machine, write_json
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    results = {'machine': machine(), 'rounds': args.rounds}
    with tempfile.TemporaryDirectory() as folder:
        for config in args.configs:
            times = {(listing, what): [] for listing in LISTINGS for what in ('export', 'load')}
            for round_ in range(args.rounds):
                order = LISTINGS if round_ % 2 == 0 else LISTINGS[::-1]
                scores = {}
                for listing in order:
                    exported, loaded, scores[listing] = _once(config, listing, folder, images)
                    times[listing, 'export'].append(exported)
                    times[listing, 'load'].append(loaded)
                np.testing.assert_allclose(*scores.values(), rtol=1e-6)
            row = {f'{what}_seconds_{listing}': _summary(times[listing, what])
                   for listing in LISTINGS for what in ('export', 'load')}
            for what in ('export', 'load'):
                ratios = [w / o for w, o in zip(times['with_functions', what],
                                                times['without_functions', what])]
                row[f'{what}_with_over_without'] = statistics.median(ratios)
                row[f'{what}_with_over_without_per_round'] = ratios
            results[config] = row
            print(f'glow {config}: export {row["export_with_over_without"]:.2f}x, load '
                  f'{row["load_with_over_without"]:.2f}x as long with the model\'s functions '
                  f'(medians of {args.rounds} rounds)', flush=True)
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == '__main__':
    main()
