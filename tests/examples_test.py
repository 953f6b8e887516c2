"""End-to-end runs of the example scripts and of the experiment programs
(`python -m tfp_ood.experiments.<name>`): on tiny synthetic data with tiny
models trained from scratch, and with no flags on the embedded samples and
shipped models."""

import argparse
import contextlib
import csv
import glob
import importlib
import io
import json
import os
import shutil
import subprocess
import tempfile
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from tests import scripts
from tfp_ood import data, detectors, export, image_statistics, models, shifts
from tfp_ood.config import GlowConfig
from tfp_ood.experiments import analysis, common, detector_search
from tfp_ood.experiments import detectors as detectors_experiment

REPO = scripts.REPO
cifar_svhn = scripts.load('examples/cifar_svhn.py')
fashion_mnist = scripts.load('examples/fashion_mnist.py')
own_data = scripts.load('examples/own_data.py')


def _write(directory, name, split, n, shape):
    rng = np.random.default_rng(len(name) + n)
    np.savez(os.path.join(directory, f'{name}_{split}.npz'),
             images=rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
             labels=rng.integers(0, 10, n).astype(np.int64))


def _images_of(directory, name, split):
    with np.load(os.path.join(directory, f'{name}_{split}.npz')) as f:
        return f['images'].astype(np.float64)


def _tiny(directory, out, *extra):
    return ['--retrain', '--config', 'tiny', '--steps', '2', '--batch-size', '8',
            '--data-dir', directory, '--out', out, '--workdir', os.path.join(out, 'runs'),
            '--num-images', '16', '--num-synthetic', '8', '--num-train-images', '16',
            '--no-progress', *extra]


def _rows(out):
    with open(os.path.join(out, 'bpd_table.csv')) as f:
        return list(csv.DictReader(f))


