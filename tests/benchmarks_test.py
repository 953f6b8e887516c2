"""benchmarks/run.py in smoke mode: runs end to end and writes every key (no speed asserted)."""

import contextlib
import dataclasses
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from tests import scripts
from tfp_ood.config import GlowConfig

REPO = scripts.REPO
op_profile = scripts.load('benchmarks/op_profile.py')
precision_accuracy = scripts.load('benchmarks/precision_accuracy.py')
benchmark_plot = scripts.load('benchmarks/plot.py')
benchmarks = scripts.load('benchmarks/run.py')
machine = scripts.load('benchmarks/machine.py')


def _child_measuring_a_row():
    """The pid of this process's child running `run.py --row`, or None."""
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                cmdline = f.read().split(b'\0')
            with open(f'/proc/{pid}/stat', 'rb') as f:
                parent = int(f.read().rsplit(b')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # Gone meanwhile.
        if parent == os.getpid() and b'--row' in cmdline:
            return int(pid)
    return None


class PeakTest(tf.test.TestCase):

    def test_fraction_of_peak_is_taken_round_by_round(self):
        # Round 2 ran under load that halved both the run and the matmul beside
        # it: per round the fraction stays 0.5, where dividing the fastest run by
        # a peak measured at another moment could give anything.
        rounds = {'run': [1.0, 2.0, 1.0], 'matmul': [0.5, 1.0, 0.5]}
        fraction = benchmarks.fraction_of_peak(rounds, 'run', 10., 'matmul', 10.)
        self.assertEqual(fraction, {'median': 0.5, 'min': 0.5, 'max': 0.5, 'rounds': 3})
        seen = benchmarks.alternate_rounds({'a': lambda: None, 'b': lambda: None}, 3, 0.)
        self.assertEqual({k: len(v) for k, v in seen.items()}, {'a': 3, 'b': 3})

    def test_machine_names_the_cpu_class_and_its_instruction_sets(self):
        path = os.path.join(self.create_tempdir().full_path, 'cpuinfo')
        for flags, expected in (('fpu avx2 fma', 'AVX2'), ('avx2 avx512f avx512_bf16', 'AVX-512'),
                                ('avx2 avx512f amx_tile amx_bf16', 'AMX'), ('sse2', 'other')):
            with open(path, 'w') as f:
                f.write(f'model name\t: Some CPU\nflags\t\t: {flags}\n')
            self.assertEqual(machine.machine_class(machine.cpu_flags(path)), expected)
            self.assertEqual(machine.cpu_model(path), 'Some CPU')
        self.assertEqual(machine.cpu_flags(os.path.join(path, 'missing')), [])
        here = machine.machine()
        self.assertIn(here['class'], ('AMX', 'AVX-512', 'AVX2', 'other'))
        self.assertLessEqual(set(here['instruction_sets']), set(machine.INSTRUCTION_SETS))


class BenchmarksTest(tf.test.TestCase):

    @pytest.mark.slow(minutes=2)
    def test_smoke_run_interrupted_then_resumed_writes_every_key(self):
        # Killed after two family rows (what the checkpoint keeps is on disk), then
        # `run.py --smoke --json PATH --resume` measures only what it lacks.
        path = os.path.join(self.create_tempdir().full_path, 'results', 'smoke.json')

        class Interrupted(Exception):
            pass

        def checkpoint(result):
            benchmarks.write_json(path, result)
            if len(result['measurements'].get('families', [])) == 2:
                raise Interrupted

        with self.assertRaises(Interrupted):
            benchmarks.run('smoke', log=lambda line: None, checkpoint=checkpoint)
        with open(path) as f:
            partial = json.load(f)
        self.assertIs(partial['complete'], False)
        # The command line `run.py --smoke --json PATH --resume`, in this process.
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            benchmarks.main(['--smoke', '--json', path, '--resume'])
        printed = printed.getvalue()
        with open(path) as f:
            result = json.load(f)
        self.assertEqual(result['resumed'], 1)
        self.assertEqual(result['glow_score_vs_tfp'], partial['glow_score_vs_tfp'])  # Kept.
        rows = result['measurements']['families']
        self.assertEqual(rows[:2], partial['measurements']['families'])
        self.assertEqual([r['family'] for r in rows], ['glow', 'pixelcnn', 'vae'])
        logged = printed[:printed.index('done in')].splitlines()
        self.assertLen(logged, 1 + 1 + 2, printed)  # Resuming; the third row; two sizes.
        with self.assertRaisesRegex(ValueError, 'complete'):
            benchmarks.run('smoke', resume=result)
        self.assertIs(result['complete'], True)
        for key in benchmarks.HEADLINE_KEYS + ('matmul_peak_gflops',):
            self.assertIsInstance(result[key], float, key)
            self.assertTrue(math.isfinite(result[key]) and result[key] > 0, key)
        measured = result['measurements']
        for row in measured['families']:
            self.assertGreater(row['score_peak_rss_mib'], 0)
        self.assertEqual([r['image_size'] for r in measured['image_size_scaling']], [16, 32])
        self.assertGreater(measured['xla']['tiny']['score_xla_speedup'], 0)
        for key in ('glow_paper_score_bf16_vs_fp32', 'glow_paper_train_bf16_vs_fp32',
                    'bf16_max_abs_bpd_diff', 'bf16_matmul_peak_gflops'):
            self.assertTrue(math.isfinite(result[key]) and result[key] > 0, key)
        accuracy = measured['precision']['accuracy']
        self.assertEqual(accuracy['cifar10']['num_images'], 16)
        self.assertLess(accuracy['max_abs_bpd_diff'], 0.01)  # The shipped glow_cifar10.
        comparison = measured['tfp_comparison']['glow']
        self.assertEqual(comparison['params_ours'], comparison['params_tfp'])
        # The peaks were measured in the same rounds as the runs they divide.
        for spread in (comparison['score_fraction_of_peak'], comparison['matmul_peak_gflops'],
                       measured['precision']['tiny']['score_bf16_fraction_of_bf16_peak_rounds']):
            self.assertLessEqual(spread['min'], spread['median'])
            self.assertLessEqual(spread['median'], spread['max'])
        self.assertEqual(result['glow_paper_score_fraction_of_peak'],
                         comparison['score_fraction_of_peak']['median'])
        self.assertIn(result['machine']['class'], ('AMX', 'AVX-512', 'AVX2', 'other'))
        self.assertIn('instruction_sets', result['machine'])
        # The figure of it, and of a partial run with a row over the memory limit.
        png = benchmark_plot.main([path, path + '.png', '--markdown', path + '.md'])
        self.assertGreater(os.path.getsize(png), 10000)
        with open(path + '.md') as f:
            table = f.read()
        for family in ('glow', 'pixelcnn', 'vae'):
            self.assertIn(f'| {family} | tiny |', table)
        self.assertIn('| 16x16 |', table)
        result['complete'] = False
        measured['families'].append({'family': 'pixelcnn', 'config': 'tiny', 'batch_size': 8,
                                     'exceeded_memory_limit_mib': 100.})
        del measured['image_size_scaling']
        self.assertGreater(os.path.getsize(benchmark_plot.plot(result, path + '2.png')), 10000)

    @pytest.mark.slow
    def test_isolated_row_matches_the_in_process_keys(self):
        # The full mode measures each family row in its own process.
        row = benchmarks.isolated_family_row('smoke', 'glow', 'tiny', 4, memory_limit_mib=2 ** 20)
        in_process = benchmarks.family_row(benchmarks.PLANS['smoke'], 'glow', 'tiny', 4)
        self.assertEqual(set(row), set(in_process))
        self.assertEqual(row['params'], in_process['params'])
        self.assertGreater(row['train_images_per_s'], 0)
        # A fresh process holds TensorFlow and the model: hundreds of MiB, not this one's.
        self.assertGreater(row['train_peak_rss_mib'], row['train_rss_increase_mib'])

    def test_row_over_the_memory_limit_is_recorded_and_larger_batches_skipped(self):
        # A child passing the limit is killed (a paper-size PixelCNN++ step at
        # batch 64 needs more than 24 GiB); the run goes on without its larger batches.
        plan = dataclasses.replace(benchmarks.PLANS['smoke'], families=('glow',),
                                   family_batches=(4, 8), isolate_rows=True)
        rows, lines, saves = [], [], []
        benchmarks.family_throughput(plan, lines.append, rows, lambda: saves.append(1),
                                     memory_limit_mib=50.)
        self.assertEqual(rows, [{'family': 'glow', 'config': 'tiny', 'batch_size': 4,
                                 'exceeded_memory_limit_mib': 50.}])
        self.assertEqual(len(saves), 1)
        self.assertIn('larger batches skipped', lines[0])

    def test_row_killed_by_the_system_is_recorded(self):
        # The kernel's OOM killer can end a child between two polls of the watchdog.
        result = {}
        worker = threading.Thread(target=lambda: result.update(benchmarks.isolated_family_row(
            'smoke', 'glow', 'tiny', 4, memory_limit_mib=2 ** 20)))
        worker.start()
        child = None
        for _ in range(600):
            child = _child_measuring_a_row()
            if child:
                break
            time.sleep(0.05)
        self.assertIsNotNone(child)
        os.kill(child, signal.SIGKILL)
        worker.join(60)
        self.assertTrue(result['killed_by_system'])
        self.assertEqual(result['exceeded_memory_limit_mib'], 2 ** 20)

    @pytest.mark.slow(minutes=0.3)
    def test_profile_counts_each_network_once_where_tfp_runs_it_twice(self):
        # Scoring through TransformedDistribution.log_prob runs every coupling and
        # exit network of tfb.Glow in `inverse` and again in its log-determinant;
        # ours computes both in one pass: half the network convolutions, read from
        # the profiler's trace.
        path = os.path.join(self.create_tempdir().full_path, 'profile.json')
        out = op_profile.main(['--config', 'tiny', '--batch', '4', '--calls', '2',
                               '--matmul-size', '256', '--json', path])
        with open(path) as f:
            self.assertEqual(json.load(f)['config'], 'tiny')
        ours, tfp = out['results']['ours_score'], out['results']['tfp_score']
        self.assertGreater(ours['ops']['FusedConv2D']['count'], 0)
        self.assertEqual(2 * ours['ops']['FusedConv2D']['count'],
                         tfp['ops']['FusedConv2D']['count'])
        for result in out['results'].values():
            self.assertAllClose(sum(result['category_share'].values()), 1.)
            self.assertGreater(result['kernel_seconds'], 0)

    def test_op_types_are_named_alike_with_and_without_onednn(self):
        # The same fused convolution is '_FusedConv2D' where TensorFlow runs without
        # oneDNN and '_MklNativeFusedConv2D' with it; executor events are not ops.
        for event in ('a/b/conv:_FusedConv2D', 'conv:_MklNativeFusedConv2D',
                      'conv:_MklFusedConv2D', 'conv:FusedConv2D'):
            self.assertEqual(op_profile._OP_EVENT.match(event).group(1), 'FusedConv2D', event)
        self.assertIsNone(op_profile._OP_EVENT.match('ExecutorState::Process'))
        self.assertIsNone(op_profile._OP_EVENT.match('thread pool: task'))

    def test_profile_in_bfloat16_counts_the_casts(self):
        out = op_profile.main(['--config', 'tiny', '--batch', '4', '--calls', '2',
                               '--matmul-size', '256', '--precision', 'bfloat16', '--no-peer'])
        self.assertEqual(out['precision'], 'bfloat16')
        self.assertEqual(set(out['results']), {'ours_score', 'ours_train'})
        score = out['results']['ours_score']
        # Every coupling network's input is cast to bfloat16 and its output back.
        self.assertGreater(score['ops']['Cast']['count'], 0)
        self.assertGreater(score['category_share']['casts'], 0)

    @pytest.mark.slow
    def test_precision_accuracy_of_each_setting(self):
        # The shipped CIFAR-10 Glow on a few embedded images, the speed on a tiny Glow.
        path = os.path.join(self.create_tempdir().full_path, 'accuracy.json')
        out = precision_accuracy.main(['--limit', '8', '--speed-config', 'tiny', '--batch', '4',
                                       '--repeats', '1', '--min-seconds', '0.01',
                                       '--json', path])
        self.assertEqual(set(out['accuracy']), set(precision_accuracy.SETTINGS))
        differences = {s: out['accuracy'][s]['max_abs_bpd_diff']
                       for s in precision_accuracy.SETTINGS if s != 'float32'}
        for setting, difference in differences.items():
            self.assertBetween(difference, 1e-6, 0.05, msg=setting)
        # More of the network in float32, closer to float32.
        self.assertLess(differences['bfloat16, first and last in float32'],
                        differences['bfloat16'])
        self.assertEqual(out['accuracy']['bfloat16']['cifar10']['num_images'], 8)
        self.assertEqual(out['score_speedup']['float32'], 1.)
        with open(path) as f:
            self.assertEqual(json.load(f)['images'], 'embedded samples')

    def test_flop_count_of_the_paper_glow(self):
        # 1.33 GFLOP per 32x32x3 image for 3 x 8 x 400 (docs/performance.md); by hand for a
        # one-level, one-step flow on 2x2x1: squeeze to 1x1x4, coupling network
        # 3x3 (2 -> h), 1x1 (h -> h), 3x3 (h -> 2 * 2), and a 4x4 1x1 convolution.
        self.assertAllClose(benchmarks.glow_forward_flops(GlowConfig.named('paper')) / 1e9,
                            1.327, atol=1e-3)
        h = 5
        tiny = GlowConfig(image_shape=(2, 2, 1), num_levels=1, num_steps_per_level=1,
                          hidden_channels=h)
        self.assertEqual(benchmarks.glow_forward_flops(tiny),
                         2 * (9 * 2 * h + h * h + 9 * h * 4 + 16))


class PrecisionTrainingFigureTest(tf.test.TestCase):

    def test_seeds_of_both_precisions_on_one_figure(self):
        figure = scripts.load('benchmarks/precision_training.py')
        directory = self.create_tempdir().full_path
        runs = {'float32': [], 'bfloat16': []}
        for precision, offset in (('float32', 0.), ('bfloat16', 0.01)):
            for seed in (1, 2):
                path = os.path.join(directory, f'{precision}_seed{seed}')
                os.makedirs(path)
                with open(os.path.join(path, 'history.jsonl'), 'w') as f:
                    for step in (200, 400):
                        f.write(json.dumps({'step': step, 'a/bits_per_dim':
                                            5. - step / 1e3 + offset + seed / 100}) + '\n')
                runs[precision].append(path)
        # A history file alone (the shipped ensemble's) counts as a run.
        runs['float32'][1] = os.path.join(runs['float32'][1], 'history.jsonl')
        png = os.path.join(directory, 'out.png')
        finals = figure.main([png, '--float32', *runs['float32'],
                              '--bfloat16', *runs['bfloat16']])
        self.assertAllClose(finals['float32']['a'], [4.61, 4.62])
        self.assertAllClose(finals['bfloat16']['a'], [4.62, 4.63])
        self.assertGreater(os.path.getsize(png), 10000)
        with self.assertRaisesRegex(ValueError, 'no held-out'):
            figure.history_of(self.create_tempdir().full_path)


if __name__ == '__main__':
    tf.test.main()


class StreamingBenchmarkTest(tf.test.TestCase):

    @pytest.mark.slow(minutes=0.5)
    def test_stream_and_memory_children_report_their_peaks(self):
        streaming = scripts.load('benchmarks/streaming.py')
        path = os.path.join(self.create_tempdir().full_path, 'streaming.json')
        # The scoring rows' two children run as the benchmark runs them, in fresh
        # processes; the detecting, .npz and training children are the same
        # `_peak` with another function, run here in this process (each fresh
        # process costs a TensorFlow start), their printed lines kept.
        spawn, printed = streaming._peak, []

        def peak(folder, mode, *extra):
            if not extra:
                return spawn(folder, mode, *extra)
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                streaming.main(['--child', folder, mode, *extra])
            printed.append((extra[0], mode, json.loads(out.getvalue().splitlines()[-1])))
            return printed[-1][2]

        # 2 GiB held (and touched) here: a child's peak is its own, not at least
        # the RSS its parent had when it started (what `ru_maxrss` reports).
        ballast = np.ones(2 << 30, np.uint8)
        with mock.patch.object(streaming, '_peak', peak):
            result = streaming.main(['--sizes', '40', '--train-sizes', '72', '--train-steps',
                                     '1', '--rounds', '1', '--throughput-config', 'tiny',
                                     '--json', path])
        parent = streaming._peak_rss_mib()
        del ballast
        with open(path) as f:
            self.assertEqual(json.load(f), json.loads(json.dumps(result)))
        for mode in ('stream', 'memory'):
            self.assertBetween(result['memory'][0][f'{mode}_peak_rss_mib'], 100, parent - 1024)
        for rows in (result['detect'], result['npz'], result['training']):
            self.assertLen(rows, 1)
        self.assertEqual([(kind, mode, line['num_images']) for kind, mode, line in printed],
                         [(kind, mode, n) for kind, n in (('detect', 40), ('npz', 40), ('1', 72))
                          for mode in ('stream', 'memory')])
        for throughput in (result['throughput'], result['throughput_cpu_glow']):
            self.assertAlmostEqual(throughput['stream_over_memory'],
                                   throughput['stream_over_memory_per_round'][0])
            self.assertAlmostEqual(throughput['stream_over_memory'],
                                   throughput['stream_images_per_s']
                                   / throughput['memory_images_per_s'])  # One round.
        self.assertIn(result['machine']['class'], ('AMX', 'AVX-512', 'AVX2', 'other'))


class AutotuneBenchmarkTest(tf.test.TestCase):

    @pytest.mark.slow(minutes=0.3)
    def test_on_and_off_rounds_pair_up(self):
        from tfp_ood import data
        autotune = scripts.load('benchmarks/autotune.py')
        path = os.path.join(self.create_tempdir().full_path, 'autotune.json')
        untouched = data.without_autotune
        result = autotune.main(['--config', 'tiny', '--images', '16', '--train-steps', '1',
                                '--train-batch', '8', '--rounds', '2', '--json', path])
        self.assertIs(data.without_autotune, untouched)  # Patched only while measuring.
        with open(path) as f:
            self.assertEqual(json.load(f), json.loads(json.dumps(result)))
        for task in ('score', 'train'):
            row = result[task]
            self.assertLen(row['off_over_on_per_round'], 2)
            for (on, off), ratio in zip(zip(row['on_per_round'], row['off_per_round']),
                                        row['off_over_on_per_round']):
                self.assertGreater(on, 0)
                self.assertAlmostEqual(ratio, off / on)
        options = data.without_autotune(tf.data.Dataset.range(3)).options()
        self.assertFalse(options.autotune.enabled)
        self.assertIn(result['machine']['class'], ('AMX', 'AVX-512', 'AVX2', 'other'))


class VaeLikelihoodBenchmarkTest(tf.test.TestCase):

    @pytest.mark.slow(minutes=0.3)
    def test_passes_and_the_whole_batch_pair_up_and_agree(self):
        vae_likelihood = scripts.load('benchmarks/vae_likelihood.py')
        path = os.path.join(self.create_tempdir().full_path, 'vae_likelihood.json')
        result = vae_likelihood.main(['--config', 'tiny', '--images', '3', '--batch-size', '2',
                                      '--rounds', '2', '--rows', '2', '--json', path])
        with open(path) as f:
            self.assertEqual(json.load(f), json.loads(json.dumps(result)))
        self.assertEqual(result['decode_rows'], 3)  # A 32 x 32 x 3 image's 256 logits each.
        row = result['score']
        for passes, whole, ratio in zip(row['passes_per_round'], row['whole_batch_per_round'],
                                        row['passes_over_whole_batch_per_round']):
            self.assertGreater(whole, 0)
            self.assertAlmostEqual(ratio, passes / whole)
        self.assertLen(row['rows_2_per_round'], 2)
        # The same log-weights whichever way they are decoded, to float32 rounding.
        self.assertLess(row['max_abs_log_weight_difference'], 1e-6 * row['max_abs_log_weight'])
        self.assertIn(result['machine']['class'], ('AMX', 'AVX-512', 'AVX2', 'other'))


class SchedulingBenchmarkTest(tf.test.TestCase):

    @pytest.mark.slow(minutes=0.2)
    def test_per_set_and_per_model_rounds_pair_up_and_agree(self):
        scheduling = scripts.load('benchmarks/scheduling.py')
        path = os.path.join(self.create_tempdir().full_path, 'scheduling.json')
        result = scheduling.main(['--config', 'tiny', '--images', '4', '--rounds', '2',
                                  '--models', 'glow_cifar10', 'vae_cifar10', '--json', path])
        with open(path) as f:
            self.assertEqual(json.load(f), json.loads(json.dumps(result)))
        self.assertEqual(result['models'], ['glow_cifar10', 'vae_cifar10'])
        self.assertEqual(result['max_images'], {'vae_cifar10': 1})  # A quarter of 4.
        self.assertEqual(result['sets'], ['cifar10/test', 'svhn_cropped/test', 'constant_128',
                                          'uniform_noise', 'cifar10/test (gray)',
                                          'svhn_cropped/test (gray)'])
        self.assertLen(result['per_set_over_per_model_per_round'], 2)
        for new, old, ratio in zip(result['per_set_per_round'], result['per_model_per_round'],
                                   result['per_set_over_per_model_per_round']):
            self.assertGreater(old, 0)
            self.assertAlmostEqual(ratio, new / old)
        # The same numbers whichever way the work is handed out, to float32 rounding.
        self.assertLess(result['max_abs_bpd_difference'], 1e-5)
        self.assertIn(result['machine']['class'], ('AMX', 'AVX-512', 'AVX2', 'other'))


class OneDnnBenchmarkTest(tf.test.TestCase):

    @pytest.mark.slow
    def test_children_run_with_onednn_off_and_on(self):
        from tfp_ood import export, models
        onednn = scripts.load('benchmarks/onednn.py')
        folder = self.create_tempdir().full_path
        path = os.path.join(folder, 'onednn.json')
        # A tiny Glow in the shipped one's place: the children load and restore it alike.
        glow = models.named_model('glow', 'tiny', (32, 32, 3))
        glow.initialize(np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8))
        model_dir = export.export(glow, os.path.join(folder, 'glow'))
        result = onednn.main(['--rounds', '1', '--images', '8', '--train-batch', '2',
                              '--train-config', 'tiny', '--min-seconds', '0', '--json', path,
                              '--model-dir', model_dir])
        self.assertEqual(result['model_dir'], os.path.relpath(model_dir, onednn.REPO))
        with open(path) as f:
            self.assertEqual(json.load(f), json.loads(json.dumps(result)))
        self.assertEqual(set(result['tasks']), set(onednn.TASKS))
        for task in result['tasks'].values():
            self.assertGreater(task['off_images_per_s'], 0)
            self.assertGreater(task['on_images_per_s'], 0)
            self.assertAlmostEqual(task['on_vs_off'],
                                   task['on_images_per_s'] / task['off_images_per_s'])
        self.assertIn(result['machine']['class'], ('AMX', 'AVX-512', 'AVX2', 'other'))


class ExportBenchmarkTest(tf.test.TestCase):

    @pytest.mark.slow(minutes=0.15)
    def test_with_and_without_the_models_functions_pair_up_and_restore_the_listing(self):
        from tfp_ood.models import base
        export_benchmark = scripts.load('benchmarks/export.py')
        ours = base.DensityModel._trackable_children
        path = os.path.join(self.create_tempdir().full_path, 'export.json')
        result = export_benchmark.main(['--configs', 'tiny', '--rounds', '1', '--json', path])
        self.assertIs(base.DensityModel._trackable_children, ours)  # Swapped only while timed.
        with open(path) as f:
            self.assertEqual(json.load(f), json.loads(json.dumps(result)))
        row = result['tiny']
        for what in ('export', 'load'):
            with_, without = (row[f'{what}_seconds_{listing}']['median']
                              for listing in export_benchmark.LISTINGS)
            self.assertGreater(without, 0)
            self.assertAlmostEqual(row[f'{what}_with_over_without'], with_ / without)
        self.assertIn(result['machine']['class'], ('AMX', 'AVX-512', 'AVX2', 'other'))


class StartupBenchmarkTest(tf.test.TestCase):

    @pytest.mark.slow(minutes=0.2)
    def test_children_start_with_each_keras_and_rounds_pair_up(self):
        startup = scripts.load('benchmarks/startup.py')
        path = os.path.join(self.create_tempdir().full_path, 'startup.json')
        result = startup.main(['--rounds', '1', '--imports', 'tfp_ood.evaluate',
                               '--json', path])
        with open(path) as f:
            self.assertEqual(json.load(f), json.loads(json.dumps(result)))
        self.assertEqual(result['imports'], ['tfp_ood.evaluate'])
        for name in startup.SETTINGS:
            self.assertLen(result[f'{name}_per_round'], 1)
            self.assertGreater(result[f'{name}_seconds'], 0)
        self.assertAlmostEqual(result['legacy_over_default'],
                               result['legacy_seconds'] / result['default_seconds'])
        self.assertIn(result['machine']['class'], ('AMX', 'AVX-512', 'AVX2', 'other'))


def _can_mask_cpuid():
    """Why benchmarks/avx2_only.py cannot run here, or '' when it can."""
    if 'cpuid_fault' not in machine.cpu_flags():
        return 'the CPU cannot make CPUID fault (no cpuid_fault in /proc/cpuinfo)'
    if not (shutil.which('gcc') or shutil.which('cc')):
        return 'no C compiler'
    return ''


@pytest.mark.skipif(bool(_can_mask_cpuid()), reason=_can_mask_cpuid() or 'runs')
class Avx2OnlyTest(tf.test.TestCase):
    """benchmarks/avx2_only.py: a command sees an AVX2-only CPU, all else as without it."""

    def _masked(self, code, *flags):
        return subprocess.run([sys.executable, os.path.join(REPO, 'benchmarks', 'avx2_only.py'),
                               *flags, '--', sys.executable, *code], cwd=REPO,
                              capture_output=True, text=True, timeout=300)

    def test_children_see_avx2_without_avx512_and_faults_reach_the_programs_handler(self):
        seen = self._masked(['-c', (
            'import json, subprocess, sys\n'
            'from numpy._core._multiarray_umath import __cpu_features__ as f\n'
            'sys.path.insert(0, "benchmarks")\n'
            'import machine\n'
            'child = subprocess.run([sys.executable, "-c", "from numpy._core._multiarray_umath '
            'import __cpu_features__ as f; print(f[\'AVX512F\'])"], capture_output=True, '
            'text=True).stdout.strip()\n'
            'print(json.dumps({"numpy": {k: f[k] for k in ("AVX2", "FMA3", "AVX512F")}, '
            '"machine": machine.machine(), "child_avx512f": child}))')])
        self.assertEqual(seen.returncode, 0, seen.stderr)
        seen = json.loads(seen.stdout)
        real = machine.cpu_flags()
        self.assertEqual(seen['numpy'], {'AVX2': 'avx2' in real, 'FMA3': 'fma' in real,
                                         'AVX512F': False})
        self.assertEqual(seen['child_avx512f'], 'False')  # Inherited by what it starts.
        # This process sees the CPU as it is, unless the suite itself runs masked.
        self.assertEqual(machine.cpuid_masked(real),
                         'tfp_ood_avx2_only' in os.environ.get('LD_PRELOAD', ''))
        if 'avx512f' in real:
            self.assertEqual(seen['machine']['class'], 'AVX2')
            self.assertNotIn('avx512f', seen['machine']['instruction_sets'])
            self.assertIn(f'on an {machine.machine_class(real)} CPU',
                          seen['machine']['cpuid_masked'])
        # A real segmentation fault still reaches the program's handler (Python's
        # faulthandler here) and ends the process as it would without the mask.
        crash = self._masked(['-X', 'faulthandler', '-c', 'import ctypes; ctypes.string_at(0)'])
        self.assertEqual(crash.returncode, -11, crash.stderr)
        self.assertIn('Fatal Python error: Segmentation fault', crash.stderr)
        self.assertEqual(self._masked(['-c', 'raise SystemExit(7)']).returncode, 7)

    @pytest.mark.slow(minutes=0.1)
    def test_tensorflow_leaves_onednn_off_by_itself_as_on_an_avx2_only_cpu(self):
        check = subprocess.run([sys.executable, os.path.join(REPO, 'benchmarks', 'avx2_only.py'),
                                '--check'], cwd=REPO, capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='0'))
        self.assertEqual(check.returncode, 0, check.stderr)
        self.assertIn('NumPy sees: AVX2 FMA3\n', check.stdout)
        self.assertIn('TensorFlow leaves oneDNN off by itself', check.stdout)
        # TensorFlow's own start-up notice lists what it found beyond its build: AVX2 and FMA.
        self.assertRegex(check.stderr, r'To enable the following instructions: AVX2 FMA, in')
