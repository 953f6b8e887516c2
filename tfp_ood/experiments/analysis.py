r"""The paper's analyses (Nalisnick et al., 2019, sections 4 and 5) on the pretrained models.

1. Dataset statistics: per-channel mean and standard deviation (pixels in
   [0, 1]) and per-pixel variance maps of CIFAR-10, SVHN, FashionMNIST and
   MNIST; SVHN "sits inside" CIFAR-10 with a lower variance.
2. The second-order expansion for CV-Glow: for `cvglow_cifar10` (CIFAR-10
   against SVHN) and `cvglow_fashion_mnist` (FashionMNIST against MNIST), the
   per-channel sums of the variance difference, `alpha_c` (the paper's, from
   the 1x1 convolutions and ActNorm scales, and the exact one read off the
   flow's Hessian), the base's curvature, and the predicted difference
   `E_q[log p(x)] - E_p*[log p(x)]` beside the one the evaluator measures.
3. Graying: bits/dim of CIFAR-10 test and SVHN test in colour and in
   grayscale under every colour model in --models-dir.
4. Likelihood over training: the held-out bits/dim each shipped model's
   training run recorded (`<model>_history.jsonl` beside the SavedModel).
5. Ensembles: the Glows in `<models-dir>/ensemble_cifar10/` combined by
   log-mean-exp of their likelihoods, and WAIC (mean minus variance of the
   members' log-likelihoods), with the AUROC of each for CIFAR-10 test
   against SVHN test.

Writes to --out: PNG figures, `report.md`, `analysis.json` (every number
printed) and TensorBoard logs (`--out/tensorboard`).

    python -m tfp_ood.experiments.analysis                              # embedded samples
    python -m tfp_ood.experiments.analysis --data-dir DATA    # full test sets
"""

import argparse
import dataclasses
import glob
import json
import os
import sys

import numpy as np

from tfp_ood import analysis, data, export, plotting, report
from tfp_ood.evaluate import ScoreResult, score
from tfp_ood.metrics import ood_metrics
from tfp_ood.models.base import bits_per_dim
from tfp_ood.experiments import common

# (CV-Glow, training set p*, other set q); p* and q are represented by their
# test splits, which the evaluator also scores.
SECOND_ORDER_PAIRS = (('cvglow_cifar10', 'cifar10', 'svhn_cropped'),
                      ('cvglow_fashion_mnist', 'fashion_mnist', 'mnist'))
# Held-out sets recorded during each shipped model's training: (in, out) prefixes.
CURVE_SETS = {
    'glow_cifar10': ('cifar10/test', 'svhn_cropped/test'),
    'cvglow_cifar10': ('cifar10/test', 'svhn_cropped/test'),
    'pixelcnn_cifar10': ('cifar10/test', 'svhn_cropped/test'),
    'vae_cifar10': ('cifar10/test', 'svhn_cropped/test'),
    'glow_svhn': ('svhn_cropped/test', 'cifar10/test'),
    'glow_fashion_mnist': ('fashion_mnist/test', 'mnist/test'),
    'cvglow_fashion_mnist': ('fashion_mnist/test', 'mnist/test'),
}
ENSEMBLE_DIR = 'ensemble_cifar10'
COLOUR_IN, COLOUR_OUT = 'cifar10/test', 'svhn_cropped/test'


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    common.add_data_flags(p, 'results/analysis')
    p.add_argument('--quadratic-images', type=int, default=2000,
                   help='images per set in the full second-order quadratic form (one '
                        'Hessian-vector product each)')
    p.add_argument('--hessian-batch-size', type=int, default=128,
                   help='Hessian-vector products per call in the second-order analysis')
    return p


def _finite_mean(values: np.ndarray) -> float:
    return float(np.mean(values[np.isfinite(values)]))


def _finite_median(values: np.ndarray) -> float:
    return float(np.median(values[np.isfinite(values)]))