class ExamplesTest(tf.test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.data = tempfile.mkdtemp(prefix='tfp_ood_examples_data_')
        _write(cls.data, 'cifar10', 'train', 64, (32, 32, 3))
        _write(cls.data, 'cifar10', 'test', 32, (32, 32, 3))
        # The offline SVHN split: test[:7000] trains, test[7000:] is held out.
        _write(cls.data, 'svhn_cropped', 'test', 7032, (32, 32, 3))
        _write(cls.data, 'fashion_mnist', 'train', 64, (28, 28, 1))
        _write(cls.data, 'fashion_mnist', 'test', 32, (28, 28, 1))
        _write(cls.data, 'mnist', 'test', 32, (28, 28, 1))

    @pytest.mark.slow(minutes=0.4)
    def test_cifar_svhn_retrain_tiny(self):
        out = self.create_tempdir().full_path
        outcome = cifar_svhn.main(_tiny(self.data, out))
        self.assertEqual(sorted(outcome['metrics']), ['cvglow_cifar10', 'glow_cifar10'])
        scored = {(r['model'], r['scored_set']) for r in _rows(out)}
        for model in ('glow_cifar10', 'cvglow_cifar10'):
            for name in ('cifar10/train', 'cifar10/test', 'svhn_cropped/test',
                         'constant_128', 'uniform_noise', 'cifar10/test (gray)',
                         'svhn_cropped/test (gray)'):
                self.assertIn((model, name), scored)
            for name in (f'{model}_log_prob.png', f'{model}_terms.png',
                         os.path.join('models', model, 'saved_model.pb'),
                         os.path.join('tensorboard', model)):
                self.assertTrue(os.path.exists(os.path.join(out, name)), name)
            from tensorboard.backend.event_processing import event_accumulator
            events = event_accumulator.EventAccumulator(os.path.join(out, 'tensorboard', model))
            events.Reload()
            self.assertIn('pr/cifar10/test vs svhn_cropped/test/pr_curves',
                          events.Tags()['tensors'])
        with open(os.path.join(out, 'bpd_table.md')) as f:
            table = f.read()
        self.assertIn('| glow_cifar10 | cifar10 | cifar10/test | 16 |', table)
        self.assertIn('3.464', table)  # The paper's number beside ours.
        with open(os.path.join(out, 'metrics.json')) as f:
            metrics = json.load(f)
        self.assertEqual(metrics['glow_cifar10']['out_set'], 'svhn_cropped/test')
        self.assertEqual(len(outcome['graying']), 4)  # 2 models x (CIFAR-10, SVHN).
        self.assertTrue(os.path.exists(os.path.join(out, 'graying.md')))

    @pytest.mark.slow(minutes=0.2)
    def test_cifar_svhn_reverse_tiny(self):
        out = self.create_tempdir().full_path
        outcome = cifar_svhn.main(_tiny(self.data, out, '--reverse'))
        self.assertEqual(list(outcome['metrics']), ['glow_svhn'])
        rows = {r['scored_set']: r for r in _rows(out)}
        self.assertIn('svhn_cropped/test[:7000]', rows)  # The training slice.
        self.assertEqual(rows['svhn_cropped/test[7000:]']['paper_bpd'], '2.057')
        with open(os.path.join(out, 'runs', 'glow_svhn', 'provenance.json')) as f:
            self.assertEqual(json.load(f)['data']['split'], 'test[:7000]')

    def test_cifar_svhn_models_flag_scores_only_those(self):
        out = self.create_tempdir().full_path
        outcome = cifar_svhn.main(_tiny(self.data, out, '--models', 'cvglow_cifar10'))
        self.assertEqual(list(outcome['metrics']), ['cvglow_cifar10'])
        self.assertEqual({r['model'] for r in _rows(out)}, {'cvglow_cifar10'})
        with self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
            cifar_svhn.main(['--reverse', '--models', 'glow_cifar10'])

    def test_background_search_on_tiny_models(self):  # About 6 s: in the quick tier.
        models_dir = self.create_tempdir().full_path
        images = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
        for name, seed in (('fg', 0), ('bg_a', 1), ('bg_b', 2)):
            _export_tiny(os.path.join(models_dir, name), 'glow', (32, 32, 3), images, seed)
        out = self.create_tempdir().full_path
        run = _script('background_search', '--foreground', os.path.join(models_dir, 'fg'),
                      '--background', os.path.join(models_dir, 'bg_a'),
                      '--background', os.path.join(models_dir, 'bg_b'),
                      '--data-dir', self.data, '--num-images', '16', '--out', out)
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        with open(os.path.join(out, 'search.json')) as f:
            search = json.load(f)
        self.assertLen(search['rows'], 2)
        for row in search['rows']:
            self.assertEqual(sorted(k for k in row if k.startswith('auroc_')),
                             ['auroc_cifar10_gray', 'auroc_fashion_mnist_resized',
                              'auroc_uniform_noise'])
        best = max(search['rows'], key=lambda r: r['mean_auroc'])
        self.assertEqual(search['chosen'], best['background'])
        # The validation sets are training images: the embedded samples are refused.
        run = _script('background_search', '--foreground', os.path.join(models_dir, 'fg'),
                      '--background', os.path.join(models_dir, 'bg_a'), '--out', out)
        self.assertEqual(run.returncode, 2)
        self.assertIn('pass --data-dir', run.stderr)

    @pytest.mark.slow
    def test_likelihood_path_of_two_vaes_beside_a_tiny_flow(self):
        from tfp_ood.config import VAEConfig
        from tfp_ood.experiments import likelihood_path
        models_dir = self.create_tempdir().full_path
        images = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
        _export_tiny(os.path.join(models_dir, 'glow_cifar10'), 'glow', (32, 32, 3), images)
        vaes = []
        for latent in (2, 6):
            vae = models.from_config(dict(family='vae', **VAEConfig.named(
                'tiny', (32, 32, 3), latent_dim=latent).to_dict()))
            vaes.append(export.export(vae, os.path.join(models_dir, f'vae{latent}')))
        out = self.create_tempdir().full_path
        run = _script('likelihood_path', '--models-dir', models_dir, '--data-dir', self.data,
                      '--num-images', '8', '--num-fit-images', '24', '--out', out,
                      '--no-progress', '--vae', vaes[1], '--vae', vaes[0])
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        with open(os.path.join(out, 'likelihood_path.json')) as f:
            result = json.load(f)
        self.assertEqual(result['vaes'], {'vae6': 6, 'vae2': 2})
        sets = ['uniform_noise', 'cifar10_gray', 'fashion_mnist_resized', 'fashion_mnist_color',
                *shifts.SHIFTS]
        self.assertEqual(result['sets'], sets)
        self.assertEqual(set(result['alone']['vae2']), set(likelihood_path.STATISTICS))
        # LPath's pair: the small latent's encoder, the large latent's decoder.
        pair = result['designs']['pair: vae2 encoder, vae6 decoder, copod']
        self.assertEqual(pair['statistics'], [
            'vae2_posterior_loc_norm', 'vae2_posterior_log_scale_mean',
            'vae6_decoder_residual_norm', 'vae6_decoder_std_norm'])
        self.assertAlmostEqual(pair['mean_auroc'], np.mean(list(pair['aurocs'].values())))
        self.assertLen(result['designs'], 3 * len(likelihood_path.ESTIMATORS))
        for pool, chosen in result['search'].items():  # No gradient norm: one pass.
            self.assertFalse([s for s in chosen['statistics'] if s.endswith('_grad_norm')])
            self.assertEqual(chosen['vae_statistics'],
                             [s for s in chosen['statistics'] if s.startswith('vae')])
        self.assertEqual(list(result['search']), ['exportable'])
        cache, = glob.glob(os.path.join(out, 'statistics_glow_cifar10_*.npz'))
        with np.load(cache) as saved:  # The flow's one-pass statistics only: no gradients.
            self.assertIn('fit/level0_log_pz', saved.files)
            self.assertFalse([k for k in saved.files if k.endswith('_grad_norm')])
        with open(os.path.join(out, 'likelihood_path.md')) as f:
            self.assertIn('| pair: vae2 encoder, vae6 decoder, ledoit_wolf |', f.read())
        # A flow is not a VAE.
        run = _script('likelihood_path', '--models-dir', models_dir, '--data-dir', self.data,
                      '--num-images', '8', '--out', out, '--no-progress', '--vae',
                      os.path.join(models_dir, 'glow_cifar10'))
        self.assertEqual(run.returncode, 2)
        self.assertIn('holds a glow model; only a VAE', run.stderr)

    @pytest.mark.slow
    def test_detector_search_on_a_tiny_flow(self):
        models_dir = self.create_tempdir().full_path
        images = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
        _export_tiny(os.path.join(models_dir, 'glow_cifar10'), 'glow', (32, 32, 3), images)
        out = self.create_tempdir().full_path
        run = _script('detector_search', '--models', 'glow_cifar10', '--models-dir',
                      models_dir, '--data-dir', self.data, '--num-images', '8',
                      '--num-fit-images', '24', '--out', out, '--no-progress')
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        with open(os.path.join(out, 'search.json')) as f:
            result = json.load(f)['glow_cifar10']
        # Fit images after the three validation blocks: none is also a validation image.
        self.assertEqual(result['fit_split'], 'train[24:48]')
        sets = ['uniform_noise', 'cifar10_gray', 'fashion_mnist_resized', 'fashion_mnist_color',
                *shifts.SHIFTS]
        for pool, chosen in result['pools'].items():
            self.assertEqual([r['estimator'] for r in chosen['rows']],
                             list(detector_search.ESTIMATORS))
            for row in chosen['rows']:
                self.assertEqual(list(row['aurocs']), sets)
                self.assertEqual(list(row['detection_rates']), sets)
                self.assertAlmostEqual(row['mean_auroc'], np.mean(list(row['aurocs'].values())))
                self.assertAlmostEqual(row['mean_detection_rate'],
                                       np.mean(list(row['detection_rates'].values())))
                # The rule, where the statistics were chosen (the first halves): never
                # more than the tolerance below one of its statistics alone.
                if row['estimator'] in detector_search.SEARCHED:
                    for k, v in row['choice']['aurocs'].items():
                        self.assertGreaterEqual(v, row['choice']['best_single'][k] - 0.02,
                                                (pool, k))
            # The best, on the second halves, of the searched designs (this pool's and
            # the smaller pools') and the named designs the pool can compute, by the
            # mean fraction flagged at 95% TPR.
            named = [r for r in result['reference'].values()
                     if pool == 'python' or not {'jpeg2000_bits', 'jpegxl_bits'} & set(
                         r['statistics'])]
            pools = list(result['pools'])
            named += [r for p in pools[:pools.index(pool)] for r in result['pools'][p]['rows']]
            if pool != 'exportable':  # Each pool holds the one before: never a worse choice.
                before = result['pools'][pools[pools.index(pool) - 1]]['chosen']
                self.assertGreaterEqual(chosen['chosen']['score'], before['score'])
            self.assertEqual(result['criterion'], 'detection_rate')
            for row in chosen['rows'] + named:
                self.assertAlmostEqual(row['score'], np.mean(
                    [row['detection_rates'][k] for k in result['sets_used']]))
            for row in chosen['rows'] + named:  # The rule, on the first halves.
                self.assertEqual(row['keeps_the_rule'],
                                 max(row['rule_shortfall'].values(), default=0) <= 0.02)
            eligible = [r for r in chosen['rows'] + named if r['keeps_the_rule']]
            self.assertTrue(chosen['chosen']['keeps_the_rule'])
            self.assertEqual(chosen['chosen']['score'], max(r['score'] for r in eligible))
            design = detectors.read_design(os.path.join(
                out, f'glow_cifar10{detector_search.POOLS[pool]}.json'))
            self.assertEqual(design['estimator'], chosen['chosen']['estimator'])
            if pool != 'python':
                self.assertEqual(design['codecs'], [])
            if pool == 'exportable':  # One pass of the model: no gradient norms.
                self.assertFalse([s for s in design['statistics'] if s.endswith('_grad_norm')])
        self.assertEqual(list(result['pools']), ['exportable', 'gradients', 'python'])
        # Every set's statistics hold the flow's gradient norms, the gradients pool's own.
        model = export.restore(os.path.join(models_dir, 'glow_cifar10'))
        cache, = glob.glob(os.path.join(out, 'statistics_glow_cifar10_*.npz'))
        with np.load(cache) as saved:
            for set_name in ['fit', 'in', *sets]:
                for name in model.gradient_statistic_names:
                    self.assertIn(f'{set_name}/{name}', saved.files)
            fit = {k.split('/', 1)[1]: None for k in saved.files if k.startswith('fit/')}
        # Every named design whose statistics the model has (the tiny flow has no
        # third level, so not the CIFAR-10 Glow's earlier choice).
        self.assertEqual(set(result['reference']), {
            k for k, (names, _) in detector_search.REFERENCE.items()
            if set(detector_search._expand(names, fit)) <= set(fit)})
        self.assertNotIn('selected_before_mild_shifts', result['reference'])
        # The sets that take part: those some statistic alone separates with AUROC >= 0.8,
        # but for the contrast and noise shifts, which are reported only.
        self.assertEqual(result['sets_used'], [
            k for k, v in result['best_single'].items()
            if v['auroc'] >= 0.8 and k not in detector_search.REPORTED_ONLY])
        self.assertTrue({'contrast', 'contrast_mild', 'gaussian_noise'} <= set(sets))
        self.assertNotIn('training_images', sets)  # Only with --held-out-split.
        # Each compressed length alone, as a one-statistic design scores it.
        self.assertEqual(list(result['complexity_alone']), list(detector_search.COMPLEXITY))
        reference = result['reference']['density_of_states_gaussian_tf']
        for name in ('loco_bits', 'wavelet_rgb_bits'):
            self.assertEqual(result['complexity_alone'][name], reference['singles'][name])
        # And how closely each TensorFlow estimate follows each Python-only length.
        self.assertEqual(list(result['stand_ins']), list(detector_search.ESTIMATES))
        for row in result['stand_ins'].values():
            self.assertEqual(list(row), ['jpeg2000_bits', 'jpegxl_bits'])
            for value in row.values():
                self.assertBetween(value, -1., 1.)
        with open(os.path.join(out, 'search.md')) as f:
            text = f.read()
        self.assertIn('### glow_cifar10', text)
        self.assertIn('| wavelet_bits | ', text)
        self.assertIn('| wavelet_rgb_bits | ', text)
        run = _script('detector_search', '--models', 'glow_cifar10', '--models-dir',
                      models_dir, '--out', out)
        self.assertEqual(run.returncode, 2)
        self.assertIn('pass --data-dir', run.stderr)

    def test_a_design_below_one_of_its_statistics_is_not_chosen(self):
        # `a` separates set A (shifted by 2) and `b` set B; together, under one
        # Gaussian, they flag more of both sets than either alone, but each set
        # is separated less well than by its own statistic alone: the rule.
        rng = np.random.default_rng(0)

        def statistics(shift_a=0., shift_b=0., n=1000):
            return {'a': rng.normal(shift_a, 1., n), 'b': rng.normal(shift_b, 1., n)}

        stats = {'fit': statistics(), 'in': statistics(), 'A': statistics(shift_a=2.),
                 'B': statistics(shift_b=2.)}
        with mock.patch.dict(detector_search.REFERENCE, {'both': (['a', 'b'], 'gaussian')},
                             clear=True):
            strict = detector_search.search_model(None, stats, progress=False,
                                                  rule_tolerance=0.)
            loose = detector_search.search_model(None, stats, progress=False,
                                                 rule_tolerance=1.)
        both = strict['reference']['both']
        self.assertFalse(both['keeps_the_rule'])
        self.assertEqual(set(both['rule_shortfall']), {'A', 'B'})
        for pool in ('exportable', 'python'):
            rows = strict['pools'][pool]['rows']
            self.assertGreater(both['score'], max(r['score'] for r in rows))
            self.assertLen(strict['pools'][pool]['chosen']['statistics'], 1)  # a or b alone.
            self.assertTrue(strict['pools'][pool]['chosen']['keeps_the_rule'])
            # Without the rule, both statistics win (the greedy search finds them too).
            self.assertEqual(set(loose['pools'][pool]['chosen']['statistics']), {'a', 'b'})

    def test_a_statistics_cache_from_before_a_statistic_gains_it_alone(self):
        sets = {'in': np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), np.uint8),
                'fit': np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), np.uint8)}
        older = sorted(set(image_statistics.IMAGE_STATISTICS) - {'wavelet_bits'})
        stats = {k: dict(image_statistics.image_statistics_array(v, older),
                         log_prob=np.arange(len(v), dtype=np.float64)) for k, v in sets.items()}
        path = os.path.join(self.create_tempdir().full_path, 'statistics.npz')
        np.savez(path, **{f'{k}/{n}': v for k, d in stats.items() for n, v in d.items()})
        # No model: a cache that were recomputed rather than topped up would fail here.
        out = detector_search.cached_statistics(path, None, sets, progress=False)
        for k, images in sets.items():
            self.assertAllEqual(out[k]['log_prob'], stats[k]['log_prob'])
            self.assertAllClose(out[k]['wavelet_bits'], image_statistics.image_statistics(
                images, ['wavelet_bits'])['wavelet_bits'])
        again = detector_search.cached_statistics(path, None, sets, progress=False)
        self.assertEqual(set(again['in']), set(out['in']))  # Saved with the addition.
        # With a model, its gradient norms are added too, and only they are computed.
        model = models.named_model('glow', 'tiny', (8, 8, 3))
        model.initialize(sets['in'])
        out = detector_search.cached_statistics(path, model, sets, progress=False)
        for k, images in sets.items():
            self.assertAllEqual(out[k]['log_prob'], stats[k]['log_prob'])  # Not recomputed.
            expected = model.gradient_statistics(images)
            for name in model.gradient_statistic_names:
                self.assertAllClose(out[k][name], expected[name], rtol=1e-5)
        # A validation set added since is computed alone, the others read back.
        wider = dict(sets, blur_mild=shifts.shift('blur_mild', sets['in']))
        out = detector_search.cached_statistics(path, model, wider, progress=False)
        self.assertEqual(list(out), list(wider))
        self.assertAllEqual(out['in']['log_prob'], stats['in']['log_prob'])
        expected = detector_search.statistics_of(model, wider['blur_mild'])
        self.assertEqual(set(out['blur_mild']), set(expected))
        for name, values in expected.items():
            self.assertAllClose(out['blur_mild'][name], values, rtol=1e-5, msg=name)
        # Sets the cache has and the call does not name stay cached, left out of the result.
        fewer = detector_search.cached_statistics(path, None, {'in': sets['in']}, False)
        self.assertEqual(list(fewer), ['in'])
        again = detector_search.cached_statistics(path, None, wider, progress=False)
        self.assertAllEqual(again['blur_mild']['log_prob'], out['blur_mild']['log_prob'])

    def test_held_out_split_gives_the_in_distribution_side_images_the_model_never_saw(self):
        source = common.Source(argparse.Namespace(
            data_dir=self.data, source='local', download=False, num_images=None))
        model = models.named_model('glow', 'tiny', (32, 32, 3))
        train, _ = data.read_npz(os.path.join(self.data, 'cifar10_train.npz'))
        test, _ = data.read_npz(os.path.join(self.data, 'cifar10_test.npz'))
        sets = detector_search.validation_images(source, model, 8, held_out='test')
        self.assertAllEqual(sets['in'], test[:8])
        self.assertAllEqual(sets['training_images'], train[:8])  # Reported only.
        self.assertIn('training_images', detector_search.REPORTED_ONLY)
        self.assertAllEqual(sets['invert'], 255 - test[8:16])  # Shifts of unseen images.
        default = detector_search.validation_images(source, model, 8)
        self.assertAllEqual(default['in'], train[:8])
        self.assertAllEqual(default['invert'], 255 - train[16:24])
        self.assertNotIn('training_images', default)
        with self.assertRaisesRegex(ValueError, 'a split name'):
            detector_search.main(['--held-out-split', 'test[:5000]', '--data-dir', self.data])

    @pytest.mark.slow(minutes=0.2)
    def test_fashion_mnist_retrain_tiny(self):
        out = self.create_tempdir().full_path
        fashion_mnist.main(_tiny(self.data, out))
        scored = {r['scored_set'] for r in _rows(out)}
        self.assertEqual(scored, {'fashion_mnist/train', 'fashion_mnist/test', 'mnist/test',
                                  'constant_0', 'uniform_noise'})
        self.assertTrue(os.path.exists(os.path.join(out, 'glow_fashion_mnist_log_prob.png')))


