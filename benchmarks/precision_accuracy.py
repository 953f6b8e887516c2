r"""What bfloat16 costs in per-image likelihood, and what keeping some of each
coupling network in float32 buys back at what speed.

For each setting, a shipped Glow's weights are loaded into a Glow whose
coupling networks compute as the setting says, every image of CIFAR-10 test
and SVHN test is scored in it and in float32, and the per-image
|bits/dim| difference (max, mean) and the AUROC of raw likelihood in each
precision are reported. Beside it, the `paper` Glow's scoring speed in the
setting against float32, the two run alternately in one process (random
weights: speed does not depend on them). Settings:

- `bfloat16`: every convolution of the coupling networks in bfloat16 (what
  `--precision bfloat16` runs);
- `bfloat16, last in float32`: the last convolution (the one whose outputs
  are the shifts and log-scales) in float32;
- `bfloat16, first and last in float32`: also the first (the one that reads
  the data).

    python benchmarks/precision_accuracy.py                       # embedded samples
    python benchmarks/precision_accuracy.py --data-dir DATA \
        --json benchmarks/results/precision_accuracy.json          # full test sets
"""

import argparse
import os
import sys
from typing import Dict, Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (benchmarks/run.py: timing and the runners)

from tfp_ood import data, evaluate, export, metrics  # noqa: E402
from tfp_ood.bijectors.glow import coupling_network_fn, glow  # noqa: E402
from tfp_ood.config import GlowConfig, config_from_saved  # noqa: E402
from tfp_ood.models import FlowModel  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Setting -> (precision, indices of the coupling networks' float32 convolutions).
SETTINGS = {
    'float32': ('float32', ()),
    'bfloat16': ('bfloat16', ()),
    'bfloat16, last in float32': ('bfloat16', (2,)),
    'bfloat16, first and last in float32': ('bfloat16', (0, 2)),
}
SETS = ('cifar10', 'svhn_cropped')


def flow(config: GlowConfig, setting: str) -> FlowModel:
    precision, float32_convolutions = SETTINGS[setting]
    networks = coupling_network_fn(config.hidden_channels, precision, float32_convolutions)
    return FlowModel(glow(config, coupling_fn=networks, precision=precision),
                     config.image_shape, config=config, name=config.family, precision=precision)


def restored(model_dir: str, setting: str) -> FlowModel:
    """A shipped Glow's weights in a Glow computing as `setting` says."""
    config = config_from_saved(export.read_metadata(model_dir)['model'])
    return export.read_variables(flow(config, setting), model_dir)


def accuracy(model_dir: str, images: Dict[str, np.ndarray], progress: bool = False) -> Dict:
    """Per setting: per-image |bits/dim| against float32 on each set, and the AUROC."""
    scores = {}
    for setting in SETTINGS:  # Restored and traced once per setting, for both sets.
        model = restored(model_dir, setting)
        scores[setting] = {name: evaluate.score(model, x, name=name, progress=progress).scores
                           for name, x in images.items()}
    out = {}
    for setting, per_set in scores.items():
        row = {'auroc': metrics.ood_metrics(-per_set['cifar10']['log_prob'],
                                            -per_set['svhn_cropped']['log_prob'])['auroc']}
        if setting != 'float32':
            for name in images:
                diff = np.abs(per_set[name]['bits_per_dim']
                              - scores['float32'][name]['bits_per_dim'])
                row[name] = {'num_images': int(diff.size), 'max_abs_bpd_diff': float(diff.max()),
                             'mean_abs_bpd_diff': float(diff.mean())}
            row['max_abs_bpd_diff'] = max(row[n]['max_abs_bpd_diff'] for n in images)
        out[setting] = row
    return out


def speed(config: GlowConfig, batch: int, repeats: int, min_seconds: float) -> Dict[str, float]:
    """Scoring speed of each setting over float32's, the same weights, run alternately."""
    runners = bench.same_weights({s: flow(config, s) for s in SETTINGS}, batch)
    seconds = bench.alternate({s: r.score for s, r in runners.items()}, repeats, min_seconds)
    return {s: seconds['float32'] / seconds[s] for s in SETTINGS}


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model-dir', default=os.path.join(ROOT, 'saved_models', 'glow_cifar10'))
    parser.add_argument('--data-dir', help='full test sets from local arrays '
                        '(default: the embedded samples)')
    parser.add_argument('--limit', type=int, help='score the first LIMIT images of each set')
    parser.add_argument('--speed-config', default='paper',
                        help='Glow size whose speed is measured (paper, cpu, tiny)')
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--min-seconds', type=float, default=2.)
    parser.add_argument('--json', help='write the results here')
    args = parser.parse_args(argv)

    source = {'data_dir': args.data_dir} if args.data_dir else {'source': 'samples'}
    images = {name: data.images_array(data.load(name, 'test', **source), limit=args.limit)
              for name in SETS}
    out = {'model_dir': os.path.relpath(os.path.abspath(args.model_dir), ROOT),
           'images': 'full test sets' if args.data_dir else 'embedded samples',
           'accuracy': accuracy(args.model_dir, images, progress=sys.stderr.isatty()),
           'speed_config': args.speed_config, 'batch': args.batch,
           'score_speedup': speed(GlowConfig.named(args.speed_config), args.batch,
                                  args.repeats, args.min_seconds)}
    print(f'{out["model_dir"]} on {out["images"]} '
          f'({", ".join(f"{n} {len(x)}" for n, x in images.items())}); '
          f'speed: {args.speed_config} Glow, batch {args.batch}')
    print('| setting | max |bits/dim| CIFAR-10 / SVHN | mean | AUROC | scoring speed-up |')
    print('|---|---:|---:|---:|---:|')
    for setting, row in out['accuracy'].items():
        if setting == 'float32':
            cells = ['-', '-']
        else:
            cells = [' / '.join(f'{row[n]["max_abs_bpd_diff"]:.4f}' for n in SETS),
                     ' / '.join(f'{row[n]["mean_abs_bpd_diff"]:.5f}' for n in SETS)]
        print(f'| {setting} | {cells[0]} | {cells[1]} | {row["auroc"]:.4f} | '
              f'{out["score_speedup"][setting]:.2f}x |')
    if args.json:
        bench.write_json(args.json, out)
    return out


if __name__ == '__main__':
    main()
