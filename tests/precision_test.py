"""bfloat16 coupling networks: the same likelihoods within a stated tolerance,
float32 where it must be, and the float32 path exactly as it was."""

import json
import os
import subprocess
import sys

import pytest
import numpy as np
import tensorflow as tf
import tf_keras

from tfp_ood import export, models, train
from tfp_ood.bijectors import glow
from tfp_ood.bijectors.glow import coupling_network_fn
from tfp_ood.config import named_config

SHAPE = (16, 16, 3)
# Per-image |bits/dim| between the precisions on this tiny model with perturbed
# weights (measured: about 1e-3). The shipped glow_cifar10 on real data: see
# docs/performance.md.
BPD_TOLERANCE = 0.01


def _images(n=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + SHAPE, dtype=np.uint8)


def _pair(coupling='affine'):
    """The same tiny flow in float32 and in bfloat16, with weights that are not zero."""
    config = named_config('glow' if coupling == 'affine' else 'cv_glow', 'tiny', SHAPE)
    fp32 = models.build(config)
    bf16 = models.build(config, precision='bfloat16')
    images = _images(32)
    fp32.initialize(images)
    for v in fp32.trainable_variables:
        v.assign_add(0.05 * tf.random.stateless_normal(v.shape, seed=[1, 2]))
    bf16.initialize(images)  # Builds it; the weights are then copied over.
    for a, b in zip(fp32.variables, bf16.variables):
        b.assign(a)
    return fp32, bf16


def _plain_float32_network_fn(hidden_channels):
    """The coupling network as it was before precisions existed (no dtype argument)."""

    def network(input_shape, output_channels, seed):
        init = tf_keras.initializers.GlorotUniform
        return tf_keras.Sequential([
            tf_keras.Input(shape=tuple(input_shape)),
            tf_keras.layers.Conv2D(hidden_channels, 3, padding='same', activation='relu',
                                   kernel_initializer=init(seed=seed)),
            tf_keras.layers.Conv2D(hidden_channels, 1, activation='relu',
                                   kernel_initializer=init(seed=seed + 1)),
            tf_keras.layers.Conv2D(output_channels, 3, padding='same',
                                   kernel_initializer='zeros'),
        ])

    return network


