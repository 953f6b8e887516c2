r"""The likelihood path's VAE statistics on the detector search's validation sets.

LPath (Huang et al., "Inference, Fast and Slow: Reinterpreting VAEs for OOD
Detection") detects out-of-distribution images with four statistics of a
VAE's computation under COPOD or a Mahalanobis distance: the norm of the
posterior mean and the posterior's mean log standard deviation, taken from a
VAE with a small latent, and the image's distance from its decoded mean and
the norm of the decoded standard deviations, taken from a VAE with a large
one. This script scores them on the validation sets that
`tfp_ood.experiments.detector_search` chooses designs on (never the test
pairs), on the same images:

- each VAE statistic of `VAE.statistics` alone (AUROC of a Gaussian of the
  one statistic, second halves of the sets);
- LPath's four of each VAE, and with two VAEs LPath's pair (the smaller
  latent's encoder statistics, the larger's decoder statistics), under COPOD
  and a Ledoit-Wolf Gaussian;
- the detector search with every VAE statistic added to the flow's one-pass
  pool (the statistics TensorFlow computes in one pass; the search's
  `exportable` pool): whether a VAE statistic would be chosen beside the
  flow's.

The VAEs are scored at the posterior mean, one encoder and one decoder pass
per image (a copy with one importance sample, so the K-sample `elbo` and the
spread of the importance weights are left out). A design over two models'
statistics is reported here, never written as a design to fit: a fitted
detector reads one model.

    python -m tfp_ood.experiments.likelihood_path --data-dir DATA --held-out-split test \
        --num-images 1000 --num-fit-images 3000 --vae saved_models/vae_cifar10 --vae VAE8

Writes `likelihood_path.md` and `.json` to `--out` (default
`results/likelihood_path`); pointed at the detector search's `--out`, it
reuses the flow's statistics that search computed
(`statistics_<flow>_<n>_<fit split>.npz`).
"""

import argparse
import json
import os

import numpy as np

from tfp_ood import detectors, evaluate, export, selection
from tfp_ood.experiments import common, detector_search
from tfp_ood.models.base import GRADIENT_SUFFIX
from tfp_ood.models.vae import VAE

#: The VAE statistics scored (`VAE.statistics` at one importance sample).
STATISTICS = ('posterior_loc_norm', 'posterior_log_scale_mean', 'posterior_kl',
              'reconstruction_log_prob', 'decoder_residual_norm', 'decoder_std_norm')
#: LPath's statistics: the encoder's two, then the decoder's two.
ENCODER, DECODER = detectors.LIKELIHOOD_PATH[:2], detectors.LIKELIHOOD_PATH[2:]
ESTIMATORS = ('copod', 'ledoit_wolf')


def vae_statistics(vae: VAE, sets: dict, prefix: str, progress: bool) -> dict:
    """`{set: {'<prefix>_<statistic>': [N]}}` for the statistics of `STATISTICS`."""
    out = {}
    for name, images in sets.items():
        scores = evaluate.score(vae, images, name=name, progress=progress,
                                statistics=True).scores
        out[name] = {f'{prefix}_{k}': np.asarray(scores[k], np.float64) for k in STATISTICS}
    return out


def _means(metrics: dict, sets) -> float:
    return float(np.mean([metrics[k]['auroc'] for k in sets]))


def analyse(flow, stats: dict, vaes: dict, progress: bool = True) -> dict:
    """Every VAE statistic alone, LPath's four and pair, and the search with them.

    `stats`: `{set: {statistic: [N]}}` with the flow's and every VAE's statistics
    (a 'fit' set, an 'in' set and the validation OOD sets); `vaes`: `{prefix:
    latent size}`."""
    _, rank = detector_search._halves(stats)  # Ranked on the second halves, as the search.
    rank_in = rank.pop('in')
    train = stats['fit']
    ood = [k for k in rank if k != 'training_images']
    result = {'sets': list(rank), 'vaes': vaes, 'alone': {}, 'designs': {}}
    for prefix in vaes:
        result['alone'][prefix] = {
            k: {s: m['auroc'] for s, m in selection.design_metrics(
                train, rank_in, rank, [f'{prefix}_{k}'], 'gaussian').items()}
            for k in STATISTICS}
    designs = {f'{prefix}: LPath four': [f'{prefix}_{k}' for k in ENCODER + DECODER]
               for prefix in vaes}
    if len(vaes) >= 2:
        small, large = min(vaes, key=vaes.get), max(vaes, key=vaes.get)
        designs[f'pair: {small} encoder, {large} decoder'] = (
            [f'{small}_{k}' for k in ENCODER] + [f'{large}_{k}' for k in DECODER])
    for label, names in designs.items():
        for estimator in ESTIMATORS:
            metrics = selection.design_metrics(train, rank_in, rank, names, estimator)
            result['designs'][f'{label}, {estimator}'] = {
                'statistics': names, 'aurocs': {k: m['auroc'] for k, m in metrics.items()},
                'mean_auroc': _means(metrics, ood)}
    # The search, the flow's one-pass statistics and every VAE statistic in a pool
    # (TensorFlow statistics: no gradient norm, no Python-only length).
    python_only = {f'{c}_bits' for c in detector_search.PYTHON_CODECS}
    one_pass = {name: {k: v for k, v in s.items()
                       if not k.endswith(GRADIENT_SUFFIX) and k not in python_only}
                for name, s in stats.items()}
    search = detector_search.search_model(flow, one_pass, progress=progress,
                                          only_pools=('exportable',))
    result['search'] = {
        pool: {'design': p['chosen']['design'], 'score': p['chosen']['score'],
               'statistics': p['chosen']['statistics'],
               'vae_statistics': [k for k in p['chosen']['statistics']
                                  if any(k.startswith(f'{v}_') for v in vaes)]}
        for pool, p in search['pools'].items()}
    result['search_rows'] = {
        pool: [{'design': r['design'], 'score': r['score'], 'statistics': r['statistics']}
               for r in p['rows']] for pool, p in search['pools'].items()}
    return result


