"""Score several datasets under several models and write the tables and figures.

The experiment scripts in `examples/` are thin: they choose models and
datasets and call these functions, which write into a results folder:

- `scores/<model>__<set>.npz`: per-image scores (`ScoreResult.save`);
- `bpd_table.csv` and `bpd_table.md`: mean and standard deviation of bits/dim
  per (model, training set, scored set), with the paper's number beside ours
  where it reports one;
- histograms (`plotting`) and `metrics.json` (AUROC, AUPR, FPR at 95% TPR).
"""

import concurrent.futures
import csv
import dataclasses
import json
import os
import re
import threading
from typing import Callable, Collection, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from tfp_ood import analysis, plotting
from tfp_ood.evaluate import ScoreResult, score
from tfp_ood.metrics import ood_metrics
from tfp_ood.models.base import DensityModel
from tfp_ood.terms import LOG_DET, LOG_PROB

__all__ = ['ModelEntry', 'OVERVIEW', 'PAPER_BPD', 'PUBLISHED_AUROC', 'Row', 'bpd_rows',
           'headline', 'run_experiment', 'score_all', 'slug', 'write_bpd_table',
           'write_ood_report', 'write_per_image_csv', 'write_summary']

# The file name of an experiment's main figure (written by `write_ood_report`).
OVERVIEW = 'overview.png'
#: Models `score_all` scores at the same time.
SCORING_THREADS = 2


def slug(name: str) -> str:
    """A shell-friendly file name for a model or set name.

    `'cifar10/test (gray)'` -> `'cifar10_test_gray'`,
    `'svhn_cropped/test[7000:]'` -> `'svhn_cropped_test_7000'`.
    """
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_')


# Bits/dim reported by Nalisnick et al. (2019), keyed by
# (model family, training set, scored set).
PAPER_BPD: Dict[Tuple[str, str, str], float] = {
    ('glow', 'cifar10', 'cifar10/train'): 3.386,
    ('glow', 'cifar10', 'cifar10/test'): 3.464,
    ('glow', 'cifar10', 'svhn_cropped/test'): 2.389,
    ('glow', 'svhn_cropped', 'svhn_cropped/test'): 2.057,
    ('glow', 'fashion_mnist', 'fashion_mnist/test'): 2.96,
    ('glow', 'fashion_mnist', 'mnist/test'): 1.83,
}


# Published single-image AUROCs of raw likelihood as an OOD score, keyed by
# (model family, in-distribution set, out-of-distribution set): the baselines
# of the detectors that followed the paper (Ren et al., NeurIPS 2019; Serrà et
# al., ICLR 2020).
PUBLISHED_AUROC: Dict[Tuple[str, str, str], float] = {
    ('glow', 'cifar10/test', 'svhn_cropped/test'): 0.063,
    ('pixelcnn', 'cifar10/test', 'svhn_cropped/test'): 0.155,
}


def write_per_image_csv(path: str, columns: Mapping[str, np.ndarray],
                        sources: Optional[Sequence[str]] = None) -> None:
    """A CSV of one row per image: `index`, `source` (the file the image came
    from, or its index) and `columns` in their order; integer and boolean
    columns written as integers, floats with six significant digits."""
    columns = {k: np.asarray(v) for k, v in columns.items()}
    formats = {k: (lambda x: str(int(x))) if v.dtype.kind in 'biu' else (lambda x: f'{x:.6g}')
               for k, v in columns.items()}
    num_images = len(next(iter(columns.values()))) if columns else 0
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['index', 'source'] + list(columns))
        for i in range(num_images):
            writer.writerow([i, sources[i] if sources else i]
                            + [formats[k](v[i]) for k, v in columns.items()])


def write_summary(json_path: str, markdown_path: str, summary: Mapping,
                  table: Sequence[Tuple[str, str]]) -> None:
    """`summary` as JSON, and `table`'s `(header, cell)` pairs as a one-row
    Markdown table (numbers right-aligned)."""
    with open(json_path, 'w') as f:
        json.dump(summary, f, indent=2)
    align = ['---:' if re.match(r'^[-\d.,]', cell) else '---' for _, cell in table]
    with open(markdown_path, 'w') as f:
        f.write('| ' + ' | '.join(h for h, _ in table) + ' |\n'
                '|' + '|'.join(align) + '|\n'
                '| ' + ' | '.join(c for _, c in table) + ' |\n')


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the bits/dim table."""

    model: str
    family: str
    trained_on: str
    scored_set: str
    num_images: int
    num_nonfinite: int
    bpd_mean: float
    bpd_std: float
    paper_bpd: Optional[float]


class Deferred:
    """A model made when it is first needed: `score_all` restores it in the thread
    that scores it, so that building one model's Python objects (seconds for a
    SavedModel's weights and networks) overlaps the scoring of another."""

    def __init__(self, make: Callable[[], DensityModel]):
        self._make, self._model, self._lock = make, None, threading.Lock()

    def get(self) -> DensityModel:
        with self._lock:
            if self._model is None:
                self._model = self._make()
            return self._model


