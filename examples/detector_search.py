r"""Choose among the single-image detectors on validation OOD sets, not on the test pairs.

Our detector's design (which statistics, which density over them) is a choice,
and a choice made on SVHN or MNIST would flatter the table of
`examples/detectors.py`. This script makes it on the validation sets of
`examples/background_search.py`, built from data other than the test pairs:

- 32x32x3 (CIFAR-10 models): uniform noise, grayscale CIFAR-10 training
  images, and FashionMNIST training images resized to 32x32 RGB;
- 28x28x1 (FashionMNIST models): uniform noise, and CIFAR-10 training images
  in grayscale resized to 28x28.

The in-distribution validation images are the first `--num-images` training
images; the detectors that learn fit on `--num-fit-images` training images
after the first three blocks of `--num-images` (no image is in both). For
each model it writes the AUROC of every detector per validation set and
their mean to `--out` (`search.md`, `search.json`) and names the density of
states design (`DESIGNS`) with the highest mean; the other detectors are
there for reference (on FashionMNIST's validation sets nearly every
detector is near 1, so there the sets cannot tell designs apart).

    python examples/detector_search.py --data-dir DATA   # glow_cifar10, glow_fashion_mnist
"""

import argparse
import json
import os

import numpy as np

import common  # examples/common.py

from tfp_ood import data, detectors, evaluate, export

# The designs the search chooses among (the density of states: which statistics,
# which density), and the detectors scored beside them for reference.
DESIGNS = ('density_of_states', 'density_of_states_terms', 'density_of_states_levels',
           'density_of_states_levels_png_jpeg2000', 'density_of_states_gaussian')
CANDIDATES = ('raw_likelihood', 'input_complexity', 'input_complexity_jpeg2000',
              'input_complexity_jpegxl') + DESIGNS


def search(model, sets: dict, fit_images: np.ndarray, names=CANDIDATES,
           progress: bool = False) -> list:
    """Rows `{'detector', 'auroc_<set>'..., 'mean_auroc'}`, one per candidate."""
    terms = {name: evaluate.score(model, images, name=name, progress=progress).scores
             for name, images in dict(sets, fit=fit_images).items()}
    rows = []
    for name in names:
        detector = detectors.named(name, model)
        if detector.needs_fit:
            detector.fit_terms([terms['fit']], fit_images)
        scores = {k: detector.score_terms([terms[k]], images) for k, images in sets.items()}
        row = {'detector': name}
        for k in sets:
            if k != 'in':
                row[f'auroc_{k}'] = detectors.detector_metrics(scores['in'], scores[k])['auroc']
        row['mean_auroc'] = float(np.mean([v for k, v in row.items() if k.startswith('auroc_')]))
        rows.append(row)
        print(f'  {name}: ' + ', '.join(f'{k} {v:.4f}' for k, v in row.items()
                                        if k != 'detector'), flush=True)
    return rows


def markdown(results: dict) -> str:
    lines = []
    for model, result in results.items():
        keys = [k for k in result['rows'][0] if k != 'detector']
        lines += [f'### {model} (chosen: {result["chosen"]})', '',
                  '| detector | ' + ' | '.join(keys) + ' |', '|---|' + '---:|' * len(keys)]
        lines += ['| ' + r['detector'] + ' | ' + ' | '.join(f'{r[k]:.4f}' for k in keys) + ' |'
                  for r in result['rows']]
        lines.append('')
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    common.add_data_flags(p, 'results/detector_search')
    p.add_argument('--models', nargs='+', default=['glow_cifar10', 'glow_fashion_mnist'],
                   help='shipped flows (in --models-dir) to choose for')
    p.add_argument('--num-fit-images', type=int, default=5000,
                   help='training images the detectors that learn fit on')
    args = p.parse_args(argv)
    source = common.Source(args)
    if source.samples:
        raise ValueError('The validation sets are training images: pass --data-dir or '
                         '--source tfds.')
    results = {}
    for name in args.models:
        path = os.path.join(args.models_dir, name)
        model = export.restore(path)  # The Python flow: every level's terms.
        n = args.num_images or 2000
        sets = common.validation_sets(source, model.image_shape, n)
        in_name = common.VALIDATION[tuple(model.image_shape)][0]
        fit_split = f'train[{3 * n}:{3 * n + args.num_fit_images}]'
        fit_images = data.images_array(source.load(in_name, fit_split))
        print(f'{name}: fit on {in_name}/{fit_split}, {n} images per validation set',
              flush=True)
        rows = search(model, sets, fit_images, progress=args.progress)
        best = max((r for r in rows if r['detector'] in DESIGNS), key=lambda r: r['mean_auroc'])
        results[name] = {'fit_split': fit_split, 'num_images': n, 'rows': rows,
                         'chosen': best['detector']}
        print(f'{name}: chosen {best["detector"]} (mean validation AUROC '
              f'{best["mean_auroc"]:.4f})', flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'search.json'), 'w') as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, 'search.md'), 'w') as f:
        f.write(markdown(results))
    print(f'wrote {os.path.abspath(args.out)}')
    return results


if __name__ == '__main__':
    common.run(main)
