r"""CIFAR-10 against SVHN: the paper's headline experiment.

Scores CIFAR-10 train and test, SVHN test, constant images (value 128),
uniform random images and grayscale CIFAR-10 test and SVHN test under a Glow
and a CV-Glow, and writes to `--out`: `bpd_table.csv` / `.md`, per-image
scores, the log p(x) histogram of CIFAR-10 test against SVHN test (the
paper's Figure 1), the distribution/volume term histograms and `metrics.json`
(AUROC of raw likelihood, CIFAR-10 test in, SVHN test out).

The models here are freshly initialised (ActNorm's data-dependent
initialisation on CIFAR-10 training images, no training): this run shows the
pipeline end to end on real data.

    python examples/cifar_svhn.py --data-dir ../shared/data --out results/cifar_svhn
"""

import argparse
import os

from tfp_ood import data, report
from tfp_ood.config import GLOW_CONFIG_NAMES, GlowConfig
from tfp_ood.models import FlowModel


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-dir', default=None, help='directory of <name>_<split>.npz '
                        'arrays (default: $TFP_OOD_DATA_DIR, else TFDS)')
    parser.add_argument('--source', default='auto', choices=data.SOURCES,
                        help='where images come from')
    parser.add_argument('--out', default='results/cifar_svhn', help='results folder')
    parser.add_argument('--config', default='cpu', choices=GLOW_CONFIG_NAMES,
                        help='Glow configuration')
    parser.add_argument('--num-images', type=int, default=None,
                        help='score at most this many images per set')
    parser.add_argument('--num-train-images', type=int, default=10000,
                        help='CIFAR-10 training images to score')
    parser.add_argument('--init-images', type=int, default=512,
                        help='training images for ActNorm initialisation')
    parser.add_argument('--batch-size', type=int, default=256, help='images per evaluator call')
    parser.add_argument('--seed', type=int, default=0, help='seed of the initial weights')
    parser.add_argument('--untrained', action='store_true',
                        help='score under freshly initialised models (no training): '
                             'checks the pipeline end to end on real data')
    return parser.parse_args(argv)


SHAPE = (32, 32, 3)
IN_SET, OUT_SET = 'cifar10/test', 'svhn_cropped/test'


def datasets(args):
    n = args.num_images

    def load(name, split):
        ds = data.load(name, split, data_dir=args.data_dir, source=args.source)
        return ds.take(n) if n else ds

    sets = {
        'cifar10/train': load('cifar10', f'train[:{args.num_train_images}]'),
        IN_SET: load('cifar10', 'test'),
        OUT_SET: load('svhn_cropped', 'test'),
        'constant_128': data.constant_images(128, SHAPE, min(n or 1000, 1000)),
        'uniform_noise': data.uniform_noise_images(SHAPE, min(n or 1000, 1000), seed=0),
    }
    sets['cifar10/test (gray)'] = data.grayscale(sets[IN_SET])
    sets['svhn_cropped/test (gray)'] = data.grayscale(sets[OUT_SET])
    return sets


def main(argv=None):
    args = parse_args(argv)
    if not args.untrained:
        print('Pretrained models are not shipped yet: scoring under freshly initialised '
              'models, as with --untrained.')
    init = data.images_array(data.load('cifar10', f'train[:{args.init_images}]',
                                       data_dir=args.data_dir, source=args.source))
    models = {}
    for coupling in ('affine', 'additive'):
        config = GlowConfig.named(args.config, SHAPE, coupling=coupling, seed=args.seed)
        model = FlowModel.from_config(config)
        model.initialize(init, seed=args.seed)
        models[f'{config.family}_{args.config}_untrained'] = model
    results = report.score_all(models, datasets(args), args.out, batch_size=args.batch_size)
    families = {name: m.config.family for name, m in models.items()}
    rows = report.bpd_rows(results, families, {name: 'untrained' for name in models})
    _, md_path = report.write_bpd_table(rows, args.out)
    metrics = report.write_ood_report(results, list(models), IN_SET, OUT_SET, args.out)
    with open(md_path) as f:
        print('Bits/dim (untrained models):\n' + f.read())
    for name, m in metrics.items():
        print(f'{name}: AUROC {m["auroc"]:.3f} ({IN_SET} in, {OUT_SET} out)')
    print(f'Results written to {os.path.abspath(args.out)}')


if __name__ == '__main__':
    main()
