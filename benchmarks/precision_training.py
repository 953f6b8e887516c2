r"""The same Glow trained in float32 and in bfloat16 (the coupling networks'
precision, `--precision`): held-out bits/dim over training, and at the end of
training for several seeds of each, so the difference between the precisions
can be set against the difference between seeds.

Train the runs (the `small` Glow of the shipped ensemble, 1,000 steps,
held-out sets scored every 200 steps; about 7 minutes each on 2 CPU cores):

    for p in float32 bfloat16; do for seed in 1 2 3 4 5; do
      tfp-ood train --model glow --config small --seed $seed --dataset cifar10 --split train \
        --eval 'cifar10:test[:2000]' --eval 'svhn_cropped:test[:2000]' --precision $p \
        --eval-every 200 --steps 1000 --workdir runs/precision/${p}_seed$seed --data-dir DATA
    done; done
    python benchmarks/precision_training.py benchmarks/results/precision_training.png \
        --float32 runs/precision/float32_seed* --bfloat16 runs/precision/bfloat16_seed*

(The shipped ensemble's members, `saved_models/ensemble_cifar10/seed<k>_history.jsonl`,
are the float32 runs at step 1,000: evaluating more often does not change
training, so they can stand in for the float32 seeds; the first run of each
list is drawn over training.) Prints the held-out bits/dim of every run at its
last step, and per precision the mean, the lowest and the highest.
"""

import argparse
import json
import os
import sys
from typing import Dict, List, Sequence

import numpy as np
from matplotlib.figure import Figure

from tfp_ood.train import RunDirectory

PRECISIONS = ('float32', 'bfloat16')


def history_of(path: str) -> List[dict]:
    """A run directory's evaluations, or a `history.jsonl` file's."""
    history = (RunDirectory(path).history() if os.path.isdir(path)
               else [json.loads(line) for line in open(path) if line.strip()])
    history = [row for row in history if any(k.endswith('/bits_per_dim') for k in row)]
    if not history:
        raise ValueError(f'{path}: no held-out bits/dim in its history.')
    return history


def final_bits_per_dim(runs: Dict[str, Sequence[str]]) -> Dict[str, Dict[str, np.ndarray]]:
    """`{precision: {held-out set: [bits/dim of each run at its last step]}}`."""
    out = {}
    for precision, paths in runs.items():
        finals = [history_of(p)[-1] for p in paths]
        sets = sorted({k for row in finals for k in row if k.endswith('/bits_per_dim')})
        out[precision] = {s[:-len('/bits_per_dim')]: np.array([row[s] for row in finals])
                          for s in sets}
    return out


def plot(runs: Dict[str, Sequence[str]], path: str) -> str:
    finals = final_bits_per_dim(runs)
    sets = sorted({s for f in finals.values() for s in f})
    fig = Figure(figsize=(6 + 2.6 * len(sets), 4.5))
    curves, *ends = fig.subplots(1, 1 + len(sets),
                                 gridspec_kw={'width_ratios': (3,) + (1.2,) * len(sets)})
    for i, precision in enumerate(PRECISIONS):
        history = history_of(runs[precision][0])
        for j, name in enumerate(sets):
            rows = [r for r in history if f'{name}/bits_per_dim' in r]
            curves.plot([r['step'] for r in rows], [r[f'{name}/bits_per_dim'] for r in rows],
                        marker='o', color=f'C{j}', linestyle=('-', '--')[i],
                        label=f'{name} ({precision}, {os.path.basename(runs[precision][0])})')
            values = finals[precision].get(name, np.array([]))
            ends[j].plot(np.full(len(values), i) + np.linspace(-0.12, 0.12, len(values)),
                         values, 'os'[i], color=f'C{j}', alpha=0.8,
                         markerfacecolor=('none', f'C{j}')[i])
    curves.set_xlabel('training step')
    curves.set_ylabel('held-out bits/dim')
    curves.set_title('over training (first run of each)')
    curves.grid(alpha=0.3)
    curves.legend(fontsize='x-small')
    for name, ax in zip(sets, ends):
        ax.set_xticks(range(len(PRECISIONS)), PRECISIONS)
        ax.set_xlim(-0.5, len(PRECISIONS) - 0.5)
        ax.set_title(f'{name}\nlast step, every run', fontsize='small')
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('output', help='PNG file to write')
    for precision in PRECISIONS:
        parser.add_argument(f'--{precision}', nargs='+', required=True, metavar='RUN',
                            help=f'run directories (or history.jsonl files) trained in {precision}')
    args = parser.parse_args(argv)
    runs = {p: getattr(args, p) for p in PRECISIONS}
    finals = final_bits_per_dim(runs)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    plot(runs, args.output)
    for precision in PRECISIONS:
        for path in runs[precision]:
            row = history_of(path)[-1]
            print(json.dumps({'precision': precision, 'run': path, **row}))
    for precision, sets in finals.items():
        for name, values in sets.items():
            print(f'{precision:8s} {name}: mean {values.mean():.3f}, lowest {values.min():.3f}, '
                  f'highest {values.max():.3f} ({len(values)} runs)')
    return finals


if __name__ == '__main__':
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        print(f'precision_training.py: error: {e}', file=sys.stderr)
        sys.exit(2)
