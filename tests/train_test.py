"""Tests of fit(): training, exact resume, refusal of other runs, non-finite guard,
TensorBoard tags, and the two-device strategy against one device."""

import collections
import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tfp_ood import models, train
from tfp_ood.errors import InputError
from tfp_ood.config import GlowConfig
from tfp_ood.models import DensityModel
from tfp_ood.training import batches as training_batches

SHAPE = (8, 8, 3)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images(n=96, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + SHAPE, dtype=np.uint8)


def _model(hidden=8):
    return models.from_config(dict(family='glow', **GlowConfig(
        image_shape=SHAPE, num_levels=2, num_steps_per_level=1,
        hidden_channels=hidden).to_dict()))


def _config(**kwargs):
    defaults = dict(num_steps=12, batch_size=16, warmup_steps=2, checkpoint_every=4,
                    eval_every=6, log_every=2, num_init_images=64)
    defaults.update(kwargs)
    return train.TrainConfig(**defaults)


def _weights(model):
    return [v.numpy() for v in model.trainable_variables]


class _Toy(DensityModel):
    """A factorised Gaussian over pixels whose likelihood is NaN for any batch that
    holds an image whose first pixel is 255 (to exercise the non-finite guard)."""

    def __init__(self, always_nan=False):
        super().__init__(SHAPE, name='toy')
        self.loc = tf.Variable(tf.zeros(SHAPE))
        self.always_nan = always_nan

    def get_config(self):
        return {'family': 'toy', 'always_nan': self.always_nan}

    def log_prob_terms(self, images, noise=None):
        x = tf.cast(images, tf.float32) / 255.
        log_prob = -tf.reduce_sum((x - self.loc) ** 2, axis=[1, 2, 3])
        poison = tf.reduce_any(images[:, 0, 0, 0] == 255) | self.always_nan
        return {'log_prob': tf.where(poison, np.nan, log_prob)}