def score_all(models: Mapping[str, Union[DensityModel, Deferred]],
              datasets: Mapping[str, tf.data.Dataset],
              out_dir: Optional[str] = None,
              batch_size: int = 256,
              progress: bool = True,
              max_images: Optional[Mapping[str, int]] = None,
              statistics: Optional[Mapping[str, Collection[str]]] = None
              ) -> Dict[Tuple[str, str], ScoreResult]:
    """Scores every dataset under every model (with matching image shape).

    Args:
      models: `{name: model}`; a `Deferred` model is made in the thread that
        scores it.
      max_images: `{model_name: n}`: score only the first `n` images of each
        set under that model (for models whose scoring is expensive, such as
        a VAE's importance-weighted estimate with K decoder passes per image).
      statistics: `{model_name: names}`: also keep these of the model's
        statistics along its computation (`model.statistic_names`) in its
        scores, from the same pass (for a detector that reads them, so that
        it need not run the model again).

    Returns `{(model_name, set_name): ScoreResult}`; with `out_dir`, each is
    also saved to `out_dir/scores/<model>__<set>.npz`.
    """
    max_images = max_images or {}
    stop = threading.Event()  # Set when the caller is interrupted: no new set starts.

    def score_model(model_name: str) -> Dict[Tuple[str, str], ScoreResult]:
        model, results = models[model_name], {}
        if isinstance(model, Deferred):  # Restored here, while the other thread scores.
            model = model.get()
        kept = set((statistics or {}).get(model_name, ()))
        gradients = bool(kept & set(model.gradient_statistic_names))
        # A flow has dozens.
        dropped = set(model.statistic_names + model.gradient_statistic_names) - kept
        for set_name, ds in datasets.items():
            if stop.is_set():
                break
            image_shape = tuple(ds.element_spec['image'].shape)
            if image_shape != model.image_shape:
                continue
            if max_images.get(model_name):
                ds = ds.take(max_images[model_name])
            result = score(model, ds, name=set_name, batch_size=batch_size,
                           progress=progress, model_name=model_name,
                           statistics='gradients' if gradients else bool(kept))
            if kept:  # Only the statistics asked for.
                result.scores = {k: v for k, v in result.scores.items() if k not in dropped}
            results[(model_name, set_name)] = result
            if out_dir:
                os.makedirs(os.path.join(out_dir, 'scores'), exist_ok=True)
                result.save(os.path.join(out_dir, 'scores',
                                         f'{slug(model_name)}__{slug(set_name)}.npz'))
        return results

    # Two models at a time: TensorFlow runs them side by side (each image's
    # numbers do not depend on it), filling the cores that one model's small
    # ops, tracing and Python leave idle. The expensive models (those limited
    # to `max_images`) start first, so that no long one runs alone at the end.
    # Handing out (model, set) pairs instead, so that a thread done with its
    # model takes the next set of another, was no faster on the main job's work:
    # two threads on one model take longer than on two (benchmarks/scheduling.py).
    order = sorted(models, key=lambda name: not max_images.get(name))
    pool = concurrent.futures.ThreadPoolExecutor(SCORING_THREADS)
    try:
        done = dict(zip(order, pool.map(score_model, order)))
        per_model = [done[name] for name in models]
    except BaseException:  # Ctrl-C or an error: the other thread ends after its set.
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return {key: result for results in per_model for key, result in results.items()}


