"""Histograms of scores, in the style of the paper's figures (PNG, matplotlib).

Figures are drawn with matplotlib's object API (`matplotlib.figure.Figure`),
never through `pyplot`: writing a PNG needs no display, and importing tfp_ood
leaves the user's backend (e.g. a notebook's inline plots) as it was.
"""

import os
from typing import Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure

from tfp_ood.errors import InputError
from tfp_ood.evaluate import ScoreResult
from tfp_ood.terms import BITS_PER_DIM, LOG_DET, LOG_PROB, LOG_PZ

__all__ = ['beyond_range', 'plot_channel_statistics', 'plot_contact_sheet', 'plot_detection',
           'plot_graying', 'plot_histogram_panels', 'plot_histograms', 'plot_second_order',
           'plot_term_histograms', 'plot_training_curves', 'plot_variance_maps']

_LABELS = {
    BITS_PER_DIM: 'bits/dim (lower = more likely)',
    LOG_PROB: 'log p(x) (nats per image)',
    LOG_PZ: 'distribution term log p(z) (nats per image)',
    LOG_DET: 'volume term log |det df/dx| (nats per image)',
}


def _histogram_range(values: Sequence[np.ndarray],
                     quantiles: Optional[Tuple[float, float]]) -> Tuple[float, float]:
    """The x range of a histogram: the pooled finite values' extremes, or their
    `quantiles` (e.g. `(0.005, 0.995)`) so that a few huge outliers do not
    squeeze every other value into one bin."""
    pooled = np.concatenate([v for v in values if v.size]) if any(v.size for v in values) \
        else np.zeros(1)
    if quantiles is None:
        low, high = float(pooled.min()), float(pooled.max())
    else:
        low, high = (float(q) for q in np.quantile(pooled, quantiles))
    if high - low < 1e-6 * max(1.0, abs(low)):  # A constant term (CV-Glow volume).
        low, high = low - 0.5, high + 0.5
    return low, high


def _hist(ax, results: Sequence[ScoreResult], key: str, bins: int,
          quantiles: Optional[Tuple[float, float]] = None) -> None:
    values = [r.scores[key][np.isfinite(r.scores[key])] for r in results]
    low, high = _histogram_range(values, quantiles)
    edges = np.linspace(low, high, bins + 1)
    for result, v in zip(results, values):
        label = f'{result.name} (mean {np.mean(v):.4g}' if v.size else f'{result.name} ('
        label += f', N={v.size}'
        dropped = result.scores[key].size - v.size
        if dropped:
            label += f', {dropped} non-finite not shown'
        outside = int(np.sum((v < low) | (v > high)))
        if outside:
            label += f', {outside} outside the range not shown'
        ax.hist(v, bins=edges, density=True, alpha=0.5, label=label + ')')
    ax.set_xlabel(_LABELS.get(key, key))
    ax.set_ylabel('density')
    ax.legend(fontsize='small')


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_histograms(results: Sequence[ScoreResult], path: str, key: str = BITS_PER_DIM,
                    title: Optional[str] = None, bins: int = 80,
                    quantiles: Optional[Tuple[float, float]] = None) -> str:
    """Overlaid, normalised histograms of one score for several datasets.

    Args:
      results: the score sets, e.g. CIFAR-10 test and SVHN test.
      path: PNG file to write.
      key: the score to plot: `'bits_per_dim'`, `'log_prob'`, or a term.
      title: figure title.
        Default value: the model name and the key.
      bins: number of bins over the pooled range.
      quantiles: if given, `(low, high)` quantiles of the pooled scores that
        bound the x axis; each legend entry counts its values outside.
        Default value: the whole range.

    Returns:
      `path`.
    """
    if not results:
        raise InputError('plot_histograms: no score sets given.')
    missing = [r.name for r in results if key not in r.scores]
    if missing:
        raise InputError(f'plot_histograms: score {key!r} missing from {missing}; '
                         f'available: {sorted(results[0].scores)}.')
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    _hist(ax, results, key, bins, quantiles)
    ax.set_title(title or f'{results[0].model}: {key}')
    return _save(fig, path)


