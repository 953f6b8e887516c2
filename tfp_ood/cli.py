"""The `tfp-ood` command line: train, export, score, compare, fit-detector and detect.

    tfp-ood train   --model glow --config cpu --dataset cifar10 --workdir runs/glow_cifar10
    tfp-ood export  --workdir runs/glow_cifar10 --output saved_models/glow_cifar10
    tfp-ood score   --model-dir saved_models/glow_cifar10 --dataset svhn_cropped \\
                    --split test --output scores/svhn
    tfp-ood compare scores/cifar10/scores.npz scores/svhn/scores.npz --output compare/
    tfp-ood detect  --detector saved_models/detector_cifar10.json --images-dir my_images/ \\
                    --output detections/

Every verb has `--help`, answered without importing TensorFlow. Errors (a
missing path, a corrupt SavedModel, images of the wrong size) print one line
and exit with status 2. `--strategy multi_worker` (train, score, detect) runs
the command as one worker of the cluster in `TF_CONFIG`; the strategy is
created before anything else of TensorFlow runs, and only the chief writes.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import traceback
import warnings
from typing import List, Optional

from tfp_ood import _startup
from tfp_ood.errors import TfpOodError
from tfp_ood.terms import BITS_PER_DIM, LOG_PROB

__all__ = ['main']


class CommandError(TfpOodError):
    """An error the user can fix: printed without a traceback, exit status 2."""


def _image_shape(text: str):
    """`H,W,C` as in `64,64,3`."""
    try:
        shape = tuple(int(d) for d in text.split(','))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1 or shape[-1] not in (1, 3):
        raise argparse.ArgumentTypeError(f'expected H,W,C with C 1 or 3, e.g. 64,64,3; '
                                         f'got {text!r}')
    return shape


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
    parser.add_argument('--source', default='auto', choices=('auto', 'local', 'tfds', 'samples'),
                        help='where images come from (default: auto)')
    parser.add_argument('--download', action='store_true',
                        help='let TFDS download missing datasets (needs internet)')


def _add_dataclass_flags(parser, cls) -> None:
    """A flag per field of dataclass `cls` (`--field-name`, or the field's `flag`
    metadata), with its type, default and `help` metadata."""
    for field in dataclasses.fields(cls):
        flag = (field.metadata.get('flag') or field.name).replace('_', '-')
        parser.add_argument(f'--{flag}', dest=field.name, type=field.type, default=field.default,
                            metavar={int: 'N', float: 'X', str: 'PATH'}.get(field.type, 'VALUE'),
                            help=f'{field.metadata["help"]} (default: {field.default})')


def _from_flags(cls, args):
    """The dataclass `cls` from the flags `_add_dataclass_flags` added."""
    return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})


def _build_parser() -> argparse.ArgumentParser:
    """The parser of every verb; it imports no TensorFlow (`--help` answers at once)."""
    parser = argparse.ArgumentParser(
        prog='tfp-ood', description='Likelihood-based out-of-distribution analysis with '
        'deep generative models (Nalisnick et al., 2019).')
    verbs = parser.add_subparsers(dest='verb', required=True, metavar='VERB')
    for add_verb in (_add_train, _add_export, _add_score, _add_compare, _add_fit_detector,
                     _add_detect, _add_export_detector):
        add_verb(verbs)
    return parser


def _add_strategy_arg(parser, what: str) -> None:
    from tfp_ood.config import STRATEGIES
    parser.add_argument('--strategy', default='default', choices=STRATEGIES,
                        help=f'tf.distribute strategy: mirrored over local GPUs, multi_worker '
                             f'across processes or machines (TF_CONFIG; the same command on '
                             f'each; only the chief writes {what})')


def _add_precision_arg(parser, default, text: str) -> None:
    from tfp_ood.config import PRECISIONS
    parser.add_argument('--precision', default=default, choices=PRECISIONS, help=text)


def _add_train(verbs) -> None:
    from tfp_ood.config import COUPLING_SCALES, MODEL_NAMES, MODELS, SIZE_NAMES
    from tfp_ood.training.config import TrainConfig
    train = verbs.add_parser(
        'train', help='train a model (resumes from --workdir if it holds the same run)',
        description='Train a model. Running the same command again after an interruption '
        '(Ctrl-C, SIGTERM, a crash) resumes from the last checkpoint.')
    train.set_defaults(handler=_train)
    train.add_argument('--model', default='glow', choices=MODEL_NAMES,
                       help='model (default: glow): ' + '; '.join(
                           f'{spec.name}: {spec.description}' for spec in MODELS.values()))
    train.add_argument('--config', default='cpu', choices=SIZE_NAMES,
                       help='named size (default: cpu): ' + '; '.join(
                           f'{spec.name}: {", ".join(spec.sizes)}' for spec in MODELS.values()))
    _add_input_args(train, required=False, split='train', dataset_default='cifar10',
                    what='training images')
    train.add_argument('--image-shape', type=_image_shape, default=None, metavar='H,W,C',
                       help='--images-dir / --npz / a TFDS dataset outside the registry: the '
                            'model\'s image shape (default: the most common in the images)')
    train.add_argument('--validation-fraction', type=float, default=None, metavar='F',
                       help='hold out this fraction of the training images (drawn by --seed) '
                            'as the set scored every --eval-every steps (default: 0.1 for '
                            '--images-dir, --npz and TFDS datasets outside the registry)')
    train.add_argument('--eval', dest='eval_sets', type=_eval_spec, action='append',
                       default=None, metavar='DATASET:SPLIT',
                       help='held-out set scored every --eval-every steps (repeatable; '
                            'default: the test split of a registry --dataset)')
    train.add_argument('--workdir', required=True, help='run directory (checkpoints, logs)')
    _add_dataclass_flags(train, TrainConfig)
    _add_precision_arg(train, 'float32', 'where the coupling networks of a flow compute '
                       '(default: float32; bfloat16 on CPUs with AVX-512 BF16 / AMX and on GPUs)')
    train.add_argument('--coupling-scale', choices=COUPLING_SCALES, default=None,
                       help="--model glow: how the flow steps bound their scales (default: "
                            "symmetric; contracting: Glow's sigmoid, the image-to-latent pass "
                            "only shrinks, as the likelihood ratio's Glow backgrounds need)")
    train.add_argument('--latent-dim', type=int, default=None, metavar='N',
                       help='--model vae / vae_rnvp: the size of the latent z (default: the '
                            "named size's, 64 for cpu; a small one keeps only what the "
                            "images' encodings most need, as the likelihood path's second "
                            'VAE does)')
    _add_strategy_arg(train, 'the run (history, logs, checkpoints)')
    train.add_argument('--no-resume', dest='resume', action='store_false',
                       help='refuse to continue a run already in --workdir')
    train.add_argument('--no-progress', dest='progress', action='store_false',
                       help='no progress bar')
    _add_data_args(train)


def _add_export(verbs) -> None:
    export = verbs.add_parser(
        'export', help='write the last checkpoint of a run as a SavedModel',
        description='Export the last checkpoint of a training run as a SavedModel that '
        'plain TensorFlow can load (signatures serving_default, log_prob, sample).')
    export.set_defaults(handler=_export)
    export.add_argument('--workdir', required=True, help='run directory of tfp-ood train')
    export.add_argument('--output', required=True, help='SavedModel directory to write')
    export.add_argument('--overwrite', action='store_true', help='replace --output')
    _add_precision_arg(export, None, "where the exported flow's coupling networks compute "
                       "(default: as it was trained)")


def _add_score(verbs) -> None:
    score = verbs.add_parser(
        'score', help='score images with a SavedModel',
        description='Score images with an exported SavedModel. Writes scores.csv and '
        'scores.npz (per image), summary.json and summary.md, and histogram.png.')
    score.set_defaults(handler=_score)
    score.add_argument('--model-dir', required=True, help='SavedModel from tfp-ood export')
    _add_input_args(score)
    score.add_argument('--output', required=True, help='output folder')
    score.add_argument('--batch-size', type=int, default=256, help='images per batch')
    _add_strategy_arg(score, 'the outputs; per-image scores as on one device')
    _add_precision_arg(score, None, 'rebuild the flow with its coupling networks in this '
                       'precision (default: the SavedModel as exported)')
    score.add_argument('--overwrite', action='store_true', help='replace existing outputs')
    _add_data_args(score)


def _add_compare(verbs) -> None:
    compare = verbs.add_parser(
        'compare', help='detection metrics and histogram of two score files',
        description='AUROC, AUPR and FPR at 95% TPR of telling the in-distribution '
        'scores from the out-of-distribution ones by their log-likelihoods (the '
        'in-distribution set the positive class), their overlaid histogram, and TensorBoard '
        'logs (the histograms, the metrics and the precision-recall curve) in '
        'OUTPUT/tensorboard.')
    compare.set_defaults(handler=_compare)
    compare.add_argument('in_scores', help='scores.npz of the in-distribution set')
    compare.add_argument('out_scores', help='scores.npz of the out-of-distribution set')
    compare.add_argument('--output', required=True, help='output folder')
    compare.add_argument('--key', default=LOG_PROB, help='score to plot (default: log_prob)')
    compare.add_argument('--overwrite', action='store_true', help='replace existing outputs')


def _add_fit_detector(verbs) -> None:
    from tfp_ood.config import DETECTORS
    fit = verbs.add_parser(
        'fit-detector', help='fit an OOD detector and set its threshold',
        description='Fit an OOD detector over exported models on in-distribution images, '
        'set its threshold at a true-positive rate on held-out in-distribution images, and '
        'save the fit as JSON (what tfp-ood detect runs; it is never re-fitted there).')
    fit.set_defaults(handler=_fit_detector)
    fit.add_argument('--detector', required=True, choices=tuple(DETECTORS),
                     metavar='DETECTOR', help='the detector: ' + '; '.join(
                         f'{name}: {text}' for name, text in DETECTORS.items()))
    fit.add_argument('--design', default=None,
                     help='JSON design of density_of_states_selected (statistics, codecs, '
                          'estimator), as tfp_ood.experiments.detector_search writes')
    fit.add_argument('--model-dir', required=True, help='SavedModel of the density model')
    fit.add_argument('--background-dir', default=None,
                     help='SavedModel of the background model (likelihood_ratio)')
    _add_input_args(fit, split=None, what='the in-distribution images')
    fit.add_argument('--fit-split', default='train[:5000]',
                     help='--dataset: images the detector learns from (default: train[:5000])')
    fit.add_argument('--validation-split', default='test[:5000]',
                     help='--dataset: held-out images the threshold is set on (default: '
                          'test[:5000])')
    fit.add_argument('--validation-fraction', type=float, default=None, metavar='F',
                     help='set the threshold on this fraction of the images, held out from '
                          'the fit (drawn by --seed); for --images-dir and --npz the default is '
                          'the fraction the model held out when trained on them, else 0.1; '
                          'with --dataset, instead of --validation-split')
    fit.add_argument('--seed', type=int, default=0,
                     help='seed of the --validation-fraction draw (default: 0)')
    fit.add_argument('--true-positive-rate', type=float, default=0.95,
                     help='fraction of in-distribution images kept (default: 0.95)')
    fit.add_argument('--output', required=True, help='JSON file of the fit')
    fit.add_argument('--overwrite', action='store_true', help='replace --output')
    _add_data_args(fit)


def _add_detect(verbs) -> None:
    detect = verbs.add_parser(
        'detect', help='flag out-of-distribution images with a fitted detector',
        description='Score images with a fitted detector (tfp-ood fit-detector, or a shipped '
        'one such as saved_models/detector_cifar10.json) and flag those above its threshold. '
        'Writes detections.csv and detections.npz (per image: ood_score, is_ood and the '
        'components), summary.json and summary.md (the fraction flagged), histogram.png '
        '(the scores against the in-distribution validation scores, threshold drawn) and '
        'contact_sheet.png (the most and least out-of-distribution images).')
    detect.set_defaults(handler=_detect)
    detect.add_argument('--detector', required=True, help='JSON file of a fitted detector')
    _add_input_args(detect)
    detect.add_argument('--output', required=True, help='output folder')
    _add_strategy_arg(detect, 'the outputs')
    detect.add_argument('--overwrite', action='store_true', help='replace existing outputs')
    _add_data_args(detect)


def _add_export_detector(verbs) -> None:
    export_detector = verbs.add_parser(
        'export-detector', help='write a fitted detector as a SavedModel',
        description='Write a fitted detector as a SavedModel whose serving_default(images) '
        'returns ood_score, is_ood and the components, computed in TensorFlow ops: plain '
        'TensorFlow runs it, with neither tfp_ood nor TFP installed.')
    export_detector.set_defaults(handler=_export_detector)
    export_detector.add_argument('--detector', required=True,
                                 help='JSON file of a fitted detector')
    export_detector.add_argument('--output', required=True, help='SavedModel directory')
    export_detector.add_argument('--overwrite', action='store_true',
                                 help='replace a previous export at --output')


def _train(args) -> int:
    from tfp_ood import train
    from tfp_ood.config import MODELS, config_names
    if not args.resume and train.load_run_config(args.workdir) is not None:
        raise CommandError(f'{args.workdir} already holds a run and --no-resume was given; '
                           f'choose another --workdir.')
    if args.config not in config_names(args.model):
        raise CommandError(f'--model {args.model} has no size {args.config!r}; it has '
                           f'{", ".join(config_names(args.model))}.')
    overrides = {}
    if args.coupling_scale is not None:
        if args.model != 'glow':
            raise CommandError(f'--coupling-scale is for --model glow (affine couplings); '
                               f'got --model {args.model}.')
        overrides['coupling_scale'] = args.coupling_scale
    if args.latent_dim is not None:
        if MODELS[args.model].family != 'vae':
            raise CommandError(f'--latent-dim is for --model vae and vae_rnvp; got --model '
                               f'{args.model}.')
        overrides['latent_dim'] = args.latent_dim
    if args.init_from:  # Part of the run's identity: the same from any directory.
        args.init_from = os.path.abspath(args.init_from)
    config = _from_flags(train.TrainConfig, args)
    import tensorflow as tf
    latest = tf.train.latest_checkpoint(train.RunDirectory(args.workdir).checkpoints)
    if latest is not None:  # Said also without a progress bar.
        print(f'Resuming {args.workdir} from {os.path.basename(latest)}.', flush=True)
    from tfp_ood import data
    if args.images_dir or args.npz or args.dataset not in data.DATASETS:
        result = _train_on_own_images(args, config, overrides)
    else:
        if args.image_shape or args.validation_fraction is not None:
            raise CommandError(f'--image-shape and --validation-fraction are for --images-dir, '
                               f'--npz and TFDS datasets outside the registry; '
                               f'{args.dataset} is {data.DATASETS[args.dataset].image_shape}, '
                               f'evaluated on its test split or --eval')
        _, result = train.train_on_dataset(
            args.model, args.config, args.dataset, args.split, args.workdir, config,
            eval_specs=args.eval_sets, data_dir=args.data_dir, source=args.source,
            download=args.download, strategy=args.distribution, progress=args.progress,
            precision=args.precision, model_overrides=overrides)
    from tfp_ood import distribute
    if distribute.is_chief(args.distribution):
        last = result.history[-1] if result.history else {}
        print(f'{result.stop_reason} at step {result.step} after {result.wall_time:.0f} s; '
              f'last evaluation: {last}')
    else:
        print(f'{result.stop_reason} at step {result.step} after {result.wall_time:.0f} s, as '
              f'worker {args.distribution.cluster_resolver.task_id}; the chief writes the run')
    if result.stop_reason.startswith('stopped by '):
        # Saved, but not finished: a script (`set -e`) must not go on to export.
        name = result.stop_reason[len('stopped by '):]
        print(f'The run is not finished: its checkpoint at step {result.step} is saved; run '
              f'the same command to resume.', file=sys.stderr)
        return 128 + int(getattr(signal, name, signal.SIGTERM))
    return 0


def _train_on_own_images(args, config, overrides):
    """`tfp-ood train` on a folder, an .npz file or a TFDS dataset outside the
    registry: the model's shape from the images (or --image-shape), a held-out
    fraction of them (or --eval sets) scored as it trains."""
    from tfp_ood import distribute, inputs, train
    if args.images_dir:  # Decoded batch by batch as it trains: memory stays flat.
        images = inputs.FolderStream(args.images_dir, args.image_shape, args.resize,
                                     args.name).lazy_image_set(sys.stderr.isatty())
        for line in images.describe(os.path.join(args.workdir, 'skipped.txt')):
            print(line, flush=True)
    else:
        images = _read_image_set(args, args.image_shape, args.split,
                                 os.path.join(args.workdir, 'skipped.txt'))
    fraction = 0.1 if args.validation_fraction is None and not args.eval_sets else (
        args.validation_fraction)
    eval_sets = {}
    if fraction:
        images, held_out = images.split(fraction, seed=config.seed)
        eval_sets[held_out.name] = held_out.images
    for name, split in args.eval_sets or ():
        eval_sets[f'{name}/{split}'] = inputs.load_dataset(
            name, split, images.images.shape[1:], args.resize, data_dir=args.data_dir,
            source=args.source, download=args.download).images
    source = ({'images_dir': os.path.abspath(args.images_dir)} if args.images_dir else
              {'npz': os.path.abspath(args.npz)} if args.npz else
              {'dataset': args.dataset, 'split': args.split})
    source.update(image_shape=list(images.images.shape[1:]), skipped=len(images.skipped),
                  validation_fraction=fraction)
    print(f'{images.name}: training on {len(images)} images of '
          f'{"x".join(map(str, images.images.shape[1:]))}'
          + (f', evaluating on {", ".join(f"{k} ({len(v)})" for k, v in eval_sets.items())}'
             if eval_sets else ''), flush=True)
    _, result = train.train_on_images(
        args.model, args.config, images.images, args.workdir, config, eval_sets, source,
        strategy=args.distribution, progress=args.progress, precision=args.precision,
        model_overrides=overrides)
    if images.skipped and distribute.is_chief(args.distribution):
        images.write_skipped(train.RunDirectory(args.workdir).skipped_path)
    return result


def _export(args) -> int:
    from tfp_ood import export, models, train
    if not os.path.isdir(args.workdir):
        raise CommandError(f'no run directory at {args.workdir}')
    run_config = train.load_run_config(args.workdir)
    if run_config is None:
        raise CommandError(f'{args.workdir} is not a run directory of tfp-ood train '
                           f'(no config.json)')
    provenance = train.RunDirectory(args.workdir).read_provenance()
    model = models.from_config(run_config['model'],
                               args.precision or provenance.get('precision', 'float32'))
    step = train.restore_latest(model, args.workdir)
    provenance['checkpoint_step'] = step
    try:
        export.export(model, args.output, provenance=provenance, overwrite=args.overwrite)
    except FileExistsError as e:
        raise CommandError(str(e)) from None
    print(f'exported step {step} of {args.workdir} to {args.output}')
    return 0


def _staged(out: str, names, overwrite: bool, inputs, writes: bool = True):
    """`outputs.staged_folder` for a command's output folder; nothing for a worker
    that does not write (`--strategy multi_worker`)."""
    from tfp_ood import outputs
    if not writes:
        return contextlib.nullcontext(None)
    return outputs.staged_folder(out, names, overwrite, inputs)


def _with_skipped(args, names):
    """A command's output files, with `skipped.txt` when it reads a folder (the
    files that could not be decoded; empty when none)."""
    return tuple(names) + (('skipped.txt',) if getattr(args, 'images_dir', None) else ())


def _scoring_strategy(args):
    """`(strategy or None, whether this process writes the outputs)`; the strategy
    itself was created first thing in `main`."""
    if args.strategy == 'default':
        return None, True
    from tfp_ood import distribute
    return args.distribution, distribute.is_chief(args.distribution)


def _add_input_args(parser, required: bool = True, split: Optional[str] = 'test',
                    dataset_default: Optional[str] = None, what: str = 'images') -> None:
    """The images a verb works on: a dataset split, an .npz file or a folder
    (`tfp_ood.inputs`)."""
    inputs = parser.add_mutually_exclusive_group(required=required)
    inputs.add_argument('--dataset', default=dataset_default,
                        help=f'{what}: a dataset of the registry or any TFDS image dataset'
                             + (f' (with --split; default: {dataset_default})'
                                if dataset_default else ' (with --split)' if split else ''))
    inputs.add_argument('--npz', help=f'{what}: an .npz file with a uint8 "images" array')
    inputs.add_argument('--images-dir',
                        help=f'{what}: a folder of images, searched recursively (PNG, JPEG, '
                             f'BMP, WebP, GIF, TIFF); files that cannot be decoded are skipped '
                             f'and listed in skipped.txt')
    if split is not None:
        parser.add_argument('--split', default=split,
                            help=f'split of --dataset (default: {split})')
    parser.add_argument('--name', default=None, help='name of the set (for tables)')
    parser.add_argument('--resize', action='store_true',
                        help='resize images of another size to the model\'s (without it they '
                             'are an error; channels are converted either way, and said)')


def _read_image_set(args, shape, split: Optional[str] = None,
                    skipped_to: str = 'skipped.txt'):
    """The `tfp_ood.inputs.ImageSet` the input flags name, at `shape` (`None`:
    the images' own, or a folder's most common one); what was converted or
    skipped (to be listed in `skipped_to`) is printed. A folder's images are
    decoded where they are read (`FolderImages`): memory stays flat."""
    from tfp_ood import inputs
    if args.images_dir:
        image_set = inputs.FolderStream(args.images_dir, shape, args.resize, args.name
                                        ).lazy_image_set(sys.stderr.isatty())
    elif args.npz:
        image_set = inputs.read_npz_set(args.npz, shape, args.resize, args.name)
    else:
        split = split or args.split
        image_set = inputs.load_dataset(args.dataset, split, shape, args.resize,
                                        data_dir=args.data_dir, source=args.source,
                                        download=args.download, set_name=args.name)
    for line in image_set.describe(skipped_to):
        print(line, flush=True)
    return image_set


def _score(args) -> int:
    from tfp_ood import export, outputs
    from tfp_ood.evaluate import score
    model = export.load(args.model_dir)
    if args.precision:  # The tfp_ood model itself, rebuilt with its networks in that precision.
        if not model.is_flow:
            raise CommandError(f'--precision is for the flows (glow, cv_glow); '
                               f'{args.model_dir} is a {model.metadata["model"].get("family")}')
        model = export.restore(args.model_dir, precision=args.precision)
    shape = model.image_shape
    out = args.output
    names = _with_skipped(args, ('scores.csv', 'scores.npz', 'summary.json', 'summary.md',
                                 'histogram.png'))
    inputs = (args.model_dir, args.images_dir)
    outputs.check_output(out, True, names, args.overwrite, inputs)  # Before any work.
    stream = None
    if args.images_dir:  # Decoded as scored: memory stays flat however many there are.
        from tfp_ood import inputs as image_inputs
        stream = image_inputs.FolderStream(args.images_dir, shape, args.resize, args.name)
        images, name = stream.dataset, stream.name
    else:
        image_set = _read_image_set(args, shape)
        images, name = image_set.images, image_set.name
    strategy, writes = _scoring_strategy(args)
    with _staged(out, names, args.overwrite, inputs, writes) as staging:
        result = score(model, images, name=name, batch_size=args.batch_size,
                       model_name=os.path.basename(os.path.normpath(args.model_dir)),
                       strategy=strategy)
        if stream is not None:
            image_set = stream.image_set_read()
            for line in image_set.describe():
                print(line, flush=True)
        if not writes:
            print(f'{name}: scored as a worker; the chief writes the outputs')
            return 0
        files = {k: os.path.join(staging, k) for k in names}
        _write_scores(result, image_set, model, args.model_dir, files)
    summary = dict(result.summary(), name=name)
    print(f'{name}: {summary["num_images"]} images, bits/dim {summary["bpd_mean"]:.4f} ± '
          f'{summary["bpd_std"]:.4f} ({summary["num_nonfinite"]} non-finite); wrote {out}')
    return 0


def _write_scores(result, image_set, model, model_dir, files) -> None:
    """`score`'s outputs: per-image CSV and NPZ, summary JSON and Markdown,
    histogram, and the files skipped."""
    import numpy as np

    from tfp_ood import plotting, report
    labels, sources, name = image_set.labels, image_set.files, image_set.name
    if labels is not None:
        result.labels = np.asarray(labels, np.int64)
    result.save(files['scores.npz'])
    keys = [LOG_PROB, BITS_PER_DIM] + list(model.term_names)
    report.write_per_image_csv(files['scores.csv'], dict(
        label=result.labels, **{k: result.scores[k] for k in keys}), sources)
    summary = dict(result.summary(), name=name, model_dir=model_dir)
    fields, rows = _what_was_read(image_set, files)
    summary.update(fields)
    report.write_summary(files['summary.json'], files['summary.md'], summary, [
        ('set', name), ('images', str(summary['num_images'])),
        ('non-finite', str(summary['num_nonfinite'])),
        ('bits/dim (mean ± std)', f'{summary["bpd_mean"]:.4f} ± {summary["bpd_std"]:.4f}'),
        ('log p(x) nats (mean)', f'{summary["log_prob_mean"]:.1f}')] + rows)
    plotting.plot_histograms([result], files['histogram.png'], key=BITS_PER_DIM)


def _what_was_read(image_set, files):
    """`(summary fields, Markdown rows)` of what reading the images converted
    and skipped; `skipped.txt` written where the outputs have one."""
    if 'skipped.txt' in files:
        image_set.write_skipped(files['skipped.txt'])
    fields = {'converted': dict(image_set.notes), 'num_skipped': len(image_set.skipped)}
    rows = [(f'images {what}', str(count)) for what, count in sorted(image_set.notes.items())]
    if image_set.skipped:
        rows.append(('files skipped (skipped.txt)', str(len(image_set.skipped))))
    return fields, rows


def _compare(args) -> int:
    from tfp_ood import plotting
    from tfp_ood.evaluate import ScoreResult
    from tfp_ood.metrics import ood_metrics
    from tfp_ood.summaries import Summaries
    results = [ScoreResult.load(path) for path in (args.in_scores, args.out_scores)]
    for path, result in zip((args.in_scores, args.out_scores), results):
        if args.key not in result.scores:
            raise CommandError(f'{path} has no score {args.key!r}; it has '
                               f'{sorted(result.scores)}')
        if result.num_nonfinite == result.num_images:
            raise CommandError(f'{path}: every one of its {result.num_images} scores is '
                               f'non-finite (NaN or inf); there is nothing to compare')
    if results[0].model != results[1].model:
        print(f'tfp-ood compare: warning: the two files were scored by different models '
              f'({results[0].model!r} and {results[1].model!r}); their likelihoods are not '
              f'comparable', file=sys.stderr)
    names = ('metrics.json', 'histogram.png', 'tensorboard')
    with _staged(args.output, names, args.overwrite, (args.in_scores, args.out_scores)
                 ) as staging:
        files = {k: os.path.join(staging, k) for k in names}
        metrics = ood_metrics(-results[0].log_prob, -results[1].log_prob,
                              nonfinite='most_ood')
        metrics.update(in_set=results[0].name, out_set=results[1].name)
        with open(files['metrics.json'], 'w') as f:
            json.dump(metrics, f, indent=2)
        plotting.plot_histograms(results, files['histogram.png'], key=args.key)
        # TensorBoard: the score histograms, the metrics and the precision-recall curve.
        summaries = Summaries(files['tensorboard'])
        summaries.scores({r.name: r for r in results}, step=0, prefix='scores')
        summaries.scalars({f'ood/{k}': metrics[k] for k in ('auroc', 'aupr_in', 'aupr_out',
                                                            'fpr_at_95_tpr')}, 0)
        summaries.pr_curve(f'pr/{results[0].name} vs {results[1].name}', -results[0].log_prob,
                           -results[1].log_prob, description='raw likelihood; the first set is '
                           'the positive class')
        summaries.close()
    nonfinite = ''
    if metrics['num_nonfinite_in'] or metrics['num_nonfinite_out']:
        nonfinite = (f' ({metrics["num_nonfinite_in"]} in and {metrics["num_nonfinite_out"]} '
                     f'out of the scores are non-finite, ranked as least likely)')
    print(f'{results[0].name} (in) vs {results[1].name} (out): AUROC {metrics["auroc"]:.4f}, '
          f'AUPR-in {metrics["aupr_in"]:.4f}, AUPR-out {metrics["aupr_out"]:.4f}, '
          f'FPR@95%TPR {metrics["fpr_at_95_tpr"]:.4f}{nonfinite}; wrote {args.output}')
    return 0


def _fit_and_validation_sets(args, shape, skipped_to: str):
    """The images `fit-detector` fits on and those it sets the threshold on, and
    what they are (for the fit's provenance)."""
    fraction = args.validation_fraction
    if args.dataset:
        provenance = {'dataset': args.dataset, 'fit_split': args.fit_split}
        fit_set = _read_image_set(args, shape, args.fit_split)
        if fraction is None:
            if args.fit_split == args.validation_split:
                raise CommandError(f'--validation-split is --fit-split ({args.fit_split}); '
                                   f'the threshold must be set on held-out images: pass '
                                   f'another split, or --validation-fraction')
            provenance['validation_split'] = args.validation_split
            return fit_set, _read_image_set(args, shape, args.validation_split), provenance
    else:
        fit_set = _read_image_set(args, shape, skipped_to=skipped_to)
        provenance = ({'images_dir': os.path.abspath(args.images_dir)} if args.images_dir
                      else {'npz': os.path.abspath(args.npz)})
        provenance['skipped'] = len(fit_set.skipped)
        fraction, args.seed = _held_out_as_trained(args, provenance, fraction)
    fit_set, validation_set = fit_set.split(fraction, seed=args.seed)
    provenance.update(validation_fraction=fraction, seed=args.seed)
    print(f'{fit_set.name}: fitting on {len(fit_set)} images, the threshold set on '
          f'{len(validation_set)} held out', flush=True)
    return fit_set, validation_set, provenance


def _held_out_as_trained(args, source, fraction):
    """`(fraction, seed)` of the held-out images: where the model was trained on
    these very images, the fraction and seed it held out (so the threshold is
    set on images the model never saw), unless others are given."""
    from tfp_ood import export
    provenance = export.read_metadata(args.model_dir).get('provenance', {})
    data = provenance.get('data', {})
    trained = {k: data.get(k) for k in source if k in ('images_dir', 'npz')}
    if not trained or trained != {k: v for k, v in source.items() if k in trained}:
        return (0.1 if fraction is None else fraction), args.seed
    held = data.get('validation_fraction')
    seed = provenance.get('train_config', {}).get('seed', 0)
    if fraction is None and held:
        print(f'{args.model_dir} was trained on these images with {held:.0%} held out (seed '
              f'{seed}): the threshold is set on those, which the model never saw', flush=True)
        return held, seed
    if (fraction or 0.1, args.seed) != (held, seed):
        print(f'tfp-ood fit-detector: warning: {args.model_dir} was trained on these images '
              f'with {held or 0:.0%} held out (seed {seed}); other held-out images (here '
              f'{fraction or 0.1:.0%}, seed {args.seed}) may include images it was trained on, '
              f'and in-distribution images are then flagged more often than the threshold '
              f'says', file=sys.stderr)
    return (0.1 if fraction is None else fraction), args.seed


def _skipped_beside(output: str) -> str:
    """Where `fit-detector` lists the files it skipped: `<output stem>.skipped.txt`."""
    return os.path.splitext(output)[0] + '.skipped.txt'


def _fit_detector(args) -> int:
    from tfp_ood import detectors, export, outputs
    outputs.check_output(args.output, False, overwrite=args.overwrite,
                         inputs=(args.model_dir, args.background_dir, args.design))
    if (args.design is None) != (args.detector != detectors.SELECTED):
        raise CommandError(f'--design goes with --detector {detectors.SELECTED}, and only '
                           f'with it')
    design = detectors.read_design(args.design) if args.design else None
    model_dirs = [args.model_dir] + ([args.background_dir] if args.background_dir else [])
    for path in model_dirs:
        if not os.path.isdir(path):
            raise CommandError(f'no SavedModel at {path}')

    fit_set, validation_set, provenance = _fit_and_validation_sets(
        args, export.read_metadata(args.model_dir)['image_shape'],
        _skipped_beside(args.output))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', UserWarning)
        fitted = detectors.fit_detector(
            args.detector, model_dirs, fit_set.images, validation_set.images,
            args.true_positive_rate, provenance=provenance, design=design,
            progress=sys.stderr.isatty())
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            print(f'tfp-ood fit-detector: warning: {warning.message}', file=sys.stderr)
    interval = fitted.calibration.interval()
    fitted.provenance.update(num_validation=int(len(fitted.calibration.validation_scores)),
                             threshold_interval=interval)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    fitted.save(args.output)
    if fit_set.skipped:
        fit_set.write_skipped(_skipped_beside(args.output))
    low, high = interval['flagged']
    print(f'{args.detector}: threshold {fitted.calibration.threshold:.6g} keeps '
          f'{args.true_positive_rate:.0%} of {validation_set.name} '
          f'({len(fitted.calibration.validation_scores)} images; bootstrap 95% interval of '
          f'the threshold {interval["threshold"][0]:.6g} to {interval["threshold"][1]:.6g}, '
          f'flagging {low:.1%} to {high:.1%} of them); wrote {args.output}')
    return 0


def _detect(args) -> int:
    from tfp_ood import detectors, outputs
    out = args.output
    names = _with_skipped(args, ('detections.csv', 'detections.npz', 'summary.json',
                                 'summary.md', 'histogram.png', 'contact_sheet.png'))
    outputs.check_output(out, True, names, args.overwrite,
                         (args.detector, args.images_dir))  # Before any work.
    fitted = detectors.load_detector(args.detector)
    inputs = (args.detector, args.images_dir, *fitted.model_dirs)
    image_set = _read_image_set(args, fitted.detector.models[0].image_shape)
    images, name = image_set.images, image_set.name
    strategy, writes = _scoring_strategy(args)
    with _staged(out, names, args.overwrite, inputs, writes) as staging:
        scores = fitted.detect(images, strategy=strategy)
        if not writes:
            print(f'{name}: scored as a worker; the chief writes the outputs')
            return 0
        files = {k: os.path.join(staging, k) for k in names}
        _write_detections(args, fitted, scores, image_set, files)
    is_ood, calibration = scores.components['is_ood'], fitted.calibration
    print(f'{name}: {int(is_ood.sum())} of {len(images)} images ({is_ood.mean():.1%}) flagged '
          f'out of distribution by {fitted.name} (threshold {calibration.threshold:.4g}, '
          f'which keeps {calibration.true_positive_rate:.0%} of in-distribution images); '
          f'wrote {out}')
    return 0


def _write_detections(args, fitted, scores, image_set, files) -> None:
    """`detect`'s outputs: per-image CSV and NPZ, summary JSON and Markdown,
    figures, and the files skipped."""
    import numpy as np

    from tfp_ood import plotting, report
    images, labels, sources, name = (image_set.images, image_set.labels, image_set.files,
                                     image_set.name)
    is_ood = scores.components['is_ood']
    components = {k: np.asarray(v) for k, v in scores.components.items()
                  if np.ndim(v) == 1 and len(v) == len(images) and k != 'is_ood'}
    with open(files['detections.npz'], 'wb') as f:
        np.savez(f, ood_score=scores.ood_score, source=np.array(sources or [], dtype=str),
                 labels=np.asarray(labels if labels is not None else [], np.int64),
                 **{f'component_{k}': v for k, v in components.items()}, is_ood=is_ood)
    report.write_per_image_csv(files['detections.csv'], dict(
        ood_score=scores.ood_score, is_ood=np.asarray(is_ood, np.int64), **components), sources)
    calibration = fitted.calibration
    summary = {'set': name, 'num_images': int(len(images)), 'num_ood': int(is_ood.sum()),
               'fraction_ood': float(is_ood.mean()), 'detector': fitted.name,
               'detector_file': args.detector, 'threshold': calibration.threshold,
               'true_positive_rate': calibration.true_positive_rate,
               'num_nonfinite': scores.num_nonfinite, 'fitted_on': fitted.provenance}
    fields, rows = _what_was_read(image_set, files)
    summary.update(fields)
    summary['most_ood'] = _most_ood(scores.ood_score, is_ood, sources, name)
    report.write_summary(files['summary.json'], files['summary.md'], summary, [
        ('set', name), ('images', str(len(images))),
        ('flagged out-of-distribution', f'{int(is_ood.sum())} ({is_ood.mean():.1%})'),
        ('detector', f'{fitted.name} (keeps {calibration.true_positive_rate:.0%} of '
                     f'in-distribution images)'),
        ('threshold', f'{calibration.threshold:.6g}')] + rows)
    with open(files['summary.md'], 'a') as f:
        f.write(f'\n## The {len(summary["most_ood"])} most out-of-distribution images\n\n'
                '| rank | image | ood_score | flagged |\n|---:|---|---:|---|\n')
        for rank, row in enumerate(summary['most_ood'], 1):
            f.write(f'| {rank} | {row["image"]} | {row["ood_score"]:.6g} | '
                    f'{"yes" if row["is_ood"] else "no"} |\n')
    plotting.plot_detection(scores.ood_score, calibration.validation_scores,
                            calibration.threshold, files['histogram.png'], name=name)
    plotting.plot_contact_sheet(images, scores.ood_score, files['contact_sheet.png'],
                                names=sources)


#: How many of the most out-of-distribution images `detect`'s summary lists.
MOST_OOD = 20


def _most_ood(ood_score, is_ood, sources, name: str) -> List[dict]:
    """The `MOST_OOD` highest scores (a non-finite one counts as the highest),
    each with its image's file (relative to the folder) or `name[index]`."""
    import numpy as np
    score = np.asarray(ood_score, np.float64)
    ranked = np.argsort(-np.where(np.isfinite(score), score, np.inf), kind='stable')
    return [{'image': sources[i] if sources else f'{name}[{i}]', 'index': int(i),
             'ood_score': float(score[i]), 'is_ood': bool(is_ood[i])}
            for i in ranked[:MOST_OOD]]


def _export_detector(args) -> int:
    from tfp_ood import detectors, outputs
    outputs.check_output(args.output, True, (), True, (args.detector,))  # Before any work.
    fitted = detectors.load_detector(args.detector)
    outputs.check_output(args.output, True, (), True, fitted.model_dirs)
    try:
        fitted.export(args.output, overwrite=args.overwrite)
    except FileExistsError as e:
        raise CommandError(str(e)) from None
    print(f'exported {fitted.name} ({args.detector}) to {args.output}: '
          f'serving_default(images) -> ood_score, is_ood and its components')
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _build_parser().parse_args(argv)  # No TensorFlow yet: --help answers at once.
    # Read by TensorFlow when it is imported, below.
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    from tfp_ood import outputs  # No TensorFlow yet either.
    # Ctrl-C and SIGTERM end the process cleanly (`_interrupt_handler`), from
    # before TensorFlow is imported on; training replaces the handler while its
    # loop runs, to checkpoint and stop at a step.
    previous = {}
    interrupt = _interrupt_handler(args.verb, getattr(args, 'output', None), outputs)
    with contextlib.suppress(ValueError):  # Not the main thread: left as it is.
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, interrupt)
    from tfp_ood import distribute  # TensorFlow.
    try:
        if hasattr(args, 'strategy'):
            # Before any TensorFlow op: a multi-worker strategy configures the
            # collective ops, which TensorFlow allows only at program startup.
            args.distribution = distribute.create_strategy(args.strategy)
        code = args.handler(args)
        if hasattr(args, 'strategy'):
            distribute.leave(args.distribution)  # Every worker done; the chief ends last.
        return code
    # The package's own errors and the operating system's (a missing file, a full
    # disk, no permission): one line. Anything else is a bug.
    except (TfpOodError, OSError) as e:
        print(f'tfp-ood {args.verb}: error: {e}', file=sys.stderr)
        distribute.abort(getattr(args, 'distribution', None), f'worker stopped: {e}')
        return 2
    except KeyboardInterrupt:  # Raised in Python code: the staged outputs were removed.
        output = getattr(args, 'output', None)
        written = f'; nothing was written to {output}' if output and args.verb != 'train' else ''
        print(f'tfp-ood {args.verb}: interrupted{written}', file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug: its traceback, and where to send it.
        peer = distribute.peer_failure(getattr(args, 'distribution', None), e)
        if peer is not None:  # Not a bug: another worker stopped.
            output = getattr(args, 'output', None)
            written = f'; nothing was written to {output}' if output else ''
            print(f'tfp-ood {args.verb}: error: another worker of the cluster stopped or cannot '
                  f'be reached ({peer}){written}', file=sys.stderr)
            return 2
        traceback.print_exc()
        print(f'tfp-ood {args.verb}: internal error: the traceback above is a bug in tfp_ood, '
              f'not in what you asked; please report it with the command you ran.',
              file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt_handler(verb: str, output: Optional[str], outputs):
    """Ctrl-C and SIGTERM (outside a training loop, which checkpoints and stops
    on its own; a second signal after it stopped lands here): remove what this
    process staged and the locks it holds, and end it with one line and status 130. Not an exception
    raised wherever the signal lands (inside TensorFlow's tracing that left
    its state corrupt and printed another traceback): the process ends here.
    A folder being published is let finish first."""
    def interrupt(signum, frame):
        del frame
        if outputs.deferring(signum):  # A lock or staging folder half made: right after.
            return
        if outputs.publishing():
            print(f'tfp-ood {verb}: interrupted while writing {output}; finishing it first',
                  file=sys.stderr, flush=True)
            signal.signal(signum, signal.SIG_IGN)
            return
        outputs.abandon()
        written = f'; nothing was written to {output}' if output else ''
        # Also while TensorFlow is being imported, with stderr filtered.
        _startup.write_stderr(f'tfp-ood {verb}: interrupted{written}\n')
        os._exit(130)
    return interrupt


if __name__ == '__main__':
    sys.exit(main())