def bpd_rows(results: Mapping[Tuple[str, str], ScoreResult],
             families: Mapping[str, str],
             trained_on: Mapping[str, str],
             paper_names: Optional[Mapping[str, str]] = None) -> List[Row]:
    """The table rows, with the paper's bits/dim where it reports the same case.

    `paper_names` maps a scored set's name to the name of the set the paper
    scored, where they differ (e.g. `'svhn_cropped/test[7000:]'` to
    `'svhn_cropped/test'`).
    """
    paper_names = paper_names or {}
    rows = []
    for (model_name, set_name), result in results.items():
        summary = result.summary()
        family, train = families[model_name], trained_on[model_name]
        paper = PAPER_BPD.get((family, train, paper_names.get(set_name, set_name)))
        rows.append(Row(model=model_name, family=family, trained_on=train,
                        scored_set=set_name, num_images=summary['num_images'],
                        num_nonfinite=summary['num_nonfinite'],
                        bpd_mean=summary['bpd_mean'], bpd_std=summary['bpd_std'],
                        paper_bpd=paper))
    return rows


def write_bpd_table(rows: Sequence[Row], out_dir: str) -> Tuple[str, str]:
    """Writes `bpd_table.csv` and `bpd_table.md`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, 'bpd_table.csv')
    with open(csv_path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in dataclasses.fields(Row)])
        writer.writeheader()
        for row in rows:
            writer.writerow(dataclasses.asdict(row))
    md_path = os.path.join(out_dir, 'bpd_table.md')
    lines = ['| model | trained on | scored set | images | bits/dim (mean ± std) | paper |',
             '|---|---|---|---:|---:|---:|']

    def number(x):  # Random images can reach ~1e24 bits/dim under a trained flow.
        return f'{x:.3f}' if abs(x) < 1e4 else f'{x:.3g}'

    for r in rows:
        paper = f'{r.paper_bpd:.3f}' if r.paper_bpd is not None else '–'
        bad = f' ({r.num_nonfinite} non-finite)' if r.num_nonfinite else ''
        lines.append(f'| {r.model} | {r.trained_on} | {r.scored_set} | {r.num_images}{bad} | '
                     f'{number(r.bpd_mean)} ± {number(r.bpd_std)} | {paper} |')
    with open(md_path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return csv_path, md_path


def write_ood_report(results: Mapping[Tuple[str, str], ScoreResult], models: Sequence[str],
                     in_set: str, out_set: str, out_dir: str,
                     term_histograms: bool = True) -> Dict[str, Dict[str, float]]:
    """Histograms and detection metrics of `in_set` against `out_set` per model.

    Writes `overview.png` (`OVERVIEW`: bits/dim of both sets, one panel per
    model), `<model>_log_prob.png` (the paper's Figure 1: log p(x) of both
    sets), `<model>_terms.png` for flows (distribution and volume terms) and
    `metrics.json` (raw likelihood as the score, `in_set` positive).
    """
    os.makedirs(out_dir, exist_ok=True)
    report = {}
    pairs = [[results[(m, in_set)], results[(m, out_set)]] for m in models]
    if pairs:
        plotting.plot_histogram_panels(pairs, os.path.join(out_dir, OVERVIEW),
                                       title=f'{in_set} against {out_set}: bits/dim per image')
    for model_name, pair in zip(models, pairs):
        plotting.plot_histograms(pair, os.path.join(out_dir, f'{model_name}_log_prob.png'),
                                 key=LOG_PROB, title=f'{model_name}: log p(x)')
        if term_histograms and all(LOG_DET in r.scores for r in pair):
            plotting.plot_term_histograms(pair, os.path.join(out_dir, f'{model_name}_terms.png'))
        metrics = ood_metrics(-pair[0].log_prob, -pair[1].log_prob, nonfinite='most_ood')
        report[model_name] = dict(metrics, in_set=in_set, out_set=out_set)
    with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
        json.dump(report, f, indent=2)
    return report


def headline(rows: Sequence[Row], metrics: Mapping[str, Mapping[str, float]],
             in_set: str, out_set: str) -> str:
    """The experiment in a few lines: per model, mean bits/dim of `in_set` and
    `out_set` and the AUROC of raw likelihood, with the published numbers in
    parentheses where there are some (Markdown table)."""
    by_key = {(r.model, r.scored_set): r for r in rows}

    def bpd(model, name):
        row = by_key.get((model, name))
        if row is None:
            return '–'
        paper = f' ({row.paper_bpd:.3f})' if row.paper_bpd is not None else ''
        return f'{row.bpd_mean:.3f}{paper}'

    lines = [f'| model | images per set | {in_set} bits/dim | {out_set} bits/dim | AUROC |',
             '|---|---:|---:|---:|---:|']
    for model, m in metrics.items():
        row = by_key[(model, in_set)]
        published = PUBLISHED_AUROC.get((row.family, m['in_set'], m['out_set']))
        auroc = f'{m["auroc"]:.3f}' + (f' ({published:.3f})' if published is not None else '')
        lines.append(f'| {model} | {row.num_images} | {bpd(model, in_set)} | '
                     f'{bpd(model, out_set)} | {auroc} |')
    return '\n'.join(lines) + '\n'


@dataclasses.dataclass
class ModelEntry:
    """A model of an experiment: the model, its family and its training set.

    `max_images`, if set, limits every scored set to its first `max_images`
    images under this model.
    """

    model: Union[DensityModel, Deferred]
    family: str
    trained_on: str
    max_images: Optional[int] = None


def run_experiment(models: Mapping[str, ModelEntry],
                   datasets: Mapping[str, tf.data.Dataset],
                   in_set: str, out_set: str, out_dir: str,
                   paper_names: Optional[Mapping[str, str]] = None,
                   batch_size: int = 256, progress: bool = True,
                   gray_of: Optional[Mapping[str, str]] = None,
                   statistics: Optional[Mapping[str, Collection[str]]] = None) -> Dict:
    """Scores every set under every model and writes the whole report to `out_dir`.

    Writes the per-image scores, `bpd_table.csv` / `.md` (with the paper's
    numbers), for each model the log p(x) histogram of `in_set` against
    `out_set` and (flows) the term histograms, `overview.png` (every model's
    histograms), `metrics.json` (AUROC etc. of raw likelihood),
    `summary.md` (`headline`), `graying.md` (colour against the gray sets of
    `gray_of`, `{colour set: gray set}` as `analysis.add_gray_versions`
    returns), `summary.json`, and TensorBoard logs in
    `out_dir/tensorboard/<model>` (mean bits/dim per set, histograms of the
    per-image log p(x) and terms, the table as text). `statistics` is passed
    to `score_all` (statistics a detector will read, kept in the results).

    Returns:
      `{'rows': [Row], 'metrics': {model: metrics}, 'results': {(model, set): ScoreResult}}`.
    """
    from tfp_ood.summaries import Summaries  # TensorBoard only when a report is written.
    instances = {name: entry.model for name, entry in models.items()}
    results = score_all(instances, datasets, out_dir, batch_size=batch_size, progress=progress,
                        max_images={n: e.max_images for n, e in models.items() if e.max_images},
                        statistics=statistics)
    rows = bpd_rows(results, {n: e.family for n, e in models.items()},
                    {n: e.trained_on for n, e in models.items()}, paper_names)
    _, md_path = write_bpd_table(rows, out_dir)
    compared = [n for n in models if (n, in_set) in results and (n, out_set) in results]
    metrics = write_ood_report(results, compared, in_set, out_set, out_dir)
    with open(md_path) as f:
        table = f.read()
    for name in models:
        summaries = Summaries(os.path.join(out_dir, 'tensorboard', name))
        summaries.scores({s: r for (m, s), r in results.items() if m == name}, step=0,
                         prefix='scores')
        if name in metrics:
            summaries.scalars({f'ood/{k}': v for k, v in metrics[name].items()
                               if k in ('auroc', 'aupr_in', 'aupr_out', 'fpr_at_95_tpr')}, 0)
            summaries.pr_curve(f'pr/{in_set} vs {out_set}', -results[(name, in_set)].log_prob,
                               -results[(name, out_set)].log_prob,
                               description=f'raw likelihood (log p(x)) under {name}; '
                                           f'{in_set} is the positive class')
        summaries.text('bpd_table', table)
        summaries.flush()
    graying = analysis.graying_rows(results, gray_of or {})
    if graying:
        with open(os.path.join(out_dir, 'graying.md'), 'w') as f:
            f.write(analysis.graying_table(graying))
    summary = headline(rows, metrics, in_set, out_set)
    with open(os.path.join(out_dir, 'summary.md'), 'w') as f:
        f.write(summary)
    with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
        json.dump({'rows': [dataclasses.asdict(r) for r in rows], 'metrics': metrics,
                   'graying': graying}, f, indent=2)
    return {'rows': rows, 'metrics': metrics, 'graying': graying, 'results': results,
            'headline': summary, 'overview': os.path.join(out_dir, OVERVIEW)}
