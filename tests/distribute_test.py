"""`--strategy multi_worker` with two real worker processes on 127.0.0.1: `score`,
`detect` and `train` give what one process gives, written once, by the chief.

Each pair of workers is started as docs/usage.md says a user starts them: the
same command, `TF_CONFIG` naming the cluster (two free local ports) and each
worker's index. Both processes are always reaped, within a time limit.
"""

import contextlib
import glob
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from tfp_ood import cli, distribute

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What two workers may differ from one process by. The per-image terms and
# statistics: a float32 ulp or two, where a worker's batch holds other images
# than the one process's (bit for bit on a 2-core Xeon with AVX-512; within two
# ulps with oneDNN's AVX2 kernels, which round a batch of one image differently,
# under benchmarks/avx2_only.py). A detector's score is a distance under a
# covariance fitted on few images, which multiplies that by its conditioning:
# 8.6e-6 apart measured there, so 1e-4.
SCORE_RTOL = 1e-6
DETECTOR_SCORE_RTOL = 1e-4


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_workers(argv, folder, timeout=240, num_workers=2):
    """Runs `tfp-ood ARGV` as `num_workers` workers of one cluster on 127.0.0.1.

    Returns `[(exit code, stdout, stderr)]` by worker index. Output goes to files
    (a full pipe would stall a worker that the other waits for); every process is
    killed and reaped if the time runs out.
    """
    cluster = {'worker': [f'127.0.0.1:{port}' for port in _free_ports(num_workers)]}
    scratch = os.path.join(folder, 'tmp')  # The workers' temporary folders.
    os.makedirs(scratch, exist_ok=True)
    processes, files = [], []
    try:
        for index in range(num_workers):
            env = dict(os.environ, TMPDIR=scratch, TF_CONFIG=json.dumps(
                {'cluster': cluster, 'task': {'type': 'worker', 'index': index}}))
            env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # As a user runs it.
            out = tempfile.TemporaryFile('w+', dir=folder)
            err = tempfile.TemporaryFile('w+', dir=folder)
            files += [out, err]
            processes.append(subprocess.Popen(
                [sys.executable, '-m', 'tfp_ood.cli', *map(str, argv)], cwd=REPO, env=env,
                stdout=out, stderr=err))
        for process in processes:
            process.wait(timeout=timeout)
        results = []
        for process, (out, err) in zip(processes, zip(files[::2], files[1::2])):
            out.seek(0)
            err.seek(0)
            results.append((process.returncode, out.read(), err.read()))
        return results
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        for f in files:
            f.close()