def _script(name, *args):
    """Runs the experiment `python -m tfp_ood.experiments.<name> ARGS` in this
    process, as its command line does (`common.run`: a user's error is one line
    and exit status 2), from the repository; returns its exit status and output.
    (Each experiment's `-m` entry point answers --help in
    readme_test.DocsClaimsTest.)"""
    module = importlib.import_module(f'tfp_ood.experiments.{name}')
    out, err, code, cwd = io.StringIO(), io.StringIO(), 0, os.getcwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            common.run(lambda: module.main([str(a) for a in args]))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(cwd)
    return subprocess.CompletedProcess([name, *args], code, out.getvalue(), err.getvalue())


def _export_tiny(path, family, shape, init_images, seed=0):
    model = models.from_config(dict(family=family, **GlowConfig.named(
        'tiny', shape, seed=seed).to_dict()))
    model.initialize(init_images)
    for v in model.trainable_variables:  # Non-trivial couplings and priors.
        v.assign_add(0.01 * tf.random.stateless_normal(v.shape, seed=[seed, 1]))
    export.export(model, path)


def _in_directory(directory, fn):
    """Runs `fn()` with `directory` as the working directory (default --out paths)."""
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            result = fn()
        return result, stdout.getvalue()
    finally:
        os.chdir(cwd)