def dataset_statistics(source: common.Source, out: str) -> dict:
    """Statistics of every dataset the analyses use, and their figures."""
    names = ['cifar10/test', 'svhn_cropped/test', 'fashion_mnist/test', 'mnist/test']
    if not source.samples:  # The samples hold test splits only.
        names[0:0] = ['cifar10/train']
        names.insert(3, 'fashion_mnist/train')
    stats = {}
    for name in names:
        dataset, split = name.split('/')
        try:
            stats[name] = analysis.channel_statistics(source.load(dataset, split), name)
        except data.DataNotFoundError as e:
            print(f'statistics: {name} skipped: {e}', file=sys.stderr)
    plotting.plot_channel_statistics(list(stats.values()),
                                     os.path.join(out, 'channel_statistics.png'))
    for shape_name, channels in (('colour', 3), ('gray', 1)):
        group = [s for s in stats.values() if s.pixel_variance.shape[-1] == channels]
        if group:
            plotting.plot_variance_maps(group, os.path.join(out, f'variance_maps_{shape_name}.png'))
    return stats


def second_order(args, source: common.Source, stats: dict) -> list:
    """The CV-Glow expansion for every pair whose model is in --models-dir."""
    rows = []
    for model_name, p_name, q_name in SECOND_ORDER_PAIRS:
        path = os.path.join(args.models_dir, model_name)
        p_set, q_set = f'{p_name}/test', f'{q_name}/test'
        if not os.path.exists(path) or p_set not in stats or q_set not in stats:
            print(f'second order: {model_name} skipped (no model at {path} or no data)',
                  file=sys.stderr)
            continue
        model = export.restore(path)
        # Each set is read once: scored whole, and its first images reused below.
        images = {name: data.images_array(source.load(*name.split('/')))
                  for name in (p_set, q_set)}
        means = {}
        for name in (p_set, q_set):
            result = score(model, images[name], name=name, progress=args.progress,
                           model_name=model_name)
            means[name] = _finite_mean(result.log_prob)
        print(f'second order: {model_name}: Hessian diagonal at the mean of {p_set} '
              f'({int(np.prod(model.image_shape))} Hessian-vector products)...')
        x0 = (stats[p_set].pixel_mean * 255. + 0.5) / 256. - 0.5
        hessian = analysis.log_prob_hessian_diagonal(model, x0, args.hessian_batch_size)
        result = analysis.second_order_difference(
            model, stats[p_set], stats[q_set], measured=means[q_set] - means[p_set],
            hessian_diagonal=hessian)
        # The full expansion (every covariance term): one Hessian-vector product per image.
        samples = [(images[name][:args.quadratic_images].astype(np.float32) + 0.5) / 256. - 0.5
                   for name in (p_set, q_set)]
        print(f'second order: {model_name}: full quadratic form on {len(samples[0])} + '
              f'{len(samples[1])} images...')
        result = dataclasses.replace(result, predicted_full=analysis.quadratic_expansion_difference(
            model, x0, samples[0], samples[1], batch_size=args.hessian_batch_size))
        rows.append(dict(result.to_dict(), model=model_name, p=p_set, q=q_set,
                         label=f'{model_name}\n{q_name} - {p_name}',
                         mean_log_prob_p=means[p_set], mean_log_prob_q=means[q_set],
                         same_sign=bool(np.sign(result.predicted_full)
                                        == np.sign(result.measured)),
                         ratio=result.predicted_full / result.measured
                         if result.measured else float('nan')))
    return rows


def _is_exported_detector(directory: str) -> bool:
    try:
        with open(os.path.join(directory, 'assets', export.METADATA_FILE)) as f:
            return json.load(f).get('format') == export.DETECTOR_FORMAT
    except (OSError, ValueError, AttributeError):
        return False  # Not a detector; `export.read_metadata` says what it is not.


def colour_models(models_dir: str) -> dict:
    """Every exported colour (32x32x3) density model directly in `models_dir`
    that was trained on clean images: exported detectors (`tfp-ood
    export-detector`) and the likelihood ratio's background models (trained
    with a `mutation_rate`) are left out."""
    found = {}
    for path in sorted(glob.glob(os.path.join(models_dir, '*', 'saved_model.pb'))):
        directory = os.path.dirname(path)
        if _is_exported_detector(directory):
            continue
        metadata = export.read_metadata(directory)
        train_config = metadata.get('provenance', {}).get('train_config', {})
        if train_config.get('mutation_rate') or tuple(metadata['image_shape']) != (32, 32, 3):
            continue
        found[os.path.basename(directory)] = export.load(directory)
    return found