class FitTest(tf.test.TestCase):

    def test_trains_and_writes_run_directory(self):
        workdir = self.create_tempdir().full_path
        images = _images()
        model = _model()
        result = train.fit(model, images, _config(), workdir, eval_sets={'held': images[:32]},
                           data_info={'dataset': 'random'}, progress=False)
        self.assertEqual(result.step, 12)
        self.assertEqual(result.stop_reason, 'completed')
        self.assertEqual([r['step'] for r in result.history], [6, 12])
        self.assertLess(result.history[-1]['held/bits_per_dim'],
                        result.history[0]['held/bits_per_dim'])
        for name in ('config.json', 'history.jsonl', 'provenance.json'):
            self.assertTrue(os.path.exists(os.path.join(workdir, name)), name)
        with open(os.path.join(workdir, 'provenance.json')) as f:
            provenance = json.load(f)
        self.assertEqual(provenance['steps'], 12)
        self.assertEqual(provenance['data'], {'dataset': 'random'})
        self.assertIn('held/bits_per_dim', provenance['final_eval'])
        self.assertEqual(tf.train.latest_checkpoint(os.path.join(workdir, 'checkpoints'))[-7:],
                         'ckpt-12')

    @pytest.mark.slow(minutes=0.2)
    def test_resume_gives_the_uninterrupted_result(self):
        images = _images()
        straight = _model()
        train.fit(straight, images, _config(), self.create_tempdir().full_path, progress=False)
        workdir = self.create_tempdir().full_path
        first = _model()
        self.assertEqual(train.fit(first, images, _config(num_steps=5), workdir,
                                   progress=False).step, 5)
        resumed = _model()  # A new process would build a fresh model.
        result = train.fit(resumed, images, _config(), workdir, progress=False)
        self.assertEqual(result.step, 12)
        for a, b in zip(_weights(straight), _weights(resumed)):
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)
        # restore_latest loads the same weights for export or scoring.
        fresh = _model()
        self.assertEqual(train.restore_latest(fresh, workdir), 12)
        for a, b in zip(_weights(fresh), _weights(resumed)):
            self.assertAllEqual(a, b)

    def test_refuses_a_run_of_another_configuration(self):
        workdir = self.create_tempdir().full_path
        images = _images()
        train.fit(_model(), images, _config(num_steps=4), workdir, progress=False)
        with self.assertRaisesRegex(train.ConfigMismatchError, 'hidden_channels'):
            train.fit(_model(hidden=16), images, _config(), workdir, progress=False)
        with self.assertRaisesRegex(train.ConfigMismatchError, 'batch_size: 16 != 32'):
            train.fit(_model(), images, _config(batch_size=32), workdir, progress=False)
        with self.assertRaisesRegex(train.ConfigMismatchError, 'data'):
            train.fit(_model(), images, _config(), workdir, data_info={'dataset': 'x'},
                      progress=False)
        with self.assertRaisesRegex(train.ConfigMismatchError, 'is of model'):
            train.restore_latest(_model(hidden=16), workdir)
        # More steps is the same run: it resumes.
        self.assertEqual(train.fit(_model(), images, _config(num_steps=6), workdir,
                                   progress=False).step, 6)

    def test_nonfinite_steps_are_skipped_and_counted(self):
        images = _images(seed=1)
        images[:, 0, 0, 0] = np.minimum(images[:, 0, 0, 0], 254)
        images[::10, 0, 0, 0] = 255  # Poisons some batches.
        model = _Toy()
        result = train.fit(model, images, _config(num_steps=20), self.create_tempdir().full_path,
                           progress=False)
        self.assertEqual(result.step, 20)
        self.assertGreater(result.skipped_steps, 0)
        self.assertLess(result.skipped_steps, 20)
        self.assertTrue(np.all(np.isfinite(model.loc.numpy())))

        model = _Toy(always_nan=True)
        workdir = self.create_tempdir().full_path
        with self.assertRaisesRegex(train.TrainingDivergedError, '5 consecutive steps'):
            train.fit(model, images, _config(max_consecutive_nonfinite=5), workdir,
                      progress=False)
        self.assertAllEqual(model.loc.numpy(), np.zeros(SHAPE))  # Never updated.
        with open(os.path.join(workdir, 'provenance.json')) as f:
            self.assertRegex(json.load(f)['stop_reason'], '^error: TrainingDivergedError')
        # Running it again would burn as many steps and diverge again: refused at once.
        with self.assertRaisesRegex(train.TrainingDivergedError,
                                    'would diverge again.*--learning-rate'):
            train.fit(_Toy(always_nan=True), images, _config(max_consecutive_nonfinite=5),
                      workdir, progress=False)

    @pytest.mark.slow(minutes=0.15)
    def test_tensorboard_tags(self):
        workdir = self.create_tempdir().full_path
        images = _images()
        train.fit(_model(), images, _config(num_steps=6), workdir,
                  eval_sets={'held': images[:32]}, progress=False)
        events = EventAccumulator(os.path.join(workdir, 'logs'))
        events.Reload()
        tags = set(events.Tags()['tensors'])
        expected = {'config', 'train/bits_per_dim', 'train/learning_rate',
                    'train/grad_norm', 'train/images_per_s', 'train/skipped_steps',
                    'eval/held/bits_per_dim', 'eval/held/log_prob', 'eval/held/log_pz',
                    'eval/held/log_det', 'samples/temperature_0.7', 'samples/temperature_1.0'}
        self.assertEqual(expected - tags, set())
        # The loss is the bits/dim unless there is weight decay: then both.
        self.assertNotIn('train/loss', tags)
        decayed = self.create_tempdir().full_path
        train.fit(_model(), images, _config(num_steps=2, weight_decay=1.0), decayed,
                  progress=False)
        events = EventAccumulator(os.path.join(decayed, 'logs'))
        events.Reload()
        loss, bpd = (tf.make_ndarray(events.Tensors(t)[-1].tensor_proto)
                     for t in ('train/loss', 'train/bits_per_dim'))
        self.assertGreater(float(loss), float(bpd))

    @pytest.mark.slow
    def test_every_family_trains(self):
        images = _images()
        for name in ('cv_glow', 'pixelcnn', 'vae', 'vae_rnvp'):
            model = models.named_model(name, 'tiny', SHAPE)
            before = _weights(model)
            result = train.fit(model, images, _config(num_steps=3, eval_every=3),
                               self.create_tempdir().full_path, eval_sets={'held': images[:8]},
                               progress=False)
            self.assertEqual((result.step, result.skipped_steps), (3, 0), name)
            self.assertTrue(np.isfinite(result.history[-1]['held/bits_per_dim']), name)
            self.assertTrue(any(not np.array_equal(a, b)
                                for a, b in zip(before, _weights(model))), name)

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, 'fewer than one batch'):
            train.fit(_model(), _images(8), _config(), self.create_tempdir().full_path,
                      progress=False)
        with self.assertRaisesRegex(ValueError, 'TrainConfig.batch_size must be >= 1'):
            _config(batch_size=0)
        with self.assertRaisesRegex(ValueError, 'got dtype float32'):
            train.fit(_model(), _images().astype(np.float32), _config(),
                      self.create_tempdir().full_path, progress=False)
        # Refused before any training, not at the end of it.
        with self.assertRaisesRegex(ValueError, 'num_eval_images must be >= 1'):
            _config(num_eval_images=0)
        with self.assertRaisesRegex(ValueError, r'seed must be in 0..2\*\*32 - 1; got -1'):
            _config(seed=-1)  # NumPy's error from deep inside the first batch, before.
        workdir = self.create_tempdir().full_path
        with self.assertRaisesRegex(ValueError, "eval_sets\\['held'\\] holds no images"):
            train.fit(_model(), _images(), _config(), workdir,
                      eval_sets={'held': _images()[:0]}, progress=False)
        self.assertFalse(os.path.exists(os.path.join(workdir, 'checkpoints')))
        with open(os.path.join(workdir, 'a_file'), 'w') as f:
            f.write('x')
        with self.assertRaisesRegex(ValueError, 'is a file, not a run directory'):
            train.fit(_model(), _images(), _config(), os.path.join(workdir, 'a_file'),
                      progress=False)


