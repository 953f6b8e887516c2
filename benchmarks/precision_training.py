r"""Held-out bits/dim over training of the same Glow trained in float32 and in
bfloat16 (the coupling networks' precision, `--precision`), on one figure.

Train the two runs (the `small` Glow of the shipped ensemble, seed 1, 1,000
steps, held-out sets scored every 200 steps; about 7 minutes each on 2 CPU
cores), then plot:

    for p in float32 bfloat16; do
      tfp-ood train --model glow --config small --seed 1 --dataset cifar10 --split train \
        --eval 'cifar10:test[:2000]' --eval 'svhn_cropped:test[:2000]' --precision $p \
        --eval-every 200 --steps 1000 --workdir runs/precision/$p --data-dir DATA
    done
    python benchmarks/precision_training.py runs/precision/float32 runs/precision/bfloat16 \
        benchmarks/results/precision_training.png

It also prints the held-out bits/dim of both runs at every evaluation.
"""

import argparse
import json
import os
import sys

from tfp_ood import plotting
from tfp_ood.train import RunDirectory


def merged_history(runs):
    """One history whose keys are `<set> (<precision>)/bits_per_dim`."""
    rows = {}
    for label, path in runs.items():
        history = RunDirectory(path).history()
        if not history:
            raise ValueError(f'{path}: no evaluations in history.jsonl.')
        for row in history:
            merged = rows.setdefault(row['step'], {'step': row['step']})
            for key, value in row.items():
                if key.endswith('/bits_per_dim'):
                    name = key[:-len('/bits_per_dim')]
                    merged[f'{name} ({label})/bits_per_dim'] = value
    return [rows[s] for s in sorted(rows)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('float32_run', help='run directory trained in float32')
    parser.add_argument('bfloat16_run', help='run directory trained with --precision bfloat16')
    parser.add_argument('output', help='PNG file to write')
    args = parser.parse_args(argv)
    history = merged_history({'float32': args.float32_run, 'bfloat16': args.bfloat16_run})
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    plotting.plot_training_curves(history, args.output,
                                  title='held-out bits/dim, float32 and bfloat16 training')
    for row in history:
        print(json.dumps(row))
    return args.output


if __name__ == '__main__':
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        print(f'precision_training.py: error: {e}', file=sys.stderr)
        sys.exit(2)