def graying(args, source: common.Source, out: str) -> list:
    models = colour_models(args.models_dir)
    if not models:
        print('graying: no colour model in --models-dir; skipped', file=sys.stderr)
        return []
    sets = {name: source.load(*name.split('/')) for name in (COLOUR_IN, COLOUR_OUT)}
    gray_of = analysis.add_gray_versions(sets, (COLOUR_IN, COLOUR_OUT))
    limits = {name: source.family_images(model.get_config().get('family'))
              for name, model in models.items()}
    results = report.score_all(models, sets, os.path.join(out, 'graying'),
                               progress=args.progress, max_images=limits)
    rows = analysis.graying_rows(results, gray_of)
    plotting.plot_graying(rows, os.path.join(out, 'graying.png'))
    return rows


def training_curves(args, out: str) -> dict:
    curves = {}
    for model_name, (in_prefix, out_prefix) in CURVE_SETS.items():
        path = os.path.join(args.models_dir, f'{model_name}_history.jsonl')
        if not os.path.exists(path):
            continue
        with open(path) as f:
            history = [json.loads(line) for line in f if line.strip()]
        keys = sorted({k for row in history for k in row if k.endswith('/bits_per_dim')})
        in_key = next((k for k in keys if k.startswith(in_prefix)), None)
        out_key = next((k for k in keys if k.startswith(out_prefix)), None)
        if not history or in_key is None or out_key is None:
            continue
        plotting.plot_training_curves(history, os.path.join(out, f'curves_{model_name}.png'),
                                      title=f'{model_name}: held-out bits/dim over training')
        rows = [r for r in history if in_key in r and out_key in r]
        curves[model_name] = {
            'in_set': in_key[:-len('/bits_per_dim')], 'out_set': out_key[:-len('/bits_per_dim')],
            'steps': [r['step'] for r in rows],
            'bpd_in': [r[in_key] for r in rows], 'bpd_out': [r[out_key] for r in rows],
            'out_more_likely_throughout': all(r[out_key] < r[in_key] for r in rows)}
        curves[model_name].update({k: [r[k] for r in rows if k in r] for k in keys})
    return curves


def _ensemble_result(name: str, log_probs: np.ndarray, num_dims: int, **extra) -> ScoreResult:
    scores = {'log_prob': log_probs, 'bits_per_dim': bits_per_dim(log_probs, num_dims)}
    scores.update(extra)
    return ScoreResult(name, scores, np.full(len(log_probs), -1), (32, 32, 3), 'ensemble')


def ensemble(args, source: common.Source, out: str) -> dict:
    members = {}
    for path in sorted(glob.glob(os.path.join(args.models_dir, ENSEMBLE_DIR, '*',
                                              'saved_model.pb'))):
        directory = os.path.dirname(path)
        members[os.path.basename(directory)] = export.load(directory)
    if len(members) < 2:
        print(f'ensemble: fewer than two members in {args.models_dir}/{ENSEMBLE_DIR}; skipped',
              file=sys.stderr)
        return {}
    sets = {name: source.load(*name.split('/')) for name in (COLOUR_IN, COLOUR_OUT)}
    results = report.score_all(members, sets, progress=args.progress)
    logs = {s: np.stack([results[(m, s)].log_prob.astype(np.float64) for m in members])
            for s in sets}
    num_dims = 32 * 32 * 3
    combined = {s: analysis.ensemble_scores(logs[s]) for s in sets}
    waics = {s: analysis.waic(logs[s]) for s in sets}
    summary = {
        'members': {m: {'auroc': ood_metrics(-logs[COLOUR_IN][i], -logs[COLOUR_OUT][i],
                                             nonfinite='most_ood')['auroc'],
                        'bpd_in': results[(m, COLOUR_IN)].summary()['bpd_mean'],
                        'bpd_out': results[(m, COLOUR_OUT)].summary()['bpd_mean']}
                    for i, m in enumerate(members)},
        'num_members': len(members),
        'ensemble': dict(ood_metrics(-combined[COLOUR_IN], -combined[COLOUR_OUT],
                                     nonfinite='most_ood'),
                         bpd_in=_finite_mean(bits_per_dim(combined[COLOUR_IN], num_dims)),
                         bpd_out=_finite_mean(bits_per_dim(combined[COLOUR_OUT], num_dims))),
        'waic': dict(ood_metrics(-waics[COLOUR_IN], -waics[COLOUR_OUT], nonfinite='most_ood'),
                     mean_in=_finite_mean(waics[COLOUR_IN]),
                     mean_out=_finite_mean(waics[COLOUR_OUT]),
                     median_in=_finite_median(waics[COLOUR_IN]),
                     median_out=_finite_median(waics[COLOUR_OUT])),
    }
    pair = [_ensemble_result(s, combined[s], num_dims, waic=waics[s]) for s in sets]
    plotting.plot_histograms(pair, os.path.join(out, 'ensemble_log_prob.png'), key='log_prob',
                             title=f'ensemble of {len(members)} Glows: log-mean-exp log p(x)')
    # A few images on which the members disagree by millions of nats would
    # squeeze every other WAIC into one bin: the axis spans the 1-99% quantiles.
    plotting.plot_histograms(pair, os.path.join(out, 'ensemble_waic.png'), key='waic',
                             title=f'WAIC of {len(members)} Glows (higher = more in)',
                             quantiles=(0.01, 0.99))
    return summary


