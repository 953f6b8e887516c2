r"""Choose our detector's design on validation OOD sets, never on the test pairs.

Our detector is a density of states: which statistics (a flow's per-level and
per-step terms, activation and latent norms, PNG/JPEG lengths, total
variation, ...) and which estimator over them (`tfp_ood.estimators`). A
choice made on SVHN or MNIST would flatter the table of
`tfp_ood.experiments.detectors`; this script makes it on validation sets built from
other data:

- the in-distribution validation images: the first `--num-images` training
  images;
- validation OOD sets: uniform noise and another dataset resized (grayscale
  CIFAR-10 and FashionMNIST, gray and in colour, for CIFAR-10 models,
  grayscale CIFAR-10 for FashionMNIST ones), and the shifts of `tfp_ood.shifts` (blur, low
  resolution, JPEG artefacts, pixel shuffles, inversion, vertical flips,
  grayscale) applied to the third block of `--num-images` training images.

The detector fits on `--num-fit-images` training images after the first
three blocks (no image is in two roles). With `--held-out-split test`, the
in-distribution images, the images the shifts are made from and the fit
images are instead the first images of that split, which the model did not
train on: a model scores its own training images as more typical than any
image it has not seen (the CIFAR-10 Glow's level-2 latent mean square is 1.3
standard deviations higher on CIFAR-10 test images than on its training
images), so against training images a statistic that only tells seen from
unseen looks like an OOD detector; the first training images are then
reported as a set of their own (`training_images`). How the design is chosen:

- the criterion (`--criterion`) is, by default, the mean over the
  validation OOD sets of the fraction of each flagged at the threshold that
  keeps 95% of the in-distribution images (`1 - FPR at 95% TPR`, the rate a
  shipped detector delivers); the mean AUROC is the other choice;
- over the sets that some statistic alone separates with an AUROC of at
  least `--detectable-auroc` (0.8): on a set no statistic detects
  (vertical flips: 0.60-0.77 at best on the shipped Glows) designs differ by as much
  as one design moves between two halves of the set, and a search that
  chose on those sets traded away detection of the others; the contrast
  and Gaussian-noise shifts are reported and not chosen on (`REPORTED_ONLY`);
- statistics are chosen greedily on the first half of every validation set
  (`tfp_ood.selection`; for each estimator of `SEARCHED`, Tippett's
  minimum p-value among them; OAS, the KDE and
  the Gaussian mixture are scored on the Ledoit-Wolf Gaussian's choice),
  once among the statistics TensorFlow computes in one pass of the model
  (exportable as a SavedModel), once adding the model's gradient norms
  (`DensityModel.gradient_statistics`: exportable, about nine times the
  cost) and once adding the JPEG 2000 and JPEG XL lengths (Python only;
  `POOLS`); an addition may not leave the design more than `--rule-tolerance`
  AUROC below one of its statistics alone on any validation set;
- every design, these and the named designs of `REFERENCE` whose
  statistics the pool has, is ranked on the second halves, and the best
  there wins each pool (a greedy choice among a hundred statistics fits the
  images it was chosen on) among the designs that keep the rule on the first
  halves: a named design, or an estimator scored on another's choice, that
  falls more than `--rule-tolerance` below one of its own statistics alone
  on a set used is discarding that statistic's signal, and is not chosen.

Writes `search.md`, `search.json` and, per model,
`<model>.json`, `<model>_gradients.json` and `<model>_python.json` (the
designs, what `tfp-ood fit-detector --design` and
`tfp_ood.experiments.detectors --designs-dir` read) to `--out`; the shipped
designs are in `saved_models/designs/`.

    # glow_cifar10 and glow_fashion_mnist:
    python -m tfp_ood.experiments.detector_search --data-dir DATA
"""

import argparse
import json
import os
import re
from typing import Optional

import numpy as np

from tfp_ood import data, detectors, evaluate, export, image_statistics, selection, shifts
from tfp_ood.experiments import common
from tfp_ood.models.base import GRADIENT_SUFFIX

