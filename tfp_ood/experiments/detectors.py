r"""OOD detectors that work: every detector under every shipped model, against
the published AUROCs.

Scores each detector of `tfp_ood.detectors` under each shipped model it
applies to, for CIFAR-10 test (in) against SVHN test, constant images, uniform
noise and grayscale CIFAR-10 and SVHN; FashionMNIST test against MNIST test;
and the reverse pair, SVHN held out against CIFAR-10 test. Under the VAE only
the likelihood path is scored (at the posterior mean, one pass of each
network; the other detectors would need its 100-sample likelihood). Writes to --out
`detectors.csv`, `detectors.md` and `detectors.json` (AUROC, AUPR-in, AUPR-out
and FPR at 95% TPR per row, with the published AUROC beside ours where there
is one), `summary.md` (the AUROCs on the paper's pairs in one table, then
those rows with all four metrics),
`published.md` (each published figure with the method's name and source
beside ours, and the best published single-image detectors beside our best
row) and
`detectors.png` (the OOD scores of the in- and first out-of-distribution set
per detector and model), `statistics.md` (which statistics carry our
density of states' detection: the AUROC of each alone and of all but it) and
`fit.md` (input complexity as it would score with a model fit as well as the
published one: each set's scores moved by the gap between our mean bits/dim
and the paper's on that set).

    python -m tfp_ood.experiments.detectors                   # embedded samples
    python -m tfp_ood.experiments.detectors --data-dir DATA   # full test sets

Detectors that learn from in-distribution data (typicality, density of
states) fit on training images (`--num-fit-images` of them); the embedded
samples have no training split, so there they fit on the first half of the
in-distribution sample and score the second half. The likelihood ratio needs
a background model `saved_models/background_<model>`; models without one get
no likelihood-ratio rows.
"""

import argparse
import csv
import dataclasses
import json
import os
import shutil
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from tfp_ood import (data, detectors, evaluate, export, image_statistics, plotting, report,
                     summaries)
from tfp_ood.detectors import fitted
from tfp_ood.experiments import common

TYPICALITY_M = (1, 2, 5, 10, 25)


class Published(NamedTuple):
    """A published AUROC, the method as its source names it, and the source."""

    auroc: Union[float, Tuple[float, float]]  # A pair is a published range.
    method: str
    source: str


_REN = 'Ren et al., NeurIPS 2019 (Likelihood Ratios for OOD Detection)'
_SERRA = 'Serrà et al., ICLR 2020 (Input Complexity and OOD Detection)'
_NALISNICK = 'Nalisnick et al., 2019, arXiv 1906.02994 (a test for typicality)'
_CHOI = 'Choi et al., 2018, arXiv 1810.01392 (WAIC, but Why?)'
_MORNINGSTAR = 'Morningstar et al., AISTATS 2021 (Density of States Estimation, DoSE)'
# The raw-likelihood figures were collected from the likelihood baselines of
# these two papers' comparisons (a range where their figures differ); which
# table each single figure is from was not recorded.
_BASELINES = (f'likelihood baselines of {_REN.split(" (")[0]} and {_SERRA.split(" (")[0]} '
              '(table not recorded)')