def _markdown(results: dict) -> str:
    lines = ['# Analyses', '']
    if results['source_note']:
        lines += [results['source_note'], '']
    lines += ['## Dataset statistics (pixels in [0, 1])', '',
              '| set | images | channel means | channel stds | sum of pixel variances |',
              '|---|---:|---|---|---:|']
    for s in results['statistics'].values():
        lines.append(f'| {s["name"]} | {s["num_images"]} | '
                     f'{", ".join(f"{v:.3f}" for v in s["mean"])} | '
                     f'{", ".join(f"{v:.3f}" for v in s["std"])} | '
                     f'{sum(s["pixel_variance_sum"]):.1f} |')
    if results['second_order']:
        lines += ['', '## Second-order expansion for CV-Glow (nats per image)', '',
                  '| model | q - p* | sum_hw (var_q - var_p*) per channel | paper alpha_c^2 | '
                  'exact alpha_c^2 | curvature | predicted (paper alpha) | predicted (exact '
                  'diagonal) | predicted (full quadratic form) | measured | same sign (full) |',
                  '|---|---|---|---|---|---:|---:|---:|---:|---:|---|']
        for r in results['second_order']:
            lines.append(
                f'| {r["model"]} | {r["q"]} - {r["p"]} | '
                f'{", ".join(f"{v:+.1f}" for v in r["channel_variance_difference"])} | '
                f'{", ".join(f"{v:.3g}" for v in r["paper_alpha_squared"])} | '
                f'{", ".join(f"{v:.3g}" for v in r["effective_alpha_squared"])} | '
                f'{r["curvature"]:g} | {r["predicted_paper_alpha"]:+.4g} | {r["predicted"]:+.4g} | '
                f'{r["predicted_full"]:+.4g} | {r["measured"]:+.1f} | '
                f'{"yes" if r["same_sign"] else "NO"} |')
    if results['graying']:
        lines += ['', '## Graying', '', analysis.graying_table(results['graying']).rstrip()]
    if results['training_curves']:
        lines += ['', '## Likelihood over training (held-out bits/dim)', '',
                  '| model | in set | out set | evaluations | out set more likely at every '
                  'evaluation | first (in / out) | last (in / out) |',
                  '|---|---|---|---:|---|---|---|']
        for name, c in results['training_curves'].items():
            lines.append(f'| {name} | {c["in_set"]} | {c["out_set"]} | {len(c["steps"])} | '
                         f'{"yes" if c["out_more_likely_throughout"] else "NO"} | '
                         f'{c["bpd_in"][0]:.3f} / {c["bpd_out"][0]:.3f} (step {c["steps"][0]}) | '
                         f'{c["bpd_in"][-1]:.3f} / {c["bpd_out"][-1]:.3f} '
                         f'(step {c["steps"][-1]}) |')
    e = results['ensemble']
    if e:
        lines += ['', f'## Ensemble of {e["num_members"]} Glows ({COLOUR_IN} in, {COLOUR_OUT} '
                  'out)', '', '| score | AUROC | bits/dim in | bits/dim out |',
                  '|---|---:|---:|---:|']
        for name, m in e['members'].items():
            lines.append(f'| member {name}: log p(x) | {m["auroc"]:.3f} | {m["bpd_in"]:.3f} | '
                         f'{m["bpd_out"]:.3f} |')
        lines.append(f'| ensemble: log-mean-exp log p(x) | {e["ensemble"]["auroc"]:.3f} | '
                     f'{e["ensemble"]["bpd_in"]:.3f} | {e["ensemble"]["bpd_out"]:.3f} |')
        lines.append(f'| WAIC (mean - variance of member log p) | {e["waic"]["auroc"]:.3f} | '
                     f'– | – |')
        lines += ['', f'Median WAIC: {e["waic"]["median_in"]:.1f} ({COLOUR_IN}), '
                  f'{e["waic"]["median_out"]:.1f} ({COLOUR_OUT}); means '
                  f'{e["waic"]["mean_in"]:.1f} and {e["waic"]["mean_out"]:.1f}.']
    if results['skipped']:
        lines += ['', 'Skipped: ' + '; '.join(results['skipped'])]
    return '\n'.join(lines) + '\n'