# Each chooses its own statistics greedily; the KDE and the mixture are scored
# on the Ledoit-Wolf Gaussian's choice (a greedy search under either costs
# about 15 minutes per pool on two cores).
SEARCHED = ('ledoit_wolf', 'gaussian', 'copod', 'tippett')
ON_LEDOIT_WOLF = ('oas', 'kde', 'gmm')
ESTIMATORS = SEARCHED + ON_LEDOIT_WOLF
PYTHON_CODECS = ('jpeg2000', 'jpegxl')
CRITERION_NAMES = {'auroc': 'AUROC',
                   'detection_rate': 'fraction flagged at 95% TPR (1 - FPR at 95% TPR)'}
# The named designs scored for reference: statistics and estimator
# ('levels' stands for every level's two terms; png9_bits is the PNG length).
REFERENCE = {
    'density_of_states': (['log_prob', 'log_pz', 'log_det'], 'kde'),
    'density_of_states_levels': (['levels', 'png9_bits'], 'kde'),
    'density_of_states_gaussian': (['levels', 'png9_bits', 'jpeg2000_bits', 'jpegxl_bits'],
                                   'gaussian'),
    # Every level's terms with complexity statistics TensorFlow computes.
    'levels_and_tf_complexity': (['levels', 'png9_bits', 'jpeg98_bits', 'total_variation',
                                  'laplacian_mean_abs'], 'ledoit_wolf'),
    # Every level's terms with the PNG and JPEG-98 lengths and the LOCO-I
    # coding cost, the first TensorFlow stand-in for a lossless codec's length.
    'levels_and_loco': (['levels', 'png9_bits', 'jpeg98_bits', 'loco_bits'], 'ledoit_wolf'),
    # density_of_states_gaussian with TensorFlow's stand-ins for its two
    # codecs, each the estimate that follows the codec's length most closely
    # on the fit images (`stand_ins` in search.json): the wavelet code's cost
    # without a colour transform for JPEG 2000 (as Pillow writes it), and the
    # predictive code's (`loco_bits`) for JPEG XL's lossless mode.
    'density_of_states_gaussian_tf': (['levels', 'png9_bits', 'wavelet_rgb_bits', 'loco_bits'],
                                      'gaussian'),
    # The CIFAR-10 Glow's design shipped as detector_cifar10 before the mild
    # shifts joined the validation sets (docs/detectors.md, steps 7-9), so that
    # each search says how it fares beside the current choice; scored only
    # where the model has its statistics (a three-level flow).
    'selected_before_mild_shifts': (['log_pz', 'level2_step6_mean_square',
                                     'level0_prior_log_det', 'level2_step6_log_det',
                                     'jpeg98_bits', 'png1_bits', 'png9_bits'], 'gaussian'),
    # The design shipped after the mild shifts joined (step 9), before the
    # contrast and noise shifts did and Tippett's estimator was searched.
    'selected_before_contrast': (['level2_latent_mean_square', 'level1_log_pz',
                                  'level2_step5_log_det', 'jpeg98_bits', 'loco_bits',
                                  'level1_prior_log_det', 'level2_step0_log_det'], 'ledoit_wolf'),
    # The design shipped from step 10 (images the Glow never trained on), before
    # FashionMNIST in colour joined the validation sets. Each shipped design is
    # scored in the searches after it, so that a rerun never replaces it with a
    # design that does worse on the same sets because the greedy search set off
    # another way.
    'selected_before_color': (['level1_log_pz', 'level2_log_det', 'jpeg90_bits', 'jpeg98_bits',
                               'loco_bits', 'level1_step7_log_det', 'level1_step5_log_det',
                               'wavelet_bits'], 'ledoit_wolf'),
}
# Validation sets scored and reported but never chosen on: CIFAR-10-C's
# contrast and Gaussian noise (`tfp_ood.shifts`). Ranked on, they left the
# CIFAR-10 Glow's one-pass search at one statistic (a Gaussian mixture of
# `log_pz`, 0.60 of the sets flagged on average, where the design then shipped
# flags 0.88 of the same sets): on contrast-reduced images the JPEG-30 length
# alone reaches AUROC 0.95 and every design that holds a JPEG length falls far
# below it, so the rule turns down every addition. What they show, the shipped
# designs' blind spot on lower contrast, is in search.md. `training_images`
# (with --held-out-split) is in-distribution: how far a design tells the
# images its model trained on from others, never a set to flag.
REPORTED_ONLY = ('contrast', 'contrast_mild', 'gaussian_noise', 'training_images')
# The compressed lengths reported alone on every validation set.
COMPLEXITY = ('png9_bits', 'jpeg98_bits', 'loco_bits', 'wavelet_bits', 'wavelet_rgb_bits',
              'jpeg2000_bits', 'jpegxl_bits')
