r"""Hostile-user probes of the CLI, training, export and the Python API.

Not a test module (pytest does not collect it): a measurement, run by hand,
that re-runs the kinds of probes that found the failures of the robustness
issue and counts the outcomes:

- `clear error`: exit code 2 (or, in Python, a `ValueError`, `TypeError`,
  `FileNotFoundError` or `FileExistsError`) with a message and no traceback;
- `correct`: it worked, and what it wrote was checked;
- `silent wrong`: exit 0 (or no exception) where an error was due, or an
  output that fails its check;
- `data loss`: a file that must survive (a run, an unrelated file) is gone or
  changed;
- `traceback`: a traceback, or an exception of the wrong kind (e.g.
  `AttributeError`, a raw TensorFlow error) for bad input;
- `partial output`: an interrupted run left some of its outputs, or
  temporary files, behind.

    python -m tests.probes --out probes.json      # from the repository root
    python -m tests.probes --only detectors --out probes_detectors.json

Each CLI probe is a fresh process (about 6 s of TensorFlow import each); the
whole run takes 10-15 minutes on 2 CPU cores.
"""

import argparse
import collections
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from tests.cli_test import _write_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, '-m', 'tfp_ood.cli']
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
ENV.pop('TFP_OOD_DATA_DIR', None)


class Probes:
    """Runs probes and records `(kind, name, outcome, detail)`."""

    def __init__(self, root):
        self.root = root
        self.results = []

    def record(self, kind, name, outcome, detail=''):
        self.results.append(dict(kind=kind, name=name, outcome=outcome, detail=detail[-400:]))
        print(f'{outcome:13s} {kind:8s} {name}  {detail[-160:]!r}', flush=True)

    def cli(self, kind, name, args, expect='error', check=None, keep=()):
        """A CLI call; `keep`: paths whose content must be unchanged afterwards."""
        before = {path: _digest(path) for path in keep}
        process = subprocess.run(CLI + [str(a) for a in args], cwd=REPO, env=ENV,
                                 capture_output=True, text=True, timeout=900)
        err = process.stderr.strip()
        lost = [path for path in keep if _digest(path) != before[path]]
        if lost:
            outcome = 'data loss'
        elif 'Traceback' in err:
            outcome = 'traceback'
        elif expect == 'error':
            one_line = err.splitlines()[-1] if err else ''
            outcome = ('clear error' if process.returncode == 2 and ': error: ' in one_line
                       else 'silent wrong')
        else:
            ok = process.returncode == 0 and (check is None or check(process))
            outcome = 'correct' if ok else 'silent wrong'
        self.record(kind, name, outcome, err.splitlines()[-1] if err else process.stdout[-200:])
        return process

    def api(self, kind, name, function, expect='error', check=None):
        import tensorflow as tf
        try:
            value = function()
        except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
            if isinstance(e, tf.errors.OpError):
                self.record(kind, name, 'traceback', f'{type(e).__name__}: {e}')
            else:
                outcome = 'clear error' if expect == 'error' and str(e) else 'silent wrong'
                self.record(kind, name, outcome, f'{type(e).__name__}: {e}')
            return None
        except Exception as e:  # The wrong kind of error for bad input.
            self.record(kind, name, 'traceback', f'{type(e).__name__}: {e}')
            return None
        if expect == 'error':
            self.record(kind, name, 'silent wrong', f'returned {type(value).__name__}')
        else:
            ok = check is None or check(value)
            self.record(kind, name, 'correct' if ok else 'silent wrong', repr(value)[:200])
        return value


def _digest(path):
    if not os.path.exists(path):
        return None
    if os.path.isfile(path):
        with open(path, 'rb') as f:
            return hashlib.sha256(f.read()).hexdigest()
    h = hashlib.sha256()
    for base, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith('.lock') or name == 'run.lock':
                continue
            h.update(os.path.relpath(os.path.join(base, name), path).encode())
            with open(os.path.join(base, name), 'rb') as f:
                h.update(f.read())
    return h.hexdigest()


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _train_args(workdir, data, steps, *extra):
    return ['train', '--config', 'tiny', '--dataset', 'cifar10', '--workdir', workdir,
            '--steps', steps, '--batch-size', 16, '--checkpoint-every', 10, '--eval-every',
            100, '--num-eval-images', 32, '--data-dir', data, '--no-progress', *extra]


def _scores_ok(n):
    def check(process):
        out = process.args[process.args.index('--output') + 1]
        with np.load(os.path.join(out, 'scores.npz')) as f:
            bpd = f['score_bits_per_dim']
        return len(bpd) == n and np.all(np.isfinite(bpd))
    return check