# Published single-image AUROCs (M images per test for typicality), keyed by
# (detector, model family, in, out, M); see also report.PUBLISHED_AUROC.
PUBLISHED = {
    ('raw_likelihood', 'glow', 'cifar10', 'svhn_cropped', 1):
        Published(0.063, 'log-likelihood of a Glow', _BASELINES),
    ('raw_likelihood', 'glow', 'fashion_mnist', 'mnist', 1):
        Published((0.122, 0.197), 'log-likelihood of a Glow', _BASELINES),
    ('raw_likelihood', 'pixelcnn', 'cifar10', 'svhn_cropped', 1):
        Published(0.155, 'log-likelihood of a PixelCNN++', _BASELINES),
    ('raw_likelihood', 'pixelcnn', 'fashion_mnist', 'mnist', 1):
        Published((0.076, 0.105), 'log-likelihood of a PixelCNN++', _BASELINES),
    ('likelihood_ratio', 'pixelcnn', 'cifar10', 'svhn_cropped', 1):
        Published(0.930, 'likelihood ratio, PixelCNN++ and its background model', _REN),
    ('likelihood_ratio', 'pixelcnn', 'fashion_mnist', 'mnist', 1):
        Published(0.994, 'likelihood ratio, PixelCNN++ and its background model', _REN),
    ('input_complexity', 'glow', 'cifar10', 'svhn_cropped', 1):
        Published(0.950, 'S(x), Glow (an independent PNG re-run gave 0.784)', _SERRA),
    ('input_complexity', 'glow', 'fashion_mnist', 'mnist', 1):
        Published(0.998, 'S(x), Glow', _SERRA),
    ('input_complexity', 'pixelcnn', 'cifar10', 'svhn_cropped', 1):
        Published(0.929, 'S(x), PixelCNN++', _SERRA),
    ('input_complexity', 'pixelcnn', 'fashion_mnist', 'mnist', 1):
        Published(0.967, 'S(x), PixelCNN++', _SERRA),
    ('typicality', 'glow', 'cifar10', 'svhn_cropped', 1):
        Published(0.865, 'typicality test, M = 1, Glow', _NALISNICK),
    ('typicality', 'glow', 'cifar10', 'svhn_cropped', 2):
        Published(0.950, 'typicality test, M = 2, Glow', _NALISNICK),
    ('typicality', 'glow', 'fashion_mnist', 'mnist', 1):
        Published((0.48, 0.70), 'typicality test, M = 1, Glow', _NALISNICK),
    ('waic', 'glow', 'cifar10', 'svhn_cropped', 1):
        Published(1.000, 'WAIC over an ensemble of five Glows', _CHOI),
    ('density_of_states', 'glow', 'cifar10', 'svhn_cropped', 1):
        Published(0.97, 'DoSE over a Glow\'s statistics', _MORNINGSTAR),
    ('density_of_states', 'glow', 'fashion_mnist', 'mnist', 1):
        Published(1.00, 'DoSE over a Glow\'s statistics', _MORNINGSTAR),
}

_DIFFPATH = 'Heng et al., NeurIPS 2024, arXiv 2405.11881 (DiffPath), Table 3'
_LPATH = ('"Inference, Fast and Slow: Reinterpreting VAEs for OOD Detection" '
          '(LPath, ICLR submission), Table 1')
PUBLISHED[('likelihood_path', 'vae', 'cifar10', 'svhn_cropped', 1)] = Published(
    0.99, 'LPath, COPOD over four statistics of two VAEs (a small latent\'s encoder, a large '
    'latent\'s decoder); ours reads the four of one VAE', _LPATH)

# The best published single-image detectors on density models that, like
# ours, use no OOD data: (method, what it needs, AUROC on CIFAR-10 -> SVHN,
# on FashionMNIST -> MNIST, where the figures were read). LPath's table swaps
# the citations of its DDPM and LMD rows; the LMD row here is Liu et al.'s.
FRONTIER = (
    ('DoSE (Morningstar et al. 2021)', 'post hoc: KDE / one-class SVM on a model\'s statistics',
     (0.955, 0.97), 1.00, f'{_DIFFPATH} (0.955); {_LPATH} (0.97)'),
    ('MSMA (Mahmood et al. 2021)', 'a score network and a Gaussian mixture', 0.957, None,
     _DIFFPATH),
    ('likelihood regret (Xiao et al. 2020)', 'an optimisation per image', 0.88, 0.99, _LPATH),
    ('HVAE LLR>k (Havtorn et al. 2021)', 'a hierarchical VAE', 0.89, 0.98, _LPATH),
    ('LMD, lift-map-detect (Liu et al. 2023)', 'a diffusion model, ~100 evaluations per image',
     0.992, 0.99, _DIFFPATH),
    ('LPath (a 3M-parameter VAE)', 'post hoc: COPOD or Mahalanobis over 4 VAE statistics',
     0.99, 1.00, _LPATH),
)


@dataclasses.dataclass
class Experiment:
    """One model, its in-distribution set and the sets it is tested against."""

    model: str
    train: Tuple[str, str]  # (dataset, split) to fit on.
    in_set: Tuple[str, str]
    out_sets: List[str]  # dataset names or synthetic sets.
    ensemble: Optional[str] = None  # A folder of members for WAIC.
    # Only these detectors (and no typicality test): for the VAE, the likelihood
    # path, read at the posterior mean (the table's other detectors under the
    # VAE would need its 100-sample likelihood: about 7 images a second here).
    only: Optional[Tuple[str, ...]] = None


