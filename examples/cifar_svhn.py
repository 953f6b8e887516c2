r"""CIFAR-10 against SVHN: the paper's headline experiment (Nalisnick et al., 2019).

Scores CIFAR-10 train and test, SVHN test, constant images (value 128), uniform
random images, and grayscale CIFAR-10 test and SVHN test under the Glow and
the CV-Glow trained on CIFAR-10 (and any other CIFAR-10 model in
saved_models/), and writes to --out: bpd_table.csv / .md (the paper's numbers
beside ours), per-image scores, the log p(x) histogram of CIFAR-10 test against
SVHN test (the paper's Figure 1), the distribution- and volume-term histograms,
metrics.json (AUROC of raw likelihood, CIFAR-10 test in, SVHN test out),
summary.json, and TensorBoard logs (--out/tensorboard).

    python examples/cifar_svhn.py                                # embedded samples
    python examples/cifar_svhn.py --data-dir DATA      # full test sets
    python examples/cifar_svhn.py --reverse --data-dir DATA   # train on SVHN
    python examples/cifar_svhn.py --retrain --data-dir DATA   # train first
    python examples/cifar_svhn.py --models glow_cifar10 vae_cifar10     # some models only

--reverse uses the Glow trained on SVHN: with local arrays its training set is
the first 7,000 images of the SVHN test split and its in-distribution test set
the rest (test[7000:]); with --source tfds, SVHN's real train and test splits.
"""

import os

from tfp_ood import analysis, data, report
from tfp_ood.config import MODELS
from tfp_ood.experiments import common

SHAPE = (32, 32, 3)
CIFAR_MODELS = (('glow_cifar10', 'glow'), ('cvglow_cifar10', 'cv_glow'),
                ('pixelcnn_cifar10', 'pixelcnn'), ('vae_cifar10', 'vae'))


def main(argv=None):
    parser = common.parser(__doc__.split('\n')[0], 'results/cifar_svhn')
    parser.add_argument('--reverse', action='store_true',
                        help='train on SVHN and score CIFAR-10 (the effect is asymmetric)')
    parser.add_argument('--num-train-images', type=int, default=10000,
                        help='training images to score (local arrays or TFDS only)')
    parser.add_argument('--models', nargs='+', choices=[name for name, _ in CIFAR_MODELS],
                        help='score only these CIFAR-10 models (default: every shipped one; '
                             'an image\'s score does not depend on what else is scored, so a '
                             'model scored alone gets the full run\'s numbers, up to the last '
                             'float32 bit that threaded kernels may round differently)')
    args = parser.parse_args(argv)
    if args.reverse and args.models:
        parser.error('--models picks among the CIFAR-10 models; --reverse scores glow_svhn')
    source = common.Source(args)
    svhn_train, svhn_test = (('train', 'test') if source.tfds or source.samples
                             else ('test[:7000]', 'test[7000:]'))
    if args.reverse:
        train_set, in_set, out_set = 'svhn_cropped', f'svhn_cropped/{svhn_test}', 'cifar10/test'
        specs = [('glow_svhn', 'glow')]
        train_split = svhn_train
        eval_specs = [('svhn_cropped', svhn_test), ('cifar10', 'test')]
    else:  # All of the SVHN test images available score as out-of-distribution.
        train_set, in_set, out_set = 'cifar10', 'cifar10/test', 'svhn_cropped/test'
        specs = [s for s in CIFAR_MODELS if MODELS[s[1]].is_flow or not
                 (args.retrain or args.untrained)]
        if args.models:
            specs = [s for s in specs if s[0] in args.models]
        train_split = 'train'
        eval_specs = [('cifar10', 'test'), ('svhn_cropped', 'test')]  # First 2,000 of each.
    if source.samples:  # The samples are the test splits only; SVHN's is 8,000-9,999.
        in_set, out_set = [s.split('[')[0] for s in (in_set, out_set)]

    models = {}
    for name, family in specs:
        entry = common.get_model(args, source, name, family, train_set, train_split, eval_specs)
        if entry is not None:
            entry.max_images = source.family_images(family)
            models[name] = entry
    if not models:
        raise SystemExit('No model to score: see the messages above.')

    n_synthetic = min(args.num_synthetic, args.num_images or args.num_synthetic)
    sets = {}
    if not source.samples:  # Training images (the first --num-train-images).
        split = train_split if args.reverse else f'train[:{args.num_train_images}]'
        sets[f'{train_set}/{train_split}'] = source.load(train_set, split)
    for name in (in_set, out_set):
        dataset, split = name.split('/', 1)
        sets[name] = source.load(dataset, split)
    sets['constant_128'] = data.constant_images(128, SHAPE, n_synthetic)
    sets['uniform_noise'] = data.uniform_noise_images(SHAPE, n_synthetic, seed=0)
    gray_of = analysis.add_gray_versions(sets, (in_set, out_set))

    paper_names = {'svhn_cropped/train': 'svhn_cropped/train',
                   'svhn_cropped/test[7000:]': 'svhn_cropped/test'}
    detector = os.path.join(args.models_dir, 'detector_cifar10.json')
    show_detector = (not (args.reverse or args.retrain or args.untrained)
                     and os.path.exists(detector))
    # The statistics the shipped detector reads come from the run's own pass.
    outcome = report.run_experiment(models, sets, in_set, out_set, args.out,
                                    paper_names=paper_names, progress=args.progress,
                                    gray_of=gray_of, statistics=common.detector_statistics(
                                        detector) if show_detector else None)
    common.print_report(outcome, source, in_set, out_set, args.out)
    if show_detector:
        outcome['detector'] = common.print_detector(detector, sets, in_set, out_set,
                                                    outcome['results'])
    return outcome


if __name__ == '__main__':
    common.run(main)