def score_probes(p, model, data):
    from tfp_ood import export
    d = os.path.join(p.root, 'score')
    os.makedirs(d)
    rng = np.random.default_rng(1)
    good = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    out = lambda name: os.path.join(d, 'out_' + name)  # noqa: E731
    s = ['score', '--model-dir', model]
    p.cli('score', 'valid npz', s + ['--npz', _npz(f'{d}/good.npz', images=good),
                                     '--output', out('good')], 'ok', _scores_ok(24))
    p.cli('score', 'same output again without --overwrite',
          s + ['--npz', f'{d}/good.npz', '--output', out('good')],
          keep=[out('good')])
    p.cli('score', 'same output with --overwrite',
          s + ['--npz', f'{d}/good.npz', '--output', out('good'), '--overwrite'], 'ok',
          _scores_ok(24))
    p.cli('score', 'list of images as a dataset', s + ['--dataset', 'cifar10', '--split',
                                                       'test[:10]', '--data-dir', data,
                                                       '--output', out('ds')], 'ok',
          _scores_ok(10))
    cases = {
        'npz that does not exist': f'{d}/missing.npz',
        '0-byte npz': f'{d}/empty_file.npz',
        'truncated npz': f'{d}/truncated.npz',
        'npz without images': _npz(f'{d}/noimages.npz', pictures=good),
        'float images in [0, 1]': _npz(f'{d}/float01.npz', images=good / 255.),
        'float images in [0, 255]': _npz(f'{d}/float255.npz', images=good.astype(np.float32)),
        'int64 images up to 1020': _npz(f'{d}/int64.npz', images=good.astype(np.int64) * 4),
        'negative int images': _npz(f'{d}/neg.npz', images=good.astype(np.int16) - 128),
        'NaN float images': _npz(f'{d}/nan.npz', images=np.full((4, 32, 32, 3), np.nan)),
        'zero images': _npz(f'{d}/zero.npz', images=good[:0]),
        '3-D images (no batch axis)': _npz(f'{d}/three_d.npz', images=good[0]),
        '5-D images': _npz(f'{d}/five_d.npz', images=good[None]),
        '2 channels': _npz(f'{d}/two_channels.npz', images=good[..., :2]),
        'wrong size 28x28x1': _npz(f'{d}/small.npz', images=good[:, :28, :28, :1]),
        'labels shorter than images': _npz(f'{d}/short_labels.npz', images=good,
                                           labels=np.arange(5)),
        'string labels': _npz(f'{d}/str_labels.npz', images=good,
                              labels=np.array(['a'] * 24)),
        'object array': _npz(f'{d}/object.npz', images=np.array([good[0], None],
                                                                dtype=object)),
    }
    open(cases['0-byte npz'], 'wb').close()
    shutil.copy(f'{d}/good.npz', cases['truncated npz'])
    with open(cases['truncated npz'], 'r+b') as f:
        f.truncate(1000)
    for name, path in cases.items():
        p.cli('score', name, s + ['--npz', path, '--output', out(name.replace(' ', '_'))])
    for name in ('float images in [0, 1]', 'int64 images up to 1020', 'NaN float images',
                 'negative int images', '2 channels'):
        p.cli('score', name + ' with --resize',
              s + ['--npz', cases[name], '--output', out('r' + name.replace(' ', '_')),
                   '--resize'])
    p.cli('score', 'wrong size with --resize',
          s + ['--npz', cases['wrong size 28x28x1'], '--output', out('resized'), '--resize'],
          'ok', _scores_ok(24))
    regular = os.path.join(d, 'a_file')
    with open(regular, 'w') as f:
        f.write('keep me')
    p.cli('score', '--output is a regular file',
          s + ['--npz', f'{d}/good.npz', '--output', regular], keep=[regular])
    p.cli('score', '--output is a regular file, --overwrite',
          s + ['--npz', f'{d}/good.npz', '--output', regular, '--overwrite'], keep=[regular])
    p.cli('score', '--batch-size 0', s + ['--npz', f'{d}/good.npz', '--output', out('b0'),
                                          '--batch-size', 0])
    p.cli('score', '--batch-size -3', s + ['--npz', f'{d}/good.npz', '--output', out('b3'),
                                           '--batch-size', -3])
    p.cli('score', 'model dir that does not exist',
          ['score', '--model-dir', f'{d}/nomodel', '--npz', f'{d}/good.npz', '--output',
           out('nm')])
    os.makedirs(f'{d}/notamodel')
    p.cli('score', 'model dir that is not a SavedModel',
          ['score', '--model-dir', f'{d}/notamodel', '--npz', f'{d}/good.npz', '--output',
           out('nsm')])
    for name, edit in (('corrupt metadata', lambda m: '{not json'),
                       ('image_shape edited to a string',
                        lambda m: json.dumps(dict(json.loads(m), image_shape='32x32'))),
                       ('image_shape edited to 2 numbers',
                        lambda m: json.dumps(dict(json.loads(m), image_shape=[32, 32])))):
        copy = os.path.join(d, 'model_' + name.replace(' ', '_'))
        shutil.copytree(model, copy)
        meta = os.path.join(copy, 'assets', export.METADATA_FILE)
        with open(meta) as f:
            text = f.read()
        with open(meta, 'w') as f:
            f.write(edit(text))
        p.cli('score', name, ['score', '--model-dir', copy, '--npz', f'{d}/good.npz',
                              '--output', out('m' + name.replace(' ', '_'))])
    os.makedirs(f'{d}/empty_dir')
    p.cli('score', 'empty images dir', s + ['--images-dir', f'{d}/empty_dir', '--output',
                                            out('ed')])
    os.makedirs(f'{d}/junk_dir')
    with open(f'{d}/junk_dir/notes.png', 'w') as f:
        f.write('not a png')
    p.cli('score', 'images dir with a non-image .png',
          s + ['--images-dir', f'{d}/junk_dir', '--output', out('jd')])
    p.cli('score', 'unknown dataset', s + ['--dataset', 'imagenet_nope', '--output',
                                           out('ud'), '--data-dir', data])
    p.cli('score', 'missing data dir', s + ['--dataset', 'cifar10', '--output', out('md'),
                                            '--data-dir', f'{d}/nodata'])
    p.cli('score', 'bogus split', s + ['--dataset', 'cifar10', '--split', 'tset[:x]',
                                       '--output', out('bs'), '--data-dir', data])
    p.cli('score', 'split beyond the data', s + ['--dataset', 'cifar10', '--split',
                                                 'test[1000:2000]', '--output', out('sb'),
                                                 '--data-dir', data])
    p.cli('score', 'unprepared TFDS dataset', s + ['--dataset', 'mnist', '--source', 'tfds',
                                                   '--output', out('tf')])
    return f'{d}/good.npz', out('good')