def _bpd(outcome, model, scored_set):
    return next(r.bpd_mean for r in outcome['rows']
                if r.model == model and r.scored_set == scored_set)


class OwnDataExampleTest(tf.test.TestCase):

    @pytest.mark.slow(minutes=0.5)
    def test_demo_trains_fits_exports_and_detects(self):
        out = self.create_tempdir().full_path
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            own_data.main(['--demo', '--config', 'tiny', '--steps', '2', '--out', out])
        printed = printed.getvalue()
        self.assertIn('density_of_states_terms: threshold', printed)
        self.assertRegex(printed, r'svhn_cropped: [0-9.]+% of 2000 images flagged')
        self.assertRegex(printed, r'AUROC held-out CIFAR-10 against SVHN: [01]\.[0-9]{3}')
        for name in ('run/config.json', 'model/saved_model.pb', 'detector.json',
                     'detector/saved_model.pb'):
            self.assertTrue(os.path.exists(os.path.join(out, name)), name)
        # The fit and its SavedModel agree on the held-out images' threshold.
        fitted = detectors.load_detector(os.path.join(out, 'detector.json'))
        self.assertEqual(fitted.calibration.true_positive_rate, 0.95)


class NoFlagsTest(tf.test.TestCase):
    """The main jobs as a newcomer first runs them: no flags, so the embedded
    2,000-image samples and the SavedModels shipped in saved_models/ (the
    reverse pair, which the README runs on the full data, on the first 500
    images of each sample). (The README's first command, cifar_svhn.py, runs
    in a fresh clone in readme_test.StrangerTest.)"""

    @pytest.mark.slow
    def test_cifar_svhn_reverse_on_the_samples(self):
        # The README runs --reverse on the full data; on the embedded samples the
        # first 500 images of each set show the shipped SVHN Glow's asymmetry.
        out = self.create_tempdir().full_path
        outcome, printed = _in_directory(out, lambda: cifar_svhn.main(
            ['--reverse', '--num-images', '500']))
        self.assertIn('embedded in the package', printed)
        self.assertEqual(list(outcome['metrics']), ['glow_svhn'])
        # The asymmetry: under the SVHN Glow, CIFAR-10 is the less likely set. The
        # embedded SVHN sample (test images 8,000-9,999) is outside its training slice.
        self.assertLess(_bpd(outcome, 'glow_svhn', 'svhn_cropped/test'),
                        _bpd(outcome, 'glow_svhn', 'cifar10/test'))
        self.assertGreater(outcome['metrics']['glow_svhn']['auroc'], 0.9)

    @pytest.mark.slow
    def test_fashion_mnist_no_flags(self):
        if not os.path.isdir(os.path.join(REPO, 'saved_models', 'glow_fashion_mnist')):
            self.skipTest('saved_models/glow_fashion_mnist is not shipped')
        out = self.create_tempdir().full_path
        outcome, printed = _in_directory(out, lambda: fashion_mnist.main([]))
        self.assertIn('embedded in the package', printed)
        self.assertEqual(list(outcome['metrics']), ['glow_fashion_mnist'])
        rows = {r.scored_set: r for r in outcome['rows']}
        self.assertEqual(rows['fashion_mnist/test'].num_images, 2000)
        # The paper's Figure 2: MNIST is more likely than FashionMNIST, its training data.
        self.assertLess(rows['mnist/test'].bpd_mean, rows['fashion_mnist/test'].bpd_mean)
        self.assertLess(outcome['metrics']['glow_fashion_mnist']['auroc'], 0.5)
        self.assertGreater(rows['uniform_noise'].bpd_mean, rows['fashion_mnist/test'].bpd_mean)