def experiments(source: common.Source) -> List[Experiment]:
    cifar_outs = ['svhn_cropped', 'constant', 'uniform_noise', 'cifar10_gray',
                  'svhn_cropped_gray']
    svhn_train, svhn_test = ('test[:7000]', 'test[7000:]') if not (
        source.tfds or source.samples) else ('train', 'test')
    return [
        Experiment('glow_cifar10', ('cifar10', 'train'), ('cifar10', 'test'), cifar_outs,
                   ensemble='ensemble_cifar10'),
        Experiment('cvglow_cifar10', ('cifar10', 'train'), ('cifar10', 'test'), cifar_outs),
        Experiment('pixelcnn_cifar10', ('cifar10', 'train'), ('cifar10', 'test'), cifar_outs),
        Experiment('vae_cifar10', ('cifar10', 'train'), ('cifar10', 'test'), cifar_outs,
                   only=detectors.ONE_PASS),
        Experiment('glow_fashion_mnist', ('fashion_mnist', 'train'), ('fashion_mnist', 'test'),
                   ['mnist', 'constant', 'uniform_noise']),
        Experiment('pixelcnn_fashion_mnist', ('fashion_mnist', 'train'),
                   ('fashion_mnist', 'test'), ['mnist', 'constant', 'uniform_noise']),
        Experiment('glow_svhn', ('svhn_cropped', svhn_train), ('svhn_cropped', svhn_test),
                   ['cifar10']),
    ]


class Sets:
    """The image arrays of the run, loaded once each."""

    def __init__(self, source: common.Source, num_fit: int, num_synthetic: int,
                 fit_on_held_out: bool = False):
        self.source, self.num_fit, self.num_synthetic = source, num_fit, num_synthetic
        self.fit_on_held_out = fit_on_held_out
        self._cache: Dict[str, np.ndarray] = {}

    def _load(self, name: str, split: str) -> np.ndarray:
        key = f'{name}/{split}'
        if key not in self._cache:
            self._cache[key] = data.images_array(self.source.load(name, split))
        return self._cache[key]

    def fit_and_in(self, experiment: Experiment) -> Tuple[np.ndarray, np.ndarray]:
        """Training images to fit on, and the in-distribution test images; or the
        first half of the in-distribution test images to fit on and the second to
        score (the embedded samples have no training split; `fit_on_held_out`)."""
        if self.source.samples or self.fit_on_held_out:
            images = self._load(*experiment.in_set)  # The samples': (name, 'test').
            half = len(images) // 2
            return images[:half], images[half:]
        name, split = experiment.train
        return (self._load(name, split)[:self.num_fit], self._load(*experiment.in_set))

    def out(self, name: str, shape) -> np.ndarray:
        n = self.num_synthetic
        if name == 'constant':
            return data.images_array(data.constant_images(128, shape, n))
        if name == 'uniform_noise':
            return data.images_array(data.uniform_noise_images(shape, n, seed=0))
        gray = name.endswith('_gray')
        dataset = name[:-len('_gray')] if gray else name
        images = self._load(dataset, 'test')
        return data.to_grayscale(images).numpy() if gray else images


def _row(detector: str, model: str, family: str, in_name: str, out_name: str, m: int,
         in_scores, out_scores) -> dict:
    metrics = detectors.detector_metrics(in_scores, out_scores)
    published = PUBLISHED.get((detector, family, in_name, out_name, m))
    figure = None if published is None else published.auroc
    return {'detector': detector, 'model': model, 'in': in_name, 'out': out_name,
            'batch_size': m, 'auroc': metrics['auroc'], 'aupr_in': metrics['aupr_in'],
            'aupr_out': metrics['aupr_out'], 'fpr_at_95_tpr': metrics['fpr_at_95_tpr'],
            'published_auroc': list(figure) if isinstance(figure, tuple) else figure,
            'published_method': None if published is None else published.method,
            'published_source': None if published is None else published.source,
            'num_in': metrics['num_in'], 'num_out': metrics['num_out']}