def compare_probes(p, model, good_npz, good_scores):
    d = os.path.join(p.root, 'compare')
    os.makedirs(d)
    other = _npz(f'{d}/other.npz', images=np.full((16, 32, 32, 3), 128, np.uint8))
    other_scores = os.path.join(d, 'other_scores')
    subprocess.run(CLI + ['score', '--model-dir', model, '--npz', other, '--output',
                          other_scores], env=ENV, capture_output=True, check=True)
    a, b = f'{good_scores}/scores.npz', f'{other_scores}/scores.npz'
    p.cli('compare', 'valid', ['compare', a, b, '--output', f'{d}/c1'], 'ok',
          lambda r: 'AUROC' in r.stdout and os.path.exists(f'{d}/c1/metrics.json'))
    p.cli('compare', 'again without --overwrite', ['compare', a, b, '--output', f'{d}/c1'],
          keep=[f'{d}/c1'])
    p.cli('compare', '--key bogus', ['compare', a, b, '--output', f'{d}/c2', '--key', 'bogus'],
          check=None)
    if os.path.exists(f'{d}/c2/metrics.json'):
        p.record('compare', '--key bogus leaves no metrics.json', 'silent wrong')
    with np.load(a) as f:
        arrays = dict(f)
    nan = dict(arrays)
    for key in nan:
        if key.startswith('score_'):
            nan[key] = np.full_like(nan[key], np.nan)
    np.savez(f'{d}/all_nan.npz', **nan)
    p.cli('compare', 'one side entirely NaN', ['compare', a, f'{d}/all_nan.npz', '--output',
                                               f'{d}/c3'])
    some = dict(arrays)
    some['score_log_prob'] = some['score_log_prob'].copy()
    some['score_log_prob'][:3] = np.nan
    np.savez(f'{d}/some_nan.npz', **some)
    p.cli('compare', 'a few NaN: counted where the AUROC is printed',
          ['compare', f'{d}/some_nan.npz', b, '--output', f'{d}/c4'], 'ok',
          lambda r: 'non-finite' in r.stdout)
    open(f'{d}/empty.npz', 'wb').close()
    p.cli('compare', '0-byte scores', ['compare', f'{d}/empty.npz', b, '--output', f'{d}/c5'])
    shutil.copy(a, f'{d}/trunc.npz')
    with open(f'{d}/trunc.npz', 'r+b') as f:
        f.truncate(500)
    p.cli('compare', 'truncated scores', ['compare', f'{d}/trunc.npz', b, '--output',
                                          f'{d}/c6'])
    p.cli('compare', 'scores file missing', ['compare', f'{d}/nope.npz', b, '--output',
                                             f'{d}/c7'])
    np.savez(f'{d}/not_scores.npz', images=np.zeros((3, 2)))
    p.cli('compare', 'an npz that is not a score file',
          ['compare', f'{d}/not_scores.npz', b, '--output', f'{d}/c8'])
    regular = os.path.join(d, 'a_file')
    with open(regular, 'w') as f:
        f.write('keep me')
    p.cli('compare', '--output a regular file', ['compare', a, b, '--output', regular],
          keep=[regular])
    other_model = dict(arrays)
    meta = json.loads(str(other_model['meta']))
    meta['model'] = {'name': 'another_model'}
    meta['model_dir'] = '/elsewhere/another_model'
    other_model['meta'] = np.array(json.dumps(meta))
    np.savez(f'{d}/other_model.npz', **other_model)
    p.cli('compare', 'scores of two different models: a warning',
          ['compare', f'{d}/other_model.npz', b, '--output', f'{d}/c9'], 'ok',
          lambda r: 'different' in (r.stdout + r.stderr).lower() or
          'another' in (r.stdout + r.stderr))


