r"""Scoring a folder of images as a stream: memory and speed against the in-memory path.

`tfp-ood score --images-dir` reads a folder through `tfp_ood.inputs.FolderStream`:
each image decoded (in parallel) as it is scored, so memory should not grow with
the number of images. Measured here, with a tiny Glow at the images' shape
(the pipeline is what is measured, not the model):

- `peak_rss_mib`: the peak resident memory of a child process that scores a
  folder of N PNG images from the stream, for N = `--sizes` (default 2,000 and
  20,000), and of one that reads the folder into memory first (`read_folder`)
  and scores the array, the path every verb took before;
- `images_per_s`: scoring throughput from the stream against the in-memory
  array of the same images, in one process, back to back for `--rounds`
  rounds (medians and spread; `stream_over_memory` is the median of the
  rounds' ratios), so background load hits both alike: under the tiny
  Glow (where decoding is the bottleneck) on the largest folder, and under the
  CPU-sized Glow (`--throughput-config`) on the smallest;
- `detect_peak_rss_mib`: the peak resident memory of a child process that
  fits a density of states (the tiny Glow's terms and the PNG length) on 500
  of a folder's images and scores all N of them (`--sizes`) read as
  `tfp-ood detect --images-dir` reads them (decoded a chunk at a time,
  `FolderImages`), and of one that reads the folder into memory first;
- `train_peak_rss_mib`: the peak resident memory of a child process that
  trains the tiny Glow `--train-steps` steps (batch 64) on a folder of N
  images (`--train-sizes`, default 5,000 and 50,000) decoded batch by batch
  (`FolderImages`, what `tfp-ood train --images-dir` holds), and of one that
  trains on the folder read into memory;
- `npz_peak_rss_mib`: the peak resident memory of a child process that scores
  an `.npz` file of N images (`--sizes`) read as `tfp-ood score --npz` reads
  it (decompressed a chunk at a time into a spool on disk, read back by
  batch: `tfp_ood.spooled`), and of one that loads the array whole.

    python benchmarks/streaming.py --json benchmarks/results/streaming.json   # ~18 min
    python benchmarks/streaming.py --throughput-only --rounds 5 \
        --json benchmarks/results/streaming.json     # the throughput rows again, ~6 min
    python benchmarks/streaming.py --sizes 40 80 --train-sizes 80 160 --train-steps 2 \
        --rounds 1 --json /tmp/s.json                                          # tests
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
SHAPE = (64, 64, 3)


def _peak_rss_mib() -> float:
    """This process's peak resident memory (MiB) since it started its program:
    `VmHWM`, the high-water mark of its own address space. (`getrusage`'s
    `ru_maxrss` is no use here: Linux carries it across `fork` and `exec`, so a
    child reports at least the RSS its parent had when it was started.)"""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024.
    raise RuntimeError('no VmHWM in /proc/self/status (Linux only)')


def _write_folder(folder: str, n: int) -> str:
    """`n` PNG images of `SHAPE` (smooth noise: PNG-compressible, as photos are)."""
    import numpy as np
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for i in range(n):
        tile = np.clip(base.astype(int) + rng.integers(-20, 21, base.shape), 0, 255)
        image = np.kron(tile, np.ones((8, 8, 1))).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(folder, f'{i:06d}.png'))
    return folder


def _write_npz(path: str, n: int) -> str:
    """`n` images of `SHAPE` (the folder's kind) in a compressed .npz file."""
    import numpy as np
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (8, 8, 3), dtype=np.int64)
    tiles = np.clip(base + rng.integers(-20, 21, (n,) + base.shape), 0, 255).astype(np.uint8)
    np.savez_compressed(path, images=tiles.repeat(8, axis=1).repeat(8, axis=2))
    return path


def _model(config: str = 'tiny'):
    from tfp_ood import models
    import numpy as np
    model = models.named_model('glow', config, SHAPE)
    model.initialize(np.random.default_rng(1).integers(0, 256, (16,) + SHAPE, np.uint8))
    return model