def at_published_fit(detector: str, model: str, family: str, train: str, in_name: str,
                     out_name: str, in_scores, out_scores) -> Optional[dict]:
    """Input complexity with each set's scores moved by (paper - ours) mean bits/dim.

    The score is `bits/dim - L(x)/D`, so a model that fits a set better lowers
    that set's scores by its gain in bits/dim. Where Nalisnick et al. report the
    mean bits/dim of the same model family on both sets, this moves every image
    of a set by the gap between their mean and ours: how much of a shortfall
    against the published AUROC the fit alone would close (uniformly over the
    images, an approximation). None where the paper has no numbers.
    """
    paper = [report.PAPER_BPD.get((family, train, f'{name}/test'))
             for name in (in_name, out_name)]
    if None in paper:
        return None
    moved, ours = [], []
    for scores, paper_bpd in zip((in_scores, out_scores), paper):
        mean = float(np.mean(scores.components['bits_per_dim']))
        ours.append(mean)
        moved.append(dataclasses.replace(scores, ood_score=scores.ood_score + paper_bpd - mean))
    return {'detector': detector, 'model': model, 'in': in_name, 'out': out_name,
            'bpd_in': ours[0], 'paper_bpd_in': paper[0], 'bpd_out': ours[1],
            'paper_bpd_out': paper[1],
            'auroc': detectors.detector_metrics(in_scores, out_scores)['auroc'],
            'auroc_at_published_fit': detectors.detector_metrics(*moved)['auroc']}


def _models(args, experiment: Experiment):
    """The experiment's model (a flow rebuilt from its weights, for the per-level
    terms that SavedModels exported before those existed do not output), its
    family, its background model and ensemble members (where shipped; flows
    rebuilt too, which restores and traces in half the time of loading their
    SavedModels' functions)."""
    path = os.path.join(args.models_dir, experiment.model)
    family = export.read_metadata(path)['model']['family']
    # As a fitted detector loads it (the VAE in one pass for the likelihood path).
    model = fitted.load_model(path, experiment.only or ())
    background_path = os.path.join(args.models_dir, f'background_{experiment.model}')
    background = fitted.load_model(background_path) if os.path.isdir(background_path) else None
    members = []
    if experiment.ensemble:
        folder = os.path.join(args.models_dir, experiment.ensemble)
        if os.path.isdir(folder):
            members = [fitted.load_model(os.path.join(folder, m))
                       for m in sorted(os.listdir(folder))
                       if os.path.exists(os.path.join(folder, m, 'saved_model.pb'))]
    return model, family, background, members


def _detectors(args, experiment: Experiment, model, background, members) -> dict:
    """Every single-image detector the model supports, by name, with the designs
    the detector search chose on validation sets for it."""
    names = [n for n in experiment.only or detectors.DETECTOR_NAMES
             if n not in ('typicality', detectors.SELECTED, *args.skip)
             and (n != 'likelihood_ratio' or background is not None)
             and (n != 'likelihood_path' or set(detectors.LIKELIHOOD_PATH)
                  <= set(model.statistic_names))
             and (n not in detectors.FLOW_DETECTOR_NAMES or model.is_flow)
             # Per-image gradients are vectorised over the batch for flows only;
             # one image at a time, a PixelCNN++'s would take hours here.
             and (n != 'gradient_norms' or model.is_flow)]
    # One compressor for every detector: each set is compressed once per Python-only codec.
    compressor = detectors.Compressor()
    single = {n: detectors.named(n, model, background, compressor=compressor) for n in names}
    for suffix in (() if experiment.only else ('', '_gradients', '_python')):  # POOLS
        design = os.path.join(args.designs_dir, f'{experiment.model}{suffix}.json')
        if not os.path.exists(design) or detectors.SELECTED + suffix in args.skip:
            continue
        design = detectors.read_design(design)
        missing = sorted(set(design['statistics']) - {'log_prob', *model.term_names,
                                                      *model.statistic_names,
                                                      *model.gradient_statistic_names,
                                                      *image_statistics.IMAGE_STATISTICS})
        if missing:  # E.g. a model retrained at another size.
            print(f'{experiment.model}: its design{suffix} names statistics the model lacks '
                  f'({", ".join(missing[:3])}...); {detectors.SELECTED}{suffix} skipped')
            continue
        single[detectors.SELECTED + suffix] = detectors.named(
            detectors.SELECTED, model, design=design, compressor=compressor)
    if len(members) >= 2:
        single['waic'] = detectors.WAIC(members)
    return single