def _run(*argv):
    """The CLI in this process (one worker, no strategy): (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _clean(test, results):
    """Both workers succeeded, with no traceback and no collective error."""
    for index, (code, out, err) in enumerate(results):
        test.assertEqual(code, 0, f'worker {index}:\n{out}\n{err}')
        for bad in ('Traceback', 'StartAbort', 'heartbeat', 'UNAVAILABLE', 'error:'):
            test.assertNotIn(bad, err, f'worker {index}:\n{err}')


def _assert_same_arrays(test, one, two):
    """The same keys, exact non-float arrays, floats within SCORE_RTOL (a
    detector's score and density within DETECTOR_SCORE_RTOL)."""
    test.assertEqual(sorted(one.files), sorted(two.files))
    for key in one.files:
        if one[key].dtype.kind == 'f':
            derived = key in ('ood_score', 'component_log_density')  # The detector's own.
            rtol = DETECTOR_SCORE_RTOL if derived else SCORE_RTOL
            np.testing.assert_allclose(two[key], one[key], rtol=rtol, err_msg=key)
        else:
            np.testing.assert_array_equal(two[key], one[key], err_msg=key)


# One process with two logical CPU devices (they must be configured before
# TensorFlow starts): scoring, a detector and training under a two-replica
# MirroredStrategy against one device.
_TWO_DEVICES = textwrap.dedent('''
    import json, tempfile
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import tfp_ood
    from tests.train_test import _config, _images, _model
    from tfp_ood import detectors, models, train
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])

    model = models.named_model('glow', 'tiny', (16, 16, 3))
    images = np.random.default_rng(0).integers(0, 256, (37, 16, 16, 3), dtype=np.uint8)
    model.initialize(images)
    ds = tf.data.Dataset.from_tensor_slices({'image': images, 'label': np.arange(37)})
    one = tfp_ood.score(model, ds, batch_size=8, progress=False)
    two = tfp_ood.score(model, ds, batch_size=8, progress=False, strategy=strategy)
    dos = detectors.named('density_of_states_levels', model).fit(images[:30])
    scoring = {'replicas': strategy.num_replicas_in_sync, 'keys': sorted(one.scores),
               'equal': all(np.array_equal(one.scores[k], two.scores[k]) for k in one.scores),
               'labels': two.labels.tolist(),
               'detector_equal': bool(np.array_equal(
                   dos.score(images).ood_score,
                   dos.score(images, strategy=strategy).ood_score))}

    weights, steps = {}, {}
    for name, run_strategy in (('one', tf.distribute.get_strategy()), ('two', strategy)):
        with run_strategy.scope():
            flow = _model()
        result = train.fit(flow, _images(), _config(num_steps=6), tempfile.mkdtemp(),
                           strategy=run_strategy, progress=False)
        weights[name] = [v.numpy() for v in flow.trainable_variables]
        steps[name] = [run_strategy.num_replicas_in_sync, result.step]
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(weights['one'], weights['two']))
    moved = max(float(np.max(np.abs(a - b))) for a, b in
                zip(weights['one'], [v.numpy() for v in _model().trainable_variables]))
    print(json.dumps({'scoring': scoring, 'training': {'steps': steps, 'max_diff': diff,
                                                       'moved': moved}}))
''')


@pytest.mark.slow
def test_two_logical_devices_score_detect_and_train_as_one():
    run = subprocess.run([sys.executable, '-c', _TWO_DEVICES], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    scoring, training = report['scoring'], report['training']
    assert scoring['replicas'] == 2
    assert 'level1_log_pz' in scoring['keys']
    assert scoring['equal']  # 37 images in batches of 8: the last one uneven.
    assert scoring['labels'] == list(range(37))  # No loss, no duplicate, in order.
    assert scoring['detector_equal']  # Detecting, distributed the same way.
    assert training['steps'] == {'one': [1, 6], 'two': [2, 6]}
    assert training['moved'] > 1e-3  # Training did change the weights...
    assert training['max_diff'] < 1e-4  # ...identically on one and two devices.


@pytest.mark.slow(minutes=2)
class TwoWorkersTest(tf.test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dir = tempfile.mkdtemp(prefix='distribute_test_')
        cls.data = os.path.join(cls.dir, 'data')
        os.makedirs(cls.data)
        rng = np.random.default_rng(0)
        for split, n in (('train', 96), ('test', 150)):  # 150: batches split 75/75.
            np.savez(os.path.join(cls.data, f'cifar10_{split}.npz'),
                     images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                     labels=np.arange(n, dtype=np.int64))  # Labels tell the order.

    @classmethod
    def tearDownClass(cls):
        import shutil
        shutil.rmtree(cls.dir, ignore_errors=True)
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.work = self.create_tempdir().full_path

    def _one_and_two(self, argv, outputs):
        """`argv` run by one process into outputs[0] and by two workers into outputs[1]."""
        code, _, err = _run(*argv, '--output', outputs[0])
        self.assertEqual(code, 0, err)
        results = run_workers([*argv, '--output', outputs[1], '--strategy', 'multi_worker'],
                              self.work)
        _clean(self, results)
        self.assertIn('as a worker; the chief writes the outputs', results[1][1])
        # Written once, and nothing else left beside it (no staging folder, no lock).
        self.assertEqual([name for name in os.listdir(self.work)
                          if name.startswith('.') or name.endswith('.lock')], [])
        self.assertEqual(os.listdir(os.path.join(self.work, 'tmp')), [])
        return results

    def test_score_and_detect_across_two_workers_equal_one_process(self):
        # The model and detector here, not in setUpClass: the two tests of the class
        # run on different xdist workers, and only this one needs them.
        from tfp_ood import export, models
        model = models.named_model('glow', 'tiny', (32, 32, 3))
        with np.load(os.path.join(self.data, 'cifar10_train.npz')) as f:
            model.initialize(f['images'][:64])
        model_dir = export.export(model, os.path.join(self.create_tempdir().full_path, 'glow'))
        fit = os.path.join(self.create_tempdir().full_path, 'detector.json')
        code, _, err = _run('fit-detector', '--detector', 'density_of_states_terms',
                            '--model-dir', model_dir, '--dataset', 'cifar10',
                            '--fit-split', 'train[:64]', '--validation-split', 'test[:60]',
                            '--output', fit, '--data-dir', self.data)
        self.assertEqual(code, 0, err)
        inputs = ['--dataset', 'cifar10', '--split', 'test', '--data-dir', self.data,
                  '--batch-size', 50]
        outs = [os.path.join(self.work, name) for name in ('one', 'two')]
        results = self._one_and_two(['score', '--model-dir', model_dir, *inputs], outs)
        self.assertIn('150 images', results[0][1])
        with np.load(os.path.join(outs[0], 'scores.npz')) as one, \
                np.load(os.path.join(outs[1], 'scores.npz')) as two:
            _assert_same_arrays(self, one, two)
            np.testing.assert_array_equal(two['labels'], np.arange(150))  # None lost or repeated.
        with open(os.path.join(outs[1], 'scores.csv')) as f:
            self.assertLen(f.readlines(), 151)

        outs = [os.path.join(self.work, name) for name in ('detect_one', 'detect_two')]
        inputs.remove('--batch-size')
        inputs.remove(50)
        self._one_and_two(['detect', '--detector', fit, *inputs], outs)
        with np.load(os.path.join(outs[0], 'detections.npz')) as one, \
                np.load(os.path.join(outs[1], 'detections.npz')) as two:
            _assert_same_arrays(self, one, two)
            np.testing.assert_array_equal(two['labels'], np.arange(150))
        for name in ('summary.json', 'histogram.png', 'contact_sheet.png'):
            self.assertTrue(os.path.isfile(os.path.join(outs[1], name)), name)

    def test_train_across_two_workers_writes_the_run_once(self):
        train = ['train', '--config', 'tiny', '--dataset', 'cifar10', '--steps', 6,
                 '--batch-size', 16, '--checkpoint-every', 3, '--eval-every', 3,
                 '--num-eval-images', 32, '--data-dir', self.data, '--no-progress']
        one, two = (os.path.join(self.work, name) for name in ('run_one', 'run_two'))
        code, _, err = _run(*train, '--workdir', one)
        self.assertEqual(code, 0, err)
        results = run_workers([*train, '--workdir', two, '--strategy', 'multi_worker'],
                              self.work)
        _clean(self, results)
        self.assertIn('completed at step 6', results[0][1])
        self.assertIn('as worker 1; the chief writes the run', results[1][1])
        # One history line per evaluation, one event file, the chief's checkpoints.
        with open(os.path.join(two, 'history.jsonl')) as f:
            self.assertEqual([json.loads(line)['step'] for line in f], [3, 6])
        self.assertLen(glob.glob(os.path.join(two, 'logs', 'events.out.tfevents.*')), 1)
        self.assertEqual(tf.train.latest_checkpoint(os.path.join(two, 'checkpoints')),
                         os.path.join(two, 'checkpoints', 'ckpt-6'))
        self.assertFalse(os.path.exists(os.path.join(two, 'run.lock')))
        self.assertEqual(os.listdir(os.path.join(self.work, 'tmp')), [])  # Worker 1's removed.

        # The chief's export scores as the one-process run's does.
        from tfp_ood import export
        with np.load(os.path.join(self.data, 'cifar10_test.npz')) as f:
            images = f['images'][:32]
        bpd = []
        for run in (one, two):
            code, _, err = _run('export', '--workdir', run, '--output', run + '_model')
            self.assertEqual(code, 0, err)
            bpd.append(np.asarray(export.load(run + "_model").bits_per_dim(images)))
        np.testing.assert_allclose(bpd[1], bpd[0], rtol=1e-6)

        # Resumed by two workers: from the chief's checkpoint, history kept once.
        results = run_workers([*train, '--workdir', two, '--strategy', 'multi_worker',
                               '--steps', 9], self.work)
        _clean(self, results)
        self.assertIn('Resuming', results[1][1])
        with open(os.path.join(two, 'history.jsonl')) as f:
            self.assertEqual([json.loads(line)['step'] for line in f], [3, 6, 9])


@pytest.mark.slow(minutes=0.6)
def test_a_worker_killed_mid_scoring_stops_the_other_in_one_line(tmp_path):
    # 2,000 shipped CIFAR-10 samples in batches of 16: long enough to kill
    # worker 1 once its progress bar shows that scoring has begun.
    cluster = {'worker': [f'127.0.0.1:{port}' for port in _free_ports(2)]}
    out = tmp_path / 'scores'
    argv = [sys.executable, '-m', 'tfp_ood.cli', 'score', '--strategy', 'multi_worker',
            '--model-dir', os.path.join(REPO, 'saved_models', 'glow_cifar10'),
            '--dataset', 'cifar10', '--split', 'test', '--source', 'samples',
            '--batch-size', '16', '--output', str(out)]
    processes, errs = [], []
    try:
        for index in range(2):
            # TensorFlow's heartbeat timeout, not ours (30 s), to keep the test short.
            env = dict(os.environ, TFP_OOD_HEARTBEAT_TIMEOUT_S='10', TF_CONFIG=json.dumps(
                {'cluster': cluster, 'task': {'type': 'worker', 'index': index}}))
            errs.append(open(tmp_path / f'err{index}', 'w+'))
            processes.append(subprocess.Popen(argv, cwd=REPO, env=env,
                                              stdout=subprocess.DEVNULL, stderr=errs[-1]))
        deadline = time.monotonic() + 180
        while 'scoring cifar10' not in (tmp_path / 'err1').read_text():
            assert time.monotonic() < deadline and processes[1].poll() is None, (
                (tmp_path / 'err1').read_text())
            time.sleep(0.2)
        processes[1].kill()
        assert processes[0].wait(timeout=120) == 2  # Within TensorFlow's heartbeat timeout.
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        for f in errs:
            f.close()
    err = (tmp_path / 'err0').read_text()
    assert 'Traceback' not in err
    assert re.search(r'tfp-ood score: error: another worker of the cluster stopped or cannot '
                     r'be reached \(.+\); nothing was written to ', err), err
    assert sorted(os.listdir(tmp_path)) == ['err0', 'err1']  # No output, staging or lock.


def test_multi_worker_without_tf_config_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv('TF_CONFIG', raising=False)
    code, _, err = _run('score', '--strategy', 'multi_worker', '--model-dir', tmp_path,
                        '--npz', tmp_path / 'x.npz', '--output', tmp_path / 'out')
    assert code == 2
    assert err.strip() == ('tfp-ood score: error: the multi_worker strategy needs TF_CONFIG, '
                           "naming the cluster and this process's index in it (set it in the "
                           'environment of every worker)')
    monkeypatch.setenv('TF_CONFIG', '{"cluster": {"worker": ["a:1"]}, "task": {"index": 3}}')
    with pytest.raises(distribute.StrategyError, match='TF_CONFIG is not a cluster description'):
        distribute.create_strategy('multi_worker')


def _run_as_the_only_worker(code):
    """Python `code` in a fresh process, the one worker of a cluster on a free
    local port (this environment's TFP_OOD_HEARTBEAT_TIMEOUT_S left out)."""
    port, = _free_ports(1)
    env = dict(os.environ, TF_CONFIG=json.dumps(
        {'cluster': {'worker': [f'127.0.0.1:{port}']}, 'task': {'type': 'worker', 'index': 0}}))
    env.pop('TFP_OOD_HEARTBEAT_TIMEOUT_S', None)
    return subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow(minutes=0.2)
def test_a_strategy_created_too_late_says_what_to_do():
    code = ('import tensorflow as tf\n'
            'from tfp_ood import distribute\n'
            'tf.constant(1.0) + 1.0\n'
            'distribute.create_strategy("multi_worker")\n')
    result = _run_as_the_only_worker(code)
    assert result.returncode == 1
    assert ('StrategyError: the multi_worker strategy was created after TensorFlow had already '
            'run an op') in result.stderr
    assert 'create it first, at the start of the program' in result.stderr


@pytest.mark.slow(minutes=0.2)
def test_the_coordination_service_waits_longer_than_tensorflows_default_for_a_heartbeat():
    # TensorFlow's 10 s made finished runs on a loaded machine end with a false
    # "tasks have crashed" error (a worker's exit more than 10 s before the chief's).
    code = ('from tensorflow.python.eager import context\n'
            'from tfp_ood import distribute\n'
            'strategy = distribute.create_strategy("multi_worker")\n'
            'config = context.context().coordination_service\n'
            'print(config.service_leader, config.heartbeat_timeout_in_ms,'
            ' strategy.num_replicas_in_sync)\n')
    result = _run_as_the_only_worker(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['/job:worker/replica:0/task:0',
                                     str(distribute.HEARTBEAT_TIMEOUT_S * 1000), '1']
    assert distribute.HEARTBEAT_TIMEOUT_S > 10


@pytest.mark.parametrize('value', ['0', '-3', 'soon', 'inf', 'nan'])
def test_a_heartbeat_timeout_that_is_not_a_positive_number_is_refused(monkeypatch, value):
    monkeypatch.setenv('TFP_OOD_HEARTBEAT_TIMEOUT_S', value)
    with pytest.raises(distribute.StrategyError, match='is not a positive number of seconds'):
        distribute.heartbeat_timeout_s()
    monkeypatch.setenv('TFP_OOD_HEARTBEAT_TIMEOUT_S', '12.5')
    assert distribute.heartbeat_timeout_s() == 12.5
