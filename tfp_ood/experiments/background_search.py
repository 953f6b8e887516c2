r"""Choose the likelihood-ratio detector's background model on validation OOD sets.

Ren et al. (2019) train the background model on training images perturbed at
rate `mu` with L2 weight decay `lambda`, and choose `(mu, lambda)` on
out-of-distribution data that is *not* the test OOD set. This script scores
each candidate background model (training runs of `tfp-ood train
--mutation-rate MU --weight-decay LAMBDA`, or their SavedModels) against the
foreground model on in-distribution training images and on validation OOD
sets built from data other than the test pair:

- 32x32x3 (CIFAR-10 models): uniform noise, grayscale CIFAR-10 training
  images, and FashionMNIST training images resized to 32x32 RGB;
- 28x28x1 (FashionMNIST models): uniform noise, and CIFAR-10 training images
  in grayscale resized to 28x28.

It writes `search.csv`, `search.md` and `search.json` (AUROC of the
likelihood ratio per candidate and validation set, and their mean) to
`--out`, and names the candidate with the highest mean AUROC.

    python -m tfp_ood.experiments.background_search --foreground saved_models/glow_fashion_mnist \
        --background runs/bg_mu0.1 --background runs/bg_mu0.2 --data-dir DATA
"""

import argparse
import csv
import json
import os

import numpy as np

from tfp_ood import detectors, export, models, train
from tfp_ood.experiments import common


def load_candidate(path: str):
    """A background model from a SavedModel or a training run's last checkpoint."""
    if os.path.exists(os.path.join(path, 'saved_model.pb')):
        return export.load(path), export.read_metadata(path).get('provenance', {})
    run = train.load_run_config(path)
    if run is None:
        raise FileNotFoundError(f'{path} is neither a SavedModel nor a training run.')
    model = models.from_config(run['model'])
    step = train.restore_latest(model, path)
    return model, dict(train_config=run['train'], steps=step)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--foreground', required=True,
                   help='SavedModel of the in-distribution model')
    p.add_argument('--background', action='append', required=True,
                   help='a candidate background model: run directory or SavedModel '
                        '(repeatable)')
    p.add_argument('--data-dir', default=None, help='directory of <name>_<split>.npz arrays')
    p.add_argument('--source', default=None, choices=common.EXAMPLE_SOURCES,
                   help='where images come from (default: local with --data-dir)')
    p.add_argument('--download', action='store_true', help='let TFDS download')
    p.add_argument('--num-images', type=int, default=2000, help='images per validation set')
    p.add_argument('--out', default='results/background_search', help='results folder')
    args = p.parse_args(argv)
    source = common.Source(args)
    if source.samples:
        raise ValueError('The validation sets are training images: pass --data-dir or '
                         '--source tfds.')
    foreground = export.load(args.foreground)
    shape = foreground.image_shape
    sets = common.validation_sets(source, shape, args.num_images)
    rows = []
    for path in args.background:
        background, provenance = load_candidate(path)
        detector = detectors.LikelihoodRatio(foreground, background)
        scores = {name: detector.score(images) for name, images in sets.items()}
        row = {'background': path,
               'mutation_rate': provenance.get('train_config', {}).get('mutation_rate'),
               'weight_decay': provenance.get('train_config', {}).get('weight_decay'),
               'steps': provenance.get('steps')}
        for name in sets:
            if name != 'in':
                row[f'auroc_{name}'] = detectors.detector_metrics(scores['in'],
                                                                  scores[name])['auroc']
        row['mean_auroc'] = float(np.mean([v for k, v in row.items()
                                           if k.startswith('auroc_')]))
        rows.append(row)
        print(', '.join(f'{k} {v:.3f}' if isinstance(v, float) else f'{k} {v}'
                        for k, v in row.items()), flush=True)
    best = max(rows, key=lambda r: r['mean_auroc'])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'search.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    keys = list(rows[0])
    lines = ['| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
    lines += ['| ' + ' | '.join(f'{r[k]:.3f}' if isinstance(r[k], float) else str(r[k])
                                for k in keys) + ' |' for r in rows]
    with open(os.path.join(args.out, 'search.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(os.path.join(args.out, 'search.json'), 'w') as f:
        json.dump({'foreground': args.foreground, 'rows': rows, 'chosen': best['background']},
                  f, indent=2)
    print(f'chosen: {best["background"]} (mean validation AUROC {best["mean_auroc"]:.3f}); '
          f'wrote {os.path.abspath(args.out)}')
    return rows


if __name__ == '__main__':
    common.run(main)