def plot_histogram_panels(groups: Sequence[Sequence[ScoreResult]], path: str,
                          key: str = BITS_PER_DIM, title: Optional[str] = None,
                          bins: int = 60,
                          quantiles: Optional[Tuple[float, float]] = (0.005, 0.995)) -> str:
    """One panel per model, each overlaying the histograms of its score sets.

    The overview of an experiment: e.g. CIFAR-10 test against SVHN test under
    every model, side by side. Each panel's x axis spans the `quantiles` of
    its pooled finite scores (outliers are counted in the legend).

    Args:
      groups: one sequence of `ScoreResult`s per panel, all of one model.
      path: PNG file to write.
      key: the score to plot.
      title: the figure title.
      bins: number of bins per panel.
      quantiles: `(low, high)` quantiles bounding each panel's x axis, or
        `None` for the whole range.

    Returns:
      `path`.
    """
    if not groups or not all(groups):
        raise InputError('plot_histogram_panels: every panel needs at least one score set.')
    columns = min(len(groups), 2)
    rows = -(-len(groups) // columns)
    fig = Figure(figsize=(7 * columns, 4.2 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, group in zip(axes.flat, groups):
        fewest = min(len(r.scores[key]) for r in group)  # Fewer bins for a few images.
        _hist(ax, group, key, int(min(bins, max(10, 2 * np.sqrt(fewest)))), quantiles)
        ax.set_title(group[0].model)
    for ax in axes.flat[len(groups):]:
        ax.axis('off')
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_term_histograms(results: Sequence[ScoreResult], path: str,
                         title: Optional[str] = None, bins: int = 80) -> str:
    """The paper's decomposition figure: log p(x), distribution and volume terms.

    One panel per term (`log_prob`, `log_pz`, `log_det`) with every dataset
    overlaid. A term that is the same for every image (the volume term of
    CV-Glow) shows as a single bar.
    """
    keys = [k for k in (LOG_PROB, LOG_PZ, LOG_DET)
            if all(k in r.scores for r in results)]
    if not results or len(keys) < 3:
        raise InputError('plot_term_histograms needs flow scores with log_pz and '
                         'log_det for every result.')
    fig = Figure(figsize=(18, 4.5))
    axes = fig.subplots(1, 3)
    for ax, key in zip(axes, keys):
        _hist(ax, results, key, bins)
    fig.suptitle(title or f'{results[0].model}: log p(x) = log p(z) + log|det| + const')
    return _save(fig, path)


def plot_training_curves(history: Sequence[dict], path: str, title: Optional[str] = None) -> str:
    """Bits/dim of every held-out set against the training step (the paper's
    "likelihood over training" figure).

    Args:
      history: the rows of a run's `history.jsonl` (`{'step': ..., '<set>/bits_per_dim': ...}`).
      path: PNG file to write.
    """
    keys = sorted({k for row in history for k in row if k.endswith('/bits_per_dim')})
    if not keys:
        raise InputError('plot_training_curves: no "<set>/bits_per_dim" entries in the history.')
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for key in keys:
        rows = [r for r in history if key in r]
        ax.plot([r['step'] for r in rows], [r[key] for r in rows], marker='o',
                label=key[:-len('/bits_per_dim')])
    ax.set_xlabel('training step')
    ax.set_ylabel('bits/dim (lower = more likely)')
    ax.set_title(title or 'bits/dim over training')
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
    return _save(fig, path)


def plot_channel_statistics(statistics: Sequence, path: str, title: Optional[str] = None) -> str:
    """Every dataset placed by channel mean against channel standard deviation.

    Args:
      statistics: `tfp_ood.analysis.ChannelStatistics` of several datasets.
      path: PNG file to write.
    """
    if not statistics:
        raise InputError('plot_channel_statistics: no statistics given.')
    fig = Figure(figsize=(6.5, 5))
    ax = fig.subplots()
    markers = ('o', 's', '^')
    for i, stats in enumerate(statistics):
        color = f'C{i}'
        for c, (mean, std) in enumerate(zip(stats.mean, stats.std)):
            channel = 'RGB'[c] if len(stats.mean) == 3 else 'gray'
            ax.scatter(mean, std, color=color, marker=markers[c % 3], s=60,
                       label=f'{stats.name} ({channel})')
    ax.set_xlabel('channel mean (pixels in [0, 1])')
    ax.set_ylabel('channel standard deviation')
    ax.set_title(title or 'dataset statistics per channel')
    ax.grid(alpha=0.3)
    ax.legend(fontsize='x-small', ncol=2)
    return _save(fig, path)


def plot_variance_maps(statistics: Sequence, path: str, title: Optional[str] = None) -> str:
    """Per-pixel variance of every dataset (channels averaged), on one colour scale.

    Args:
      statistics: `tfp_ood.analysis.ChannelStatistics` of several datasets.
      path: PNG file to write.
    """
    if not statistics:
        raise InputError('plot_variance_maps: no statistics given.')
    maps = [s.pixel_variance.mean(axis=-1) for s in statistics]
    vmax = max(float(m.max()) for m in maps)
    fig = Figure(figsize=(2.6 * len(maps) + 0.8, 2.9))
    axes = fig.subplots(1, len(maps), squeeze=False)
    for ax, stats, m in zip(axes[0], statistics, maps):
        image = ax.imshow(m, vmin=0., vmax=vmax, cmap='viridis')
        ax.set_title(f'{stats.name}\nsum {stats.pixel_variance.sum():.1f}', fontsize='small')
        ax.axis('off')
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label='pixel variance ([0, 1] scale)')
    fig.suptitle(title or 'per-pixel variance', fontsize='medium')
    fig.savefig(path, dpi=110, bbox_inches='tight')
    return path


def plot_graying(rows: Sequence[dict], path: str, title: Optional[str] = None) -> str:
    """Bits/dim in colour against grayscale, per model and set (bars).

    Args:
      rows: `tfp_ood.analysis.graying_rows` output.
      path: PNG file to write.
    """
    if not rows:
        raise InputError('plot_graying: no rows given.')
    labels = [f'{r["model"]}\n{r["set"]}' for r in rows]
    x = np.arange(len(rows))
    fig = Figure(figsize=(max(6., 1.3 * len(rows)), 4.5))
    ax = fig.subplots()
    ax.bar(x - 0.2, [r['bpd_colour'] for r in rows], 0.4, label='colour')
    ax.bar(x + 0.2, [r['bpd_gray'] for r in rows], 0.4, label='grayscale')
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize='x-small', rotation=30, ha='right')
    ax.set_ylabel('bits/dim (lower = more likely)')
    ax.set_title(title or 'graying raises likelihood')
    ax.grid(axis='y', alpha=0.3)
    ax.legend(fontsize='small')
    return _save(fig, path)


def plot_second_order(results: Sequence[dict], path: str, title: Optional[str] = None) -> str:
    """Predicted against measured `E_q[log p] - E_p*[log p]` per model and pair.

    Args:
      results: dicts with `'label'`, `'measured'` and the predictions
        `'predicted_paper_alpha'`, `'predicted'` and `'predicted_full'` (nats
        per image; predictions that are not finite are left out). The value
        axis is symmetric-log: the predictions can differ by orders of
        magnitude.
      path: PNG file to write.
    """
    if not results:
        raise InputError('plot_second_order: no results given.')
    x = np.arange(len(results))
    fig = Figure(figsize=(max(5., 2.4 * len(results)), 4.5))
    ax = fig.subplots()
    bars = (('predicted_paper_alpha', "second order, paper's alpha_c"),
            ('predicted', 'second order, exact diagonal curvature'),
            ('predicted_full', 'second order, full quadratic form'),
            ('measured', 'measured'))
    bars = [(k, label) for k, label in bars if all(np.isfinite(r.get(k, np.nan)) for r in results)]
    width = 0.8 / len(bars)
    for i, (key, label) in enumerate(bars):
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, [r[key] for r in results], width,
               label=label)
    ax.set_yscale('symlog', linthresh=100.)
    ax.axhline(0., color='k', lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([r['label'] for r in results], fontsize='small')
    ax.set_ylabel('E_q[log p(x)] - E_p*[log p(x)] (nats per image)')
    ax.set_title(title or 'CV-Glow: second-order prediction against measurement',
                 fontsize='medium')
    ax.grid(axis='y', alpha=0.3)
    ax.legend(fontsize='small')
    return _save(fig, path)


def plot_detection(scores: np.ndarray, validation_scores: np.ndarray, threshold: float,
                   path: str, name: str = 'your images',
                   title: Optional[str] = None) -> str:
    """A detector's scores of a set against its in-distribution validation
    scores, with the decision threshold drawn.

    Args:
      scores: the set's OOD scores (higher = more out-of-distribution).
      validation_scores: the held-out in-distribution scores the threshold was
        set on.
      threshold: images scoring above it are flagged.
      path: PNG file to write.
    """
    scores, validation = (np.asarray(v, np.float64) for v in (scores, validation_scores))
    finite = [v[np.isfinite(v)] for v in (scores, validation)]
    low, high = _histogram_range(finite, (0.005, 0.995))
    low, high = min(low, threshold), max(high, threshold)
    bins = np.linspace(low, high, 60)
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    flagged = int(np.sum(~(scores <= threshold)))
    for values, label in ((finite[1], f'in-distribution validation ({len(validation)})'),
                          (finite[0], f'{name} ({len(scores)}, {flagged} flagged)')):
        # Scores beyond the axis are drawn in its end bins, and said so.
        below, above = beyond_range(values, low, high)
        clipped = ', '.join(f'{n} {side} the axis' for n, side in
                            ((below, 'below'), (above, 'above')) if n)
        ax.hist(np.clip(values, low, high), bins=bins, density=True, alpha=0.5,
                label=label + (f'; {clipped}, in its end bin' if clipped else ''))
    ax.axvline(threshold, color='k', linestyle='--', label=f'threshold {threshold:.3g}')
    ax.set_xlabel('OOD score (higher = more out-of-distribution)')
    ax.set_ylabel('density')
    ax.set_title(title or 'OOD scores against the in-distribution validation set')
    ax.legend(fontsize='small')
    return _save(fig, path)


def beyond_range(values: np.ndarray, low: float, high: float) -> Tuple[int, int]:
    """How many of `values` lie below `low` and above `high` (a histogram's axis)."""
    values = np.asarray(values, np.float64)
    return int(np.sum(values < low)), int(np.sum(values > high))


def _wrapped(name: str, width: int = 20, lines: int = 3) -> str:
    """`name` in lines of at most `width` characters, at most `lines` of them
    (a longer name loses its middle, its start and end kept)."""
    most = width * lines
    if len(name) > most:
        name = name[:most // 2 - 1] + '…' + name[-(most - most // 2):]
    return '\n'.join(name[i:i + width] for i in range(0, len(name), width))


def plot_contact_sheet(images: np.ndarray, scores: np.ndarray, path: str, per_row: int = 8,
                       title: Optional[str] = None,
                       names: Optional[Sequence[str]] = None) -> str:
    """The `per_row` most and least out-of-distribution images, with their scores.

    Args:
      images: uint8 `[N, H, W, C]` (an array, or images decoded where indexed,
        as a folder's `tfp_ood.inputs.FolderImages`: only those shown are read).
      scores: `[N]` OOD scores (non-finite ones rank as the most OOD).
      path: PNG file to write.
      names: the images' file names, shown under each (long ones with their
        middle elided); without them, the images' indices.
    """
    images = images if hasattr(images, 'shape') else np.asarray(images)
    scores = np.asarray(scores, np.float64)
    if len(images) != len(scores) or not len(images):
        raise InputError('plot_contact_sheet: needs as many scores as images, and images.')
    if names is not None and len(names) != len(images):
        raise InputError(f'plot_contact_sheet: {len(names)} names for {len(images)} images.')
    ranked = np.argsort(np.where(np.isfinite(scores), scores, np.inf))
    n = min(per_row, len(images))
    rows = [('most out-of-distribution', ranked[::-1][:n]),
            ('least out-of-distribution', ranked[:n])]
    fig = Figure(figsize=(1.3 * n, 3.4 if names is None else 4.2))
    axes = fig.subplots(2, n, squeeze=False)
    for r, (label, indices) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.axis('off')
            if c >= len(indices):
                continue
            i = indices[c]
            image = images[i][..., 0] if images.shape[-1] == 1 else images[i]
            ax.imshow(image, cmap='gray' if images.shape[-1] == 1 else None, vmin=0, vmax=255)
            caption = _wrapped(os.path.basename(names[i])) if names is not None else f'#{i}'
            ax.set_title(f'{caption}\n{scores[i]:.3g}', fontsize=6 if names is not None else 7)
        axes[r][0].text(-0.1, 0.5, label, transform=axes[r][0].transAxes, rotation=90,
                        ha='right', va='center', fontsize=8)
    fig.suptitle(title or f'most and least out-of-distribution images '
                          f'({"file" if names is not None else "index"}, score)', fontsize=9)
    return _save(fig, path)
