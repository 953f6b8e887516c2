"""What the experiment scripts share: flags, where images come from, and models.

Models come from one of three places:

- the pretrained SavedModels in `--models-dir` (default `saved_models/`);
- `--retrain`: trained from scratch here (`--config cpu` by default, `paper`
  for a GPU) into `--workdir`, then exported to `<out>/models/`;
- `--untrained`: freshly initialised (ActNorm's data-dependent
  initialisation only), to check the pipeline.

Images come from `--data-dir` (local `<name>_<split>.npz` arrays, e.g.
`DATA`, see docs/data.md), from TFDS with `--source tfds` (`--download` fetches), or, with neither,
from the 2,000-image samples embedded in the package.
"""

import argparse
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from tfp_ood import data, detectors, export, image_statistics, models, report, train
from tfp_ood.config import GLOW_CONFIG_NAMES
from tfp_ood.detectors.base import read_json

# The repository (an editable install's checkout), where saved_models/ is.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Images per set scored under the families whose scoring is slow, as
# (on the embedded samples, on full data). The PixelCNN++ scores about 130
# images/s on 2 CPU cores, the VAE's importance-weighted bound (K=100 decoder
# passes per image, each a 768-channel output layer and a log-sum-exp over
# 256 logits for every pixel channel) about 6. On the samples these two were
# two thirds of the first command's scoring at 500 and 30 images: at 250 and 20 the
# run took 88 s and 86 s against 102 s and 113 s back to back (2 cores, Xeon
# with AMX under background load; CIFAR-10 still the less likely set under
# both, as on the full sets). `None`: every image.
SLOW_FAMILY_IMAGES = {'pixelcnn': (250, None), 'vae': (20, 1000)}
# Constant and uniform-noise images the examples score (`--num-synthetic`).
NUM_SYNTHETIC = 1000


# Where an experiment's images come from. There is no 'auto' here: without a
# data directory the examples use the embedded samples, never a TFDS lookup.
EXAMPLE_SOURCES = ('local', 'tfds', 'samples')


def add_data_flags(p: argparse.ArgumentParser, default_out: str) -> None:
    """The flags every experiment script has: where images come from, where results go."""
    p.add_argument('--data-dir', default=None,
                   help='directory of <name>_<split>.npz arrays (default: $TFP_OOD_DATA_DIR; '
                        'with neither this nor --source tfds, the embedded samples)')
    p.add_argument('--source', default=None, choices=EXAMPLE_SOURCES,
                   help='where images come from (default: local with --data-dir or '
                        '$TFP_OOD_DATA_DIR, else the samples embedded in the package)')
    p.add_argument('--download', action='store_true',
                   help='with --source tfds: let TFDS download what is not prepared '
                        '(needs internet access)')
    p.add_argument('--out', default=default_out, help=f'results folder (default: {default_out})')
    p.add_argument('--models-dir', default=os.path.join(REPO, 'saved_models'),
                   help='pretrained SavedModels (default: saved_models/)')
    p.add_argument('--num-images', type=int, default=None,
                   help='score at most this many images per set')
    for family, (samples, full) in SLOW_FAMILY_IMAGES.items():
        p.add_argument(f'--{family}-images', type=int, default=None,
                       help=f'images per set scored under a {family} model (default: '
                            f'{samples} on the embedded samples, '
                            f'{full or "all"} on full data; 0: all)')
    p.add_argument('--no-progress', dest='progress', action='store_false',
                   help='no progress bars')