def train_probes(p, data):
    d = os.path.join(p.root, 'train')
    os.makedirs(d)
    w = lambda name: os.path.join(d, name)  # noqa: E731
    bad = {'--learning-rate nan': ['--learning-rate', 'nan'],
           '--learning-rate inf': ['--learning-rate', 'inf'],
           '--learning-rate 0': ['--learning-rate', '0'],
           '--learning-rate -1': ['--learning-rate', '-1'],
           '--clip-norm inf': ['--clip-norm', 'inf'],
           '--clip-norm nan': ['--clip-norm', 'nan'],
           '--clip-norm 0': ['--clip-norm', '0'],
           '--warmup-steps -1': ['--warmup-steps', '-1'],
           '--mutation-rate 1.5': ['--mutation-rate', '1.5'],
           '--mutation-rate -0.1': ['--mutation-rate', '-0.1'],
           '--mutation-rate nan': ['--mutation-rate', 'nan'],
           '--weight-decay -1': ['--weight-decay', '-1'],
           '--weight-decay nan': ['--weight-decay', 'nan'],
           '--checkpoint-every 0': ['--checkpoint-every', '0'],
           '--eval-every 0': ['--eval-every', '0'],
           '--num-eval-images 0': ['--num-eval-images', '0'],
           '--eval bogus': ['--eval', 'bogus'],
           '--eval unknown set': ['--eval', 'nope:test'],
           '--dataset unknown': ['--dataset', 'nope'],
           '--split beyond data': ['--split', 'train[5000:]'],
           '--seed -1': ['--seed', '-1']}
    for name, extra in bad.items():
        p.cli('train', name, _train_args(w(name.replace(' ', '_')), data, 20) + extra,
              keep=[])
        if os.path.exists(os.path.join(w(name.replace(' ', '_')), 'checkpoints')):
            p.record('train', name + ': nothing checkpointed', 'silent wrong')
    p.cli('train', '--steps 0', _train_args(w('s0'), data, 0))
    p.cli('train', '--steps -5', _train_args(w('s5'), data, -5))
    p.cli('train', '--batch-size 0', _train_args(w('b0'), data, 5) + ['--batch-size', '0'])
    p.cli('train', 'batch larger than the data',
          _train_args(w('bl'), data, 5) + ['--batch-size', '4096'])
    regular = w('a_file')
    with open(regular, 'w') as f:
        f.write('keep me')
    p.cli('train', '--workdir is a regular file', _train_args(regular, data, 5),
          keep=[regular])
    p.cli('train', '--data-dir missing', _train_args(w('dm'), f'{d}/nodata', 5))
    p.cli('train', '--config small for pixelcnn (no such size)',
          _train_args(w('px'), data, 5)[:2] + ['small'] + _train_args(w('px'), data, 5)[3:]
          + ['--model', 'pixelcnn'])
    run = w('run')
    p.cli('train', 'valid short run', _train_args(run, data, 20), 'ok',
          lambda r: os.path.exists(os.path.join(run, 'checkpoints')))
    p.cli('train', 'same workdir, another configuration',
          _train_args(run, data, 30) + ['--learning-rate', '0.01', '--seed', '3'],
          keep=[os.path.join(run, 'checkpoints')])
    p.cli('train', 'same workdir, another model size',
          _train_args(run, data, 30)[:2] + ['small'] + _train_args(run, data, 30)[3:],
          keep=[os.path.join(run, 'checkpoints')])
    with open(os.path.join(run, 'run.lock'), 'w') as f:
        json.dump({'pid': os.getpid(), 'host': os.uname().nodename}, f)
    p.cli('train', 'workdir locked by a live run', _train_args(run, data, 30),
          keep=[os.path.join(run, 'checkpoints'), os.path.join(run, 'history.jsonl')])
    os.remove(os.path.join(run, 'run.lock'))
    return run


