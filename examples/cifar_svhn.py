r"""CIFAR-10 against SVHN: the paper's headline experiment.

Scores CIFAR-10 train and test, SVHN test, constant images (value 128),
uniform random images and grayscale CIFAR-10 test and SVHN test under a Glow
and a CV-Glow, and writes to `--out`: `bpd_table.csv` / `.md`, per-image
scores, the log p(x) histogram of CIFAR-10 test against SVHN test (the
paper's Figure 1), the distribution/volume term histograms and `metrics.json`
(AUROC of raw likelihood, CIFAR-10 test in, SVHN test out).

The models here are freshly initialised (ActNorm's data-dependent
initialisation on CIFAR-10 training images, no training): this run shows the
pipeline end to end on real data.

    python examples/cifar_svhn.py --data-dir ../shared/data --out results/cifar_svhn
"""

import os

from absl import app, flags, logging

from tfp_ood import data, report
from tfp_ood.config import GLOW_CONFIG_NAMES, GlowConfig
from tfp_ood.models import FlowModel

FLAGS = flags.FLAGS
flags.DEFINE_string('data_dir', None, 'Directory of <name>_<split>.npz arrays '
                    '(default: $TFP_OOD_DATA_DIR, else TFDS).')
flags.DEFINE_enum('source', 'auto', data.SOURCES, 'Where images come from.')
flags.DEFINE_string('out', 'results/cifar_svhn', 'Results folder.')
flags.DEFINE_enum('config', 'cpu', GLOW_CONFIG_NAMES, 'Glow configuration.')
flags.DEFINE_integer('num_images', None, 'Score at most this many images per set.')
flags.DEFINE_integer('num_train_images', 10000, 'CIFAR-10 training images to score.')
flags.DEFINE_integer('init_images', 512, 'Training images for ActNorm initialisation.')
flags.DEFINE_integer('batch_size', 256, 'Images per evaluator call.')
flags.DEFINE_integer('seed', 0, 'Seed of the initial weights.')

SHAPE = (32, 32, 3)
IN_SET, OUT_SET = 'cifar10/test', 'svhn_cropped/test'


def datasets(n):
    def load(name, split):
        ds = data.load(name, split, data_dir=FLAGS.data_dir, source=FLAGS.source)
        return ds.take(n) if n else ds

    sets = {
        'cifar10/train': load('cifar10', f'train[:{FLAGS.num_train_images}]'),
        IN_SET: load('cifar10', 'test'),
        OUT_SET: load('svhn_cropped', 'test'),
        'constant_128': data.constant_images(128, SHAPE, min(n or 1000, 1000)),
        'uniform_noise': data.uniform_noise_images(SHAPE, min(n or 1000, 1000), seed=0),
    }
    sets['cifar10/test (gray)'] = data.grayscale(sets[IN_SET])
    sets['svhn_cropped/test (gray)'] = data.grayscale(sets[OUT_SET])
    return sets


def main(argv):
    del argv
    init = data.images_array(data.load('cifar10', f'train[:{FLAGS.init_images}]',
                                       data_dir=FLAGS.data_dir, source=FLAGS.source))
    models = {}
    for coupling in ('affine', 'additive'):
        config = GlowConfig.named(FLAGS.config, SHAPE, coupling=coupling, seed=FLAGS.seed)
        model = FlowModel.from_config(config)
        model.initialize(init, seed=FLAGS.seed)
        models[f'{config.family}_{FLAGS.config}_untrained'] = model
    results = report.score_all(models, datasets(FLAGS.num_images), FLAGS.out,
                               batch_size=FLAGS.batch_size)
    families = {name: m.config.family for name, m in models.items()}
    rows = report.bpd_rows(results, families, {name: 'cifar10' for name in models})
    _, md_path = report.write_bpd_table(rows, FLAGS.out)
    metrics = report.write_ood_report(results, list(models), IN_SET, OUT_SET, FLAGS.out)
    with open(md_path) as f:
        logging.info('Bits/dim (untrained models):\n%s', f.read())
    for name, m in metrics.items():
        logging.info('%s: AUROC %.3f (%s in, %s out)', name, m['auroc'], IN_SET, OUT_SET)
    logging.info('Results written to %s', os.path.abspath(FLAGS.out))


if __name__ == '__main__':
    app.run(main)
