"""The `tfp-ood` command line: train, export, score and compare.

    tfp-ood train   --model glow --config cpu --dataset cifar10 --workdir runs/glow_cifar10
    tfp-ood export  --workdir runs/glow_cifar10 --out saved_models/glow_cifar10
    tfp-ood score   --model-dir saved_models/glow_cifar10 --dataset svhn_cropped --split test
    tfp-ood compare --in scores_cifar10.npz --out scores_svhn.npz

Every verb has `--help`. Errors (a missing path, a corrupt SavedModel, images
of the wrong size) print one line and exit with status 2.
"""

import argparse
import os
import sys
from typing import List, Optional

__all__ = ['main']


class CommandError(Exception):
    """An error the user can fix: printed without a traceback, exit status 2."""


def _eval_spec(text: str):
    """`name:split` as in `svhn_cropped:test[:2000]`."""
    if ':' not in text:
        raise argparse.ArgumentTypeError(f'expected DATASET:SPLIT, e.g. cifar10:test[:2000]; '
                                         f'got {text!r}')
    name, split = text.split(':', 1)
    return name, split


def _add_data_args(parser):
    parser.add_argument('--data-dir', default=None,
                        help='directory of <name>_<split>.npz arrays (default: '
                             '$TFP_OOD_DATA_DIR; without one, TFDS)')
    parser.add_argument('--source', default='auto', choices=('auto', 'local', 'tfds'),
                        help='where images come from (default: auto)')
    parser.add_argument('--download', action='store_true',
                        help='let TFDS download missing datasets (needs internet)')


def _build_parser() -> argparse.ArgumentParser:
    from tfp_ood.config import GLOW_CONFIG_NAMES
    parser = argparse.ArgumentParser(
        prog='tfp-ood', description='Likelihood-based out-of-distribution analysis with '
        'deep generative models (Nalisnick et al., 2019).')
    verbs = parser.add_subparsers(dest='verb', required=True, metavar='VERB')

    train = verbs.add_parser(
        'train', help='train a model (resumes from --workdir if it holds the same run)',
        description='Train a model. Running the same command again after an interruption '
        '(Ctrl-C, SIGTERM, a crash) resumes from the last checkpoint.')
    train.add_argument('--model', default='glow', choices=('glow', 'cv_glow'),
                       help='model family (default: glow)')
    train.add_argument('--config', default='cpu', choices=GLOW_CONFIG_NAMES,
                       help='named architecture (default: cpu)')
    train.add_argument('--dataset', default='cifar10', help='training dataset (TFDS name)')
    train.add_argument('--split', default='train', help='training split, e.g. "test[:7000]"')
    train.add_argument('--eval', dest='eval_sets', type=_eval_spec, action='append',
                       default=None, metavar='DATASET:SPLIT',
                       help='held-out set scored every --eval-every steps (repeatable; '
                            'default: the test split of --dataset)')
    train.add_argument('--workdir', required=True, help='run directory (checkpoints, logs)')
    train.add_argument('--steps', type=int, default=10000, help='total training steps')
    train.add_argument('--batch-size', type=int, default=64, help='global batch size')
    train.add_argument('--learning-rate', type=float, default=1e-3, help='peak Adam rate')
    train.add_argument('--warmup-steps', type=int, default=500, help='linear warm-up steps')
    train.add_argument('--clip-norm', type=float, default=50.0, help='gradient clip norm')
    train.add_argument('--checkpoint-every', type=int, default=500, help='steps per checkpoint')
    train.add_argument('--eval-every', type=int, default=1000, help='steps per evaluation')
    train.add_argument('--num-eval-images', type=int, default=2000,
                       help='images per held-out set')
    train.add_argument('--seed', type=int, default=0, help='seed of weights and data order')
    train.add_argument('--strategy', default='default',
                       choices=('default', 'mirrored', 'multi_worker'),
                       help='tf.distribute strategy (multi_worker reads TF_CONFIG)')
    train.add_argument('--no-resume', dest='resume', action='store_false',
                       help='refuse to continue a run already in --workdir')
    train.add_argument('--no-progress', dest='progress', action='store_false',
                       help='no progress bar')
    _add_data_args(train)
    return parser


def _load_images(name: str, split: str, args):
    from tfp_ood import data
    ds = data.load(name, split, data_dir=args.data_dir, source=args.source,
                   download=args.download)
    return data.images_array(ds)


def _strategy(name: str):
    import tensorflow as tf
    if name == 'mirrored':
        return tf.distribute.MirroredStrategy()
    if name == 'multi_worker':
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _train(args) -> int:
    from tfp_ood import data, models, train
    from tfp_ood.config import GlowConfig
    if not args.resume and train.load_run_config(args.workdir) is not None:
        raise CommandError(f'{args.workdir} already holds a run and --no-resume was given; '
                           f'choose another --workdir.')
    spec = data.DATASETS.get(args.dataset)
    if spec is None:
        raise CommandError(f'unknown dataset {args.dataset!r}; expected one of '
                           f'{sorted(data.DATASETS)}')
    train_images = _load_images(args.dataset, args.split, args)
    eval_specs = args.eval_sets or [(args.dataset, 'test')]
    eval_sets = {f'{name}/{split}': _load_images(name, split, args)[:args.num_eval_images]
                 for name, split in eval_specs}
    config = train.TrainConfig(
        num_steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps, clip_norm=args.clip_norm,
        checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
        num_eval_images=args.num_eval_images, seed=args.seed)
    strategy = _strategy(args.strategy)
    coupling = 'affine' if args.model == 'glow' else 'additive'
    glow_config = GlowConfig.named(args.config, spec.image_shape, coupling=coupling,
                                   seed=args.seed)
    with strategy.scope():
        model = models.from_config(dict(family=args.model, **glow_config.to_dict()))
    result = train.fit(model, train_images, config, args.workdir, eval_sets=eval_sets,
                       strategy=strategy, progress=args.progress,
                       data_info={'dataset': args.dataset, 'split': args.split,
                                  'num_images': int(len(train_images))})
    last = result.history[-1] if result.history else {}
    print(f'{result.stop_reason} at step {result.step} after {result.wall_time:.0f} s; '
          f'last evaluation: {last}')
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _build_parser().parse_args(argv)
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    from tfp_ood import data, train
    handlers = {'train': _train}
    try:
        return handlers[args.verb](args)
    except (CommandError, data.DataNotFoundError, train.ConfigMismatchError,
            FileNotFoundError, ValueError) as e:
        print(f'tfp-ood {args.verb}: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
