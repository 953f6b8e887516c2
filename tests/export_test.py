"""SavedModel export: the same numbers after reloading in a fresh process that never
imports tfp_ood or TFP."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tfp_ood import config, data, detectors, export, models
from tfp_ood.config import GlowConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 8, 3)
_GLOW = GlowConfig(image_shape=SHAPE, num_levels=2, num_steps_per_level=1, hidden_channels=8)
_CONFIGS = {'glow': _GLOW, 'cv_glow': _GLOW,
            'pixelcnn': models.PixelCNNConfig.named('tiny', SHAPE),
            'vae': models.VAEConfig.named('tiny', SHAPE, num_importance_samples=8)}

_FRESH_PROCESS = textwrap.dedent('''
    import json, sys
    import numpy as np
    import tensorflow as tf
    reports = {}
    for path, data_path, temperature in json.loads(sys.argv[1]):
        data = np.load(data_path)
        model = tf.saved_model.load(path)
        outputs = model.signatures['serving_default'](images=tf.constant(data['images']))
        direct = model.log_prob(tf.constant(data['images']))
        samples = model.signatures['sample'](num_images=tf.constant(3),
                                             temperature=tf.constant(temperature))['images']
        with open(f'{path}/assets/tfp_ood.json') as f:
            metadata = json.load(f)
        # Functions saved with the model object itself (its own score_batch...).
        held = getattr(model, 'model', None)
        model_functions = sorted(n for n in dir(held) if not n.startswith('__')
                                 and isinstance(getattr(held, n, None), type(model.log_prob)))
        reports[path] = {
            'outputs': {k: v.numpy().tolist() for k, v in outputs.items()},
            'direct': {k: v.numpy().tolist() for k, v in direct.items()},
            'sample_shape': samples.shape.as_list(), 'sample_dtype': samples.dtype.name,
            'metadata': metadata, 'model_functions': model_functions}
    leaked = sorted(m for m in sys.modules
                    if m.split('.')[0] in ('tfp_ood', 'tensorflow_probability', 'tf_keras'))
    print(json.dumps({'models': reports, 'leaked_modules': leaked}))
''')


class ExportTest(tf.test.TestCase, parameterized.TestCase):

    @pytest.mark.slow(minutes=0.5)
    def test_round_trip_in_fresh_process_without_tfp_ood(self):
        # Every family, exported here and loaded in one fresh process that imports
        # TensorFlow only.
        directory = self.create_tempdir().full_path
        images = np.random.default_rng(0).integers(0, 256, (5,) + SHAPE, dtype=np.uint8)
        data_path = os.path.join(directory, 'data.npz')
        np.savez(data_path, images=images)
        exported, jobs = {}, []
        for family in _CONFIGS:
            model = models.from_config(dict(family=family, **_CONFIGS[family].to_dict()))
            model.initialize(images)
            for v in model.trainable_variables:
                v.assign_add(0.05 * tf.random.stateless_normal(v.shape, seed=[3, 4]))
            expected = {k: v.numpy() for k, v in model.score_batch(images).items()}
            path = export.export(model, os.path.join(directory, family),
                                 provenance={'data': {'dataset': 'random'}, 'steps': 0})
            exported[family] = (model, path, expected)
            jobs.append([path, data_path, 1.0 if family == 'pixelcnn' else 0.7])
        run = subprocess.run([sys.executable, '-c', _FRESH_PROCESS, json.dumps(jobs)],
                             capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        fresh = json.loads(run.stdout.strip().splitlines()[-1])
        self.assertEqual(fresh['leaked_modules'], [])
        flow = ['log_det', 'log_pz'] + [f'level{i}_{t}' for i in range(2)
                                        for t in ('log_det', 'log_pz')]
        for family, (model, path, expected) in exported.items():
            with self.subTest(family=family):
                report = fresh['models'][path]
                terms = {'glow': flow, 'cv_glow': flow, 'pixelcnn': [], 'vae': ['elbo']}[family]
                self.assertEqual(sorted(report['outputs']),
                                 sorted(['bits_per_dim', 'log_prob'] + terms))
                for outputs in (report['outputs'], report['direct']):
                    for key, values in outputs.items():
                        self.assertAllClose(values, expected[key], rtol=1e-6, atol=1e-4)
                self.assertEqual(report['sample_shape'], [3, *SHAPE])
                self.assertEqual(report['sample_dtype'], 'uint8')
                # Only the export's own signatures: no traced copy of the model's
                # functions (score_batch, statistics_batch...) is written.
                self.assertEqual(report['model_functions'], [])
                metadata = report['metadata']
                self.assertEqual(metadata['model'], model.get_config())
                self.assertEqual(metadata['provenance']['data'], {'dataset': 'random'})
                # The adapter scores the SavedModel like any model.
                adapter = export.load(path)
                self.assertAllClose(adapter.score_batch(images)['log_prob'],
                                    expected['log_prob'], rtol=1e-6)
                # restore() rebuilds the tfp_ood model itself, with the trained weights.
                restored = export.restore(path)
                self.assertEqual(restored.get_config(), model.get_config())
                self.assertAllClose(restored.score_batch(images)['log_prob'],
                                    expected['log_prob'], rtol=1e-6)
                with self.assertRaisesRegex(FileExistsError, 'already exists'):
                    export.export(model, path)

    @parameterized.named_parameters(('GlowCifar10', 'glow_cifar10'),
                                    ('CVGlowFashionMnist', 'cvglow_fashion_mnist'),
                                    ('ContractingGlowCifar10', 'background_glow_cifar10'))
    @pytest.mark.slow(minutes=0.2)
    def test_shipped_flows_restore_into_the_current_classes(self, name):
        # The SavedModel's traced functions were written by the code of the day the
        # model shipped; the restored Python model is today's classes. They agree.
        path = os.path.join(REPO, 'saved_models', name)
        shipped, restored = export.load(path), export.restore(path)
        dataset = 'cifar10' if 'cifar10' in name else 'fashion_mnist'
        images = data.images_array(data.load(dataset, 'test[:64]', source='samples'))
        before = shipped.log_prob_terms(images)
        after = restored.log_prob_terms(images)
        for key in ('log_prob', 'log_pz', 'log_det'):
            self.assertAllClose(after[key], before[key], rtol=1e-6, atol=1e-2, msg=key)

    def test_signatures_enforce_their_shape_and_take_an_empty_batch(self):
        model = models.from_config(dict(family='glow', **_GLOW.to_dict()))
        model.initialize(np.random.default_rng(0).integers(0, 256, (8,) + SHAPE, np.uint8))
        directory = self.create_tempdir().full_path
        path = export.export(model, os.path.join(directory, 'model'))
        dos = detectors.DensityOfStates(model, ('log_pz', 'log_det'), codec='png').fit(
            np.random.default_rng(1).integers(0, 256, (16,) + SHAPE, np.uint8))
        detector_path = export.export_detector(dos, 'density_of_states', 1.0, 0.95, [path],
                                               os.path.join(directory, 'detector'))
        for saved, key in ((path, 'log_prob'), (detector_path, 'ood_score')):
            serve = tf.saved_model.load(saved).signatures['serving_default']
            empty = serve(images=tf.zeros((0,) + SHAPE, tf.uint8))
            self.assertNotEmpty(empty)
            for name, value in empty.items():
                self.assertEqual(value.shape[0], 0, name)
            images = np.random.default_rng(2).integers(0, 256, (3,) + SHAPE, np.uint8)
            self.assertEqual(serve(images=tf.constant(images))[key].shape, (3,))
            expected = r'\[\?,' + ','.join(str(d) for d in SHAPE) + r'\]'
            with self.assertRaisesRegex(tf.errors.InvalidArgumentError, expected):
                serve(images=tf.zeros((2, SHAPE[0] + 1, SHAPE[1], SHAPE[2]), tf.uint8))

    def test_overwrite_replaces_only_a_previous_export(self):
        model = models.from_config(dict(family='glow', **_GLOW.to_dict()))
        model.initialize(np.zeros((2,) + SHAPE, np.uint8))
        directory = self.create_tempdir().full_path
        path = export.export(model, os.path.join(directory, 'model'))
        export.export(model, path, overwrite=True)  # A previous export: replaced.
        self.assertEqual(sorted(os.listdir(directory)), ['model'])  # No staging left.
        # A run directory, a folder holding an export and more, a regular file: kept.
        run = os.path.join(directory, 'run')
        os.makedirs(os.path.join(run, 'checkpoints'))
        with open(os.path.join(run, 'config.json'), 'w') as f:
            f.write('{}')
        regular = os.path.join(directory, 'notes.txt')
        with open(regular, 'w') as f:
            f.write('mine')
        for target in (run, directory, regular):
            with self.assertRaisesRegex(FileExistsError, 'refusing|replaces only'):
                export.export(model, target, overwrite=True)
        self.assertTrue(os.path.exists(os.path.join(run, 'config.json')))
        self.assertTrue(os.path.exists(os.path.join(path, 'saved_model.pb')))
        with open(regular) as f:
            self.assertEqual(f.read(), 'mine')

    def test_edited_or_corrupt_metadata_is_named(self):
        model = models.from_config(dict(family='glow', **_GLOW.to_dict()))
        model.initialize(np.zeros((2,) + SHAPE, np.uint8))
        path = export.export(model, os.path.join(self.create_tempdir().full_path, 'model'))
        metadata_path = os.path.join(path, 'assets', export.METADATA_FILE)
        with open(metadata_path) as f:
            original = json.load(f)
        for content, pattern in (
                ('{"format": ', 'is not valid JSON'),
                (json.dumps(dict(original, image_shape='32x32')), 'image_shape must be'),
                (json.dumps(dict(original, image_shape=[8, 8])), 'image_shape must be'),
                (json.dumps(dict(original, outputs=None)), "'outputs' must be a list"),
                ('[]', 'unknown format')):
            with open(metadata_path, 'w') as f:
                f.write(content)
            with self.assertRaisesRegex(ValueError, pattern) as cm:
                export.load(path)
            self.assertIn(metadata_path, str(cm.exception))

    def test_capabilities_are_declared_not_guessed(self):
        # hasattr(model, 'sample') was true for every loaded SavedModel.
        self.assertFalse(models.DensityModel((4, 4, 1)).can_sample)
        pixelcnn = export.load(os.path.join(REPO, 'saved_models', 'pixelcnn_cifar10'))
        self.assertTrue(pixelcnn.can_sample)
        self.assertEqual(pixelcnn.sample_temperatures, (1.0,))
        with self.assertRaisesRegex(ValueError, r'PixelCNN\+\+, which samples at temperature '
                                                r'1.0 only; got 0.7'):
            pixelcnn.sample(2, temperature=0.7)
        # Flow or not, and the precision, from the registry and the metadata: the
        # same on the Python models and on their SavedModels.
        glow = export.load(os.path.join(REPO, 'saved_models', 'glow_cifar10'))
        self.assertEqual((glow.is_flow, glow.precision, glow.any_temperature),
                         (True, 'float32', True))
        self.assertFalse(pixelcnn.is_flow)
        self.assertFalse(pixelcnn.any_temperature)
        for name in config.MODEL_NAMES:
            model = models.named_model(name, 'tiny', (8, 8, 1))
            spec = config.MODELS[name]
            self.assertEqual(model.is_flow, spec.is_flow, name)
            self.assertEqual(model.is_flow, config.is_flow_family(spec.family), name)
            self.assertEqual((model.sample_temperatures, model.any_temperature),
                             (spec.sample_temperatures, spec.any_temperature), name)
            self.assertEqual(model.precision, 'float32')
        self.assertFalse(config.is_flow_family('no_such_family'))

    def test_restore_refuses_variables_of_another_model(self):
        model = models.from_config(dict(family='glow', **_GLOW.to_dict()))
        path = export.export(model, os.path.join(self.create_tempdir().full_path, 'model'))
        metadata_path = os.path.join(path, 'assets', export.METADATA_FILE)
        with open(metadata_path) as f:
            metadata = json.load(f)
        metadata['model']['num_steps_per_level'] = 2
        with open(metadata_path, 'w') as f:
            json.dump(metadata, f)
        with self.assertRaisesRegex(ValueError, 'do not match'):
            export.restore(path)

    def test_load_errors(self):
        directory = self.create_tempdir().full_path
        with self.assertRaisesRegex(FileNotFoundError, 'No SavedModel directory'):
            export.load(os.path.join(directory, 'missing'))
        with self.assertRaisesRegex(FileNotFoundError, 'no saved_model.pb'):
            export.load(directory)
        os.makedirs(os.path.join(directory, 'assets'))
        with open(os.path.join(directory, 'saved_model.pb'), 'wb') as f:
            f.write(b'not a protobuf')
        with self.assertRaisesRegex(FileNotFoundError, 'not a tfp_ood export'):
            export.load(directory)
        with open(os.path.join(directory, 'assets', export.METADATA_FILE), 'w') as f:
            json.dump({'format': export.FORMAT, 'image_shape': [8, 8, 3], 'outputs': [],
                       'model': {}, 'can_sample': False}, f)
        with self.assertRaisesRegex(ValueError, 'Cannot load the SavedModel'):
            export.load(directory)


if __name__ == '__main__':
    tf.test.main()