# The pools of statistics a design is chosen from, and the suffix of the file
# each pool's choice is written to (`<model><suffix>.json`): the statistics
# TensorFlow computes in one pass of the model (what the shipped SavedModel
# reads), those and the model's gradient norms (exportable too, about nine
# times the cost of the pass), and everything with the Python-only lengths.
POOLS = {'exportable': '', 'gradients': '_gradients', 'python': '_python'}
# TensorFlow's coding-cost estimates, correlated with the Python-only lengths.
ESTIMATES = ('loco_bits', 'wavelet_bits', 'wavelet_rgb_bits')


def statistics_of(model, images: np.ndarray, progress: bool = False,
                  gradients: bool = True) -> dict:
    """Every candidate statistic of `images`: the model's terms and statistics
    (with its gradient norms, unless not `gradients`), the image statistics and
    the Python-only codec lengths, `{name: [N] float64}`."""
    out = evaluate.score(model, images, progress=progress,
                         statistics=_statistics(model) if gradients else True).scores
    out = {k: np.asarray(v, np.float64) for k, v in out.items()
           if k not in ('dequant_const', 'bits_per_dim')}
    out.update(image_statistics.image_statistics_array(
        images, list(image_statistics.IMAGE_STATISTICS)))
    for codec in PYTHON_CODECS:
        out[f'{codec}_bits'] = detectors.compressed_bits(images, codec)
    return out


def _statistics(model):
    """What `evaluate.score(..., statistics=)` computes for the pool: the gradient
    norms too where the model has parameters to take them over."""
    return 'gradients' if model.gradient_statistic_names else True


def _save(path: str, stats: dict) -> None:
    flat = {f'{k}/{statistic}': v for k, d in stats.items() for statistic, v in d.items()}
    np.savez(path + '.partial.npz', **flat)
    os.replace(path + '.partial.npz', path)


def cached_statistics(path: str, model, sets: dict, progress: bool,
                      gradients: bool = True) -> dict:
    """`statistics_of` every set, kept in `path` so that a second search (another
    tolerance, another estimator) or an interrupted one does not recompute them.
    A cache from before a validation set, an image statistic or the model's
    gradient norms were added gains them, computed alone (the gradient norms
    with `model`; pass `None` for no model); sets in the cache that `sets` does
    not name are kept there and left out of the result. Without `gradients`, sets
    computed here have no gradient norms (a later call with them adds them)."""
    stats = {}
    if os.path.exists(path):
        with np.load(path) as saved:
            for key in saved.files:
                set_name, statistic = key.split('/', 1)
                stats.setdefault(set_name, {})[statistic] = saved[key]
    for k, images in sets.items():  # A set at a time: nothing lost if interrupted.
        if k not in stats:
            stats[k] = statistics_of(model, images, progress, gradients)
            _save(path, stats)
            continue
        missing = sorted(set(image_statistics.IMAGE_STATISTICS) - set(stats[k]))
        missing_gradients = sorted(set(() if model is None or not gradients
                                       else model.gradient_statistic_names) - set(stats[k]))
        if missing:
            stats[k].update(image_statistics.image_statistics_array(images, missing))
        if missing_gradients:
            scores = evaluate.score(model, images, name=k, progress=progress,
                                    statistics='gradients').scores
            stats[k].update({g: np.asarray(scores[g], np.float64) for g in missing_gradients})
        if missing or missing_gradients:
            _save(path, stats)
    return {k: stats[k] for k in sets}