class _Scorer:
    """Scores sets under detectors, each model run once per set (by name)."""

    def __init__(self, args, model, gradients: bool = False, statistics: bool = False):
        self.args, self.model = args, model
        # The model's statistics along its computation (a flow's always, another
        # model's if a detector reads them), and a flow's gradient norms if a
        # detector reads them.
        self.statistics = ('gradients' if gradients else True) if (
            model.is_flow or statistics) else False
        self.cache: Dict[Tuple[int, str], dict] = {}

    def _terms(self, m, name, images):
        key = (id(m), name)
        if key not in self.cache:
            self.cache[key] = evaluate.score(
                m, images, name=name, progress=self.args.progress,
                statistics=self.statistics if m is self.model else False).scores
        return self.cache[key]

    def __call__(self, detector, name, images, fit=False):
        images = images[:self.args.num_images] if self.args.num_images else images
        evaluated = [self._terms(m, name, images) for m in detector.models]
        if fit:
            return detector.fit_terms(evaluated, images)
        return detector.score_terms(evaluated, images)


def run_experiment(args, experiment: Experiment, sets: Sets, rows: list, figures: dict,
                   ablations: list, fits: list):
    if not os.path.isdir(os.path.join(args.models_dir, experiment.model)):
        print(f'{experiment.model}: not in {args.models_dir}; skipped')
        return
    model, family, background, members = _models(args, experiment)
    fit_images, in_images = sets.fit_and_in(experiment)
    single = _detectors(args, experiment, model, background, members)
    typicality = {m: detectors.Typicality(model, batch_size=m)
                  for m in (() if experiment.only else TYPICALITY_M)}
    needs = [d.needs_statistics for d in single.values()]
    scores_of = _Scorer(args, model, gradients='gradients' in needs, statistics=any(needs))
    for detector in list(single.values()) + list(typicality.values()):
        if detector.needs_fit:
            scores_of(detector, 'fit', fit_images, fit=True)
    in_name = experiment.in_set[0]
    in_scores = {d: scores_of(det, 'in', in_images) for d, det in single.items()}
    # TensorBoard: each detector's scores and precision-recall curve per pair.
    board = summaries.Summaries(os.path.join(args.out, 'tensorboard', experiment.model))
    board.histograms({f'{d}/{in_name}': s.ood_score for d, s in in_scores.items()}, 0)
    for out_name in experiment.out_sets:
        out_images = sets.out(out_name, model.image_shape)
        for d, det in single.items():
            out_scores = scores_of(det, out_name, out_images)
            rows.append(_row(d, experiment.model, family, in_name, out_name, 1,
                             in_scores[d], out_scores))
            board.histograms({f'{d}/{out_name}': out_scores.ood_score}, 0)
            board.pr_curve(f'pr/{d}: {in_name} vs {out_name}', in_scores[d].ood_score,
                           out_scores.ood_score,
                           description=f'{d}; {in_name} is the positive class')
            if out_name == experiment.out_sets[0]:
                figures[(d, experiment.model)] = (in_name, in_scores[d], out_name, out_scores)
                _first_pair_extras(d, det, experiment, family, in_name, out_name,
                                   in_scores[d], out_scores, ablations, fits)
        for m, det in typicality.items():
            in_batches, out_batches = (scores_of(det, n, x) for n, x in
                                       (('in', in_images), (out_name, out_images)))
            if min(len(in_batches.ood_score), len(out_batches.ood_score)) >= 2:
                rows.append(_row('typicality', experiment.model, family, in_name, out_name, m,
                                 in_batches, out_batches))
    board.flush()
    print(f'{experiment.model}: {len([r for r in rows if r["model"] == experiment.model])} '
          f'rows', flush=True)


def _first_pair_extras(name, detector, experiment, family, in_name, out_name, in_scores,
                       out_scores, ablations: list, fits: list) -> None:
    """On the first pair: the ablation of `ABLATED`, and each input complexity
    moved to the published fit."""
    if name == ABLATED:
        ablations.extend(dict(row, detector=name, model=experiment.model,
                              **{'in': in_name, 'out': out_name})
                         for row in detector.ablation(in_scores, out_scores))
    if name.startswith('input_complexity'):
        fit = at_published_fit(name, experiment.model, family, experiment.train[0],
                               in_name, out_name, in_scores, out_scores)
        if fit:
            fits.append(fit)