class DetectorsExampleTest(tf.test.TestCase):

    @pytest.mark.slow
    def test_detectors_table_on_the_samples(self):
        out = self.create_tempdir().full_path
        # Without the rows that read the gradient norms (the slowest; below on a tiny flow).
        run = _script('detectors', '--models', 'glow_cifar10', 'vae_cifar10', '--num-images',
                      '100', '--num-synthetic', '50', '--out', out, '--no-progress',
                      '--skip', 'gradient_norms', 'density_of_states_selected_gradients',
                      'density_of_states_selected_python')
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        with open(os.path.join(out, 'detectors.json')) as f:
            rows = json.load(f)['rows']
        keys = {'detector', 'model', 'in', 'out', 'batch_size', 'auroc', 'aupr_in', 'aupr_out',
                'fpr_at_95_tpr', 'published_auroc'}
        for row in rows:
            self.assertContainsSubset(keys, row)
        found = {(r['detector'], r['out'], r['batch_size']) for r in rows}
        for detector in ('raw_likelihood', 'input_complexity', 'density_of_states', 'waic'):
            for out_set in ('svhn_cropped', 'constant', 'uniform_noise', 'cifar10_gray',
                            'svhn_cropped_gray'):
                self.assertIn((detector, out_set, 1), found)
        for m in (1, 2, 5, 10, 25):
            self.assertIn(('typicality', 'svhn_cropped', m), found)
        # The design chosen on validation sets (saved_models/designs/) has a row too.
        self.assertIn(('density_of_states_selected', 'svhn_cropped', 1), found)
        self.assertFalse({'gradient_norms', 'density_of_states_selected_python'}
                         & {r['detector'] for r in rows})
        # The VAE's column: the likelihood path alone, beside its published figure.
        vae_rows = [r for r in rows if r['model'] == 'vae_cifar10']
        self.assertEqual({r['detector'] for r in vae_rows}, {'likelihood_path'})
        self.assertEqual(len(vae_rows), 5)
        lpath = next(r for r in vae_rows if r['out'] == 'svhn_cropped')
        self.assertEqual(lpath['published_auroc'], 0.99)
        self.assertIn('LPath', lpath['published_source'])
        self.assertNotIn('likelihood_path', {r['detector'] for r in rows
                                             if r['model'] == 'glow_cifar10'})
        raw = next(r for r in rows if r['detector'] == 'raw_likelihood'
                   and r['out'] == 'svhn_cropped')
        self.assertEqual(raw['published_auroc'], 0.063)
        self.assertIn('Glow', raw['published_method'])
        self.assertIn('Ren et al.', raw['published_source'])
        self.assertLess(raw['auroc'], 0.5)  # The paper's failure, on real images.
        for name in ('detectors.csv', 'detectors.md', 'detectors.png', 'statistics.md',
                     'fit.md', 'published.md'):
            self.assertTrue(os.path.exists(os.path.join(out, name)), name)
        with open(os.path.join(out, 'detectors.json')) as f:
            fits = json.load(f)['at_published_fit']
        self.assertEqual([f['detector'] for f in fits], ['input_complexity',
                                                         'input_complexity_jpeg2000',
                                                         'input_complexity_jpegxl'])
        for fit in fits:
            self.assertEqual((fit['paper_bpd_in'], fit['paper_bpd_out']), (3.464, 2.389))
            row = next(r for r in rows if r['detector'] == fit['detector']
                       and r['out'] == 'svhn_cropped')
            self.assertAlmostEqual(fit['auroc'], row['auroc'], places=6)
        # Which statistics carry the detection: each of the ablated detector's,
        # alone and left out, against the AUROC of all of them (its row's).
        with open(os.path.join(out, 'detectors.json')) as f:
            ablation = json.load(f)['ablation']
        self.assertEqual([a['statistic'] for a in ablation],
                         ['level0_log_pz', 'level0_log_det', 'level1_log_pz', 'level1_log_det',
                          'level2_log_pz', 'level2_log_det', 'png_bits', 'jpeg2000_bits',
                          'jpegxl_bits'])
        full = next(r for r in rows if r['detector'] == 'density_of_states_gaussian'
                    and r['out'] == 'svhn_cropped')
        for a in ablation:
            self.assertAlmostEqual(a['auroc_all'], full['auroc'], places=6)
            self.assertBetween(a['auroc_alone'], 0., 1.)
        from tensorboard.backend.event_processing import event_accumulator
        events = event_accumulator.EventAccumulator(
            os.path.join(out, 'tensorboard', 'glow_cifar10'))
        events.Reload()
        tags = set(events.Tags()['tensors'])
        self.assertIn('pr/density_of_states_levels: cifar10 vs svhn_cropped/pr_curves', tags)

    def test_gradient_norms_read_the_flows_one_pass_with_its_other_statistics(self):
        import argparse
        model = models.named_model('glow', 'tiny', (8, 8, 3))
        images = np.random.default_rng(0).integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
        model.initialize(images[:40])
        scorer = detectors_experiment._Scorer(argparse.Namespace(num_images=None,
                                                                 progress=False),
                                              model, gradients=True)
        detector = detectors.named('gradient_norms', model)
        self.assertEqual(detector.needs_statistics, 'gradients')
        self.assertEqual(detector.statistics, model.gradient_statistic_names)
        scorer(detector, 'fit', images[:40], fit=True)
        scores = scorer(detector, 'in', images[40:])
        terms = scorer.cache[(id(model), 'in')]
        self.assertContainsSubset(model.statistic_names + model.gradient_statistic_names, terms)
        self.assertAllClose(scores.ood_score, detector.score(images[40:]).ood_score)
        with self.assertRaisesRegex(ValueError, 'gradient_norms needs a model with parameters'):
            detectors.named('gradient_norms', export.load(export.export(
                model, os.path.join(self.create_tempdir().full_path, 'glow'))))