def _tensorboard(results: dict, out: str) -> None:
    import tensorflow as tf
    from tfp_ood.summaries import Summaries
    summaries = Summaries(os.path.join(out, 'tensorboard'))
    scalars = {}
    for s in results['statistics'].values():
        for c, (mean, std) in enumerate(zip(s['mean'], s['std'])):
            scalars[f'statistics/{s["name"]}/channel{c}_mean'] = mean
            scalars[f'statistics/{s["name"]}/channel{c}_std'] = std
    for r in results['second_order']:
        for key in ('predicted', 'predicted_paper_alpha', 'predicted_full', 'measured'):
            scalars[f'second_order/{r["model"]}/{key}'] = r[key]
    for g in results['graying']:
        scalars[f'graying/{g["model"]}/{g["set"]}/bpd_colour'] = g['bpd_colour']
        scalars[f'graying/{g["model"]}/{g["set"]}/bpd_gray'] = g['bpd_gray']
    if results['ensemble']:
        scalars['ensemble/auroc_log_mean_exp'] = results['ensemble']['ensemble']['auroc']
        scalars['ensemble/auroc_waic'] = results['ensemble']['waic']['auroc']
    summaries.scalars({k: float(v) for k, v in scalars.items() if np.isfinite(v)}, step=0)
    for name, c in results['training_curves'].items():
        for step, bpd_in, bpd_out in zip(c['steps'], c['bpd_in'], c['bpd_out']):
            summaries.scalars({f'training/{name}/{c["in_set"]}': bpd_in,
                               f'training/{name}/{c["out_set"]}': bpd_out}, step=step)
    summaries.text('report', results['markdown'])
    for path in sorted(glob.glob(os.path.join(out, '*.png'))):
        image = tf.io.decode_png(tf.io.read_file(path), channels=3)[tf.newaxis]
        summaries.images(f'figures/{os.path.basename(path)[:-4]}', image, step=0)
    summaries.flush()


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    source = common.Source(args)
    os.makedirs(args.out, exist_ok=True)
    stats = dataset_statistics(source, args.out)
    results = {
        'source_note': source.note(),
        'statistics': {name: s.to_dict() for name, s in stats.items()},
        'second_order': second_order(args, source, stats),
        'graying': graying(args, source, args.out),
        'training_curves': training_curves(args, args.out),
        'ensemble': ensemble(args, source, args.out),
    }
    if results['second_order']:
        plotting.plot_second_order(results['second_order'],
                                   os.path.join(args.out, 'second_order.png'))
    results['skipped'] = [part for part in ('second_order', 'graying', 'training_curves',
                                            'ensemble') if not results[part]]
    results['markdown'] = _markdown(results)
    with open(os.path.join(args.out, 'report.md'), 'w') as f:
        f.write(results['markdown'])
    with open(os.path.join(args.out, 'analysis.json'), 'w') as f:
        json.dump({k: v for k, v in results.items() if k != 'markdown'}, f, indent=2,
                  default=_json_default)
    _tensorboard(results, args.out)
    print(results['markdown'])
    print(f'Results written to {os.path.abspath(args.out)}')
    return results


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f'not JSON serialisable: {type(value)}')


if __name__ == '__main__':
    common.run(main)