def _format(value) -> str:
    if value is None:
        return '–'
    if isinstance(value, list):
        return f'{value[0]:.3f}-{value[1]:.3f}'
    return f'{value:.3f}' if isinstance(value, float) else str(value)


# The density of states whose statistics are ablated ("which statistics carry
# the detection"), on each flow's first out-of-distribution set.
ABLATED = 'density_of_states_gaussian'


def ablation_table(ablations: list) -> str:
    lines = ['| model | in -> out | statistic | AUROC alone | AUROC without it | AUROC all |',
             '|---|---|---|---:|---:|---:|']
    for r in ablations:
        lines.append(f'| {r["model"]} | {r["in"]} -> {r["out"]} | {r["statistic"]} | '
                     f'{r["auroc_alone"]:.3f} | {_format(r["auroc_without"])} | '
                     f'{r["auroc_all"]:.3f} |')
    return '\n'.join(lines) + '\n'


# The short table: single images (and typicality at M = 25) on the paper's pairs.
SUMMARY_COLUMNS = (('glow_cifar10', 'cifar10', 'svhn_cropped'),
                   ('pixelcnn_cifar10', 'cifar10', 'svhn_cropped'),
                   ('vae_cifar10', 'cifar10', 'svhn_cropped'),
                   ('glow_fashion_mnist', 'fashion_mnist', 'mnist'),
                   ('pixelcnn_fashion_mnist', 'fashion_mnist', 'mnist'),
                   ('glow_svhn', 'svhn_cropped', 'cifar10'))
SUMMARY_ROWS = (('raw_likelihood', 1), ('likelihood_ratio', 1), ('input_complexity', 1),
                ('input_complexity_jpeg2000', 1), ('input_complexity_jpegxl', 1),
                ('typicality', 1), ('typicality', 25), ('waic', 1), ('density_of_states', 1),
                ('density_of_states_terms', 1), ('density_of_states_levels', 1),
                ('density_of_states_levels_png_jpeg2000', 1), ('density_of_states_gaussian', 1),
                ('density_of_states_selected', 1), ('density_of_states_selected_gradients', 1),
                ('density_of_states_selected_python', 1), ('gradient_norms', 1),
                ('likelihood_path', 1))


def summary_table(rows: list) -> str:
    """AUROC per detector (rows) and model and pair (columns), published in parentheses."""
    found = {(r['detector'], r['batch_size'], r['model'], r['in'], r['out']): r for r in rows}
    columns = [c for c in SUMMARY_COLUMNS if any(k[2:] == c for k in found)]
    lines = ['| detector | ' + ' | '.join(f'{m}: {i} -> {o}' for m, i, o in columns) + ' |',
             '|---|' + '---:|' * len(columns)]
    for detector, m in SUMMARY_ROWS:
        cells = []
        for column in columns:
            row = found.get((detector, m) + column)
            if row is None:
                cells.append('–')
                continue
            published = row['published_auroc']
            note = f' ({_format(published)})' if published is not None else ''
            cells.append(f'{row["auroc"]:.3f}{note}')
        if any(c != '–' for c in cells):
            name = detector + (f', M = {m}' if detector == 'typicality' else '')
            lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def pair_metrics_table(rows: list) -> str:
    """The rows of `summary_table` one per line, with all four metrics."""
    found = {(r['detector'], r['batch_size'], r['model'], r['in'], r['out']): r for r in rows}
    lines = ['| model: in -> out | detector | AUROC | AUPR-in | AUPR-out | FPR at 95% TPR |',
             '|---|---|---:|---:|---:|---:|']
    for column in SUMMARY_COLUMNS:
        for detector, m in SUMMARY_ROWS:
            row = found.get((detector, m) + column)
            if row is not None:
                name = detector + (f', M = {m}' if detector == 'typicality' else '')
                lines.append(f'| {column[0]}: {column[1]} -> {column[2]} | {name} | '
                             + ' | '.join(f'{row[k]:.3f}' for k in
                                          ('auroc', 'aupr_in', 'aupr_out', 'fpr_at_95_tpr'))
                             + ' |')
    return '\n'.join(lines) + '\n'