class FitImagesTest(tf.test.TestCase):

    def test_training_images_or_the_first_half_of_the_test_images(self):
        loaded = []

        class Source:  # What Sets reads of common.Source.
            samples = False

            def load(self, name, split):
                loaded.append((name, split))
                first = {'train': 0, 'test': 100}[split]
                values = np.arange(first, first + 10, dtype=np.uint8)
                return data._synthetic(np.broadcast_to(values[:, None, None, None],
                                                       (10, 2, 2, 1)).copy())

        experiment = detectors_experiment.Experiment('m', ('d', 'train'), ('d', 'test'), [])
        fit, scored = detectors_experiment.Sets(Source(), 4, 1).fit_and_in(experiment)
        self.assertAllEqual(fit[:, 0, 0, 0], range(4))  # The first --num-fit-images.
        self.assertAllEqual(scored[:, 0, 0, 0], range(100, 110))  # All of the test set.
        fit, scored = detectors_experiment.Sets(Source(), 4, 1, fit_on_held_out=True).fit_and_in(
            experiment)
        self.assertAllEqual(fit[:, 0, 0, 0], range(100, 105))  # Disjoint halves.
        self.assertAllEqual(scored[:, 0, 0, 0], range(105, 110))
        self.assertEqual(loaded, [('d', 'train'), ('d', 'test'), ('d', 'test')])


class AtPublishedFitTest(tf.test.TestCase):

    def test_each_set_moves_by_its_gap_to_the_paper(self):
        from tfp_ood.detectors import DetectorScores
        detectors_example = detectors_experiment

        def scores(ood, bpd):
            return DetectorScores('input_complexity', np.array(ood, float),
                                  {'bits_per_dim': np.array(bpd, float)})

        # Means 3.6 and 2.4 against the paper's 3.464 and 2.389: CIFAR-10 moves by
        # -0.136, SVHN by -0.011.
        cifar = scores([0.2, 0.3, 0.4], [3.5, 3.6, 3.7])
        svhn = scores([0.25, 0.35, 0.45], [2.3, 2.4, 2.5])
        fit = detectors_example.at_published_fit('input_complexity', 'glow_cifar10', 'glow',
                                                 'cifar10', 'cifar10', 'svhn_cropped', cifar,
                                                 svhn)
        self.assertAllClose([fit['bpd_in'], fit['bpd_out']], [3.6, 2.4])
        # In-distribution positive: 6 of the 9 (CIFAR-10, SVHN) pairs score CIFAR-10 lower.
        self.assertAlmostEqual(fit['auroc'], 6 / 9)
        # Moved: [0.064, 0.164, 0.264] against [0.239, 0.339, 0.439]: 8 of 9 pairs.
        self.assertAlmostEqual(fit['auroc_at_published_fit'], 8 / 9)
        # No published bits/dim for the PixelCNN++: nothing to move to.
        self.assertIsNone(detectors_example.at_published_fit(
            'input_complexity', 'pixelcnn_cifar10', 'pixelcnn', 'cifar10', 'cifar10',
            'svhn_cropped', cifar, svhn))


class PublishedTablesTest(tf.test.TestCase):

    def _row(self, detector, family, in_name, out_name, auroc, fpr=0.5, m=1):
        in_s = detectors.DetectorScores(detector, np.zeros(2), {})
        row = detectors_experiment._row(detector, f'{family}_x', family, in_name, out_name, m,
                                        in_s, in_s)
        row.update(auroc=auroc, fpr_at_95_tpr=fpr)
        return row

    def test_every_published_figure_names_its_method_and_source(self):
        for key, published in detectors_experiment.PUBLISHED.items():
            self.assertTrue(published.method and published.source, key)
        rows = [self._row('input_complexity', 'glow', 'cifar10', 'svhn_cropped', 0.7),
                self._row('typicality', 'glow', 'cifar10', 'svhn_cropped', 0.99, m=2),
                self._row('raw_likelihood', 'glow', 'fashion_mnist', 'mnist', 0.1),
                self._row('density_of_states_gaussian', 'glow', 'cifar10', 'svhn_cropped', 0.9)]
        self.assertEqual((rows[0]['published_auroc'], rows[0]['published_method']),
                         (0.950, 'S(x), Glow (an independent PNG re-run gave 0.784)'))
        self.assertEqual(rows[2]['published_auroc'], [0.122, 0.197])  # A range, as JSON has it.
        self.assertIsNone(rows[3]['published_source'])
        lines = detectors_experiment.published_table(rows).splitlines()
        self.assertLen(lines, 2 + 3)  # No line for the row without a published figure.
        self.assertIn('| input_complexity | glow_x | cifar10 -> svhn_cropped | 0.700 | 0.500 '
                      '| 0.950 | S(x), Glow', lines[2])
        self.assertIn('Serrà et al., ICLR 2020', lines[2])
        self.assertIn('typicality, M = 2', lines[3])
        self.assertIn('| 0.122-0.197 |', lines[4])

    def test_the_frontier_table_puts_our_best_single_image_row_beside_it(self):
        rows = [self._row('input_complexity', 'glow', 'cifar10', 'svhn_cropped', 0.7, 0.4),
                self._row('density_of_states', 'glow', 'cifar10', 'svhn_cropped', 0.9, 0.3),
                self._row('typicality', 'glow', 'cifar10', 'svhn_cropped', 1.0, 0.0, m=25)]
        lines = detectors_experiment.frontier_table(rows).splitlines()
        self.assertLen(lines, 2 + len(detectors_experiment.FRONTIER) + 1)
        lmd = next(line for line in lines if line.startswith('| LMD'))
        self.assertIn('| 0.992 | 0.990 |', lmd)
        self.assertIn('Heng et al., NeurIPS 2024', lmd)
        dose = next(line for line in lines if line.startswith('| DoSE'))
        self.assertIn('| 0.955 / 0.970 | 1.000 |', dose)
        # Ours: the best single image row (M = 25 is not one), and no FashionMNIST row.
        self.assertIn('| 0.900 (density_of_states, glow_x; FPR at 95% TPR 0.300) | – |',
                      lines[-1])

    def test_the_pairs_rows_have_every_metric_and_the_chosen_designs(self):
        rows = [self._row('density_of_states_selected', 'glow', 'cifar10', 'svhn_cropped', 0.95),
                self._row('raw_likelihood', 'glow', 'cifar10', 'svhn_cropped', 0.06),
                self._row('raw_likelihood', 'glow', 'cifar10', 'constant', 0.2)]  # Not a pair.
        for row in rows:
            row['model'] = 'glow_cifar10'
            row.update(aupr_in=0.25, aupr_out=0.75)
        lines = detectors_experiment.pair_metrics_table(rows).splitlines()
        self.assertEqual(lines[2:], [
            '| glow_cifar10: cifar10 -> svhn_cropped | raw_likelihood | 0.060 | 0.250 | 0.750 '
            '| 0.500 |',
            '| glow_cifar10: cifar10 -> svhn_cropped | density_of_states_selected | 0.950 | '
            '0.250 | 0.750 | 0.500 |'])
        self.assertIn('density_of_states_selected', detectors_experiment.summary_table(rows))