class NonFiniteCheckpointTest(tf.test.TestCase):

    def test_a_non_finite_checkpoint_is_refused_for_export(self):
        workdir = self.create_tempdir().full_path
        model = _Toy()
        train.fit(model, _images(), _config(num_steps=4), workdir, progress=False)
        self.assertEqual(train.nonfinite_variables(model), [])
        model.loc.assign(tf.fill(SHAPE, np.nan))  # As a run with an infinite clip norm did.
        self.assertLen(train.nonfinite_variables(model), 1)
        step = tf.Variable(5, dtype=tf.int64)
        tf.train.CheckpointManager(tf.train.Checkpoint(model=model, step=step),
                                   os.path.join(workdir, 'checkpoints'), 5).save(5)
        with self.assertRaisesRegex(ValueError, 'non-finite variables'):
            train.restore_latest(_Toy(), workdir)


class TruncatedCheckpointTest(tf.test.TestCase):

    def test_resume_and_export_fall_back_past_a_truncated_checkpoint(self):
        workdir = self.create_tempdir().full_path
        images = _images()
        train.fit(_model(), images, _config(num_steps=8, checkpoint_every=4), workdir,
                  progress=False)
        directory = os.path.join(workdir, 'checkpoints')
        data = [n for n in os.listdir(directory) if n.startswith('ckpt-8.data')][0]
        with open(os.path.join(directory, data), 'r+b') as f:  # Killed mid-write.
            f.truncate(100)
        os.makedirs(os.path.join(directory, 'ckpt-12_temp'))  # An unfinished write.
        self.assertEqual(train.restore_latest(_model(), workdir), 4)
        self.assertFalse(os.path.exists(os.path.join(directory, 'ckpt-12_temp')))
        result = train.fit(_model(), images, _config(num_steps=12, checkpoint_every=4),
                           workdir, progress=False)
        self.assertEqual(result.step, 12)
        self.assertEqual(train.restore_latest(_model(), workdir), 12)

    @pytest.mark.slow(minutes=0.15)
    def test_a_run_resumed_after_a_kill_logs_each_step_once(self):
        workdir = self.create_tempdir().full_path
        images = _images()
        config = _config(num_steps=10, checkpoint_every=4, eval_every=3, log_every=1)
        train.fit(_model(), images, config, workdir, eval_sets={'held': images[:16]},
                  progress=False)
        # A SIGKILL after step 10 had been logged but before ckpt-10 was written.
        directory = os.path.join(workdir, 'checkpoints')
        for name in os.listdir(directory):
            if name.startswith('ckpt-10.'):
                os.remove(os.path.join(directory, name))
        with open(glob.glob(os.path.join(workdir, 'logs', 'events.*'))[0], 'ab') as f:
            f.write(b'\x10\x00\x00')  # And a record cut short.
        train.fit(_model(), images, _config(num_steps=12, checkpoint_every=4, eval_every=3,
                                            log_every=1),
                  workdir, eval_sets={'held': images[:16]}, progress=False)
        steps = collections.defaultdict(list)
        for path in glob.glob(os.path.join(workdir, 'logs', 'events.*')):
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    steps[value.tag].append(event.step)
        self.assertEqual(sorted(steps['train/bits_per_dim']), list(range(1, 13)))
        self.assertEqual(sorted(steps['eval/held/bits_per_dim']), [3, 6, 9, 12])
        self.assertEqual(len(glob.glob(os.path.join(workdir, 'logs', 'events.*'))), 2)