def published_table(rows: list) -> str:
    """Every row that has a published figure: ours beside it, with the
    published method's name and its source."""
    lines = ['| detector | model | in -> out | ours: AUROC | FPR at 95% TPR | published AUROC | '
             'published method | source |', '|---|---|---|---:|---:|---:|---|---|']
    for r in rows:
        if r.get('published_auroc') is None:
            continue
        name = r['detector'] + (f', M = {r["batch_size"]}' if r['batch_size'] != 1 else '')
        lines.append(f'| {name} | {r["model"]} | {r["in"]} -> {r["out"]} | {r["auroc"]:.3f} | '
                     f'{r["fpr_at_95_tpr"]:.3f} | {_format(r["published_auroc"])} | '
                     f'{r["published_method"]} | {r["published_source"]} |')
    return '\n'.join(lines) + '\n'


FRONTIER_PAIRS = (('cifar10', 'svhn_cropped'), ('fashion_mnist', 'mnist'))


def frontier_table(rows: list) -> str:
    """The best published single-image detectors (`FRONTIER`), and below them
    the best single-image row of this run on each of their pairs."""
    lines = ['| method | needs | CIFAR-10 -> SVHN | FashionMNIST -> MNIST | source |',
             '|---|---|---:|---:|---|']
    for method, needs, cifar, fashion, source in FRONTIER:
        cells = [' / '.join(f'{x:.3f}' for x in v) if isinstance(v, tuple) else _format(v)
                 for v in (cifar, fashion)]
        lines.append(f'| {method} | {needs} | {cells[0]} | {cells[1]} | {source} |')
    cells = []
    for in_name, out_name in FRONTIER_PAIRS:
        pair = [r for r in rows if (r['in'], r['out'], r['batch_size']) == (in_name, out_name, 1)]
        best = max(pair, key=lambda r: r['auroc'], default=None)
        cells.append('–' if best is None else
                     f'{best["auroc"]:.3f} ({best["detector"]}, {best["model"]}; '
                     f'FPR at 95% TPR {best["fpr_at_95_tpr"]:.3f})')
    lines.append(f'| ours: the best row of this run | this run\'s models | {cells[0]} | '
                 f'{cells[1]} | this table\'s command |')
    return '\n'.join(lines) + '\n'


def fit_table(fits: list) -> str:
    lines = ['| detector | model | in -> out | mean bits/dim in: ours (paper) | '
             'out: ours (paper) | AUROC | AUROC at the published fit |',
             '|---|---|---|---:|---:|---:|---:|']
    for r in fits:
        lines.append(f'| {r["detector"]} | {r["model"]} | {r["in"]} -> {r["out"]} | '
                     f'{r["bpd_in"]:.3f} ({r["paper_bpd_in"]:.3f}) | '
                     f'{r["bpd_out"]:.3f} ({r["paper_bpd_out"]:.3f}) | {r["auroc"]:.3f} | '
                     f'{r["auroc_at_published_fit"]:.3f} |')
    return '\n'.join(lines) + '\n'