def validation_images(source, model, n: int, held_out: Optional[str] = None) -> dict:
    """`{'in': ..., <validation OOD set>: ...}` for the model's image shape.

    With `held_out`, a split of the in-distribution dataset the model did not
    train on, the in-distribution images are its first `n` and the shifts are
    made from its next `n`, and the first `n` training images are a set of
    their own (`training_images`, reported only: how far a design tells the
    images the model trained on from ones it has not seen)."""
    sets = common.validation_sets(source, model.image_shape, n, more=True)
    in_name = common.VALIDATION[tuple(model.image_shape)][0]
    if held_out:
        sets['training_images'] = sets['in']
        sets['in'] = data.images_array(source.load(in_name, f'{held_out}[:{n}]'))
        base_split = f'{held_out}[{n}:{2 * n}]'
    else:
        base_split = f'train[{2 * n}:{3 * n}]'
    base = data.images_array(source.load(in_name, base_split))
    sets.update(shifts.make_shifts(base, seed=0))
    return sets


def search_statistics(source, model, name: str, n: int, num_fit_images: int,
                      held_out: Optional[str], out: str, progress: bool,
                      gradients: bool = True):
    """`(sets, stats, fit_split)`: the validation images (`validation_images`)
    and the fit images, and their statistics, cached in
    `out/statistics_<name>_<n>_<fit split>.npz` (`cached_statistics`), so that
    every program that reads the search's validation sets shares one cache."""
    sets = validation_images(source, model, n, held_out)
    in_name = common.VALIDATION[tuple(model.image_shape)][0]
    fit_split = (f'{held_out}[{2 * n}:{2 * n + num_fit_images}]' if held_out
                 else f'train[{3 * n}:{3 * n + num_fit_images}]')
    # All of the fit split: --num-images caps the validation sets, not the fit.
    sets['fit'] = data.images_array(source.load(in_name, fit_split, capped=False))
    print(f'{name}: fit on {in_name}/{fit_split}, {n} images per validation set', flush=True)
    os.makedirs(out, exist_ok=True)
    stats = cached_statistics(os.path.join(out, f'statistics_{name}_{n}_{fit_split}.npz'),
                              model, sets, progress, gradients)
    return sets, stats, fit_split


def _expand(names, statistics: dict) -> list:
    levels = sorted(k for k in statistics if k.startswith('level') and k.count('_') == 2
                    and k.endswith(('_log_pz', '_log_det')) and '_step' not in k)
    return [s for name in names for s in (levels if name == 'levels' else [name])]


def _halves(stats: dict):
    """Every validation set (all but 'fit') cut in two: the first half of each
    chooses statistics, the second ranks the designs."""
    choose, rank = {}, {}
    for name, statistics in stats.items():
        if name == 'fit':
            continue
        half = len(next(iter(statistics.values()))) // 2
        choose[name] = {k: v[:half] for k, v in statistics.items()}
        rank[name] = {k: v[half:] for k, v in statistics.items()}
    return choose, rank


def score(row: dict, criterion: str, sets) -> float:
    """The mean of `criterion` over the validation sets `sets` of a row."""
    values = row['aurocs'] if criterion == 'auroc' else row['detection_rates']
    return float(np.mean([values[k] for k in sets]))