class PrecisionTest(tf.test.TestCase):

    def test_bfloat16_gives_the_float32_likelihoods_within_tolerance(self):
        for coupling in ('affine', 'additive'):
            fp32, bf16 = _pair(coupling)
            images = _images()
            a, b = fp32.score_batch(images), bf16.score_batch(images)
            diff = np.abs(a['bits_per_dim'].numpy() - b['bits_per_dim'].numpy())
            self.assertLess(diff.max(), BPD_TOLERANCE, coupling)
            self.assertGreater(diff.max(), 0.0, 'the networks did not run in bfloat16')

    def test_networks_compute_in_bfloat16_and_everything_else_in_float32(self):
        fp32, bf16 = _pair()
        coupling = bf16.levels[0].steps[0].coupling
        self.assertEqual(coupling.network.layers[0].compute_dtype, 'bfloat16')
        self.assertEqual(coupling.network.layers[0].variable_dtype, 'float32')
        self.assertEqual(bf16.levels[0].split_prior.network.layers[0].compute_dtype, 'float32')
        self.assertTrue(all(v.dtype == tf.float32 for v in bf16.variables
                            if v.dtype.is_floating))
        terms = bf16.log_prob_terms(_images())
        for key, value in terms.items():
            self.assertEqual(value.dtype, tf.float32, key)
        # The split sums exactly in both precisions.
        for model in (fp32, bf16):
            t = {k: v.numpy() for k, v in model.log_prob_terms(_images()).items()}
            self.assertAllEqual(t['log_pz'] + t['log_det'] + t['dequant_const'], t['log_prob'])

    def test_chosen_convolutions_stay_float32_in_bfloat16(self):
        network = coupling_network_fn(8, 'bfloat16', float32_convolutions=(0, 2))(
            (4, 4, 2), 4, 0)
        self.assertEqual([layer.compute_dtype for layer in network.layers],
                         ['float32', 'bfloat16', 'float32'])
        x = tf.random.stateless_normal((2, 4, 4, 2), seed=[3, 4])
        self.assertEqual(network(x).dtype, tf.float32)
        with self.assertRaisesRegex(ValueError, 'indices 0, 1, 2'):
            coupling_network_fn(8, 'bfloat16', float32_convolutions=(3,))

    def test_the_float32_path_is_exactly_the_plain_float32_network(self):
        config = named_config('glow', 'tiny', SHAPE)
        ours = models.build(config)
        plain = models.FlowModel(glow(config, coupling_fn=_plain_float32_network_fn(
            config.hidden_channels)), SHAPE, config=config)
        images = _images(32)
        ours.initialize(images)
        for v in ours.trainable_variables:
            v.assign_add(0.05 * tf.random.stateless_normal(v.shape, seed=[5, 6]))
        plain.initialize(images)
        for a, b in zip(ours.variables, plain.variables):
            b.assign(a)
        for key, value in ours.log_prob_terms(images).items():
            self.assertAllEqual(value, plain.log_prob_terms(images)[key], msg=key)

    def test_a_checkpoint_of_one_precision_loads_into_the_other(self):
        fp32, _ = _pair()
        directory = self.create_tempdir().full_path
        path = tf.train.Checkpoint(model=fp32).save(os.path.join(directory, 'ckpt'))
        bf16 = models.build(fp32.config, precision='bfloat16')
        tf.train.Checkpoint(model=bf16).read(path).assert_existing_objects_matched()
        for a, b in zip(fp32.variables, bf16.variables):
            self.assertAllEqual(a, b)

    def test_other_families_refuse_bfloat16(self):
        with self.assertRaisesRegex(ValueError, 'implemented for the flows'):
            models.named_model('pixelcnn', 'tiny', SHAPE, precision='bfloat16')
        with self.assertRaisesRegex(ValueError, 'precision must be one of'):
            models.named_model('glow', 'tiny', SHAPE, precision='float16')

    @pytest.mark.slow(minutes=0.2)
    def test_a_bfloat16_saved_model_honours_the_contract_in_plain_tensorflow(self):
        _, bf16 = _pair()
        images = _images()
        expected = bf16.score_batch(images)['log_prob'].numpy()
        path = export.export(bf16, os.path.join(self.create_tempdir().full_path, 'model'))
        self.assertEqual(export.read_metadata(path)['precision'], 'bfloat16')
        self.assertEqual(export.restore(path).precision, 'bfloat16')
        code = ('import json, sys, numpy as np, tensorflow as tf\n'
                'm = tf.saved_model.load(sys.argv[1])\n'
                'x = tf.constant(np.load(sys.argv[2])["images"])\n'
                'out = m.signatures["log_prob"](images=x)\n'
                'print(json.dumps({k: [str(v.dtype.name), v.numpy().tolist()] '
                'for k, v in out.items()}))\n')
        data = os.path.join(self.create_tempdir().full_path, 'x.npz')
        np.savez(data, images=images)
        run = subprocess.run([sys.executable, '-c', code, path, data], capture_output=True,
                             text=True, timeout=300)
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        outputs = json.loads(run.stdout.strip().splitlines()[-1])
        self.assertEqual(outputs['log_prob'][0], 'float32')
        self.assertAllClose(outputs['log_prob'][1], expected, rtol=1e-6)

    def test_training_in_bfloat16_lowers_the_loss(self):
        model = models.named_model('glow', 'tiny', SHAPE, precision='bfloat16')
        images = _images(64, seed=3)
        result = train.fit(model, images,
                           train.TrainConfig(num_steps=30, batch_size=16, warmup_steps=2,
                                             learning_rate=3e-3, eval_every=10,
                                             checkpoint_every=30, num_init_images=64),
                           self.create_tempdir().full_path, eval_sets={'train': images},
                           progress=False)
        bpd = [row['train/bits_per_dim'] for row in result.history]
        self.assertLess(bpd[-1], bpd[0])


class PrecisionCliTest(tf.test.TestCase):

    def _cli(self, *argv):
        import contextlib
        import io

        from tfp_ood import cli
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main([str(a) for a in argv])
        return code, err.getvalue()

    @pytest.mark.slow(minutes=0.15)
    def test_score_with_precision_rebuilds_the_flow(self):
        fp32, _ = _pair()
        directory = self.create_tempdir().full_path
        path = export.export(fp32, os.path.join(directory, 'model'))
        np.savez(os.path.join(directory, 'x.npz'), images=_images())
        runs = {}
        for precision in (None, 'bfloat16'):
            out = os.path.join(directory, f'out_{precision}')
            extra = ['--precision', precision] if precision else []
            code, err = self._cli('score', '--model-dir', path, '--npz',
                                  os.path.join(directory, 'x.npz'), '--output', out, *extra)
            self.assertEqual(code, 0, err)
            with np.load(os.path.join(out, 'scores.npz')) as f:
                runs[precision] = f['score_bits_per_dim']
        diff = np.abs(runs[None] - runs['bfloat16'])
        self.assertGreater(diff.max(), 0.0)
        self.assertLess(diff.max(), BPD_TOLERANCE)

    def test_score_with_precision_refuses_other_families(self):
        directory = self.create_tempdir().full_path
        model = models.named_model('vae', 'tiny', SHAPE)
        model.initialize(_images())
        path = export.export(model, os.path.join(directory, 'model'))
        np.savez(os.path.join(directory, 'x.npz'), images=_images())
        code, err = self._cli('score', '--model-dir', path, '--npz',
                              os.path.join(directory, 'x.npz'), '--output',
                              os.path.join(directory, 'out'), '--precision', 'bfloat16')
        self.assertEqual(code, 2)
        self.assertIn('--precision is for the flows', err)


if __name__ == '__main__':
    tf.test.main()