def write(rows: list, figures: dict, out: str, note: str, ablations: list = (),
          fits: list = ()) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'detectors.json'), 'w') as f:
        json.dump({'note': note, 'rows': rows, 'ablation': list(ablations),
                   'at_published_fit': list(fits)}, f, indent=2)
    if ablations:
        with open(os.path.join(out, 'statistics.md'), 'w') as f:
            f.write(ablation_table(ablations))
    if fits:
        with open(os.path.join(out, 'fit.md'), 'w') as f:
            f.write(fit_table(fits))
    with open(os.path.join(out, 'detectors.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: _format(v) if isinstance(v, list) else v for k, v in r.items()}
                         for r in rows)
    keys = ['detector', 'model', 'in', 'out', 'batch_size', 'auroc', 'published_auroc',
            'aupr_in', 'aupr_out', 'fpr_at_95_tpr']
    lines = ['| ' + ' | '.join(k.replace('_', ' ') for k in keys) + ' |',
             '|' + '---|' * 5 + '---:|' * 5]
    lines += ['| ' + ' | '.join(_format(r[k]) for k in keys) + ' |' for r in rows]
    with open(os.path.join(out, 'detectors.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(os.path.join(out, 'summary.md'), 'w') as f:
        f.write(summary_table(rows) + '\nEvery metric of those rows:\n\n'
                + pair_metrics_table(rows))
    with open(os.path.join(out, 'published.md'), 'w') as f:
        f.write(published_table(rows) + '\nThe best published single-image detectors on '
                'density models (no OOD data used), and ours:\n\n' + frontier_table(rows))
    groups = []
    for (detector, model), (in_name, in_s, out_name, out_s) in figures.items():
        label = f'{detector} ({model})'
        groups.append([evaluate.ScoreResult(name, {'ood_score': s.ood_score},
                                            np.full(len(s.ood_score), -1), (0, 0, 0), label)
                       for name, s in ((in_name, in_s), (out_name, out_s))])
    if groups:
        plotting.plot_histogram_panels(groups, os.path.join(out, 'detectors.png'),
                                       key='ood_score',
                                       title='OOD scores (higher = more out-of-distribution)')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    common.add_data_flags(p, 'results/detectors')
    p.add_argument('--num-fit-images', type=int, default=5000,
                   help='training images the fitted detectors learn from')
    p.add_argument('--num-synthetic', type=int, default=1000,
                   help='constant and noise images')
    p.add_argument('--models', nargs='+', default=None, help='only these models')
    p.add_argument('--skip', nargs='+', default=(), metavar='DETECTOR',
                   choices=detectors.DETECTOR_NAMES + tuple(
                       detectors.SELECTED + suffix for suffix in ('_gradients', '_python')),
                   help='detectors to leave out: those reading the gradient norms '
                        '(gradient_norms, and the designs that chose them) are the slowest, '
                        'about nine times the cost of the flow\'s other statistics')
    p.add_argument('--designs-dir', default=os.path.join(common.REPO, 'saved_models', 'designs'),
                   help='the designs of density_of_states_selected, <model>.json (TensorFlow '
                        'statistics of one pass of the model), <model>_gradients.json (with its '
                        'gradient norms) and <model>_python.json (with the Python-only lengths) '
                        '(default: saved_models/designs/, written by '
                        'tfp_ood.experiments.detector_search)')
    p.add_argument('--fit-on-held-out', action='store_true',
                   help='fit on the first half of each in-distribution test set and score the '
                        'second, as on the embedded samples, instead of fitting on training '
                        'images: the shipped models trained on every training image they '
                        'have, and score those as more typical than images they have not seen')
    args = p.parse_args(argv)
    source = common.Source(args)
    sets = Sets(source, args.num_fit_images, args.num_synthetic, args.fit_on_held_out)
    rows, figures, ablations, fits = [], {}, [], []
    shutil.rmtree(os.path.join(args.out, 'tensorboard'), ignore_errors=True)  # This run's own.
    for experiment in experiments(source):
        if args.models and experiment.model not in args.models:
            continue
        run_experiment(args, experiment, sets, rows, figures, ablations, fits)
    if not rows:
        raise ValueError('No model to score: none of the shipped models is in --models-dir.')
    note = source.note() + (' The fitted detectors fit on the first half of each '
                            'in-distribution sample and score the second.'
                            if source.samples else ' The fitted detectors fit on the first '
                            'half of each in-distribution test set and every detector scores '
                            'the second (--fit-on-held-out).' if args.fit_on_held_out else '')
    write(rows, figures, args.out, note.strip(), ablations, fits)
    print('AUROC of each detector (higher is better; 0.5 is chance), the published figure '
          'in parentheses; every row is in detectors.md:\n')
    print(summary_table(rows))
    print('Each published figure with its method and source, and the best published '
          'single-image detectors beside ours (published.md):\n')
    print(published_table(rows))
    print(frontier_table(rows))
    if ablations:
        print(f'Which statistics carry the detection ({ABLATED}):\n')
        print(ablation_table(ablations))
    if fits:
        print('Input complexity with each set moved to the published model\'s mean '
              'bits/dim (fit.md):\n')
        print(fit_table(fits))
    if note.strip():
        print(note.strip())
    print(f'Wrote {os.path.abspath(args.out)}')
    return rows


if __name__ == '__main__':
    common.run(main)