def interruption_probes(p, data):
    d = os.path.join(p.root, 'interrupt')
    os.makedirs(d)
    run = os.path.join(d, 'run')
    steps, every = 400, 10
    args = CLI + [str(a) for a in _train_args(run, data, steps)]
    lost = []

    def latest():
        import glob
        names = glob.glob(os.path.join(run, 'checkpoints', 'ckpt-*.index'))
        return max([int(n.rsplit('-', 1)[1].split('.')[0]) for n in names] or [0])

    def start_and_wait(after):
        process = subprocess.Popen(args, cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600
        while (latest() <= after + every and time.monotonic() < deadline
               and process.poll() is None):
            time.sleep(0.05)
        time.sleep(1.0)  # Some steps past the checkpoint.
        return process

    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        before = latest()
        process = start_and_wait(before)
        process.send_signal(sig)
        out, err = process.communicate(timeout=300)
        ok = process.returncode == code and 'Traceback' not in err
        p.record('interrupt', f'{sig.name}: saved, exit {code}',
                 'correct' if ok else ('traceback' if 'Traceback' in err else 'silent wrong'),
                 f'exit {process.returncode}, last checkpoint {latest()}')
    process = start_and_wait(latest())
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    p.record('interrupt', 'double SIGINT', 'correct' if process.returncode in (130,) and
             'Traceback' not in err else 'silent wrong', f'exit {process.returncode}')
    for _ in range(3):
        process = start_and_wait(latest())
        process.kill()
        killed = time.time()
        process.communicate(timeout=60)
        # Steps trained but in no checkpoint: the time since the last checkpoint
        # was written times the rate between the last two checkpoints.
        import glob
        index = sorted(glob.glob(os.path.join(run, 'checkpoints', 'ckpt-*.index')),
                       key=os.path.getmtime)
        rate = every / max(os.path.getmtime(index[-1]) - os.path.getmtime(index[-2]), 1e-3)
        lost.append(round(min((killed - os.path.getmtime(index[-1])) * rate, 10 * every), 1))
    process = subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True,
                             timeout=1200)
    with open(os.path.join(run, 'history.jsonl')) as f:
        history = [json.loads(line)['step'] for line in f]
    import tensorflow as tf
    counts = collections.Counter()
    import glob
    for path in glob.glob(os.path.join(run, 'logs', 'events.*')):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                counts[(value.tag, event.step)] += 1
    duplicated = sum(1 for c in counts.values() if c > 1)
    ok = (process.returncode == 0 and history == list(range(100, steps + 1, 100))
          and duplicated == 0)
    p.record('interrupt', 'three SIGKILLs, then resume to the end',
             'correct' if ok else 'silent wrong',
             f'exit {process.returncode}; history steps {history}; duplicated TensorBoard '
             f'(tag, step) pairs {duplicated}; steps lost at the three kills about {lost} '
             f'(a checkpoint every {every} steps)')


def export_probes(p, run, data):
    d = os.path.join(p.root, 'export')
    os.makedirs(d)
    model = os.path.join(d, 'model')
    p.cli('export', 'valid', ['export', '--workdir', run, '--output', model], 'ok',
          lambda r: os.path.exists(os.path.join(model, 'saved_model.pb')))
    p.cli('export', 'again without --overwrite', ['export', '--workdir', run, '--output', model],
          keep=[model])
    p.cli('export', 'again with --overwrite', ['export', '--workdir', run, '--output', model,
                                               '--overwrite'], 'ok')
    keep = [os.path.join(run, 'checkpoints'), os.path.join(run, 'history.jsonl'),
            os.path.join(run, 'config.json')]
    p.cli('export', '--output the run itself, --overwrite',
          ['export', '--workdir', run, '--output', run, '--overwrite'], keep=keep)
    sentinel = os.path.join(os.path.dirname(run), 'unrelated.txt')
    with open(sentinel, 'w') as f:
        f.write('keep me')
    p.cli('export', '--output the run\'s parent, --overwrite',
          ['export', '--workdir', run, '--output', os.path.dirname(run), '--overwrite'],
          keep=keep + [sentinel])
    regular = os.path.join(d, 'a_file')
    with open(regular, 'w') as f:
        f.write('keep me')
    p.cli('export', '--output a regular file, --overwrite',
          ['export', '--workdir', run, '--output', regular, '--overwrite'], keep=[regular])
    p.cli('export', 'workdir that does not exist', ['export', '--workdir', f'{d}/norun',
                                                    '--output', f'{d}/m2'])
    os.makedirs(f'{d}/emptyrun')
    p.cli('export', 'workdir that is not a run', ['export', '--workdir', f'{d}/emptyrun',
                                                  '--output', f'{d}/m3'])
    broken = os.path.join(d, 'broken_run')
    shutil.copytree(run, broken)
    import glob
    newest = sorted(glob.glob(os.path.join(broken, 'checkpoints', 'ckpt-*.data*')),
                    key=lambda n: int(n.split('ckpt-')[1].split('.')[0]))[-1]
    with open(newest, 'r+b') as f:
        f.truncate(64)
    p.cli('export', 'truncated newest checkpoint: the one before it',
          ['export', '--workdir', broken, '--output', f'{d}/m4'], 'ok',
          lambda r: os.path.exists(os.path.join(d, 'm4', 'saved_model.pb')))
    nan_run = os.path.join(d, 'nan_run')
    shutil.copytree(run, nan_run)
    code = ('import sys, numpy as np, tensorflow as tf\n'
            'from tfp_ood import models, train\n'
            'run = sys.argv[1]\n'
            'config = train.load_run_config(run)\n'
            'model = models.from_config(config["model"])\n'
            'train.restore_latest(model, run)\n'
            'v = model.trainable_variables[0]; v.assign(tf.fill(v.shape, np.nan))\n'
            'step = tf.Variable(10**6, dtype=tf.int64)\n'
            'manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, step=step),'
            ' run + "/checkpoints", max_to_keep=10)\n'
            'manager.save(checkpoint_number=10**6)\n')
    subprocess.run([sys.executable, '-c', code, nan_run], cwd=REPO, env=ENV,
                   capture_output=True, check=True)
    p.cli('export', 'non-finite newest checkpoint', ['export', '--workdir', nan_run,
                                                     '--output', f'{d}/m5'])
    return model