def markdown(result: dict) -> str:
    sets = result['sets']
    ood = [k for k in sets if k != 'training_images']
    lines = ['# The likelihood path on the validation sets', '',
             'AUROC on the second half of each validation set (the first half of each, '
             'and the fit images, as the detector search has them). VAEs (latent size): '
             + ', '.join(f'{p} ({d})' for p, d in result['vaes'].items()) + '.', '']
    for prefix, alone in result['alone'].items():
        lines += [f'## {prefix}: each statistic alone', '',
                  '| set | ' + ' | '.join(alone) + ' |', '|---|' + '---:|' * len(alone)]
        lines += [f'| {s} | ' + ' | '.join(f'{alone[k][s]:.3f}' for k in alone) + ' |'
                  for s in sets]
        lines.append('')
    lines += ['## LPath\'s designs', '',
              '| design | ' + ' | '.join(sets) + f' | mean over the {len(ood)} OOD sets |',
              '|---|' + '---:|' * (len(sets) + 1)]
    lines += [f'| {label} | ' + ' | '.join(f'{row["aurocs"][s]:.3f}' for s in sets)
              + f' | {row["mean_auroc"]:.3f} |' for label, row in result['designs'].items()]
    lines += ['', '## The detector search with the VAE statistics in the flow\'s pool', '']
    for pool, chosen in result['search'].items():
        lines.append(f'- {pool}: chosen {chosen["design"]} (score {chosen["score"]:.4f}): '
                     + ', '.join(chosen['statistics']) + '; VAE statistics chosen: '
                     + (', '.join(chosen['vae_statistics']) or 'none') + '.')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    common.add_data_flags(p, 'results/likelihood_path')
    p.add_argument('--flow', default='glow_cifar10',
                   help='the shipped flow (in --models-dir) whose one-pass pool the VAE '
                        'statistics join (default: glow_cifar10)')
    p.add_argument('--vae', action='append', required=True, metavar='PATH',
                   help='an exported VAE (repeatable; with two, LPath\'s pair: the smaller '
                        'latent\'s encoder statistics and the larger\'s decoder statistics)')
    p.add_argument('--num-fit-images', type=int, default=5000,
                   help='images the detectors fit on (as tfp_ood.experiments.detector_search)')
    p.add_argument('--held-out-split', default=None,
                   help='as tfp_ood.experiments.detector_search: the split the in-distribution '
                        'validation, shift and fit images come from (e.g. test)')
    args = p.parse_args(argv)
    source = common.Source(args)
    if source.samples:
        raise ValueError('The validation sets are training images: pass --data-dir or '
                         '--source tfds.')
    flow = export.restore(os.path.join(args.models_dir, args.flow))
    vaes = {}  # Every VAE checked before any image is scored.
    for path in args.vae:
        vae = export.restore(path, num_importance_samples=1)  # One pass of each network.
        if tuple(vae.image_shape) != tuple(flow.image_shape):
            raise ValueError(f'{path} models {vae.image_shape} images, {args.flow} '
                             f'{flow.image_shape}.')
        vaes[os.path.basename(os.path.normpath(path))] = vae
    n = args.num_images or 2000
    sets, stats, fit_split = detector_search.search_statistics(  # No gradient norm is read.
        source, flow, args.flow, n, args.num_fit_images, args.held_out_split, args.out,
        args.progress, gradients=False)
    for prefix, vae in vaes.items():
        for name, extra in vae_statistics(vae, sets, prefix, args.progress).items():
            stats[name].update(extra)
    result = dict(analyse(flow, stats, {k: v.config.latent_dim for k, v in vaes.items()},
                          progress=args.progress), fit_split=fit_split, num_images=n)
    with open(os.path.join(args.out, 'likelihood_path.json'), 'w') as f:
        json.dump(result, f, indent=2)
    text = markdown(result)
    with open(os.path.join(args.out, 'likelihood_path.md'), 'w') as f:
        f.write(text)
    print(text)
    print(f'wrote {os.path.abspath(args.out)}')
    return result


if __name__ == '__main__':
    common.run(main)