def parser(description: str, default_out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    add_data_flags(p, default_out)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument('--retrain', action='store_true',
                      help='train the models from scratch first (see --config, --steps)')
    mode.add_argument('--untrained', action='store_true',
                      help='score under freshly initialised models (checks the pipeline)')
    p.add_argument('--config', default='cpu', choices=GLOW_CONFIG_NAMES,
                   help='architecture for --retrain / --untrained (default: cpu; paper '
                        'for a GPU)')
    p.add_argument('--steps', type=int, default=10000, help='training steps for --retrain')
    p.add_argument('--batch-size', type=int, default=64, help='training batch for --retrain')
    p.add_argument('--workdir', default='runs', help='run directories for --retrain')
    p.add_argument('--num-synthetic', type=int, default=NUM_SYNTHETIC,
                   help='constant and random images to score')
    return p


def run(main: Callable[[], object]) -> None:
    """Runs an experiment's `main`; an error the user can fix is one line and exit status 2."""
    script = os.path.basename(sys.argv[0])
    try:
        main()
    except data.DataNotFoundError as e:
        print(f'{script}: error: {e} Without --data-dir and --source the script uses the '
              f'images embedded in the package.', file=sys.stderr)
        sys.exit(2)
    except (FileNotFoundError, ValueError) as e:
        print(f'{script}: error: {e}', file=sys.stderr)
        sys.exit(2)


class Source:
    """Where the images of an experiment come from, decided once from the flags."""

    def __init__(self, args):
        data_dir = args.data_dir or os.environ.get(data.DATA_DIR_ENV)
        if data_dir and args.source != 'tfds' and not os.path.isdir(data_dir):
            raise data.DataNotFoundError(f'The data directory {data_dir} does not exist: give '
                                         f'--data-dir a folder of <name>_<split>.npz arrays.')
        source = args.source or ('local' if data_dir else 'samples')
        if source == 'local' and not data_dir:
            raise ValueError('--source local needs --data-dir (or $TFP_OOD_DATA_DIR).')
        self.source, self.samples = source, source == 'samples'
        self.data_dir = None if self.samples else data_dir
        self.tfds = args.source == 'tfds'
        self.download = self.tfds and args.download
        self.num_images = args.num_images
        self._family_images = {f: getattr(args, f'{f}_images', None) for f in SLOW_FAMILY_IMAGES}

    def family_images(self, family: str) -> Optional[int]:
        """How many images per set a model of `family` scores (`None`: all)."""
        if family not in SLOW_FAMILY_IMAGES:
            return None
        requested = self._family_images[family]
        if requested is None:
            requested = SLOW_FAMILY_IMAGES[family][0 if self.samples else 1]
        return requested or None

    def load(self, name: str, split: str, capped: bool = True):
        """The split's images, at most `--num-images` of them if `capped`."""
        ds = data.load(name, split, data_dir=self.data_dir, source=self.source,
                       download=self.download)
        return ds.take(self.num_images) if capped and self.num_images else ds

    def note(self) -> str:
        if not self.samples:
            return ''
        return ('No data directory was given, so this run scored the 2,000-image test samples '
                'embedded in the package (no training sets). For the full test sets pass '
                '--data-dir DIR (a folder of <name>_<split>.npz arrays, see docs/data.md) or '
                '--source tfds (TFDS; add --download to fetch what is not prepared).')


def get_model(args, source: Source, name: str, family: str, dataset: str, train_split: str,
              eval_specs: Sequence) -> Optional[report.ModelEntry]:
    """The model `name` (e.g. `glow_cifar10`) from the place the flags choose.

    Returns `None` when the pretrained model is not in `--models-dir`.
    """
    if args.retrain:
        config = train.TrainConfig(num_steps=args.steps, batch_size=args.batch_size,
                                   eval_every=max(1, min(1000, args.steps)),
                                   checkpoint_every=max(1, min(500, args.steps)))
        model, _ = train.train_on_dataset(
            family, args.config, dataset, train_split, os.path.join(args.workdir, name),
            config, eval_specs=eval_specs, data_dir=source.data_dir, source=source.source,
            download=source.download, progress=args.progress)
        export.export(model, os.path.join(args.out, 'models', name), overwrite=True,
                      provenance=train.RunDirectory(os.path.join(args.workdir, name))
                      .read_provenance())
        return report.ModelEntry(model, family, dataset)
    if args.untrained:
        shape = data.DATASETS[dataset].image_shape
        model = models.named_model(family, args.config, shape)
        init_split = 'test' if source.samples else train_split
        model.initialize(data.images_array(source.load(dataset, init_split), limit=512))
        return report.ModelEntry(model, family, f'untrained ({dataset} init)')
    path = os.path.join(args.models_dir, name)
    if not os.path.exists(path):
        print(f'{name}: no pretrained model at {path}; skipped (use --retrain to train '
              f'it, or --models-dir).', file=sys.stderr)
        return None
    # Rebuilt from its weights (a flow then reports every level's terms, which the
    # shipped detector reads, so they need not be computed twice), in the thread
    # that scores it (`report.Deferred`).
    family = export.read_metadata(path)['model']['family']
    return report.ModelEntry(report.Deferred(lambda: export.restore(path)), family, dataset)


# Validation OOD sets per image shape, for choices that must not look at the test
# pairs (the likelihood ratio's background model, our detector's design): the
# in-distribution dataset, and (name, (dataset, which `num_images` block of its
# training split), transform) with transform 'gray' (BT.601 luma), 'tint'
# (`data.tint`: each image between two random colours, seeded by its block) or
# None; every set is then fitted to the model's shape (`data.resize_images`).
# Block 1 of CIFAR-10 for its gray set: block 0 is the in-distribution set.
VALIDATION = {
    (32, 32, 3): ('cifar10', [('uniform_noise', None, None),
                              ('cifar10_gray', ('cifar10', 1), 'gray'),
                              ('fashion_mnist_resized', ('fashion_mnist', 0), None)]),
    (28, 28, 1): ('fashion_mnist', [('uniform_noise', None, None),
                                    ('cifar10_gray_resized', ('cifar10', 0), None)]),
}
# Sets the detector search adds (`validation_sets(..., more=True)`; the
# background search's choices were made without them). FashionMNIST in colour
# (block 1): the gray sets are told from CIFAR-10 by their equal channels alone,
# which every design sees; in colour the set asks whether a design sees another
# kind of image.
MORE_VALIDATION = {
    (32, 32, 3): [('fashion_mnist_color', ('fashion_mnist', 1), 'tint')],
}


def validation_sets(source: Source, shape, num_images: int, more: bool = False) -> dict:
    """`{'in': the first num_images training images, <name>: a validation OOD set}`
    for models of `shape` (a key of `VALIDATION`), with those of `MORE_VALIDATION`
    if `more`; every training image they use is in the first three `num_images`
    blocks of its training split."""
    if tuple(shape) not in VALIDATION:
        raise ValueError(f'No validation sets for images of shape {tuple(shape)}; known: '
                         f'{sorted(VALIDATION)}.')
    in_name, ood = VALIDATION[tuple(shape)]
    ood = ood + (MORE_VALIDATION.get(tuple(shape), []) if more else [])
    sets = {'in': data.images_array(source.load(in_name, f'train[:{num_images}]'))}
    for name, spec, transform in ood:
        if spec is None:
            sets[name] = data.images_array(data.uniform_noise_images(shape, num_images, seed=1))
            continue
        dataset, block = spec
        images = data.images_array(source.load(
            dataset, f'train[{block * num_images}:{(block + 1) * num_images}]'))
        if transform == 'gray':
            images = data.to_grayscale(images).numpy()
        elif transform == 'tint':
            images = data.tint(images, seed=block)
        sets[name] = data.resize_images(images, shape)
    return sets


def detector_statistics(path: str) -> Dict[str, List[str]]:
    """`{model name: statistics}` that the fitted detector at `path` reads, by
    the names of its models (folders beside it), from its JSON alone: what a
    run that scores those models keeps for `print_detector` to reuse."""
    record = read_json(path, 'fitted detector')
    statistics = list((record.get('design') or {}).get('statistics', ()))
    return {os.path.basename(os.path.normpath(d)): statistics
            for d in record.get('models', ())} if statistics else {}


def print_detector(path: str, sets: dict, in_set: str, out_set: str,
                   results: Optional[dict] = None) -> dict:
    """The shipped detector on the run's two sets: the fraction each has flagged.

    `results` (`{(model, set): ScoreResult}` of the run): where they hold the
    scores of the detector's own models on these sets with every term it
    reads, the models are not run again.
    """
    fitted = detectors.load_detector(path)
    flagged = {}
    for name in (in_set, out_set):
        images = data.images_array(sets[name])
        # The run's models are those of the detector's folder (--models-dir) by name.
        terms = [(results or {}).get((os.path.basename(d), name))
                 if os.path.realpath(os.path.dirname(d)) == os.path.realpath(
                     os.path.dirname(path)) else None for d in fitted.model_dirs]
        needed = set(getattr(fitted.detector, 'statistics', ()))
        # Reusable where they hold every statistic it reads that is not computed
        # from the images (a flow's statistics: `detector_statistics` asks for them).
        reusable = all(t is not None and t.num_images == len(images)
                       and not needed - set(t.scores) - set(image_statistics.IMAGE_STATISTICS)
                       for t in terms)
        scores = fitted.detect(images, terms=[t.scores for t in terms] if reusable else None)
        flagged[name] = float(np.mean(scores.components['is_ood']))
    provenance = fitted.provenance
    kept = f'{fitted.calibration.true_positive_rate:.0%}'
    print(f'\nA detector that works: the shipped {fitted.name} ({os.path.relpath(path)}, '
          f'its threshold set to keep {kept} of {provenance.get("dataset")} '
          f'{provenance.get("validation_split")}) flags {flagged[in_set]:.1%} of {in_set} '
          f'(about {1 - fitted.calibration.true_positive_rate:.0%} by construction) and '
          f'{flagged[out_set]:.1%} of {out_set}. '
          f'On your own images: tfp-ood detect --detector {os.path.relpath(path)} '
          f'--images-dir my_images/ --output detections/')
    return {'detector': fitted.name, 'flagged': flagged}


def print_report(outcome: dict, source: Source, in_set: str, out_set: str, out: str) -> None:
    """The run in a few lines a newcomer can read, and where everything went."""
    where = ('the images embedded in the package (CIFAR-10, SVHN, FashionMNIST and MNIST '
             'test samples of 2,000 each)' if source.samples else
             f'{source.source} data' + (f' from {source.data_dir}' if source.data_dir else ''))
    print(f'\n{in_set} (in-distribution) against {out_set}, scored from {where}.')
    print('Mean bits/dim (lower = more likely; the paper\'s number in parentheses) and the '
          'AUROC of raw likelihood as an OOD detector (published figure in parentheses):\n')
    print(outcome['headline'])
    largest = max(r.num_images for r in outcome['rows'] if r.scored_set == in_set)
    for r in outcome['rows']:
        if r.scored_set == in_set and r.num_images < largest and not source.num_images:
            print(f'{r.model} scored the first {r.num_images} images of each set, for time '
                  f'(--{r.family}-images 0 scores them all).')
    worse = [m for m, v in outcome['metrics'].items() if v['auroc'] < 0.5]
    if worse:
        print(f'AUROC 0.5 is chance. Below 0.5 ({", ".join(worse)}), raw likelihood ranks '
              f'{out_set} as MORE in-distribution than {in_set}: the paper\'s finding.')
    if source.note():
        print(source.note())
    print(f'\nMain figure: {os.path.abspath(outcome["overview"])}')
    print(f'Everything (tables, per-image scores, histograms, TensorBoard logs): '
          f'{os.path.abspath(out)}')
