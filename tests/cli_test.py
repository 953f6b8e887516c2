"""The tfp-ood command line: every verb on tiny data, its error paths, and a real
training subprocess killed and resumed."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfp_ood import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_data(directory, n_train=128, n_test=48):
    rng = np.random.default_rng(0)
    for split, n in (('train', n_train), ('test', n_test)):
        np.savez(os.path.join(directory, f'cifar10_{split}.npz'),
                 images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 labels=rng.integers(0, 10, n).astype(np.int64))


def _run(*argv):
    """Runs the CLI in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _train_args(workdir, data_dir, steps, eval_every=100):
    return ['train', '--config', 'tiny', '--dataset', 'cifar10', '--workdir', workdir,
            '--steps', steps, '--batch-size', 16, '--checkpoint-every', 10,
            '--eval-every', eval_every, '--num-eval-images', 32, '--data-dir', data_dir,
            '--no-progress']


class CliTest(tf.test.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.create_tempdir().full_path
        self.data = os.path.join(self.dir, 'data')
        os.makedirs(self.data)
        _write_data(self.data)

    @pytest.mark.slow(minutes=0.6)
    def test_train_export_score_compare(self):
        work, model = os.path.join(self.dir, 'run'), os.path.join(self.dir, 'model')
        code, out, err = _run(*_train_args(work, self.data, 8))
        self.assertEqual(code, 0, err)
        self.assertIn('completed at step 8', out)
        code, out, err = _run('export', '--workdir', work, '--output', model)
        self.assertEqual(code, 0, err)
        self.assertTrue(os.path.exists(os.path.join(model, 'saved_model.pb')))

        # A dataset split, an .npz file and a folder of PNGs.
        sets = os.path.join(self.dir, 'scores')
        code, out, err = _run('score', '--model-dir', model, '--dataset', 'cifar10',
                              '--split', 'test[:20]', '--data-dir', self.data,
                              '--output', os.path.join(sets, 'test'))
        self.assertEqual(code, 0, err)
        self.assertIn('cifar10/test[:20]: 20 images', out)
        for name in ('scores.csv', 'scores.npz', 'summary.json', 'summary.md', 'histogram.png'):
            self.assertTrue(os.path.exists(os.path.join(sets, 'test', name)), name)
        with open(os.path.join(sets, 'test', 'scores.csv')) as f:
            header, first = f.readline().strip(), f.readline().strip().split(',')
        levels = ','.join(f'level{i}_{t}' for i in range(2) for t in ('log_pz', 'log_det'))
        self.assertEqual(header, 'index,source,label,log_prob,bits_per_dim,log_pz,log_det,'
                         + levels)
        test_labels = np.load(os.path.join(self.data, 'cifar10_test.npz'))['labels']
        self.assertEqual(int(first[2]), test_labels[0])

        npz = os.path.join(self.dir, 'constant.npz')
        np.savez(npz, images=np.full((10, 32, 32, 3), 128, np.uint8))
        code, out, err = _run('score', '--model-dir', model, '--npz', npz, '--output',
                              os.path.join(sets, 'constant'))
        self.assertEqual(code, 0, err)

        folder = os.path.join(self.dir, 'pngs')
        os.makedirs(folder)
        rng = np.random.default_rng(1)
        for i in range(3):
            png = tf.io.encode_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
            tf.io.write_file(os.path.join(folder, f'img{i}.png'), png)
        code, out, err = _run('score', '--model-dir', model, '--images-dir', folder,
                              '--output', os.path.join(sets, 'pngs'))
        self.assertEqual(code, 0, err)
        with open(os.path.join(sets, 'pngs', 'scores.csv')) as f:
            self.assertEqual([line.split(',')[1] for line in f.readlines()[1:]],
                             ['img0.png', 'img1.png', 'img2.png'])

        code, out, err = _run('compare', os.path.join(sets, 'test', 'scores.npz'),
                              os.path.join(sets, 'constant', 'scores.npz'),
                              '--output', os.path.join(self.dir, 'compare'))
        self.assertEqual(code, 0, err)
        with open(os.path.join(self.dir, 'compare', 'metrics.json')) as f:
            metrics = json.load(f)
        self.assertEqual((metrics['num_in'], metrics['num_out']), (20, 10))
        self.assertTrue(0. <= metrics['auroc'] <= 1.)
        # TensorBoard: the histograms, the metrics and the precision-recall curve.
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        events = EventAccumulator(os.path.join(self.dir, 'compare', 'tensorboard'))
        events.Reload()
        tags = set(events.Tags()['tensors'])
        self.assertIn('ood/auroc', tags)
        self.assertTrue(any(t.startswith('pr/') for t in tags), tags)
        self.assertTrue(any(t.startswith('scores/') for t in tags), tags)

        # Error paths: each a one-line message and exit status 2.
        small = os.path.join(self.dir, 'small.npz')
        np.savez(small, images=np.zeros((2, 16, 16, 3), np.uint8))
        corrupt = os.path.join(self.dir, 'corrupt')
        os.makedirs(os.path.join(corrupt, 'assets'))
        with open(os.path.join(corrupt, 'saved_model.pb'), 'wb') as f:
            f.write(b'\x00garbage')
        with open(os.path.join(model, 'assets', 'tfp_ood.json')) as f:
            metadata = f.read()
        with open(os.path.join(corrupt, 'assets', 'tfp_ood.json'), 'w') as f:
            f.write(metadata)
        out_dir = os.path.join(self.dir, 'err')
        empty, truncated = (os.path.join(self.dir, n) for n in ('empty.npz', 'truncated.npz'))
        open(empty, 'wb').close()
        with open(npz, 'rb') as f, open(truncated, 'wb') as g:
            g.write(f.read()[:200])
        mislabelled = os.path.join(self.dir, 'mislabelled.npz')
        np.savez(mislabelled, images=np.zeros((3, 32, 32, 3), np.uint8), labels=np.zeros(2))
        cases = [
            (('score', '--model-dir', os.path.join(self.dir, 'nope'), '--npz', npz,
              '--output', out_dir), 'No SavedModel directory'),
            (('score', '--model-dir', corrupt, '--npz', npz, '--output', out_dir),
             'Cannot load the SavedModel'),
            (('score', '--model-dir', model, '--npz', small, '--output', out_dir),
             r'images are \[16, 16, 3\] but the model expects \[32, 32, 3\].*--resize'),
            (('score', '--model-dir', model, '--npz', os.path.join(self.dir, 'x.npz'),
              '--output', out_dir), 'No file at'),
            (('score', '--model-dir', model, '--npz', npz, '--output',
              os.path.join(sets, 'constant')), 'already exist.*--overwrite'),
            (('score', '--model-dir', model, '--dataset', 'cifar11', '--output', out_dir),
             "Unknown dataset 'cifar11'"),
            (('score', '--model-dir', model, '--images-dir', os.path.join(self.dir, 'none'),
              '--output', out_dir), 'no folder at'),
            (('compare', os.path.join(self.dir, 'x.npz'), npz, '--output', out_dir),
             'No score file at'),
            (('compare', npz, npz, '--output', out_dir), 'is not a score file'),
            # Empty, truncated and inconsistent files: one line, never a traceback.
            (('score', '--model-dir', model, '--npz', empty, '--output', out_dir),
             'is not a readable .npz file'),
            (('score', '--model-dir', model, '--npz', truncated, '--output', out_dir),
             'is not a readable .npz file'),
            (('score', '--model-dir', model, '--npz', mislabelled, '--output', out_dir),
             '3 images but 2 labels'),
            (('compare', empty, npz, '--output', out_dir), 'is not a score file'),
            (('compare', npz, truncated, '--output', out_dir), 'is not a score file'),
            (('export', '--workdir', work, '--output', model), 'already exists'),
            (('export', '--workdir', self.data, '--output', out_dir), 'not a run directory'),
            (_train_args(work, self.data, 8) + ['--no-resume'], 'already holds a run'),
            (('score', '--model-dir', model, '--npz', npz, '--output', npz),
             'is a file, not a folder'),
        ]
        for argv, pattern in cases:
            code, out, err = _run(*argv)
            self.assertEqual(code, 2, (argv, out, err))
            self.assertRegex(err, pattern)
            self.assertEqual(len(err.strip().splitlines()), 1, err)
        code, out, err = _run('score', '--model-dir', model, '--npz', small, '--resize',
                              '--output', os.path.join(sets, 'resized'))
        self.assertEqual(code, 0, err)
        code, out, err = _run('score', '--model-dir', model, '--npz', npz, '--overwrite',
                              '--output', os.path.join(sets, 'constant'))
        self.assertEqual(code, 0, err)

    def test_train_refuses_invalid_hyper_parameters_before_any_work(self):
        for flag, value in (('--clip-norm', 'inf'), ('--clip-norm', 'nan'),
                            ('--learning-rate', 'nan'), ('--mutation-rate', '2')):
            workdir = os.path.join(self.dir, f'run_{flag}_{value}')
            code, _, err = _run(*_train_args(workdir, self.data, 5), flag, value)
            self.assertEqual(code, 2, err)
            self.assertRegex(err, r'^tfp-ood train: error: .*must be')
            self.assertFalse(os.path.exists(workdir))  # Nothing written.

    @pytest.mark.slow(minutes=0.3)
    def test_coupling_scale_is_saved_and_runs_saved_before_it_resume(self):
        workdir = os.path.join(self.dir, 'contracting')
        code, _, err = _run(*_train_args(workdir, self.data, 10), '--coupling-scale',
                            'contracting')
        self.assertEqual(code, 0, err)
        with open(os.path.join(workdir, 'config.json')) as f:
            saved = json.load(f)
        self.assertEqual(saved['model']['coupling_scale'], 'contracting')
        # Another scale is another model: refused.
        code, _, err = _run(*_train_args(workdir, self.data, 20))
        self.assertEqual(code, 2, err)
        self.assertIn('another configuration', err)
        # A run written before the field existed ran with its default, and resumes.
        workdir = os.path.join(self.dir, 'old')
        self.assertEqual(_run(*_train_args(workdir, self.data, 10))[0], 0)
        path = os.path.join(workdir, 'config.json')
        with open(path) as f:
            saved = json.load(f)
        del saved['model']['coupling_scale']
        with open(path, 'w') as f:
            json.dump(saved, f)
        code, out, err = _run(*_train_args(workdir, self.data, 20))
        self.assertEqual(code, 0, err)
        self.assertIn('completed at step 20', out)
        code, _, err = _run(*_train_args(os.path.join(self.dir, 'p'), self.data, 5),
                            '--model', 'pixelcnn', '--coupling-scale', 'contracting')
        self.assertEqual(code, 2)
        self.assertRegex(err, r'^tfp-ood train: error: --coupling-scale is for --model glow')

    def test_latent_dim_sizes_the_vae_and_is_refused_for_other_models(self):
        workdir = os.path.join(self.dir, 'vae3')
        code, _, err = _run(*_train_args(workdir, self.data, 2), '--model', 'vae',
                            '--latent-dim', 3, '--num-eval-images', 4)
        self.assertEqual(code, 0, err)
        with open(os.path.join(workdir, 'config.json')) as f:
            self.assertEqual(json.load(f)['model']['latent_dim'], 3)
        checkpoint = tf.train.latest_checkpoint(os.path.join(workdir, 'checkpoints'))
        shapes = dict(tf.train.list_variables(checkpoint))
        self.assertIn([3, 1024], [shape for name, shape in shapes.items()
                                  if 'decoder' in name and 'kernel' in name])
        code, _, err = _run(*_train_args(os.path.join(self.dir, 'g'), self.data, 2),
                            '--latent-dim', 3)
        self.assertEqual(code, 2)
        self.assertRegex(err, r'^tfp-ood train: error: --latent-dim is for --model vae')

    def test_compare_reports_non_finite_scores_and_different_models(self):
        from tfp_ood.evaluate import ScoreResult

        def write(name, values, model='glow_cifar10'):
            values = np.asarray(values, np.float32)
            path = os.path.join(self.dir, f'{name}.npz')
            ScoreResult(name, {'log_prob': values, 'bits_per_dim': -values}, np.zeros(len(values)),
                        (32, 32, 3), model).save(path)
            return path

        good, partly = write('good', [1., 2., 3.]), write('partly', [0., np.nan, -1.])
        out = os.path.join(self.dir, 'cmp')
        code, printed, err = _run('compare', good, partly, '--output', out)
        self.assertEqual(code, 0, err)
        self.assertIn('0 in and 1 out of the scores are non-finite', printed)
        code, _, err = _run('compare', good, write('nan', [np.nan] * 3), '--output', out,
                            '--overwrite')
        self.assertEqual(code, 2)
        self.assertIn('every one of its 3 scores is non-finite', err)
        code, _, err = _run('compare', good, write('other', [0., 1.], model='glow_svhn'),
                            '--output', out, '--overwrite')
        self.assertEqual(code, 0, err)
        self.assertIn("different models ('glow_cifar10' and 'glow_svhn')", err)
        fresh = os.path.join(self.dir, 'cmp_key')
        code, _, err = _run('compare', good, partly, '--output', fresh, '--key', 'bogus')
        self.assertEqual(code, 2)
        self.assertIn("no score 'bogus'", err)
        self.assertFalse(os.path.exists(os.path.join(fresh, 'metrics.json')))

    def test_help(self):
        for verb in ('train', 'export', 'score', 'compare'):
            with self.assertRaises(SystemExit) as cm, \
                    contextlib.redirect_stdout(io.StringIO()) as out:
                cli.main([verb, '--help'])
            self.assertEqual(cm.exception.code, 0)
            self.assertIn('usage: tfp-ood', out.getvalue())

    def test_a_bug_shows_its_traceback_and_a_users_mistake_one_line(self):
        npz = os.path.join(self.dir, 'images.npz')
        np.savez(npz, images=np.zeros((2, 32, 32, 3), np.uint8))
        argv = ['score', '--model-dir', os.path.join(REPO, 'saved_models', 'glow_cifar10'),
                '--npz', npz, '--output', os.path.join(self.dir, 'out')]
        with mock.patch('tfp_ood.evaluate.score', side_effect=KeyError('internal')):
            code, _, err = _run(*argv)
        self.assertEqual(code, 1)
        self.assertIn('Traceback (most recent call last)', err)
        self.assertIn("KeyError: 'internal'", err)
        self.assertIn('tfp-ood score: internal error: the traceback above is a bug in tfp_ood',
                      err)
        # A ValueError from the package (here: images of the wrong size) is the user's.
        np.savez(npz, images=np.zeros((2, 28, 28, 1), np.uint8))
        code, _, err = _run(*argv)
        self.assertEqual(code, 2)
        self.assertNotIn('Traceback', err)
        self.assertRegex(err.strip(), r'^tfp-ood score: error: .*pass --resize')


def _latest_step(workdir):
    path = tf.train.latest_checkpoint(os.path.join(workdir, 'checkpoints'))
    return int(path.rsplit('-', 1)[1]) if path else 0


# Steps of the run KillAndResumeTest stops three times: each stop comes within a
# step or two of a checkpoint (every 10), so about 30 are used before the last run.
STEPS = 120


class KillAndResumeTest(tf.test.TestCase):
    """A training run stopped three ways, then resumed to its last step."""

    def _start(self, workdir, data):
        args = _train_args(workdir, data, STEPS, eval_every=STEPS // 3)
        argv = [sys.executable, '-m', 'tfp_ood.cli'] + [str(a) for a in args]
        return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))

    def _wait_for_checkpoint(self, process, workdir, after):
        deadline = time.monotonic() + 240
        while _latest_step(workdir) <= after:
            if process.poll() is not None:
                self.fail(f'training ended early: {process.communicate()}')
            self.assertLess(time.monotonic(), deadline, 'no checkpoint in time')
            time.sleep(0.05)
        return _latest_step(workdir)

    @pytest.mark.slow
    def test_sigint_sigterm_and_sigkill_then_resume(self):
        directory = self.create_tempdir().full_path
        _write_data(directory, n_train=256)
        workdir = os.path.join(directory, 'run')

        stopped_at = 0
        for sig in (signal.SIGINT, signal.SIGTERM):  # Checkpoint on the way out.
            process = self._start(workdir, directory)
            self._wait_for_checkpoint(process, workdir, stopped_at)
            process.send_signal(sig)
            out, err = process.communicate(timeout=120)
            # Saved but unfinished: 130 / 143, so that `set -e` scripts stop there.
            self.assertEqual(process.returncode, 128 + int(sig), err[-2000:])
            self.assertIn('run the same command to resume', err)
            with open(os.path.join(workdir, 'provenance.json')) as f:
                provenance = json.load(f)
            self.assertEqual(provenance['stop_reason'], f'stopped by {sig.name}')
            self.assertGreater(provenance['steps'], stopped_at)
            stopped_at = provenance['steps']
            self.assertLess(stopped_at, STEPS)
            self.assertEqual(_latest_step(workdir), stopped_at)

        process = self._start(workdir, directory)
        seen = self._wait_for_checkpoint(process, workdir, stopped_at)
        process.kill()  # SIGKILL: no chance to save.
        process.communicate(timeout=60)
        killed_at = _latest_step(workdir)
        self.assertGreaterEqual(killed_at, seen)
        self.assertLess(killed_at, STEPS)

        process = self._start(workdir, directory)
        out, err = process.communicate(timeout=300)
        self.assertEqual(process.returncode, 0, err[-2000:])
        self.assertIn(f'completed at step {STEPS}', out)
        self.assertIn(f'Resuming {workdir} from ckpt-{killed_at}.', out)  # Even --no-progress.
        with open(os.path.join(workdir, 'history.jsonl')) as f:
            steps = [json.loads(line)['step'] for line in f]
        self.assertEqual(steps, [STEPS // 3, 2 * STEPS // 3, STEPS])
        self.assertEqual(_latest_step(workdir), STEPS)


if __name__ == '__main__':
    tf.test.main()


class DetectTest(tf.test.TestCase):
    """fit-detector and detect on a tiny exported flow and a folder of PNGs."""

    @classmethod
    def setUpClass(cls):  # One fit for the class's tests (each writes its own outputs).
        super().setUpClass()
        import tempfile

        from tfp_ood import export, models
        cls.dir = tempfile.mkdtemp(prefix='detect_test_')
        cls.data = os.path.join(cls.dir, 'data')
        os.makedirs(cls.data)
        _write_data(cls.data, n_train=96, n_test=64)
        model = models.named_model('glow', 'tiny', (32, 32, 3))
        with np.load(os.path.join(cls.data, 'cifar10_train.npz')) as f:
            model.initialize(f['images'][:64])
        cls.model_dir = export.export(model, os.path.join(cls.dir, 'models', 'glow'))
        cls.fit = os.path.join(cls.dir, 'models', 'detector.json')
        cls.fit_run = _run('fit-detector', '--detector', 'density_of_states_terms',
                           '--model-dir', cls.model_dir, '--dataset', 'cifar10',
                           '--fit-split', 'train[:64]', '--validation-split', 'test[:40]',
                           '--output', cls.fit, '--data-dir', cls.data)

    @classmethod
    def tearDownClass(cls):
        import shutil
        shutil.rmtree(cls.dir, ignore_errors=True)
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        code, out, err = self.fit_run
        self.assertEqual(code, 0, err)
        self.assertIn('keeps 95%', out)
        self.assertRegex(out, r'\(40 images; bootstrap 95% interval of the threshold .* '
                              r'flagging 0\.0% to [0-9.]+% of them\)')
        self.assertIn('warning: only 40 validation images: fewer than 400', err)
        with open(self.fit) as f:
            self.assertEqual(json.load(f)['provenance']['threshold_interval']['confidence'],
                             0.95)

    def _pngs(self, folder, images):
        os.makedirs(folder, exist_ok=True)
        for i, image in enumerate(images):
            with open(os.path.join(folder, f'{i:02d}.png'), 'wb') as f:
                f.write(tf.io.encode_png(image).numpy())
        return folder

    def test_detect_on_a_folder_writes_every_output(self):
        images = np.random.default_rng(3).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
        images[:3] = 0  # Constant images: far out of distribution.
        folder = self._pngs(os.path.join(self.dir, 'mine'), images)
        out = os.path.join(self.dir, 'out')
        code, printed, err = _run('detect', '--detector', self.fit, '--images-dir', folder,
                                  '--output', out)
        self.assertEqual(code, 0, err)
        self.assertIn('of 10 images', printed)
        for name in ('detections.csv', 'detections.npz', 'summary.json', 'summary.md',
                     'histogram.png', 'contact_sheet.png', 'skipped.txt'):
            self.assertTrue(os.path.exists(os.path.join(out, name)), name)
        self.assertEqual(os.path.getsize(os.path.join(out, 'skipped.txt')), 0)
        with np.load(os.path.join(out, 'detections.npz')) as f:
            is_ood, scores = f['is_ood'], f['ood_score']
            self.assertEqual(list(f['source'][:2]), ['00.png', '01.png'])
            self.assertIn('component_compressed_bits', f)
        self.assertTrue(np.all(is_ood[:3]))  # The constant images are flagged.
        with open(os.path.join(out, 'summary.json')) as f:
            summary = json.load(f)
        self.assertEqual(summary['num_ood'], int(is_ood.sum()))
        with open(self.fit) as f:
            threshold = json.load(f)['threshold']
        self.assertAllEqual(is_ood, scores > threshold)
        # The most out-of-distribution files, named, highest score first (10 < 20: all).
        ranked = [f'{i:02d}.png' for i in np.argsort(-scores, kind='stable')]
        self.assertEqual([row['image'] for row in summary['most_ood']], ranked)
        with open(os.path.join(out, 'summary.md')) as f:
            markdown = f.read()
        self.assertIn('## The 10 most out-of-distribution images', markdown)
        self.assertIn(f'| 1 | {ranked[0]} | {scores.max():.6g} | yes |', markdown)
        # Nothing is overwritten without --overwrite.
        code, _, err = _run('detect', '--detector', self.fit, '--images-dir', folder,
                            '--output', out)
        self.assertEqual(code, 2)
        self.assertIn('--overwrite', err)

    def test_outputs_never_replace_an_input_nor_each_other_nor_stay_partial(self):
        from tfp_ood import detectors, outputs
        images = np.random.default_rng(6).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        folder = self._pngs(os.path.join(self.dir, 'inputs'), images)
        # The detector's own model folder, its fit, the images: refused before any work.
        for verb, output, extra in (
                ('export-detector', self.model_dir, ['--overwrite']),
                ('export-detector', os.path.dirname(self.model_dir), ['--overwrite']),
                ('detect', folder, ['--images-dir', folder, '--overwrite']),
                ('detect', self.model_dir, ['--images-dir', folder, '--overwrite'])):
            with self.subTest(verb=verb, output=output):
                code, _, err = _run(verb, '--detector', self.fit, '--output', output, *extra)
                self.assertEqual(code, 2, err)
                self.assertIn('which this command reads', err)
        code, _, err = _run('fit-detector', '--detector', 'density_of_states_terms',
                            '--model-dir', self.model_dir, '--dataset', 'cifar10',
                            '--output', os.path.join(self.model_dir, 'fit.json'),
                            '--data-dir', self.data)
        self.assertEqual(code, 2, err)
        self.assertIn('which this command reads', err)
        detectors.load_detector(self.fit)  # The model and the fit are intact.
        code, _, err = _run('fit-detector', '--detector', 'density_of_states_terms',
                            '--model-dir', self.model_dir, '--dataset', 'cifar10',
                            '--fit-split', 'train[:64]', '--validation-split', 'train[:64]',
                            '--output', os.path.join(self.dir, 'same.json'),
                            '--data-dir', self.data)
        self.assertEqual(code, 2, err)
        self.assertIn('--validation-split is --fit-split', err)
        # Another detect writing the same folder: refused at once, nothing replaced.
        out = os.path.join(self.dir, 'busy')
        with outputs.hold_lock(out + '.lock', f'{out} is being written', 'wait'):
            code, _, err = _run('detect', '--detector', self.fit, '--images-dir', folder,
                                '--output', out)
        self.assertEqual(code, 2, err)
        self.assertIn('is being written by process', err)
        # Ctrl-C (or SIGTERM) while scoring: one line, exit 130, nothing left behind.
        with mock.patch.object(detectors.FittedDetector, 'detect',
                               side_effect=KeyboardInterrupt):
            code, _, err = _run('detect', '--detector', self.fit, '--images-dir', folder,
                                '--output', out)
        self.assertEqual(code, 130)
        self.assertEqual(err.strip(), f'tfp-ood detect: interrupted; nothing was written to '
                                      f'{out}')
        self.assertEqual([n for n in os.listdir(self.dir) if n.startswith(('busy', '.busy'))],
                         [])

    @pytest.mark.slow(minutes=0.5)
    def test_sigint_and_sigterm_during_detect_leave_nothing_behind(self):
        many = os.path.join(self.dir, 'many.npz')
        np.savez(many, images=np.random.default_rng(8).integers(0, 256, (6000, 32, 32, 3),
                                                                dtype=np.uint8))
        for sig in (signal.SIGINT, signal.SIGTERM):
            with self.subTest(signal=sig.name):
                out = os.path.join(self.dir, f'signalled_{sig.name}')
                process = subprocess.Popen(
                    [sys.executable, '-m', 'tfp_ood.cli', 'detect', '--detector', self.fit,
                     '--npz', many, '--output', out], cwd=REPO, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True,
                    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
                deadline = time.monotonic() + 300
                while not os.path.exists(out + '.lock'):  # Staging: the scoring has begun.
                    if process.poll() is not None:
                        self.fail(f'detect ended before the signal: {process.communicate()}')
                    self.assertLess(time.monotonic(), deadline)
                    time.sleep(0.02)
                process.send_signal(sig)
                _, err = process.communicate(timeout=120)
                self.assertEqual(process.returncode, 130, err[-2000:])
                self.assertNotIn('Traceback', err)
                self.assertEqual(err.strip().splitlines()[-1],
                                 f'tfp-ood detect: interrupted; nothing was written to {out}')
                self.assertEqual([n for n in os.listdir(self.dir) if f'signalled_{sig.name}' in n],
                                 [])  # No output, no staging folder, no lock.

    def test_grayscale_is_converted_and_said_and_other_sizes_need_resize(self):
        rng = np.random.default_rng(4)
        gray = self._pngs(os.path.join(self.dir, 'gray'),
                          rng.integers(0, 256, (2, 32, 32, 1), dtype=np.uint8))
        code, printed, err = _run('detect', '--detector', self.fit, '--images-dir', gray,
                                  '--output', os.path.join(self.dir, 'g'))
        self.assertEqual(code, 0, err)
        self.assertIn('gray: 2 images grayscale -> RGB', printed)
        with open(os.path.join(self.dir, 'g', 'summary.json')) as f:
            self.assertEqual(json.load(f)['converted'], {'grayscale -> RGB': 2})
        with open(os.path.join(self.dir, 'g', 'summary.md')) as f:
            table = f.read().splitlines()
        self.assertIn('| images grayscale -> RGB |', table[0])
        self.assertTrue(table[2].endswith('| 2 |'), table)
        small = self._pngs(os.path.join(self.dir, 'small'),
                           rng.integers(0, 256, (2, 20, 24, 3), dtype=np.uint8))
        code, _, err = _run('detect', '--detector', self.fit, '--images-dir', small,
                            '--output', os.path.join(self.dir, 's'))
        self.assertEqual(code, 2)
        self.assertIn('2 of 2 images are not 32x32, the size the model takes: 00.png (20x24)',
                      err)
        self.assertIn('pass --resize', err)
        code, _, err = _run('detect', '--detector', self.fit, '--images-dir', small,
                            '--output', os.path.join(self.dir, 's'), '--resize')
        self.assertEqual(code, 0, err)
        code, _, err = _run('detect', '--detector', os.path.join(self.dir, 'none.json'),
                            '--images-dir', small, '--output', os.path.join(self.dir, 'n'))
        self.assertEqual(code, 2)
        self.assertIn('No fitted detector', err)

    @pytest.mark.slow(minutes=0.5)
    def test_own_folder_end_to_end_train_fit_detect(self):
        """A user's folder: a model trained on it, a detector fitted and calibrated
        on a held-out fraction of it, run on new images; each lists what it skipped."""
        rng = np.random.default_rng(6)
        own = self._pngs(os.path.join(self.dir, 'own', 'nested'),
                         rng.integers(100, 156, (40, 16, 16, 3), dtype=np.uint8))
        own = os.path.dirname(own)
        Image.fromarray(rng.integers(100, 156, (16, 16), dtype=np.uint8)).save(
            os.path.join(own, 'gray.png'))
        Image.fromarray(rng.integers(100, 156, (20, 16, 3), dtype=np.uint8)).save(
            os.path.join(own, 'tall.jpg'))
        with open(os.path.join(own, 'broken.png'), 'wb') as f:
            f.write(b'not a png')
        run, model = os.path.join(self.dir, 'own_run'), os.path.join(self.dir, 'own_model')
        train = ['train', '--config', 'tiny', '--images-dir', own, '--workdir', run,
                 '--steps', 2, '--batch-size', 8, '--no-progress']
        code, _, err = _run(*train)
        self.assertEqual(code, 2)
        self.assertIn('1 of 42 images are not 16x16, the most common size', err)
        code, printed, err = _run(*train, '--resize')
        self.assertEqual(code, 0, err)
        self.assertIn('own: training on 38 images of 16x16x3, evaluating on own (held out) (4)',
                      printed)
        with open(os.path.join(run, 'config.json')) as f:
            data = json.load(f)['data']
        self.assertEqual((data['images_dir'], data['image_shape'], data['skipped']),
                         (own, [16, 16, 3], 1))
        with open(os.path.join(run, 'skipped.txt')) as f:
            self.assertEqual(f.read().split('\t')[0], 'broken.png')
        self.assertEqual(_run('export', '--workdir', run, '--output', model)[0], 0)
        fit = os.path.join(self.dir, 'own_fit.json')
        code, printed, err = _run('fit-detector', '--detector', 'density_of_states',
                                  '--model-dir', model, '--images-dir', own, '--resize',
                                  '--true-positive-rate', 0.75, '--output', fit)
        self.assertEqual(code, 0, err)
        # The images the model held out when it trained: the threshold's.
        self.assertIn('trained on these images with 10% held out (seed 0)', printed)
        self.assertIn('own: fitting on 38 images, the threshold set on 4 held out', printed)
        self.assertIn('listed in ' + os.path.join(self.dir, 'own_fit.skipped.txt'), printed)
        with open(fit) as f:
            provenance = json.load(f)['provenance']
        self.assertEqual((provenance['validation_fraction'], provenance['skipped']), (0.1, 1))
        code, _, err = _run('fit-detector', '--detector', 'density_of_states',
                            '--model-dir', model, '--images-dir', own, '--resize',
                            '--validation-fraction', 0.5, '--output', fit, '--overwrite')
        self.assertEqual(code, 0, err)
        self.assertIn('may include images it was trained on', err)
        self.assertTrue(os.path.exists(os.path.join(self.dir, 'own_fit.skipped.txt')))
        new = self._pngs(os.path.join(self.dir, 'own_new'),
                         np.concatenate([rng.integers(100, 156, (3, 16, 16, 3), np.uint8),
                                         np.zeros((3, 16, 16, 3), np.uint8)]))
        code, printed, err = _run('detect', '--detector', fit, '--images-dir', new,
                                  '--output', os.path.join(self.dir, 'own_out'))
        self.assertEqual(code, 0, err)
        with np.load(os.path.join(self.dir, 'own_out', 'detections.npz')) as f:
            self.assertTrue(np.all(f['is_ood'][3:]))  # Black images: far from the folder's.

    def test_a_tfds_dataset_outside_the_registry_trains_fits_and_detects(self):
        """`--dataset oxford_flowers102` (images of many sizes, not in the registry,
        tfds.testing.mock_data) for train and fit-detector, spooled, never read
        into memory whole; detect on an .npz file."""
        import tensorflow_datasets as tfds

        from tfp_ood import spooled
        run, model = os.path.join(self.dir, 'tfds_run'), os.path.join(self.dir, 'tfds_model')
        fit = os.path.join(self.dir, 'tfds_fit.json')
        spools = []
        real = spooled.Spool.__init__

        def spool(self, *args, **kwargs):
            real(self, *args, **kwargs)
            spools.append(self._finalizer)

        with tfds.testing.mock_data(num_examples=24), \
                mock.patch.object(spooled.Spool, '__init__', spool):
            code, printed, err = _run(
                'train', '--config', 'tiny', '--dataset', 'oxford_flowers102', '--split',
                'train', '--image-shape', '16,16,3', '--resize', '--workdir', run,
                '--steps', 2, '--batch-size', 8, '--no-progress')
            self.assertEqual(code, 0, err)
            self.assertIn('oxford_flowers102/train: 24 images resized to 16x16', printed)
            self.assertIn('training on 22 images of 16x16x3, evaluating on '
                          'oxford_flowers102/train (held out) (2)', printed)
            self.assertEqual(_run('export', '--workdir', run, '--output', model)[0], 0)
            code, printed, err = _run(
                'fit-detector', '--detector', 'density_of_states', '--model-dir', model,
                '--dataset', 'oxford_flowers102', '--fit-split', 'train', '--resize',
                '--validation-fraction', 0.25, '--true-positive-rate', 0.75, '--output', fit)
            self.assertEqual(code, 0, err)
            self.assertIn('oxford_flowers102/train: fitting on 18 images, the threshold set on '
                          '6 held out', printed)
        # One spool per command, removed with its images or, where the trainer's
        # pipeline still holds them, when the process ends.
        self.assertLen(spools, 2)
        for finalizer in spools:
            self.assertTrue(not finalizer.alive or finalizer.atexit)
        new = os.path.join(self.dir, 'tfds_new.npz')
        np.savez_compressed(new, images=np.zeros((3, 16, 16, 3), np.uint8))
        code, printed, err = _run('detect', '--detector', fit, '--npz', new, '--output',
                                  os.path.join(self.dir, 'tfds_out'))
        self.assertEqual(code, 0, err)
        self.assertIn('3 images', printed)

    def test_a_full_disk_is_one_line_and_leaves_nothing(self):
        import errno
        images = np.random.default_rng(10).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        folder = self._pngs(os.path.join(self.dir, 'full_disk_in'), images)
        out = os.path.join(self.dir, 'full_disk_out')

        def full(*args):
            files = args[-1]
            with open(files['detections.csv'], 'w') as f:
                f.write('index,source\n0,')  # Half a file, then the disk is full.
            raise OSError(errno.ENOSPC, 'No space left on device')

        with mock.patch.object(cli, '_write_detections', side_effect=full):
            code, _, err = _run('detect', '--detector', self.fit, '--images-dir', folder,
                                '--output', out)
        self.assertEqual(code, 2)
        self.assertEqual(err.strip(), 'tfp-ood detect: error: [Errno 28] No space left on device')
        self.assertEqual([n for n in os.listdir(self.dir) if 'full_disk_out' in n], [])

    def test_odd_entries_of_an_images_folder_are_skipped_and_listed(self):
        images = np.random.default_rng(9).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        odd = {'a folder named like an image': (lambda d: os.makedirs(os.path.join(d, 'x.png')),
                                                []),
               'a broken symlink': (lambda d: os.symlink(os.path.join(d, 'gone.png'),
                                                         os.path.join(d, 'broken.png')),
                                    ['broken.png']),
               'a symlink loop': (lambda d: os.symlink(os.path.join(d, 'loop.png'),
                                                       os.path.join(d, 'loop.png')),
                                  ['loop.png'])}
        for name, (make, skipped) in odd.items():
            with self.subTest(name=name):
                folder = self._pngs(os.path.join(self.dir, name.replace(' ', '_')), images)
                make(folder)
                out = os.path.join(folder + '_out')
                code, printed, err = _run('detect', '--detector', self.fit, '--images-dir',
                                          folder, '--output', out)
                self.assertEqual(code, 0, err)
                self.assertIn('of 2 images', printed)
                with open(os.path.join(out, 'skipped.txt')) as f:
                    self.assertEqual([line.split('\t')[0] for line in f], skipped)
                self.assertEqual('could not be decoded' in printed, bool(skipped))
                with open(os.path.join(out, 'summary.json')) as f:
                    self.assertEqual(json.load(f)['num_skipped'], len(skipped))