def api_probes(p, model_dir, data):
    import tensorflow as tf
    import tfp_ood
    from tfp_ood import data as tdata, export, models
    model = export.load(model_dir)
    good = np.random.default_rng(2).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    n_ok = lambda n: lambda r: len(r.scores['log_prob']) == n and np.all(  # noqa: E731
        np.isfinite(r.scores['log_prob']))
    p.api('api', 'score a uint8 array', lambda: tfp_ood.score(model, good), 'ok', n_ok(6))
    p.api('api', 'score a list of images', lambda: tfp_ood.score(model, list(good)), 'ok',
          n_ok(6))
    p.api('api', 'score a tuple of images', lambda: tfp_ood.score(model, tuple(good)), 'ok',
          n_ok(6))
    p.api('api', 'score a generator', lambda: tfp_ood.score(model, (x for x in good)))
    p.api('api', 'score None', lambda: tfp_ood.score(model, None))
    p.api('api', 'score a float array', lambda: tfp_ood.score(model, good / 255.))
    p.api('api', 'score a wrong-size array', lambda: tfp_ood.score(model, good[:, :28, :28]))
    p.api('api', 'score an empty array', lambda: tfp_ood.score(model, good[:0]))
    unknown = tf.data.Dataset.from_generator(
        lambda: iter(np.zeros((3, 28, 28, 3), np.uint8)),
        output_signature=tf.TensorSpec((None, None, 3), tf.uint8))
    p.api('api', 'dataset of unknown shape holding the wrong size',
          lambda: tfp_ood.score(model, unknown))
    strings = tf.data.Dataset.from_tensor_slices(
        {'image': good, 'label': np.array(['a'] * 6)})
    p.api('api', 'dataset with string labels', lambda: tfp_ood.score(model, strings))
    p.api('api', 'load a folder that is not a SavedModel', lambda: export.load(p.root))
    p.api('api', 'from_config of an unknown family',
          lambda: models.from_config({'family': 'nope'}))
    p.api('api', 'resize float images', lambda: tdata.resize_images(good / 255., (28, 28, 1)))
    result = tfp_ood.score(model, good)
    p.api('api', 'ScoreResult.save with labels of another length',
          lambda: result.save(os.path.join(p.root, 'bad_labels.npz'), labels=np.arange(3)))
    pixelcnn = os.path.join(REPO, 'saved_models', 'pixelcnn_cifar10')
    if os.path.exists(pixelcnn):
        loaded = export.load(pixelcnn)
        p.api('api', 'PixelCNN++ sample at temperature 0.7',
              lambda: loaded.sample(2, temperature=0.7))


