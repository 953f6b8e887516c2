r"""A VAE's K-sample scoring decoded in cache-sized passes, against decoding each
draw's whole batch at once (the implementation before).

Each of a VAE's K importance samples decodes the batch; for a conv-categorical
VAE on CIFAR-10 that is 256 logits per pixel channel, 3.1 MB per image, and a
`logits[k] - logsumexp(logits)` over them. `tfp_ood.models.vae` decodes the
`K x batch` draws `model.decode_rows` at a time (rows chosen so that the
decoder's largest output stays within `vae.DECODE_BYTES`) and takes the
categorical's log-probability in one pass, `-log(sum_j exp(logits[j] -
logits[k]))`. The peer, written out here, is the implementation before: a loop
over the K draws, each decoding the whole batch, with the maximum-subtracted
log-sum-exp.

Measured in one process, back to back in each of `--rounds` rounds (the order
alternating, so a machine whose speed drifts moves both alike): images/s of the
K-sample log-weights of `--images` images in batches of `--batch-size`. The row
gives the medians, every round, `passes_over_whole_batch` (the median of the
rounds' ratios) and the largest difference between the two log-weights. With
`--rows`, the package's function is also timed with `decode_rows` set to each
of those values (the sweep that chose `DECODE_BYTES`).

    python benchmarks/vae_likelihood.py                                  # ~2 min
    python benchmarks/vae_likelihood.py --images 60 --rounds 5 --rows 1 2 5 8 12 \
        --json benchmarks/results/vae_likelihood.json           # ~7 min, the committed figures
    python benchmarks/vae_likelihood.py --config tiny --images 4 --rounds 1          # tests

`--config` scores an untrained VAE of that size instead of the SavedModel of
`--model-dir` (default: the shipped `saved_models/vae_cifar10`).
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def whole_batch_log_weights(model):
    """The peer: `[K, batch]` log-weights, each draw decoding the whole batch,
    the categorical's log-probability with the maximum subtracted."""
    import tensorflow as tf

    def log_prob(z, images):
        if model.config.likelihood != 'categorical':
            return model.likelihood(z).log_prob(images)
        logits = model.decoder(z)
        k = tf.cast(images, tf.int32)[..., tf.newaxis]
        picked = tf.gather(logits, k, batch_dims=len(logits.shape) - 1)[..., 0]
        return tf.reduce_sum(picked - tf.reduce_logsumexp(logits, axis=-1), axis=[-3, -2, -1])

    def log_weights(images, eps):
        q = model.posterior(images)
        base = q if model._flow is None else q.distribution

        def one(k):
            z = base.loc + base.scale.diag * eps[k]
            z = z if model._flow is None else model._flow.forward(z)
            return log_prob(z, images) + model.prior.log_prob(z) - q.log_prob(z)

        return tf.map_fn(one, tf.range(tf.shape(eps)[0]), fn_output_signature=tf.float32)

    return tf.function(log_weights)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model-dir', default=os.path.join(REPO, 'saved_models', 'vae_cifar10'),
                   help='a tfp_ood VAE export (default: the shipped saved_models/vae_cifar10)')
    p.add_argument('--config', default=None,
                   help='score an untrained conv-categorical VAE of this size instead')
    p.add_argument('--images', type=int, default=40)
    p.add_argument('--batch-size', type=int, default=20,
                   help="images per batch (default: 20, the main job's VAE sample per set)")
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--rows', type=int, nargs='*', default=[],
                   help='also time the package with decode_rows set to each of these')
    p.add_argument('--json', default=None, help='write the results here')
    args = p.parse_args(argv)
    if min([args.images, args.batch_size, args.rounds] + args.rows) < 1:
        p.error('--images, --batch-size, --rounds and --rows must be at least 1')
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
    images = np.random.default_rng(0).integers(
        0, 256, (args.images,) + model.image_shape, np.uint8)
    batches = [tf.constant(images[i:i + args.batch_size])
               for i in range(0, args.images, args.batch_size)]
    eps = tf.random.stateless_normal(
        [model.config.num_importance_samples, model.config.latent_dim], seed=[0, 17])
    default_rows = model.decode_rows
    functions = {'passes': model._log_weights_fn, 'whole_batch': whole_batch_log_weights(model)}
    for rows in args.rows:  # decode_rows is read when the function is traced.
        model.decode_rows = rows
        functions[f'rows_{rows}'] = tf.function(model._log_weights).get_concrete_function(
            tf.TensorSpec((None,) + model.image_shape, tf.uint8),
            tf.TensorSpec((None, model.config.latent_dim), tf.float32))
    model.decode_rows = default_rows
    outputs = {name: np.concatenate([f(b, eps).numpy() for b in batches], axis=1)
               for name, f in functions.items()}  # Also the first (tracing) call.

    def rate(name):
        start = time.perf_counter()
        for batch in batches:
            functions[name](batch, eps).numpy()
        return args.images / (time.perf_counter() - start)

    rates = {name: [] for name in functions}
    for i in range(args.rounds):
        for name in (list(functions) if i % 2 == 0 else list(functions)[::-1]):
            rates[name].append(rate(name))
    ratios = [a / b for a, b in zip(rates['passes'], rates['whole_batch'])]
    row = {f'{name}_images_per_s': statistics.median(v) for name, v in rates.items()}
    row.update({f'{name}_per_round': v for name, v in rates.items()})
    row.update(passes_over_whole_batch=statistics.median(ratios),
               passes_over_whole_batch_per_round=ratios,
               max_abs_log_weight_difference=float(max(
                   np.max(np.abs(out - outputs['whole_batch'])) for out in outputs.values())),
               max_abs_log_weight=float(np.max(np.abs(outputs['whole_batch']))))
    results = {'machine': machine(), 'model': source,
               'likelihood': model.config.likelihood,
               'num_importance_samples': model.config.num_importance_samples,
               'decode_rows': default_rows, 'num_images': args.images,
               'batch_size': args.batch_size, 'score': row}
    print(f'{source}, K = {model.config.num_importance_samples}: in passes of {default_rows} '
          f'rows {row["passes_images_per_s"]:.2f} images/s (rounds '
          f'{min(rates["passes"]):.2f}-{max(rates["passes"]):.2f}), whole batch '
          f'{row["whole_batch_images_per_s"]:.2f} ({min(rates["whole_batch"]):.2f}-'
          f'{max(rates["whole_batch"]):.2f}); ratio {row["passes_over_whole_batch"]:.2f}; '
          f'log-weights differ by at most {row["max_abs_log_weight_difference"]:.3g} (of '
          f'{row["max_abs_log_weight"]:.3g})', flush=True)
    for rows in args.rows:
        print(f'  decode_rows {rows:3d}: {row[f"rows_{rows}_images_per_s"]:.2f} images/s',
              flush=True)
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == '__main__':
    main()
