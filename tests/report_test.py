"""Tests of the experiments' report: scoring every set, the bits/dim table with
the paper's numbers, file names."""

import os

import numpy as np
import tensorflow as tf

from tfp_ood import data, report
from tfp_ood.config import GlowConfig
from tfp_ood.models import FlowModel

SHAPE = (8, 8, 3)


def _uint8(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n,) + SHAPE, dtype=np.uint8)


class ReportTest(tf.test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.model = FlowModel.from_config(GlowConfig(
            image_shape=SHAPE, num_levels=2, num_steps_per_level=1, hidden_channels=8))
        cls.model.initialize(_uint8(32, seed=9))

    def test_a_detectors_statistics_come_from_the_runs_pass_and_are_reused(self):
        from unittest import mock

        from tfp_ood import detectors, export
        from tfp_ood.experiments import common
        folder = self.create_tempdir().full_path
        export.export(self.model, os.path.join(folder, 'flow'))
        design = {'statistics': ['level1_latent_mean_square', 'level0_log_pz', 'png9_bits'],
                  'codecs': [], 'estimator': 'ledoit_wolf'}
        path = os.path.join(folder, 'detector.json')
        detectors.fit_detector(detectors.SELECTED, [os.path.join(folder, 'flow')],
                               _uint8(60, seed=1), _uint8(40, seed=2), design=design).save(path)
        wanted = common.detector_statistics(path)
        self.assertEqual(wanted, {'flow': design['statistics']})
        sets = {'in': tf.data.Dataset.from_tensor_slices({'image': _uint8(12, seed=3)}),
                'out': tf.data.Dataset.from_tensor_slices({'image': _uint8(12, seed=4) // 4})}
        results = report.score_all({'flow': self.model}, sets, progress=False,
                                   statistics=wanted)
        plain = report.score_all({'flow': self.model}, sets, progress=False)
        scores = results[('flow', 'in')].scores
        # The statistic asked for, from the same pass; the flow's others left out.
        self.assertIn('level1_latent_mean_square', scores)
        self.assertNotIn('level0_step0_log_det', scores)
        self.assertEqual(set(scores) - {'level1_latent_mean_square'},
                         set(plain[('flow', 'in')].scores))
        self.assertAllClose(scores['log_prob'], plain[('flow', 'in')].scores['log_prob'])
        expected = common.print_detector(path, sets, 'in', 'out')
        # With the run's results the flow is not run again, and the decisions agree.
        with mock.patch.object(detectors.base, 'evaluator_terms',
                               side_effect=AssertionError('the model ran again')):
            reused = common.print_detector(path, sets, 'in', 'out', results)
        self.assertEqual(reused, expected)
        with self.assertRaises(AssertionError):  # Without the statistic it must run.
            with mock.patch.object(detectors.base, 'evaluator_terms',
                                   side_effect=AssertionError('the model ran again')):
                common.print_detector(path, sets, 'in', 'out', plain)

    def test_score_all_limits_images_per_model_and_saves_each_result(self):
        ds = tf.data.Dataset.from_tensor_slices({'image': _uint8(12), 'label': np.zeros(12)})
        small = data.constant_images(5, (4, 4, 3), 3)  # Another shape: not scored.
        out = self.create_tempdir().full_path
        results = report.score_all({'a': self.model, 'b': self.model},
                                   {'x/test': ds, 'y': small}, out_dir=out,
                                   progress=False, max_images={'b': 5})
        self.assertEqual(sorted(results), [('a', 'x/test'), ('b', 'x/test')])
        self.assertEqual(results[('a', 'x/test')].num_images, 12)
        self.assertEqual(results[('b', 'x/test')].num_images, 5)
        self.assertAllClose(results[('b', 'x/test')].log_prob,
                            results[('a', 'x/test')].log_prob[:5])
        self.assertEqual(sorted(os.listdir(os.path.join(out, 'scores'))),
                         ['a__x_test.npz', 'b__x_test.npz'])

    def test_two_models_at_a_time_give_the_numbers_of_one_at_a_time_in_order(self):
        from unittest import mock
        ds = tf.data.Dataset.from_tensor_slices({'image': _uint8(300), 'label': np.zeros(300)})
        other = FlowModel.from_config(GlowConfig(
            image_shape=SHAPE, num_levels=1, num_steps_per_level=2, hidden_channels=4))
        other.initialize(_uint8(32, seed=3))
        models = {'a': self.model, 'b': other, 'c': self.model}
        sets = {'x': ds, 'y': ds.take(7)}
        runs = []
        for threads in (1, 2):
            with mock.patch.object(report, 'SCORING_THREADS', threads):
                runs.append(report.score_all(models, sets, progress=False))
        self.assertEqual(list(runs[1]), [(m, s) for m in 'abc' for s in 'xy'])  # In order.
        self.assertEqual(list(runs[0]), list(runs[1]))
        for key, result in runs[0].items():
            for term, values in result.scores.items():
                self.assertAllEqual(values, runs[1][key].scores[term], msg=f'{key} {term}')

    def test_a_deferred_model_is_made_once_in_the_thread_that_scores_it(self):
        import threading
        ds = tf.data.Dataset.from_tensor_slices({'image': _uint8(6), 'label': np.zeros(6)})
        made = []

        def make():
            made.append(threading.current_thread())
            return self.model

        deferred = report.Deferred(make)
        results = report.score_all({'now': self.model, 'later': deferred},
                                   {'x': ds, 'y': ds.take(2)}, progress=False)
        self.assertLen(made, 1)  # Once, for both sets.
        self.assertIsNot(made[0], threading.main_thread())
        self.assertIs(deferred.get(), self.model)
        for name in ('x', 'y'):
            self.assertAllEqual(results[('later', name)].log_prob,
                                results[('now', name)].log_prob)

    def test_an_error_in_one_model_stops_the_others_and_is_raised(self):
        ds = tf.data.Dataset.from_tensor_slices({'image': _uint8(4), 'label': np.zeros(4)})
        broken = FlowModel.from_config(GlowConfig(
            image_shape=SHAPE, num_levels=1, num_steps_per_level=1, hidden_channels=4))

        def fail(images):
            raise RuntimeError('broken model')

        broken.score_batch = fail
        with self.assertRaisesRegex(RuntimeError, 'broken model'):
            report.score_all({'ok': self.model, 'broken': broken}, {'x': ds}, progress=False)

    def test_bpd_rows_carry_the_papers_number_where_it_reports_the_case(self):
        ds = tf.data.Dataset.from_tensor_slices({'image': _uint8(4), 'label': np.zeros(4)})
        results = report.score_all({'m': self.model},
                                   {'svhn_cropped/test[7000:]': ds, 'other': ds},
                                   progress=False)
        rows = {r.scored_set: r for r in report.bpd_rows(
            results, {'m': 'glow'}, {'m': 'cifar10'},
            paper_names={'svhn_cropped/test[7000:]': 'svhn_cropped/test'})}
        self.assertEqual(rows['svhn_cropped/test[7000:]'].paper_bpd, 2.389)
        self.assertIsNone(rows['other'].paper_bpd)
        self.assertEqual(rows['other'].num_images, 4)

    def test_slug(self):
        self.assertEqual(report.slug('cifar10/test (gray)'), 'cifar10_test_gray')
        self.assertEqual(report.slug('svhn_cropped/test[7000:]'), 'svhn_cropped_test_7000')


if __name__ == '__main__':
    tf.test.main()


def test_per_image_csv_and_summary_as_score_and_detect_write_them(tmp_path):
    csv_path, json_path, md_path = (str(tmp_path / n) for n in ('a.csv', 'a.json', 'a.md'))
    report.write_per_image_csv(csv_path, {'label': np.array([3, 7]),
                                          'is_ood': np.array([True, False]),
                                          'bits_per_dim': np.array([3.14159265, np.nan])},
                               sources=['cat.png', 'dog.png'])
    with open(csv_path) as f:
        assert f.read().splitlines() == ['index,source,label,is_ood,bits_per_dim',
                                         '0,cat.png,3,1,3.14159', '1,dog.png,7,0,nan']
    report.write_per_image_csv(csv_path, {'ood_score': np.array([0.5])})  # No file names.
    with open(csv_path) as f:
        assert f.read().splitlines() == ['index,source,ood_score', '0,0,0.5']
    report.write_summary(json_path, md_path, {'num_images': 2},
                         [('set', 'my images'), ('images', '2'), ('flagged', '1 (50.0%)')])
    with open(json_path) as f:
        assert f.read() == '{\n  "num_images": 2\n}'
    with open(md_path) as f:
        assert f.read() == ('| set | images | flagged |\n|---|---:|---:|\n'
                            '| my images | 2 | 1 (50.0%) |\n')