class RunLockTest(tf.test.TestCase):

    def _lock(self, workdir, pid, host=None):
        import socket
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, train.LOCK_FILE), 'w') as f:
            json.dump({'pid': pid, 'host': host or socket.gethostname()}, f)

    def test_a_live_run_is_refused_and_a_stale_lock_taken_over(self):
        workdir = self.create_tempdir().full_path
        self._lock(workdir, os.getpid())  # A live process on this machine.
        with self.assertRaisesRegex(train.RunLockedError, f'process {os.getpid()} on this'):
            train.fit(_model(), _images(), _config(num_steps=2), workdir, progress=False)
        self.assertFalse(os.path.exists(os.path.join(workdir, 'checkpoints')))
        self._lock(workdir, 1, host='elsewhere')
        with self.assertRaisesRegex(train.RunLockedError, 'on elsewhere.*delete the lock'):
            train.fit(_model(), _images(), _config(num_steps=2), workdir, progress=False)
        gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                              capture_output=True, text=True, check=True)
        self._lock(workdir, int(gone.stdout))  # A crashed run's lock.
        result = train.fit(_model(), _images(), _config(num_steps=2), workdir, progress=False)
        self.assertEqual(result.step, 2)
        self.assertFalse(os.path.exists(os.path.join(workdir, train.LOCK_FILE)))  # Released.


class BackgroundModelTest(tf.test.TestCase):
    """The two settings of the likelihood-ratio detector's background model."""

    @pytest.mark.slow(minutes=0.2)
    def test_weight_decay_adds_the_l2_penalty_in_bits_per_dim(self):
        model = _model()
        images = _images(16)
        model.initialize(images)
        noise = tf.random.uniform(images.shape, seed=3)
        decay = 10.0
        kernels = [v for v in model.trainable_variables if 'kernel' in v.name]
        self.assertNotEmpty(kernels)
        penalty_nats = decay * sum(float(np.sum(v.numpy() ** 2)) for v in kernels)
        expected_bpd = float(np.mean(model.bits_per_dim(
            model.training_log_prob(images, noise))))
        num_dims = np.prod(SHAPE)
        config = _config(batch_size=16, weight_decay=decay)
        for jit_compile in (False, True):  # The distributed step and the XLA one.
            optimizer = tf_keras.optimizers.Adam(0.)
            optimizer.build(model.trainable_variables)
            step = train.make_train_step(model, optimizer, config, jit_compile=jit_compile)
            loss, bpd, _, ok = step(tf.constant(images), noise)
            self.assertTrue(bool(ok))
            self.assertAllClose(float(bpd), expected_bpd, rtol=1e-5)
            self.assertAllClose(float(loss) - float(bpd),
                                penalty_nats / (num_dims * np.log(2.)), rtol=1e-4)

    def test_mutated_batches_change_the_expected_fraction_deterministically(self):
        images = _images(96)
        config = _config(batch_size=32, mutation_rate=0.2)

        def first_batches(start):
            batches = training_batches.distributed_batches(tf.distribute.get_strategy(),
                                                           images, config, start)
            return [b[0].numpy() for b, _ in zip(batches, range(3))]

        clean = [images[training_batches.global_batch(images, s, 32, config.seed)[0]]
                 for s in range(3)]
        mutated = first_batches(0)
        for c, m in zip(clean, mutated):
            self.assertEqual(m.dtype, np.uint8)
            changed = float(np.mean(c != m))
            self.assertAllClose(changed, 0.2 * 255 / 256, atol=0.02)
        # Batch s is a function of (seed, s): a resumed run sees the same mutations.
        self.assertAllEqual(first_batches(1)[0], mutated[1])

    def test_refuses_bad_settings(self):
        for kwargs in (dict(mutation_rate=1.5), dict(mutation_rate=float('nan')),
                       dict(weight_decay=-1.), dict(weight_decay=float('inf'))):
            with self.assertRaisesRegex(ValueError, 'mutation_rate|weight_decay'):
                _config(**kwargs)
        # NaN passed `x <= 0` checks, and an infinite clip norm gives NaN gradients.
        for kwargs in (dict(clip_norm=float('inf')), dict(clip_norm=float('nan')),
                       dict(learning_rate=float('nan')), dict(learning_rate=float('inf'))):
            with self.assertRaisesRegex(ValueError, 'must be finite and > 0'):
                _config(**kwargs)