def search_model(model, stats: dict, progress: bool = True, rule_tolerance: float = 0.02,
                 criterion: str = 'detection_rate', detectable_auroc: float = 0.8,
                 only_pools: Optional[tuple] = None) -> dict:
    """Every estimator's selection in each pool, the references, and the winners.

    Statistics are chosen on the first half of every validation set and every
    design (chosen or named) is ranked on the second half: a greedy choice
    among a hundred statistics fits the images it was made on (its first-half
    score flatters it), and the second half says what it keeps.

    Only the validation sets that some statistic alone separates with an
    AUROC of at least `detectable_auroc` (on the first halves) take part in
    the choice; the others are scored and reported. On a set that no
    statistic detects (vertical flips: 0.60-0.77 on the shipped Glows) the
    differences between designs are as large as a design's change from one
    half of the set to the other, and choosing on them traded away what
    designs do detect.

    `only_pools`: search only these pools of `POOLS` (default: every pool the
    statistics allow)."""
    train = stats['fit']
    choose_sets, rank_sets = _halves(stats)
    choose_in, rank_in = choose_sets.pop('in'), rank_sets.pop('in')
    python_only = [f'{c}_bits' for c in PYTHON_CODECS]
    gradients = [k for k in train if k.endswith(GRADIENT_SUFFIX)]
    pools = {'exportable': sorted(k for k in train if k not in python_only + gradients)}
    if gradients:  # The gradient norms cost several passes of the model (POOLS).
        pools['gradients'] = sorted(k for k in train if k not in python_only)
    pools['python'] = sorted(train)
    best_single = selection.best_single_statistics(train, choose_in, choose_sets,
                                                   pools['python'])
    used = [k for k, (auroc, _) in best_single.items()
            if auroc >= detectable_auroc and k not in REPORTED_ONLY]
    if not used:
        raise ValueError(f'No validation set is separated by any statistic alone with an '
                         f'AUROC of {detectable_auroc} or more: nothing to choose on.')

    def ranked(names, estimator, design):
        row = selection.evaluate_design(train, rank_in, rank_sets, names, estimator, criterion)
        return dict(row.to_dict(), design=design)

    def with_the_rule(row, where_chosen: selection.Selection):
        """`row` with how far, on the first halves of the sets used, the design
        falls below one of its statistics alone, and whether that keeps the rule."""
        shortfall = where_chosen.loses_to_a_part
        return dict(row, rule_shortfall=shortfall,
                    keeps_the_rule=max(shortfall.values(), default=0.) <= rule_tolerance)

    choose_used = {k: choose_sets[k] for k in used}

    def first_halves(names, estimator):
        return selection.evaluate_design(train, choose_in, choose_used, names, estimator,
                                         criterion)

    result = {'pools': {}, 'reference': {}, 'criterion': criterion, 'sets_used': used,
              'detectable_auroc': detectable_auroc,
              'best_single': {k: {'auroc': a, 'statistic': n}
                              for k, (a, n) in best_single.items()}}
    result['complexity_alone'] = {
        name: {k: v['auroc'] for k, v in selection.design_metrics(
            train, rank_in, rank_sets, [name], 'gaussian').items()}
        for name in COMPLEXITY if name in train}
    result['stand_ins'] = {
        name: {f'{codec}_bits': float(np.corrcoef(train[name], train[f'{codec}_bits'])[0, 1])
               for codec in PYTHON_CODECS if f'{codec}_bits' in train}
        for name in ESTIMATES if name in train}
    for name, (names, estimator) in REFERENCE.items():
        names = _expand(names, train)
        if not set(names) <= set(train):  # A design for another model's statistics.
            continue
        row = ranked(names, estimator, name)
        result['reference'][name] = with_the_rule(dict(row, score=score(row, criterion, used)),
                                                  first_halves(names, estimator))
    for pool, candidates in pools.items():
        if only_pools is not None and pool not in only_pools:
            continue
        rows = []
        for estimator in ESTIMATORS:
            if estimator in SEARCHED:
                chosen = selection.select_statistics(
                    train, choose_in, choose_used, candidates, estimator,
                    rule_tolerance=rule_tolerance, criterion=criterion)
                names = chosen.statistics
                choice = {'score': chosen.score, 'aurocs': chosen.aurocs,
                          'best_single': chosen.best_single}
            else:  # Scored on the Ledoit-Wolf choice.
                names = rows[SEARCHED.index('ledoit_wolf')]['statistics']
                chosen = first_halves(names, estimator)
                choice = {'score': chosen.score}
            row = dict(ranked(names, estimator, f'greedy, {estimator}'), choice=choice)
            row = with_the_rule(dict(row, score=score(row, criterion, used)), chosen)
            rows.append(row)
            if progress:
                print(f'  {pool} {estimator}: {criterion} {choice["score"]:.4f} where chosen, '
                      f'{row["score"]:.4f} on the other half, with {names}', flush=True)
        # The choice: the best on the second halves among the searched designs,
        # those the smaller pools searched (each pool holds the one before it, so
        # a greedy search that set off another way in a larger pool cannot leave
        # it worse) and the named ones whose statistics the pool has, of those
        # that keep the rule where statistics are chosen (the first halves): a
        # design below one of its own statistics alone is discarding signal.
        smaller = [dict(r, design=f'{r["design"]} ({name} pool)')
                   for name, earlier in result['pools'].items() for r in earlier['rows']]
        references = [r for r in list(result['reference'].values()) + smaller
                      if set(r['statistics']) <= set(candidates)]
        eligible = [r for r in rows + references if r['keeps_the_rule']]
        result['pools'][pool] = {'rows': rows, 'chosen': max(eligible or rows + references,
                                                             key=lambda r: r['score'])}
    return result


