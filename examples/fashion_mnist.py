r"""FashionMNIST against MNIST (Nalisnick et al., 2019, Figure 2).

Scores FashionMNIST train and test, MNIST test, constant images (value 0) and
uniform random images under the Glow trained on FashionMNIST, and writes to
--out the same report as examples/cifar_svhn.py: bpd_table.csv / .md (the
paper's numbers beside ours), the log p(x) histogram of FashionMNIST test
against MNIST test, the term histograms, metrics.json (AUROC of raw
likelihood, FashionMNIST test in, MNIST test out), summary.json and
TensorBoard logs.

    python examples/fashion_mnist.py                              # embedded samples
    python examples/fashion_mnist.py --data-dir DATA    # full test sets
    python examples/fashion_mnist.py --retrain --data-dir DATA
"""

from tfp_ood import data, report
from tfp_ood.experiments import common

SHAPE = (28, 28, 1)
IN_SET, OUT_SET = 'fashion_mnist/test', 'mnist/test'


def main(argv=None):
    parser = common.parser(__doc__.split('\n')[0], 'results/fashion_mnist')
    parser.add_argument('--num-train-images', type=int, default=10000,
                        help='training images to score (local arrays or TFDS only)')
    args = parser.parse_args(argv)
    source = common.Source(args)
    entry = common.get_model(args, source, 'glow_fashion_mnist', 'glow', 'fashion_mnist',
                             'train', [('fashion_mnist', 'test'), ('mnist', 'test')])
    if entry is None:
        raise SystemExit('No model to score: see the message above.')
    n_synthetic = min(args.num_synthetic, args.num_images or args.num_synthetic)
    sets = {}
    if not source.samples:
        sets['fashion_mnist/train'] = source.load('fashion_mnist',
                                                  f'train[:{args.num_train_images}]')
    sets[IN_SET] = source.load('fashion_mnist', 'test')
    sets[OUT_SET] = source.load('mnist', 'test')
    sets['constant_0'] = data.constant_images(0, SHAPE, n_synthetic)
    sets['uniform_noise'] = data.uniform_noise_images(SHAPE, n_synthetic, seed=0)
    outcome = report.run_experiment({'glow_fashion_mnist': entry}, sets, IN_SET, OUT_SET,
                                    args.out, progress=args.progress)
    common.print_report(outcome, source, IN_SET, OUT_SET, args.out)
    return outcome


if __name__ == '__main__':
    common.run(main)