class LikelihoodPathPartsTest(tf.test.TestCase):
    """The quick tier's check of the likelihood-path script (its whole run, on two
    VAEs and a flow, is ExamplesTest's slow test)."""

    def test_vae_statistics_are_the_models_own_under_its_prefix(self):
        from tfp_ood.config import VAEConfig
        from tfp_ood.experiments import likelihood_path
        vae = models.from_config(dict(family='vae', **VAEConfig.named(
            'tiny', (8, 8, 3), num_importance_samples=1).to_dict()))
        rng = np.random.default_rng(0)
        sets = {'in': rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8),
                'uniform_noise': rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)}
        stats = likelihood_path.vae_statistics(vae, sets, 'vae4', progress=False)
        self.assertEqual(list(stats), ['in', 'uniform_noise'])
        for name, images in sets.items():
            self.assertEqual(sorted(stats[name]),
                             sorted(f'vae4_{k}' for k in likelihood_path.STATISTICS))
            direct = vae.statistics(images)
            for k in likelihood_path.STATISTICS:
                self.assertEqual(stats[name][f'vae4_{k}'].dtype, np.float64)
                self.assertAllClose(stats[name][f'vae4_{k}'], direct[k], rtol=1e-5, msg=k)

    def test_markdown_tables_and_the_refused_samples(self):
        from tfp_ood.experiments import likelihood_path
        sets = ['training_images', 'uniform_noise']
        result = {
            'sets': sets, 'vaes': {'vae2': 2},
            'alone': {'vae2': {k: {s: 0.25 for s in sets}
                               for k in ('posterior_kl', 'decoder_std_norm')}},
            'designs': {'vae2: LPath four, copod': {'aurocs': {'training_images': 0.5,
                                                               'uniform_noise': 0.875},
                                                    'mean_auroc': 0.875}},
            'search': {'exportable': {'design': 'd', 'score': 0.5, 'statistics': ['a', 'vae2_b'],
                                      'vae_statistics': ['vae2_b']}}}
        text = likelihood_path.markdown(result)
        self.assertIn('VAEs (latent size): vae2 (2).', text)
        self.assertIn('| set | posterior_kl | decoder_std_norm |', text)
        self.assertIn('| uniform_noise | 0.250 | 0.250 |', text)
        # The mean is over the OOD sets only (training images are not one).
        self.assertIn('| design | training_images | uniform_noise | mean over the 1 OOD sets |',
                      text)
        self.assertIn('| vae2: LPath four, copod | 0.500 | 0.875 | 0.875 |', text)
        self.assertIn('- exportable: chosen d (score 0.5000): a, vae2_b; VAE statistics chosen: '
                      'vae2_b.', text)
        # The validation sets are training images: the embedded samples are refused
        # before any model is read.
        with self.assertRaisesRegex(ValueError, 'pass --data-dir'):
            likelihood_path.main(['--vae', 'no_such_vae', '--models-dir', 'no_such_dir'])


