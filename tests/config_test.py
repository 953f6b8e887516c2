"""The one registry of model names and sizes, and the command-line flags derived
from the dataclasses."""

import contextlib
import dataclasses
import io

import tensorflow as tf

from tfp_ood import cli, config, models, train


class RegistryTest(tf.test.TestCase):

    def test_every_name_and_size_builds_the_configuration_it_names(self):
        for name, spec in config.MODELS.items():
            for size in spec.sizes:
                for shape in ((32, 32, 3), (28, 28, 1)):
                    if spec.config_class is config.GlowConfig and size == 'paper' and (
                            shape[0] == 28):
                        continue  # 3 levels need H divisible by 8; 28x28 takes 2.
                    c = config.named_config(name, size, shape)
                    self.assertIsInstance(c, spec.config_class)
                    self.assertEqual(c.image_shape, shape)
                    for key, value in dict(spec.fixed, **spec.variant).items():
                        self.assertEqual(getattr(c, key), value, (name, key))
        self.assertEqual(config.named_config('glow', 'paper', (28, 28, 1)).hidden_channels, 200)
        self.assertEqual(config.named_config('cv_glow', 'cpu').coupling, 'additive')
        self.assertEqual(config.named_config('vae_rnvp', 'tiny').encoder_flow_layers, 4)

    def test_names_and_sizes_that_do_not_exist_are_refused(self):
        with self.assertRaisesRegex(ValueError, "no_such_model"):
            config.named_config('no_such_model', 'cpu')
        with self.assertRaisesRegex(ValueError, "'small' for model 'vae'.*'paper', 'cpu'"):
            config.named_config('vae', 'small')
        with self.assertRaisesRegex(ValueError, "has coupling='additive'"):
            config.named_config('cv_glow', 'cpu', coupling='affine')

    def test_a_saved_configuration_rebuilds_the_same_model(self):
        for name in config.MODEL_NAMES:
            model = models.named_model(name, 'tiny', (16, 16, 3))
            rebuilt = models.from_config(model.get_config())
            self.assertEqual(rebuilt.get_config(), model.get_config())
            self.assertEqual(type(rebuilt), type(model))

    def test_a_configuration_saved_before_a_field_existed_is_completed_with_its_default(self):
        saved = models.named_model('glow', 'tiny', (16, 16, 3)).get_config()
        del saved['coupling_scale']
        complete = config.complete_model_config(saved)
        self.assertEqual(complete['coupling_scale'], 'symmetric')
        self.assertEqual(complete, models.from_config(saved).get_config())
        with self.assertRaisesRegex(ValueError, 'coupling_scale must be one of'):
            config.named_config('glow', 'tiny', coupling_scale='bounded')


class FlagsTest(tf.test.TestCase):

    def test_train_flags_are_the_train_config_fields_with_their_defaults(self):
        parser = cli._build_parser()
        args = parser.parse_args(['train', '--workdir', 'w'])
        self.assertEqual(cli._from_flags(train.TrainConfig, args), train.TrainConfig())
        args = parser.parse_args(['train', '--workdir', 'w', '--steps', '7', '--log-every', '3',
                                  '--mutation-rate', '0.2'])
        built = cli._from_flags(train.TrainConfig, args)
        self.assertEqual((built.num_steps, built.log_every, built.mutation_rate), (7, 3, 0.2))
        help_text = parser._subparsers._group_actions[0].choices['train'].format_help()
        for field in dataclasses.fields(train.TrainConfig):
            flag = '--' + (field.metadata.get('flag') or field.name).replace('_', '-')
            self.assertIn(flag, help_text)

    def test_a_size_the_model_lacks_is_one_line_before_any_work(self):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(['train', '--model', 'vae', '--config', 'small', '--workdir',
                             self.create_tempdir().full_path, '--data-dir', '/nonexistent'])
        self.assertEqual(code, 2)
        self.assertEqual(err.getvalue().strip(), "tfp-ood train: error: --model vae has no size "
                         "'small'; it has paper, cpu, tiny.")


if __name__ == '__main__':
    tf.test.main()