def detector_probes(p, model_dir, data):
    """The detector workflow: fit-detector, detect, export-detector and the API."""
    import tensorflow as tf
    from tfp_ood import detectors, export, models
    root = os.path.join(p.root, 'detectors')
    os.makedirs(root)
    # The model the fits are made on: a copy, so probes may re-export over it.
    model = os.path.join(root, 'glow')
    shutil.copytree(model_dir, model)
    fit = os.path.join(root, 'fit.json')
    fit_args = ['fit-detector', '--detector', 'density_of_states', '--model-dir', model,
                '--dataset', 'cifar10', '--fit-split', 'train[:128]', '--data-dir', data]
    p.cli('detector', 'fit-detector', fit_args + ['--validation-split', 'test[:64]',
                                                  '--output', fit], 'ok',
          lambda r: os.path.exists(fit) and 'bootstrap' in r.stdout)
    images = os.path.join(root, 'images')
    os.makedirs(images)
    rng = np.random.default_rng(7)
    for i in range(6):
        with open(os.path.join(images, f'{i}.png'), 'wb') as f:
            f.write(tf.io.encode_png(rng.integers(0, 256, (32, 32, 3), np.uint8)).numpy())
    detect = ['detect', '--detector', fit, '--images-dir', images]

    def detected(n):
        def check(process):
            out = process.args[process.args.index('--output') + 1]
            with np.load(os.path.join(out, 'detections.npz')) as f:
                return len(f['ood_score']) == n and len(os.listdir(out)) == 6
        return check

    p.cli('detector', 'detect a folder', detect + ['--output', os.path.join(root, 'd0')], 'ok',
          detected(6))

    # Data loss: the detector's own model, concurrent runs on one output.
    p.cli('detector', 'export-detector over its own model folder',
          ['export-detector', '--detector', fit, '--output', model, '--overwrite'],
          keep=[model, fit])
    p.cli('detector', 'detect with --output the images folder',
          detect + ['--output', images, '--overwrite'], keep=[images])
    p.cli('detector', 'fit-detector with --output inside its model',
          fit_args + ['--validation-split', 'test[:64]', '--output',
                      os.path.join(model, 'fit.json')], keep=[model])
    out = os.path.join(root, 'twice')
    runs = [subprocess.Popen(CLI + detect + ['--output', out], cwd=REPO, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(r.communicate(timeout=600)[1], r.returncode) for r in runs]
    codes = sorted(code for _, code in results)
    errors = [err for err, code in results if code == 2]
    clear = all(': error: ' in e and 'Traceback' not in e for e in errors)
    outcome = ('correct' if codes == [0, 2] and clear
               else 'data loss' if codes == [0, 0] else 'traceback')
    p.record('detector', 'two detects on one output at once', outcome,
             (errors[0].strip().splitlines() or [''])[-1] if errors else str(codes))

    # Silent wrong: fits read back as they were written, or refused.
    with open(fit) as f:
        good = json.load(f)

    def edited(name, **changes):
        path = os.path.join(root, f'{name}.json')
        record = dict(good, **changes)
        for key in [k for k, v in changes.items() if v is _DROP]:
            record.pop(key)
        with open(path, 'w') as f:
            f.write(json.dumps(record).replace('"__nan__"', 'NaN').replace(
                '"__inf__"', 'Infinity').replace('"__-inf__"', '-Infinity'))
        return path

    bad_fits = {
        'threshold NaN': edited('nan', threshold='__nan__'),
        'threshold Infinity': edited('inf', threshold='__inf__'),
        'threshold -Infinity': edited('minf', threshold='__-inf__'),
        'true_positive_rate 5': edited('tpr', true_positive_rate=5),
        'detector renamed under its state': edited('renamed', detector='typicality'),
        'one-row KDE state': edited('one_row', state=dict(good['state'],
                                                          values=good['state']['values'][:1])),
        'bandwidth 0': edited('bandwidth', state=dict(good['state'], parameters=dict(
            good['state']['parameters'], bandwidth=0.))),
        'threshold missing': edited('no_threshold', threshold=_DROP),
        'models null': edited('models_null', models=None),
        'models []': edited('models_empty', models=[]),
        'state a list': edited('state_list', state=[1, 2]),
        'validation_scores a string': edited('scores_str', validation_scores='abc'),
        'true_positive_rate a string': edited('tpr_str', true_positive_rate='0.95'),
        'model_identities edited': edited('identity', model_identities=[
            dict(good['model_identities'][0], variables_sha256='0' * 64)]),
    }
    for name, path in bad_fits.items():
        p.cli('detector', f'detect with a fit whose {name}',
              ['detect', '--detector', path, '--images-dir', images, '--output',
               os.path.join(root, 'bad_' + os.path.basename(path)[:-5])])
    p.cli('detector', 'export-detector of a fit with threshold NaN',
          ['export-detector', '--detector', bad_fits['threshold NaN'], '--output',
           os.path.join(root, 'nan_export')])
    p.cli('detector', 'fit-detector with the validation split equal to the fit split',
          fit_args + ['--validation-split', 'train[:128]', '--output',
                      os.path.join(root, 'same.json')])
    p.cli('detector', 'fit-detector with one validation image',
          fit_args + ['--validation-split', 'test[:1]', '--output', os.path.join(root, 'one.json')])
    # The model re-exported in place with other weights, and another model of that shape.
    moved = export.restore(model)
    moved.trainable_variables[0].assign_add(tf.ones_like(moved.trainable_variables[0]))
    stale = os.path.join(root, 'stale')
    shutil.copytree(model, os.path.join(stale, 'glow'))
    shutil.copy(fit, os.path.join(stale, 'fit.json'))
    export.export(moved, os.path.join(stale, 'glow'), overwrite=True)
    p.cli('detector', 'detect after the model was re-exported with other weights',
          ['detect', '--detector', os.path.join(stale, 'fit.json'), '--images-dir', images,
           '--output', os.path.join(root, 'stale_out')])
    other = os.path.join(root, 'other')
    wider = models.named_model('glow', 'tiny', (32, 32, 3), hidden_channels=32)
    wider.initialize(np.zeros((4, 32, 32, 3), np.uint8))
    export.export(wider, os.path.join(other, 'glow'))
    shutil.copy(fit, os.path.join(other, 'fit.json'))
    p.cli('detector', 'detect with the fit pointing at another model of the same shape',
          ['detect', '--detector', os.path.join(other, 'fit.json'), '--images-dir', images,
           '--output', os.path.join(root, 'other_out')])

    # Tracebacks before: wrong paths, odd folders, outputs that cannot be written.
    saved = os.path.join(root, 'exported')
    p.cli('detector', 'export-detector', ['export-detector', '--detector', fit, '--output',
                                          saved], 'ok',
          lambda r: os.path.exists(os.path.join(saved, 'saved_model.pb')))
    p.cli('detector', 'detect --detector a SavedModel folder',
          ['detect', '--detector', saved, '--images-dir', images, '--output',
           os.path.join(root, 'folder_out')])
    odd = {'a broken symlink': lambda d: os.symlink(os.path.join(d, 'missing.png'),
                                                    os.path.join(d, 'broken.png')),
           'a folder named like an image': lambda d: os.makedirs(os.path.join(d, 'dir.png')),
           'a symlink loop': lambda d: os.symlink(os.path.join(d, 'loop.png'),
                                                  os.path.join(d, 'loop.png'))}
    for name, make in odd.items():
        folder = os.path.join(root, name.replace(' ', '_'))
        shutil.copytree(images, folder)
        make(folder)
        out = os.path.join(root, name.replace(' ', '_') + '_out')
        # Scored without the odd entry; a file that cannot be read is listed in skipped.txt.
        skipped = [] if 'folder' in name else [os.path.basename(
            next(e.path for e in os.scandir(folder) if e.is_symlink()))]
        p.cli('detector', f'--images-dir holding {name}',
              ['detect', '--detector', fit, '--images-dir', folder, '--output', out], 'ok',
              lambda r, o=out, s=skipped: [line.split('\t')[0] for line in open(
                  os.path.join(o, 'skipped.txt'))] == s)
    a_file = os.path.join(root, 'a_file')
    with open(a_file, 'w') as f:
        f.write('x')
    p.cli('detector', 'detect --output under a file',
          detect + ['--output', os.path.join(a_file, 'out')], keep=[a_file])
    # Interrupted: one line, exit 130, nothing partial left.
    for sig, name in ((signal.SIGINT, 'Ctrl-C'), (signal.SIGTERM, 'SIGTERM')):
        out = os.path.join(root, f'interrupted_{name}')
        process = subprocess.Popen(CLI + detect + ['--output', out], cwd=REPO, env=ENV,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(8)  # TensorFlow imported, the detector loading or scoring.
        process.send_signal(sig)
        err = process.communicate(timeout=300)[1]
        code = process.returncode
        left = [n for n in os.listdir(root) if f'interrupted_{name}' in n]
        complete = os.path.isdir(out) and len(os.listdir(out)) == 6
        if 'Traceback' in err:
            outcome = 'traceback'
        elif left and not complete:
            outcome = 'partial output'
        else:
            outcome = 'correct' if code in (0, 130) else 'silent wrong'
        p.record('detector', f'{name} during detect', outcome,
                 (err.strip().splitlines() or [f'exit {code}'])[-1])
    # The exported SavedModel's signature.
    serve = tf.saved_model.load(saved).signatures['serving_default']
    p.api('detector', 'exported detector on a batch of 0 images',
          lambda: serve(images=tf.zeros((0, 32, 32, 3), tf.uint8)), 'ok',
          lambda r: all(v.shape[0] == 0 for v in r.values()))

    def wrong_shape():
        try:
            return serve(images=tf.zeros((2, 28, 28, 3), tf.uint8))
        except tf.errors.InvalidArgumentError as e:  # The contract's error, naming the shape.
            named = [line for line in e.message.splitlines() if '[?,32,32,3]' in line]
            if named:
                raise ValueError(named[0].strip()) from None
            raise
    p.api('detector', 'exported detector on images of another shape', wrong_shape)
    # The Python API.
    fitted = detectors.load_detector(fit)
    batch = rng.integers(0, 256, (5, 32, 32, 3), np.uint8)
    expected = fitted.detect(batch).ood_score
    for name, dataset in (('plain uint8 tensors', tf.data.Dataset.from_tensor_slices(batch)),
                          ('batched', tf.data.Dataset.from_tensor_slices(batch).batch(2))):
        p.api('detector', f'detect a tf.data.Dataset of {name}',
              lambda d=dataset: fitted.detect(d), 'ok',
              lambda r: np.allclose(r.ood_score, expected))
    p.api('detector', 'fit_detector with a string for model_dirs',
          lambda: detectors.fit_detector('density_of_states', model, batch, batch))
    p.api('detector', 'fit_detector with no model', lambda: detectors.fit_detector(
        'density_of_states', [], batch, batch))


_DROP = object()


def _tiny_model(data, root):
    """A tiny Glow initialised on the probes' training images, exported."""
    from tfp_ood import export, models
    model = models.named_model('glow', 'tiny', (32, 32, 3))
    with np.load(os.path.join(data, 'cifar10_train.npz')) as f:
        model.initialize(f['images'][:64])
    return export.export(model, os.path.join(root, 'tiny_glow'))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='probes.json', help='JSON of every probe')
    parser.add_argument('--keep', action='store_true', help='keep the scratch directory')
    parser.add_argument('--only', choices=('detectors', 'interrupt'), default=None,
                        help='run only these probes (they train and export their model first)')
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix='tfp_ood_probes_')
    p = Probes(root)
    start = time.monotonic()
    try:
        data = os.path.join(root, 'data')
        os.makedirs(data)
        _write_data(data, n_train=256, n_test=64)
        if args.only == 'detectors':
            detector_probes(p, _tiny_model(data, root), data)
            return 0
        if args.only == 'interrupt':
            interruption_probes(p, data)
            return 0
        run = train_probes(p, data)
        model = export_probes(p, run, data)
        good_npz, good_scores = score_probes(p, model, data)
        compare_probes(p, model, good_npz, good_scores)
        api_probes(p, model, data)
        detector_probes(p, model, data)
        interruption_probes(p, data)
    finally:
        counts = collections.Counter(r['outcome'] for r in p.results)
        summary = {'probes': len(p.results), 'outcomes': dict(counts),
                   'minutes': round((time.monotonic() - start) / 60, 1)}
        with open(args.out, 'w') as f:
            json.dump({'summary': summary, 'probes': p.results}, f, indent=1)
        print(json.dumps(summary))
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == '__main__':
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
