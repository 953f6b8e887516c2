r"""A conv-categorical VAE's scoring with its categorical log-likelihood fused
by XLA against the same ops run unfused.

Each of a VAE's K importance samples decodes 256 logits per pixel channel and
takes `logits[k] - logsumexp(logits)`. `tfp_ood.models.vae` compiles that
reduction alone with XLA (`jit_compile=True`), which fuses the log-sum-exp's
max, subtraction, exponential and sum into one pass; the decoder's
convolutions stay in the plain graph. Measured here in one process, back to
back in each of `--rounds` rounds (the first of the pair alternating, so a
machine whose speed drifts moves both alike): images/s of the K-sample
log-weights (`VAE._log_weights`) of `--images` images in batches of
`--batch-size`, with the fused reduction and with the same Python function
traced without XLA. The row gives the medians, every round, `fused_over_plain`
(the median of the rounds' ratios) and the largest difference between the two
log-weights.

    python benchmarks/vae_likelihood.py                                  # ~2 min
    python benchmarks/vae_likelihood.py --images 200 --rounds 5 \
        --json benchmarks/results/vae_likelihood.json           # ~8 min, the committed figures
    python benchmarks/vae_likelihood.py --config tiny --images 4 --rounds 1          # tests

`--config` scores an untrained VAE of that size instead of the SavedModel of
`--model-dir` (default: the shipped `saved_models/vae_cifar10`).
"""

import argparse
import os
import statistics
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _log_weights_functions(model):
    """`{'fused': f, 'plain': f}`: the model's K-sample log-weights traced with
    the XLA-fused categorical log-likelihood and with it unfused."""
    import tensorflow as tf
    from tfp_ood.models import vae
    fused = vae._categorical_image_log_prob
    plain = tf.function(fused.python_function, autograph=False)
    functions = {}
    for name, reduction in (('fused', fused), ('plain', plain)):
        with mock.patch.object(vae, '_categorical_image_log_prob', reduction):
            functions[name] = tf.function(model._log_weights).get_concrete_function(
                tf.TensorSpec((None,) + model.image_shape, tf.uint8),
                tf.TensorSpec((None, model.config.latent_dim), tf.float32))
    return functions


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model-dir', default=os.path.join(REPO, 'saved_models', 'vae_cifar10'),
                   help='a tfp_ood VAE export (default: the shipped saved_models/vae_cifar10)')
    p.add_argument('--config', default=None,
                   help='score an untrained conv-categorical VAE of this size instead')
    p.add_argument('--images', type=int, default=100)
    p.add_argument('--batch-size', type=int, default=20,
                   help="images per batch (default: 20, the main job's VAE sample per set)")
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--json', default=None, help='write the results here')
    args = p.parse_args(argv)
    import numpy as np
    import tensorflow as tf
    from tfp_ood import export, models
    from machine import machine, write_json
    if args.config:
        model = models.named_model('vae', args.config, (32, 32, 3))
        source = f'untrained vae {args.config}'
    else:
        model = export.restore(args.model_dir)
        source = os.path.relpath(os.path.abspath(args.model_dir), REPO)
    if model.get_config().get('likelihood') != 'categorical':
        p.error(f'{source} is not a conv-categorical VAE')
    images = np.random.default_rng(0).integers(
        0, 256, (args.images,) + model.image_shape, np.uint8)
    batches = [tf.constant(images[i:i + args.batch_size])
               for i in range(0, args.images, args.batch_size)]
    eps = tf.random.stateless_normal(
        [model.config.num_importance_samples, model.config.latent_dim], seed=[0, 17])
    functions = _log_weights_functions(model)
    outputs = {name: np.concatenate([f(b, eps).numpy() for b in batches], axis=1)
               for name, f in functions.items()}  # Also the first (compiling) call.

    def rate(name):
        start = time.perf_counter()
        for batch in batches:
            functions[name](batch, eps).numpy()
        return args.images / (time.perf_counter() - start)

    rates = {'fused': [], 'plain': []}
    for i in range(args.rounds):
        for name in (('fused', 'plain') if i % 2 == 0 else ('plain', 'fused')):
            rates[name].append(rate(name))
    ratios = [f / p for f, p in zip(rates['fused'], rates['plain'])]
    row = {f'{name}_images_per_s': statistics.median(v) for name, v in rates.items()}
    row.update({f'{name}_per_round': v for name, v in rates.items()})
    row.update(fused_over_plain=statistics.median(ratios), fused_over_plain_per_round=ratios,
               max_abs_log_weight_difference=float(
                   np.max(np.abs(outputs['fused'] - outputs['plain']))),
               max_abs_log_weight=float(np.max(np.abs(outputs['plain']))))
    results = {'machine': machine(), 'model': source,
               'num_importance_samples': model.config.num_importance_samples,
               'num_images': args.images, 'batch_size': args.batch_size, 'score': row}
    print(f'{source}, K = {model.config.num_importance_samples}: fused '
          f'{row["fused_images_per_s"]:.2f} images/s (rounds {min(rates["fused"]):.2f}-'
          f'{max(rates["fused"]):.2f}), plain {row["plain_images_per_s"]:.2f} '
          f'({min(rates["plain"]):.2f}-{max(rates["plain"]):.2f}); fused / plain '
          f'{row["fused_over_plain"]:.2f}; log-weights differ by at most '
          f'{row["max_abs_log_weight_difference"]:.3g} (of {row["max_abs_log_weight"]:.3g})',
          flush=True)
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == '__main__':
    main()
