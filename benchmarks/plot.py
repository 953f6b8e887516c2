"""A figure and tables of a `benchmarks/run.py` JSON: ours against TFP, batch size, image size.

    python benchmarks/plot.py benchmarks/results/full.json benchmarks/results/full.png \
        --markdown benchmarks/results/full.md

Three panels: images/s of our Glow and TFP's `tfb.Glow` at the compared
config (scoring and training); images/s of every family and config against
batch size (rows that passed the memory limit are marked); images/s against
image size. Works on a partial JSON (`complete` false): what was measured is
drawn.
"""

import argparse
import json
from typing import Dict, Optional, Sequence

import matplotlib

matplotlib.use('Agg')  # Files only; no display needed.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _comparison(ax, result: Dict) -> None:
    comparison = result['measurements'].get('tfp_comparison', {})
    labels, ours, tfp = [], [], []
    for name, c in comparison.items():
        for phase in ('score', 'train'):
            if f'ours_{phase}_images_per_s' in c:
                labels.append(f'{name}\n{phase}')
                ours.append(c[f'ours_{phase}_images_per_s'])
                tfp.append(c[f'tfp_{phase}_images_per_s'])
    x = np.arange(len(labels))
    ax.bar(x - 0.2, ours, 0.4, label='tfp_ood')
    ax.bar(x + 0.2, tfp, 0.4, label='TFP tfb.Glow')
    for i, (a, b) in enumerate(zip(ours, tfp)):
        ax.text(i, max(a, b), f'{a / b:.2f}x', ha='center', va='bottom')
    ax.set_xticks(x)
    ax.set_xticklabels(labels)
    ax.set_ylabel('images/s')
    ax.set_ylim(0, 1.25 * max(ours + tfp, default=1.))
    ax.set_title(f'{result["compared_config"]} config, same architecture')
    ax.legend(loc='upper left')


def _not_measured(ax, title: str) -> None:
    ax.text(0.5, 0.5, 'not measured (yet)', ha='center', va='center', transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)


def _batch_scaling(ax, rows: Sequence[Dict]) -> None:
    if not rows:
        return _not_measured(ax, 'every family')
    series = {}
    for row in rows:
        series.setdefault((row['family'], row['config']), []).append(row)
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for i, ((family, config), points) in enumerate(series.items()):
        colour = colours[i % len(colours)]
        measured = [p for p in points if 'score_images_per_s' in p]
        batches = [p['batch_size'] for p in measured]
        ax.plot(batches, [p['score_images_per_s'] for p in measured], 'o-', color=colour,
                label=f'{family} {config}')
        ax.plot(batches, [p['train_images_per_s'] for p in measured], 's--', color=colour)
        for p in points:
            if 'exceeded_memory_limit_mib' in p:  # An x where the training point would be.
                y = measured[-1]['train_images_per_s'] if measured else 1.
                ax.plot([p['batch_size']], [y], 'x', color=colour, markersize=10)
                ax.annotate(f'> {p["exceeded_memory_limit_mib"] / 1024:.0f} GiB',
                            (p['batch_size'], y), textcoords='offset points', xytext=(-8, 6),
                            ha='right', color=colour, fontsize=8)
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    batches = sorted({row['batch_size'] for row in rows})
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches])
    ax.set_xlabel('batch size')
    ax.set_ylabel('images/s (solid: scoring, dashed: training)')
    ax.set_title('every family (x: needed more memory than the limit)')
    ax.legend(fontsize=8, ncol=5, loc='upper center', bbox_to_anchor=(0.5, -0.12))


def _size_scaling(ax, rows: Sequence[Dict]) -> None:
    if not rows:
        return _not_measured(ax, 'Glow, image size')
    sizes = [r['image_size'] for r in rows]
    ax.plot(sizes, [r['score_images_per_s'] for r in rows], 'o-', label='scoring')
    ax.plot(sizes, [r['train_images_per_s'] for r in rows], 's--', label='training')
    for r in rows:
        ax.annotate(f'{r["forward_gflop_per_image"]:.2f} GFLOP',
                    (r['image_size'], r['score_images_per_s']), fontsize=8)
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xticks(sizes)
    ax.set_xticklabels([f'{s}x{s}' for s in sizes])
    ax.set_xlabel('image size')
    ax.set_ylabel('images/s')
    config = rows[0]['config']
    ax.set_title(f'Glow {config["num_levels"]} x {config["num_steps_per_level"]} x '
                 f'{config["hidden_channels"]}, batch {rows[0]["batch_size"]}')
    ax.legend()


def plot(result: Dict, path: str) -> str:
    """Draws the figure of one benchmark result (a run.py JSON) to `path`."""
    measurements = result['measurements']
    fig, axes = plt.subplots(1, 3, figsize=(20, 7), gridspec_kw={'width_ratios': [1, 1.6, 1]})
    _comparison(axes[0], result)
    _batch_scaling(axes[1], measurements.get('families', []))
    _size_scaling(axes[2], measurements.get('image_size_scaling', []))
    machine = result.get('machine', {})
    fig.suptitle(f'tfp_ood benchmarks ({result["mode"]} mode'
                 f'{"" if result.get("complete") else ", incomplete"}; '
                 f'{machine.get("cpus", "?")} CPUs, TF {machine.get("tensorflow", "?")}; '
                 f'matmul peak {result.get("matmul_peak_gflops", float("nan")):.0f} GFLOP/s)')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def markdown(result: Dict) -> str:
    """The family rows and the image-size rows as Markdown tables (the README's)."""
    lines = ['| family | config | parameters | batch | scoring images/s | training images/s '
             '| peak RSS scoring / training (MiB) |', '|---|---|---:|---:|---:|---:|---:|']
    for r in result['measurements'].get('families', []):
        if 'exceeded_memory_limit_mib' in r:
            lines.append(f'| {r["family"]} | {r["config"]} | | {r["batch_size"]} | | | more '
                         f'than {r["exceeded_memory_limit_mib"]:,.0f} (killed) |')
            continue
        lines.append(f'| {r["family"]} | {r["config"]} | {r["params"]:,} | {r["batch_size"]} | '
                     f'{r["score_images_per_s"]:.1f} | {r["train_images_per_s"]:.1f} | '
                     f'{r["score_peak_rss_mib"]:,.0f} / {r["train_peak_rss_mib"]:,.0f} |')
    sizes = result['measurements'].get('image_size_scaling', [])
    if sizes:
        lines += ['', '| image size | GFLOP per image (forward) | scoring images/s '
                  '| training images/s | scoring GFLOP/s |', '|---|---:|---:|---:|---:|']
        for r in sizes:
            gflop = r['forward_gflop_per_image']
            lines.append(f'| {r["image_size"]}x{r["image_size"]} | {gflop:.3f} | '
                         f'{r["score_images_per_s"]:.1f} | {r["train_images_per_s"]:.1f} | '
                         f'{gflop * r["score_images_per_s"]:.0f} |')
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('json', help='a benchmarks/run.py --json output')
    parser.add_argument('png', help='the figure to write')
    parser.add_argument('--markdown', default=None, help='also write the tables here')
    args = parser.parse_args(argv)
    with open(args.json) as f:
        result = json.load(f)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(markdown(result))
    return plot(result, args.png)


if __name__ == '__main__':
    main()