def design(row: dict) -> dict:
    """What `tfp-ood fit-detector --design` reads: statistics, codecs, estimator."""
    codecs = [s[:-len('_bits')] for s in row['statistics']
              if s[:-len('_bits')] in PYTHON_CODECS]
    return {'detector': 'density_of_states_selected', 'estimator': row['estimator'],
            'statistics': [s for s in row['statistics']
                           if s[:-len('_bits')] not in PYTHON_CODECS],
            'codecs': codecs, 'criterion': row['criterion'],
            'validation_aurocs': row['aurocs'], 'mean_validation_auroc': row['mean_auroc'],
            'validation_detection_rates': row['detection_rates'],
            'mean_validation_detection_rate': row['mean_detection_rate'],
            'score_on_the_sets_used': row['score']}


def _rule(row: dict) -> str:
    """Whether a design keeps the rule on the first halves, and where it falls short."""
    shortfall = ', '.join(f'{k} -{v:.3f}' for k, v in row['rule_shortfall'].items())
    return ('kept' if row['keeps_the_rule'] else 'broken') + (f' ({shortfall})' if shortfall
                                                              else '')


def markdown(results: dict) -> str:
    lines = []
    for model, result in results.items():
        criterion = result['criterion']
        chosen_designs = {p: c['chosen']['design'] for p, c in result['pools'].items()}
        sets = list(result['pools']['exportable']['rows'][0]['aurocs'])
        used = result['sets_used']
        reported = [k for k in REPORTED_ONLY if k in sets]
        head = ['| design | ' + ' | '.join(sets) + ' | mean AUROC | mean flagged | score | '
                'the rule where chosen | statistics |',
                '|---|' + '---:|' * (len(sets) + 3) + '---|---|']
        lines += [f'### {model}', '', f'Fitted on {result["fit_split"]}; '
                  f'{result["num_images"]} images per validation set: statistics chosen on '
                  f'the first half of each, every design ranked on the second half by its '
                  f'mean {CRITERION_NAMES[criterion]}. Each cell: AUROC / the fraction of '
                  f'the set flagged at the threshold that keeps 95% of the in-distribution '
                  f'images (second halves). The score, what ranks the designs, is that mean '
                  f'over the sets some statistic alone separates with an AUROC of at least '
                  f'{result["detectable_auroc"]} (first halves)'
                  + (f', but for {", ".join(reported)}, which are reported only'
                     if reported else '') + ': ' + ', '.join(used)
                  + '; the best single statistic: '
                  + ', '.join(f'{k} {v["auroc"]:.3f} ({v["statistic"]})'
                              for k, v in result['best_single'].items()) + '.', '']
        lines += head

        def line(label, row):
            return (f'| {label} | ' + ' | '.join(
                f'{row["aurocs"][k]:.4f} / {row["detection_rates"][k]:.3f}' for k in sets)
                + f' | {row["mean_auroc"]:.4f} | {row["mean_detection_rate"]:.4f} | '
                f'{row["score"]:.4f} | {_rule(row)} | ' + ', '.join(row['statistics']) + ' |')

        for pool, chosen in result['pools'].items():
            for row in chosen['rows']:
                mark = '**' if row['design'] == chosen_designs[pool] else ''
                lines.append(line(f'{mark}{pool}, {row["estimator"]}{mark}', row))
        for name, row in result['reference'].items():
            mark = '**' if name in chosen_designs.values() else ''
            lines.append(line(f'{mark}{name} ({row["estimator"]}){mark}', row))
        lines.append('')
        for pool, chosen in result['pools'].items():
            row = chosen['chosen']
            loses = row['loses_to_a_part']
            lines.append(f'- {pool}: chosen {row["design"]} ({row["estimator"]}, '
                         f'{len(row["statistics"])} statistics, mean AUROC '
                         f'{row["mean_auroc"]:.4f}, mean flagged '
                         f'{row["mean_detection_rate"]:.4f}, score {row["score"]:.4f}); '
                         + ('at least as good as its best single statistic on every set.'
                            if not loses else 'below its best single statistic on '
                            + ', '.join(f'{k} (by {v:.4f})' for k, v in loses.items()) + '.'))
        alone = result['complexity_alone']
        if alone:
            lines += ['', 'Each compressed length alone (AUROC, second halves; a Gaussian of the '
                      'one statistic, so either tail counts):', '',
                      '| statistic | ' + ' | '.join(sets) + ' |', '|---|' + '---:|' * len(sets)]
            lines += [f'| {name} | ' + ' | '.join(f'{aurocs[k]:.4f}' for k in sets) + ' |'
                      for name, aurocs in alone.items()]
        stand_ins = result['stand_ins']
        if stand_ins:
            codecs = list(next(iter(stand_ins.values())))
            lines += ['', 'How closely TensorFlow\'s coding-cost estimates follow the Python-only '
                      'lengths (correlation over the fit images):', '',
                      '| estimate | ' + ' | '.join(codecs) + ' |', '|---|' + '---:|' * len(codecs)]
            lines += [f'| {name} | ' + ' | '.join(f'{row[c]:.3f}' for c in codecs) + ' |'
                      for name, row in stand_ins.items()]
        lines.append('')
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    common.add_data_flags(p, 'results/detector_search')
    p.add_argument('--models', nargs='+', default=['glow_cifar10', 'glow_fashion_mnist'],
                   help='shipped flows (in --models-dir) to choose for')
    p.add_argument('--num-fit-images', type=int, default=5000,
                   help='images the detectors fit on (training images, or of --held-out-split)')
    p.add_argument('--held-out-split', default=None,
                   help='a split of the in-distribution dataset the models did not train on '
                        '(e.g. test): the in-distribution validation images, the images the '
                        'shifts are made from and the fit images are its first 2 x '
                        '--num-images + --num-fit-images, instead of training images, which a '
                        'model scores as more typical than images it has not seen')
    p.add_argument('--criterion', choices=selection.CRITERIA, default='detection_rate',
                   help='what the search maximises, averaged over the validation sets: the '
                        'fraction of each flagged at the threshold that keeps 95%% of the '
                        'in-distribution images (default; what a deployed detector delivers) '
                        'or the AUROC')
    p.add_argument('--detectable-auroc', type=float, default=0.8,
                   help='a validation set takes part in the choice if some statistic alone '
                        'separates it with at least this AUROC (default 0.8)')
    p.add_argument('--rule-tolerance', type=float, default=0.02,
                   help='how far below one of its statistics alone the design may fall on a '
                        'validation set (default 0.02)')
    args = p.parse_args(argv)
    if args.held_out_split is not None and not re.fullmatch(r'[A-Za-z_]+', args.held_out_split):
        raise ValueError(f'--held-out-split takes a split name (e.g. test), not a slice; got '
                         f'{args.held_out_split!r}: the search takes its first images itself.')
    source = common.Source(args)
    if source.samples:
        raise ValueError('The validation sets are training images: pass --data-dir or '
                         '--source tfds.')
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for name in args.models:
        model = export.restore(os.path.join(args.models_dir, name))
        n = args.num_images or 2000
        _, stats, fit_split = search_statistics(source, model, name, n, args.num_fit_images,
                                                args.held_out_split, args.out, args.progress)
        results[name] = dict(search_model(model, stats, progress=args.progress,
                                          rule_tolerance=args.rule_tolerance,
                                          criterion=args.criterion,
                                          detectable_auroc=args.detectable_auroc),
                             fit_split=fit_split, num_images=n,
                             rule_tolerance=args.rule_tolerance)
        for pool, chosen in results[name]['pools'].items():
            with open(os.path.join(args.out, f'{name}{POOLS[pool]}.json'), 'w') as f:
                json.dump(design(chosen['chosen']), f, indent=2)
        with open(os.path.join(args.out, 'search.json'), 'w') as f:
            json.dump(results, f, indent=2)
        with open(os.path.join(args.out, 'search.md'), 'w') as f:
            f.write(markdown(results))
    print(f'wrote {os.path.abspath(args.out)}')
    return results


if __name__ == '__main__':
    common.run(main)