class AnalysisExampleTest(tf.test.TestCase):

    def test_without_models_the_statistics_and_curves_are_reported_and_the_rest_skipped(self):
        # The quick tier's run of the whole script: no model to trace (the models'
        # analyses are below, on tiny models), every other part and its outputs.
        data_dir = self.create_tempdir().full_path
        for name, split, n, shape in (('cifar10', 'test', 12, (32, 32, 3)),
                                      ('svhn_cropped', 'test', 10, (32, 32, 3)),
                                      ('mnist', 'test', 8, (28, 28, 1))):
            _write(data_dir, name, split, n, shape)
        models_dir = self.create_tempdir().full_path
        with open(os.path.join(models_dir, 'glow_cifar10_history.jsonl'), 'w') as f:
            for step, bpd_in, bpd_out in ((100, 5.0, 4.0), (200, 4.0, 4.5)):
                f.write(json.dumps({'step': step, 'cifar10/test[:2000]/bits_per_dim': bpd_in,
                                    'svhn_cropped/test[:2000]/bits_per_dim': bpd_out}) + '\n')
        out = self.create_tempdir().full_path
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            results = analysis.main(['--data-dir', data_dir, '--models-dir', models_dir,
                                     '--out', out, '--no-progress'])
        # The sets that are missing are named, not fatal.
        self.assertIn('statistics: fashion_mnist/test skipped', err.getvalue())
        self.assertIn('graying: no colour model in --models-dir; skipped', err.getvalue())
        with open(os.path.join(out, 'analysis.json')) as f:
            saved = json.load(f)
        self.assertEqual(sorted(saved['statistics']),
                         ['cifar10/test', 'mnist/test', 'svhn_cropped/test'])
        images = _images_of(data_dir, 'cifar10', 'test') / 255.
        cifar = saved['statistics']['cifar10/test']
        self.assertEqual(cifar['num_images'], 12)
        self.assertAllClose(cifar['mean'], images.mean(axis=(0, 1, 2)), atol=1e-5)
        self.assertEqual(saved['skipped'], ['second_order', 'graying', 'ensemble'])
        curve = saved['training_curves']['glow_cifar10']
        self.assertEqual((curve['steps'], curve['bpd_in'], curve['bpd_out']),
                         ([100, 200], [5.0, 4.0], [4.0, 4.5]))
        self.assertFalse(curve['out_more_likely_throughout'])  # Not at step 200.
        self.assertIn('| glow_cifar10 | cifar10/test[:2000] | svhn_cropped/test[:2000] | 2 | NO '
                      '| 5.000 / 4.000 (step 100) | 4.000 / 4.500 (step 200) |',
                      results['markdown'])
        self.assertIn('Skipped: second_order; graying; ensemble', results['markdown'])
        for name in ('channel_statistics', 'variance_maps_colour', 'variance_maps_gray',
                     'curves_glow_cifar10'):
            self.assertTrue(os.path.exists(os.path.join(out, f'{name}.png')), name)
        from tensorboard.backend.event_processing import event_accumulator
        events = event_accumulator.EventAccumulator(os.path.join(out, 'tensorboard'))
        events.Reload()
        tags = events.Tags()['tensors']
        self.assertIn('statistics/cifar10/test/channel0_mean', tags)
        self.assertIn('training/glow_cifar10/cifar10/test[:2000]', tags)
        self.assertIn('figures/curves_glow_cifar10', tags)

    @pytest.mark.slow
    def test_analysis_on_tiny_models(self):
        data_dir = self.create_tempdir().full_path
        for name, split, n, shape in (('cifar10', 'train', 48, (32, 32, 3)),
                                      ('cifar10', 'test', 24, (32, 32, 3)),
                                      ('svhn_cropped', 'test', 24, (32, 32, 3)),
                                      ('fashion_mnist', 'train', 48, (28, 28, 1)),
                                      ('fashion_mnist', 'test', 24, (28, 28, 1)),
                                      ('mnist', 'test', 24, (28, 28, 1))):
            _write(data_dir, name, split, n, shape)
        rng = np.random.default_rng(0)
        colour = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
        gray = rng.integers(0, 256, (32, 28, 28, 1), dtype=np.uint8)
        models_dir = self.create_tempdir().full_path
        _export_tiny(os.path.join(models_dir, 'cvglow_cifar10'), 'cv_glow', (32, 32, 3), colour)
        _export_tiny(os.path.join(models_dir, 'cvglow_fashion_mnist'), 'cv_glow', (28, 28, 1),
                     gray)
        for seed in (1, 2):
            _export_tiny(os.path.join(models_dir, 'ensemble_cifar10', f'seed{seed}'), 'glow',
                         (32, 32, 3), colour, seed=seed)
        # Neither an exported detector nor a background model (trained on
        # perturbed images) is one of the paper's models: graying leaves them out.
        shutil.copytree(os.path.join(models_dir, 'cvglow_cifar10'),
                        os.path.join(models_dir, 'background_cvglow_cifar10'))
        metadata_path = os.path.join(models_dir, 'background_cvglow_cifar10', 'assets',
                                     export.METADATA_FILE)
        with open(metadata_path) as f:
            metadata = json.load(f)
        metadata.setdefault('provenance', {})['train_config'] = {'mutation_rate': 0.2}
        with open(metadata_path, 'w') as f:
            json.dump(metadata, f)
        shutil.copytree(os.path.join(models_dir, 'cvglow_cifar10'),
                        os.path.join(models_dir, 'detector_cifar10'))
        with open(os.path.join(models_dir, 'detector_cifar10', 'assets',
                               export.METADATA_FILE), 'w') as f:
            json.dump({'format': export.DETECTOR_FORMAT}, f)
        with open(os.path.join(models_dir, 'glow_cifar10_history.jsonl'), 'w') as f:
            for step, bpd_in, bpd_out in ((100, 5.0, 4.0), (200, 4.0, 3.5)):
                f.write(json.dumps({'step': step, 'cifar10/test[:2000]/bits_per_dim': bpd_in,
                                    'svhn_cropped/test[:2000]/bits_per_dim': bpd_out}) + '\n')
        with open(os.path.join(models_dir, 'glow_svhn_history.jsonl'), 'w') as f:
            for step, bpd_in, bpd_out in ((100, 3.0, 4.0), (200, 3.0, 2.9)):
                f.write(json.dumps({'step': step, 'svhn_cropped/test[7000:]/bits_per_dim': bpd_in,
                                    'cifar10/test[:2000]/bits_per_dim': bpd_out}) + '\n')
        out = self.create_tempdir().full_path
        results = analysis.main(['--data-dir', data_dir, '--models-dir', models_dir,
                                 '--out', out, '--no-progress', '--hessian-batch-size', '1024'])
        with open(os.path.join(out, 'analysis.json')) as f:
            saved = json.load(f)
        self.assertEqual(sorted(saved['statistics']),
                         sorted(['cifar10/train', 'cifar10/test', 'svhn_cropped/test',
                                 'fashion_mnist/train', 'fashion_mnist/test', 'mnist/test']))
        self.assertEqual(saved['statistics']['cifar10/test']['num_images'], 24)
        self.assertEqual([r['model'] for r in saved['second_order']],
                         ['cvglow_cifar10', 'cvglow_fashion_mnist'])
        for row in saved['second_order']:
            for key in ('predicted', 'predicted_paper_alpha', 'predicted_full', 'measured',
                        'curvature'):
                self.assertTrue(np.isfinite(row[key]), key)
            self.assertLen(row['paper_alpha_squared'], 3 if 'cifar' in row['model'] else 1)
        # The measured difference is the evaluator's mean log p(q) - mean log p(p*).
        cifar = saved['second_order'][0]
        self.assertAllClose(cifar['measured'], cifar['mean_log_prob_q'] - cifar['mean_log_prob_p'])
        self.assertEqual({(g['model'], g['set']) for g in saved['graying']},
                         {('cvglow_cifar10', 'cifar10/test'),
                          ('cvglow_cifar10', 'svhn_cropped/test')})
        curves = saved['training_curves']
        self.assertTrue(curves['glow_cifar10']['out_more_likely_throughout'])
        self.assertFalse(curves['glow_svhn']['out_more_likely_throughout'])
        self.assertEqual(saved['ensemble']['num_members'], 2)
        for key in ('ensemble', 'waic'):
            self.assertBetween(saved['ensemble'][key]['auroc'], 0., 1.)
        self.assertEqual(saved['skipped'], [])
        for name in ('channel_statistics', 'variance_maps_colour', 'variance_maps_gray',
                     'second_order', 'graying', 'curves_glow_cifar10', 'ensemble_log_prob',
                     'ensemble_waic'):
            self.assertTrue(os.path.exists(os.path.join(out, f'{name}.png')), name)
        with open(os.path.join(out, 'report.md')) as f:
            self.assertIn('Second-order expansion', f.read())
        self.assertIn('Ensemble of 2 Glows', results['markdown'])
        from tensorboard.backend.event_processing import event_accumulator
        events = event_accumulator.EventAccumulator(os.path.join(out, 'tensorboard'))
        events.Reload()
        tags = events.Tags()
        self.assertIn('figures/second_order', tags['tensors'])
        self.assertIn('ensemble/auroc_waic', tags['tensors'])


if __name__ == '__main__':
    tf.test.main()