class WeightAveragesTest(tf.test.TestCase):
    """Polyak averaging of the weights (`TrainConfig.ema_decay`)."""

    def test_averages_follow_the_schedule_by_hand(self):
        model = _Toy()
        # With 0.9 the schedule binds for every update here, with 0.3 the cap from n = 2.
        for cap in (0.9, 0.3):
            model.loc.assign(tf.fill(SHAPE, 2.))
            averages = train.WeightAverages(model, decay=cap)
            averages.reset()
            expected = 2.
            for n, value in enumerate([1., -3., 0.5, 4., 7., -1., 2.5, 0., 1., 3., 5., -2.]):
                model.loc.assign(tf.fill(SHAPE, value))
                averages.update()
                decay = min(cap, (1 + n) / (10 + n))
                expected = decay * expected + (1 - decay) * value
                self.assertAllClose(averages.averages[0].numpy(), np.full(SHAPE, expected),
                                    rtol=1e-6)
        with averages.swapped_in():
            self.assertAllClose(model.loc.numpy(), np.full(SHAPE, expected), rtol=1e-6)
        self.assertAllEqual(model.loc.numpy(), np.full(SHAPE, -2.))  # Its own weights back.
        for decay in (0., 1., -0.5):
            with self.assertRaisesRegex(ValueError, 'decay'):
                train.WeightAverages(model, decay)
        for decay in (1., -0.1, float('nan')):
            with self.assertRaisesRegex(ValueError, 'ema_decay'):
                _config(ema_decay=decay)

    @pytest.mark.slow(minutes=0.2)
    def test_a_run_trains_alike_and_evaluates_resumes_and_exports_its_averages(self):
        images, held = _images(), {'held': _images(32, seed=1)}
        plain = _model()
        train.fit(plain, images, _config(), self.create_tempdir().full_path, progress=False)
        workdir = self.create_tempdir().full_path
        averaged = _model()
        result = train.fit(averaged, images, _config(ema_decay=0.9), workdir, eval_sets=held,
                           progress=False)
        # The averages do not change what is trained ...
        for a, b in zip(_weights(plain), _weights(averaged)):
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)
        # ... but they are what is restored for export and scoring, and evaluated.
        exported = _model()
        self.assertEqual(train.restore_latest(exported, workdir), 12)
        self.assertFalse(all(np.allclose(a, b) for a, b in
                             zip(_weights(exported), _weights(averaged))))
        from_checkpoint = train.WeightAverages(_model(), 0.9)
        tf.train.Checkpoint(averages=from_checkpoint).read(
            tf.train.latest_checkpoint(os.path.join(workdir, 'checkpoints'))).expect_partial()
        self.assertEqual(int(from_checkpoint.updates), 12)
        for a, b in zip(_weights(exported), from_checkpoint.averages):
            self.assertAllEqual(a, b.numpy())
        bpd = float(np.mean(exported.bits_per_dim(exported.log_prob(held['held']))))
        self.assertAllClose(result.history[-1]['held/bits_per_dim'], bpd, rtol=1e-5)
        # A run interrupted and resumed keeps averaging where it stopped.
        resumed_dir = self.create_tempdir().full_path
        train.fit(_model(), images, _config(ema_decay=0.9, num_steps=5), resumed_dir,
                  progress=False)
        train.fit(_model(), images, _config(ema_decay=0.9), resumed_dir, progress=False)
        resumed = _model()
        train.restore_latest(resumed, resumed_dir)
        for a, b in zip(_weights(exported), _weights(resumed)):
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)


