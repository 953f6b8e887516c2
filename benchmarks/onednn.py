r"""oneDNN off against on: what `TF_ENABLE_ONEDNN_OPTS=1` (tfp_ood's default) buys.

TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` once, when it is imported, and turns
oneDNN on by itself only on CPUs with AVX-512; on AVX2-only CPUs it stays
off unless asked. tfp_ood asks (`tfp_ood._startup`, the user's own setting
kept). Because the setting is read at import, each measurement runs in a
child process with the setting fixed; children with it off and on alternate
for `--rounds` rounds (so background load hits both alike), and each figure
is the median over the rounds, with its spread. Measured, in images/s:

- `savedmodel_score`: the shipped `saved_models/glow_cifar10` (or the flow
  exported at `--model-dir`) loaded with plain `tf.saved_model.load`, its
  `serving_default` on 1,000 embedded CIFAR-10 test images (batches of
  250), what a user without tfp_ood runs;
- `python_score`: the same model restored as a Python `FlowModel`
  (`tfp_ood.export.restore`), its traced `score_batch` on the same images;
- `python_train`: `fit`'s traced training step of a fresh Glow
  (`--train-config`, default `cpu`) at batch 64.

    python benchmarks/onednn.py --json benchmarks/results/onednn.json   # ~5 min
    python benchmarks/onednn.py --rounds 1 --images 64 --json /tmp/o.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_GLOW = os.path.join(REPO, 'saved_models', 'glow_cifar10')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ('0', '1')  # TF_ENABLE_ONEDNN_OPTS: off, on.
TASKS = ('savedmodel_score', 'python_score', 'python_train')


def _timed(fn, batches: int, min_seconds: float) -> float:
    """Seconds per call of `fn` after a tracing call and a warm-up call."""
    fn()
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if calls >= batches and elapsed >= min_seconds:
            return elapsed / calls


def child(num_images: int, train_batch: int, train_config: str, min_seconds: float,
          model_dir: str = SHIPPED_GLOW) -> dict:
    """images/s of each task, in this process (oneDNN as the environment says)."""
    import tensorflow as tf

    from tfp_ood import data, export

    images = data.images_array(data.load('cifar10', 'test', source='samples'),
                               limit=num_images)
    batch = min(250, len(images))
    chunks = [tf.constant(images[i:i + batch]) for i in range(0, len(images), batch)]
    out = {}
    loaded = tf.saved_model.load(model_dir)
    serve = loaded.signatures['serving_default']
    seconds = _timed(lambda: [serve(images=c)['log_prob'].numpy() for c in chunks], 1,
                     min_seconds)
    out['savedmodel_score'] = len(images) / seconds
    model = export.restore(model_dir)
    seconds = _timed(lambda: [model.score_batch(c)['log_prob'].numpy() for c in chunks], 1,
                     min_seconds)
    out['python_score'] = len(images) / seconds

    import run as bench  # benchmarks/run.py: `fit`'s step on a fresh model.
    from tfp_ood import models
    runner = bench.ours(models.named_model('glow', train_config, (32, 32, 3)), train_batch)
    out['python_train'] = train_batch / _timed(runner.train_step, 3, min_seconds)
    # What TensorFlow itself says it runs with (the setting read at its import).
    from tensorflow.python.util import _pywrap_util_port
    out['onednn_enabled'] = bool(_pywrap_util_port.IsMklEnabled())
    out['num_images'], out['train_batch'] = len(images), train_batch
    return out


def _run_child(setting: str, args) -> dict:
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting, TF_CPP_MIN_LOG_LEVEL='2')
    run = subprocess.run([sys.executable, os.path.abspath(__file__), '--child',
                          '--images', str(args.images), '--train-batch', str(args.train_batch),
                          '--train-config', args.train_config,
                          '--min-seconds', str(args.min_seconds), '--model-dir', args.model_dir],
                         env=env, capture_output=True, text=True, timeout=1800)
    if run.returncode != 0:
        raise RuntimeError(f'child with TF_ENABLE_ONEDNN_OPTS={setting} failed:\n'
                           f'{run.stderr[-3000:]}')
    return json.loads(run.stdout.strip().splitlines()[-1])


def measure(args, log=print) -> dict:
    """Children off and on alternately for `args.rounds` rounds; medians and spreads."""
    import machine  # benchmarks/machine.py
    rounds = {s: [] for s in SETTINGS}
    for r in range(args.rounds):
        for setting in SETTINGS:
            row = _run_child(setting, args)
            if row['onednn_enabled'] != (setting == '1'):
                raise RuntimeError(f'TF_ENABLE_ONEDNN_OPTS={setting} left oneDNN '
                                   f'{"on" if row["onednn_enabled"] else "off"}')
            rounds[setting].append(row)
            log(f'round {r + 1}/{args.rounds}, oneDNN {"on" if setting == "1" else "off"}: '
                + ', '.join(f'{t} {row[t]:.1f}' for t in TASKS) + ' images/s')
    result = {'machine': machine.machine(), 'rounds': args.rounds,
              'model_dir': os.path.relpath(os.path.abspath(args.model_dir), REPO),
              'num_images': args.images, 'train_batch': args.train_batch,
              'train_config': args.train_config, 'tasks': {}}
    result['machine'].pop('TF_ENABLE_ONEDNN_OPTS')  # Set per child.
    for task in TASKS:
        values = {s: [row[task] for row in rounds[s]] for s in SETTINGS}
        speedups = [on / off for off, on in zip(values['0'], values['1'])]
        result['tasks'][task] = {
            'off_images_per_s': statistics.median(values['0']),
            'on_images_per_s': statistics.median(values['1']),
            'on_vs_off': statistics.median(speedups),
            'on_vs_off_min': min(speedups), 'on_vs_off_max': max(speedups)}
        log(f'{task}: off {statistics.median(values["0"]):.1f}, on '
            f'{statistics.median(values["1"]):.1f} images/s = '
            f'{result["tasks"][task]["on_vs_off"]:.2f}x (rounds {min(speedups):.2f}-'
            f'{max(speedups):.2f}x)')
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--rounds', type=int, default=3, help='off/on pairs of children')
    p.add_argument('--images', type=int, default=1000, help='embedded CIFAR-10 images scored')
    p.add_argument('--train-batch', type=int, default=64)
    p.add_argument('--train-config', default='cpu',
                   help="the Glow config whose training step is timed (default 'cpu')")
    p.add_argument('--model-dir', default=SHIPPED_GLOW,
                   help='the exported 32x32x3 flow scored (default: the shipped glow_cifar10)')
    p.add_argument('--min-seconds', type=float, default=5.,
                   help='each timing lasts at least this long')
    p.add_argument('--json', default=None, help='write the results here')
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.images < 1 or args.train_batch < 1:
        p.error('--rounds, --images and --train-batch must be positive')
    if args.child:
        print(json.dumps(child(args.images, args.train_batch, args.train_config, args.min_seconds,
                               args.model_dir)))
        return {}
    result = measure(args)
    if args.json:
        import run as bench
        bench.write_json(args.json, result)
        print(f'wrote {args.json}')
    return result


if __name__ == '__main__':
    main()