def _child(folder: str, mode: str) -> None:
    """Scores `folder` (`mode`: 'stream' or 'memory'); prints the peak RSS in MiB."""
    from tfp_ood import inputs
    from tfp_ood.evaluate import score
    model = _model()
    if mode == 'stream':
        data = inputs.FolderStream(folder, SHAPE).dataset
    else:
        data = inputs.read_folder(folder, SHAPE).images
    result = score(model, data, progress=False)
    peak = _peak_rss_mib()
    print(json.dumps({'num_images': result.num_images, 'peak_rss_mib': peak}))


def _train_child(folder: str, mode: str, steps: str) -> None:
    """Trains on `folder` (`mode`: 'stream' or 'memory'); prints the peak RSS in MiB."""
    from tfp_ood import inputs, models, train
    stream = inputs.FolderStream(folder, SHAPE)
    images = stream.lazy_image_set().images if mode == 'stream' else stream.image_set().images
    model = models.named_model('glow', 'tiny', SHAPE)
    config = train.TrainConfig(num_steps=int(steps), batch_size=64, eval_every=10 ** 6,
                               checkpoint_every=10 ** 6, log_every=10 ** 6)
    with tempfile.TemporaryDirectory() as workdir:
        train.fit(model, images, config, workdir, progress=False)
    peak = _peak_rss_mib()
    print(json.dumps({'num_images': len(images), 'peak_rss_mib': peak}))


def _npz_child(path: str, mode: str, _) -> None:
    """Scores the .npz file at `path` (`mode`: 'stream', spooled, or 'memory');
    prints the peak RSS in MiB."""
    from tfp_ood import data, inputs
    from tfp_ood.evaluate import score
    model = _model()
    images = (inputs.read_npz_set(path, SHAPE).images if mode == 'stream' else
              data.read_npz(path)[0])
    result = score(model, images, progress=False)
    peak = _peak_rss_mib()
    print(json.dumps({'num_images': result.num_images, 'peak_rss_mib': peak}))


def _detect_child(folder: str, mode: str, _) -> None:
    """Fits and runs a detector on `folder` (`mode`: 'stream' or 'memory');
    prints the peak RSS in MiB."""
    from tfp_ood import detectors, inputs
    stream = inputs.FolderStream(folder, SHAPE)
    images = stream.lazy_image_set().images if mode == 'stream' else stream.image_set().images
    detector = detectors.DensityOfStates(_model(), ('log_pz', 'log_det', 'png9_bits'),
                                         estimator='ledoit_wolf')
    fit = range(min(500, len(images)))
    detector.fit(images[:len(fit)] if mode == 'memory' else images.take(fit))
    scores = detector.score(images)
    peak = _peak_rss_mib()
    print(json.dumps({'num_images': len(scores.ood_score), 'peak_rss_mib': peak}))