class InitFromTest(tf.test.TestCase):
    """A run started from a SavedModel's weights (`TrainConfig.init_from`)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        from tfp_ood import export
        directory = tempfile.mkdtemp()
        cls.addClassCleanup(shutil.rmtree, directory)
        cls.images = _images()
        # Initialised on data, then every weight moved: a fresh model shares none of them.
        cls.trained = _model()
        cls.trained.initialize(cls.images[:64], seed=0)
        rng = np.random.default_rng(0)
        for v in cls.trained.trainable_variables:
            v.assign_add(0.01 * rng.standard_normal(v.shape).astype(np.float32))
        cls.path = export.export(cls.trained, os.path.join(directory, 'glow'),
                                 provenance={'note': 'the first run'})

    def test_start_from_reads_every_weight_over_a_fresh_initialisation(self):
        fresh = _model()
        fresh.initialize(self.images[:64], seed=3)
        for a, b in zip(_weights(fresh), _weights(self.trained)):
            self.assertFalse(np.any(a == b))
        train.start_from(fresh, self.path)
        for a, b in zip(_weights(fresh), _weights(self.trained)):
            self.assertAllEqual(a, b)
        self.assertAllClose(fresh.log_prob(self.images[:8]),
                            self.trained.log_prob(self.images[:8]), rtol=1e-6)

    def test_a_run_starts_from_the_weights_and_is_its_own_run(self):
        workdir = self.create_tempdir().full_path
        # A learning rate too small to move a weight by 1e-6 in 3 steps: the run
        # ends where it started, the export's weights (the run's seed orders the data).
        config = _config(num_steps=3, learning_rate=1e-9, init_from=self.path, seed=5)
        model = _model()
        self.assertEqual(train.fit(model, self.images, config, workdir, progress=False).step, 3)
        for a, b in zip(_weights(model), _weights(self.trained)):
            self.assertAllClose(a, b, atol=1e-6, rtol=0)
        # Its provenance (what an export of it records) names the export it started
        # from, with that export's own provenance: the lineage outlives the export.
        started = train.RunDirectory(workdir).read_provenance()['started_from']
        self.assertEqual(started['path'], self.path)
        self.assertEqual(started['provenance'], {'note': 'the first run'})
        self.assertEqual(started['model'], self.trained.get_config())
        # The export it started from is part of the run's identity; more steps resume.
        with self.assertRaisesRegex(train.ConfigMismatchError, 'init_from'):
            train.fit(_model(), self.images, dataclasses.replace(config, init_from=''),
                      workdir, progress=False)
        self.assertEqual(train.fit(_model(), self.images,
                                   dataclasses.replace(config, num_steps=5), workdir,
                                   progress=False).step, 5)

    def test_train_on_images_builds_the_exports_model_whatever_the_runs_seed(self):
        from tfp_ood import export
        named = models.named_model('glow', 'tiny', SHAPE, seed=0)
        named.initialize(self.images[:64], seed=0)
        path = export.export(named, os.path.join(self.create_tempdir().full_path, 'tiny'))
        config = _config(num_steps=2, learning_rate=1e-9, init_from=path, seed=7)
        model, _ = train.train_on_images('glow', 'tiny', self.images,
                                         self.create_tempdir().full_path, config,
                                         progress=False)
        self.assertEqual(model.get_config()['seed'], 0)
        self.assertAllClose(model.log_prob(self.images[:8]), named.log_prob(self.images[:8]),
                            rtol=1e-5)

    def test_refuses_a_model_of_another_configuration_or_no_export(self):
        # The seed draws each 1x1 convolution's fixed LU permutation: the same
        # variables in a model of another seed give other likelihoods.
        other_seed = models.from_config(dict(self.trained.get_config(), seed=1))
        with self.assertRaisesRegex(InputError, r'seed \(0 there, 1 here\)'):
            train.start_from(other_seed, self.path)
        with self.assertRaisesRegex(InputError, r'hidden_channels \(8 there, 16 here\)'):
            train.fit(_model(hidden=16), self.images, _config(init_from=self.path),
                      self.create_tempdir().full_path, progress=False)
        # An export written before a field existed matches at the field's default.
        older = os.path.join(self.create_tempdir().full_path, 'older')
        shutil.copytree(self.path, older)
        metadata_path = os.path.join(older, 'assets', 'tfp_ood.json')
        with open(metadata_path) as f:
            metadata = json.load(f)
        del metadata['model']['coupling_scale']
        with open(metadata_path, 'w') as f:
            json.dump(metadata, f)
        train.start_from(_model(), older)
        metadata['model']['coupling_scale'] = 'contracting'
        with open(metadata_path, 'w') as f:
            json.dump(metadata, f)
        with self.assertRaisesRegex(InputError, 'coupling_scale'):
            train.start_from(_model(), older)
        with self.assertRaisesRegex(FileNotFoundError, 'No SavedModel'):
            train.fit(_model(), self.images, _config(init_from=self.path + '_missing'),
                      self.create_tempdir().full_path, progress=False)


if __name__ == '__main__':
    tf.test.main()