def _peak(folder: str, mode: str, *extra: str) -> dict:
    run = subprocess.run([sys.executable, __file__, '--child', folder, mode, *extra],
                         capture_output=True, text=True, timeout=3600,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    if run.returncode:
        raise RuntimeError(run.stderr[-2000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def _peaks(root: str, sizes, extra) -> tuple:
    """Per size, the stream's and the in-memory path's peak RSS (scoring; with
    `extra = ('detect',)` fitting and running a detector; with `extra = (steps,)`
    training; with `extra = ('npz',)` scoring an .npz file); and how much each
    grew from the smallest size."""
    rows = []
    for n in sizes:
        folder = os.path.join(root, str(n))
        if extra == ('npz',):
            folder = _write_npz(folder + '.npz', n)
        elif not os.path.isdir(folder):
            _write_folder(folder, n)
        row = {'num_images': n}
        if extra and extra[0] not in ('detect', 'npz'):
            row['steps'] = int(extra[0])
        for mode in ('stream', 'memory'):
            row[f'{mode}_peak_rss_mib'] = _peak(folder, mode, *extra)['peak_rss_mib']
        rows.append(row)
        print(json.dumps(row), flush=True)
    growth = [rows[-1][f'{mode}_peak_rss_mib'] / rows[0][f'{mode}_peak_rss_mib']
              for mode in ('stream', 'memory')]
    return rows, growth[0], growth[1]


def _throughput(folder: str, rounds: int, config: str = 'tiny') -> dict:
    """Images/s of the stream and of the in-memory array, alternating, under the
    Glow of size `config`."""
    from tfp_ood import inputs
    from tfp_ood.evaluate import score
    model = _model(config)
    array = inputs.read_folder(folder, SHAPE).images
    score(model, array[:256], progress=False)  # Traced once, for both.
    rates = {'stream': [], 'memory': []}
    for i in range(rounds):
        # Back to back, the first of the pair alternating: a machine whose speed
        # drifts or jumps between rounds moves both runs of a round alike.
        for mode in (('stream', 'memory') if i % 2 == 0 else ('memory', 'stream')):
            data = inputs.FolderStream(folder, SHAPE).dataset if mode == 'stream' else array
            start = time.perf_counter()
            score(model, data, progress=False)
            rates[mode].append(len(array) / (time.perf_counter() - start))
    out = {f'{mode}_images_per_s': statistics.median(v) for mode, v in rates.items()}
    out.update({f'{mode}_spread': [min(v), max(v)] for mode, v in rates.items()})
    # The ratio of each round's pair, then their median (robust to a round
    # that fell in a slow spell, which a ratio of the two medians is not).
    ratios = [s / m for s, m in zip(rates['stream'], rates['memory'])]
    out['stream_over_memory'] = statistics.median(ratios)
    out['stream_over_memory_per_round'] = ratios
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sizes', type=int, nargs='+', default=[2000, 20000])
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--train-sizes', type=int, nargs='+', default=[5000, 50000])
    p.add_argument('--train-steps', type=int, default=200)
    p.add_argument('--throughput-config', default='cpu',
                   help='the Glow size of the second throughput row (default: cpu)')
    p.add_argument('--json', default=None, help='write the results here')
    p.add_argument('--throughput-only', action='store_true',
                   help='measure only the two throughput rows, replacing those of --json')
    p.add_argument('--child', nargs='+', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child = (_child if len(args.child) == 2 else
                 {'detect': _detect_child, 'npz': _npz_child}.get(args.child[2], _train_child))
        return child(*args.child)
    from machine import machine, write_json
    results = {'machine': machine(), 'image_shape': list(SHAPE)}
    if args.throughput_only:
        with open(args.json) as f:
            results = dict(json.load(f), throughput_machine=results['machine'])
    with tempfile.TemporaryDirectory() as root:
        if not args.throughput_only:
            results['memory'], results['stream_rss_growth'], results['memory_rss_growth'] = (
                _peaks(root, args.sizes, ()))
        for n in (args.sizes[0], args.sizes[-1]):
            if not os.path.isdir(os.path.join(root, str(n))):
                _write_folder(os.path.join(root, str(n)), n)
        results['throughput'] = dict(_throughput(os.path.join(root, str(args.sizes[-1])),
                                                 args.rounds), num_images=args.sizes[-1])
        # Under the CPU-sized Glow a user trains, on the smallest folder.
        results['throughput_cpu_glow'] = dict(
            _throughput(os.path.join(root, str(args.sizes[0])), args.rounds,
                        args.throughput_config), num_images=args.sizes[0],
            config=args.throughput_config)
        if not args.throughput_only:
            (results['detect'], results['detect_stream_rss_growth'],
             results['detect_memory_rss_growth']) = _peaks(root, args.sizes, ('detect',))
            (results['npz'], results['npz_stream_rss_growth'],
             results['npz_memory_rss_growth']) = _peaks(root, args.sizes, ('npz',))
            (results['training'], results['train_stream_rss_growth'],
             results['train_memory_rss_growth']) = _peaks(root, args.train_sizes,
                                                          (str(args.train_steps),))
    print(json.dumps({k: v for k, v in results.items() if k != 'machine'}, indent=2))
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == '__main__':
    main()
