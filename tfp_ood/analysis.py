"""The paper's analyses as functions: dataset statistics and ensembles.

- `channel_statistics`: per-channel mean and standard deviation of a dataset
  (pixels scaled to [0, 1]) and its per-pixel, per-channel variance map, the
  quantities behind the paper's explanation of why SVHN "sits inside"
  CIFAR-10;
- `log_mean_exp` and `ensemble_scores`: an ensemble's log-likelihood
  `log (1/M) sum_m p_m(x)`, computed stably;
- `waic`: the Watanabe-Akaike criterion of Choi et al. (2018) as an OOD
  score, `mean_m log p_m(x) - var_m log p_m(x)`;
- `second_order_difference`: the paper's second-order expansion of
  `E_q[log p(x)] - E_p*[log p(x)]` around the training mean, from the exact
  Hessian diagonal of the flow (`log_prob_hessian_diagonal`), with the
  paper's per-channel `alpha_c` read from the model's 1x1 convolutions and
  ActNorm scales (`paper_alpha`) beside the exact one.

#### References

[1]: Eric Nalisnick et al. Do Deep Generative Models Know What They Don't
     Know? ICLR 2019. https://arxiv.org/abs/1810.09136
[2]: Hyunsun Choi, Eric Jang, Alexander A. Alemi. WAIC, but Why? Generative
     Ensembles for Robust Anomaly Detection. https://arxiv.org/abs/1810.01392
"""

import dataclasses
from typing import Dict, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from tfp_ood.data import grayscale
from tfp_ood.errors import InputError
from tfp_ood.models.base import dequantize

__all__ = ['ChannelStatistics', 'SecondOrderResult', 'add_gray_versions', 'channel_statistics',
           'ensemble_scores', 'graying_rows', 'graying_table', 'log_mean_exp',
           'log_prob_hessian_diagonal', 'paper_alpha', 'quadratic_expansion_difference',
           'second_order_difference', 'waic', 'waic_of']


@dataclasses.dataclass
class ChannelStatistics:
    """Statistics of a dataset with pixels scaled to [0, 1].

    Attributes:
      name: the dataset's name.
      num_images: images used.
      mean: per-channel mean, `[C]`.
      std: per-channel standard deviation over all pixels and images, `[C]`.
      pixel_mean: per-pixel, per-channel mean, `[H, W, C]`.
      pixel_variance: per-pixel, per-channel variance over images, `[H, W, C]`.
    """

    name: str
    num_images: int
    mean: np.ndarray
    std: np.ndarray
    pixel_mean: np.ndarray
    pixel_variance: np.ndarray

    def to_dict(self) -> Dict:
        return {'name': self.name, 'num_images': self.num_images,
                'mean': self.mean.tolist(), 'std': self.std.tolist(),
                'pixel_variance_sum': self.pixel_variance.sum(axis=(0, 1)).tolist()}


def channel_statistics(images: Union[np.ndarray, tf.data.Dataset],
                       name: str = '') -> ChannelStatistics:
    """Per-channel and per-pixel statistics of uint8 images, in one pass.

    Args:
      images: uint8 `[N, H, W, C]`, or a dataset of `{'image': ...}` (as
        `tfp_ood.data.load` returns) or of images.
      name: the dataset's name, for reports.

    Returns:
      A `ChannelStatistics`. Sums are accumulated in float64 batch by batch,
      so the numbers equal NumPy's on the whole array.
    """
    if isinstance(images, tf.data.Dataset):
        spec = images.element_spec
        ds = images.map(lambda e: e['image']) if isinstance(spec, dict) else images
        batches = (b for b in ds.batch(2048).as_numpy_iterator())
    else:
        images = np.asarray(images)
        if images.ndim != 4:
            raise InputError(f'{name or "images"}: expected [N, H, W, C]; got shape '
                             f'{list(images.shape)}.')
        batches = (images[i:i + 2048] for i in range(0, len(images), 2048))
    count, total, total_sq = 0, None, None
    for batch in batches:
        x = batch.astype(np.float64) / 255.
        if total is None:
            total, total_sq = np.zeros(x.shape[1:]), np.zeros(x.shape[1:])
        count += len(x)
        total += x.sum(axis=0)
        total_sq += np.square(x).sum(axis=0)
    if not count:
        raise InputError(f'{name or "images"}: no images.')
    pixel_mean = total / count
    pixel_variance = np.maximum(total_sq / count - np.square(pixel_mean), 0.)
    mean = pixel_mean.mean(axis=(0, 1))
    # Variance over all pixels and images = mean of per-pixel second moments - mean^2.
    second = (total_sq / count).mean(axis=(0, 1))
    std = np.sqrt(np.maximum(second - np.square(mean), 0.))
    return ChannelStatistics(name, count, mean, std, pixel_mean, pixel_variance)


def log_mean_exp(log_values: np.ndarray, axis: int = 0) -> np.ndarray:
    """`log mean exp` along `axis`, stable for log-likelihoods of any size."""
    log_values = np.asarray(log_values, dtype=np.float64)
    peak = np.max(log_values, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.)
    with np.errstate(divide='ignore'):  # All -inf: the log of 0 is -inf, as it should be.
        total = np.log(np.mean(np.exp(log_values - peak), axis=axis))
    return total + np.squeeze(peak, axis=axis)


def _stack(member_log_probs: Iterable[np.ndarray]) -> np.ndarray:
    stacked = np.stack([np.asarray(m, dtype=np.float64) for m in member_log_probs])
    if stacked.ndim != 2 or stacked.shape[0] < 1:
        raise InputError(f'Expected M arrays of per-image log-likelihoods [N]; got '
                         f'shape {list(stacked.shape)}.')
    return stacked


def ensemble_scores(member_log_probs: Sequence[np.ndarray]) -> np.ndarray:
    """The ensemble's log-likelihood `log (1/M) sum_m p_m(x)` per image, `[N]`."""
    return log_mean_exp(_stack(member_log_probs), axis=0)


def waic_of(member_log_probs: tf.Tensor) -> tf.Tensor:
    """`waic` in TensorFlow ops, of float64 log-likelihoods `[M, N]`."""
    mean, variance = tf.nn.moments(member_log_probs, axes=[0])
    return mean - variance


def waic(member_log_probs: Sequence[np.ndarray]) -> np.ndarray:
    """WAIC per image: `mean_m log p_m(x) - var_m log p_m(x)` (higher = more
    in-distribution; `tfp_ood.detectors.WAIC` scores its negation)."""
    stacked = _stack(member_log_probs)
    if stacked.shape[0] < 2:
        raise InputError('WAIC needs at least two ensemble members.')
    return waic_of(tf.constant(stacked)).numpy()


# Pixel values k scaled to [0, 1] are k / 255; a flow sees x = (k + 1/2) / 256 - 1/2.
_MODEL_SCALE = 255. / 256.


def _gradient_and_hvp(model, x0: tf.Tensor, tangents: tf.Tensor):
    """Gradient of the flow's `log p` at `x0` and its Hessian times each tangent.

    Forward-over-reverse autodiff: one Hessian-vector product per row of
    `tangents` (`[batch, H, W, C]`); returns both as `[batch, H, W, C]`.
    """
    x = tf.repeat(x0[tf.newaxis], tf.shape(tangents)[0], axis=0)
    with tf.autodiff.ForwardAccumulator(x, tangents) as accumulator:
        with tf.GradientTape() as tape:
            tape.watch(x)
            log_prob = tf.reduce_sum(model.distribution.log_prob(x))
        gradient = tape.gradient(log_prob, x)
    return gradient, accumulator.jvp(gradient)


def log_prob_hessian_diagonal(model, x0: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Diagonal of the Hessian of the flow's continuous `log p(x)` at `x0`.

    Exact (forward-over-reverse autodiff, one Hessian-vector product per
    dimension, `batch_size` at a time), so it includes the coupling networks'
    curvature, not only the linear layers'.

    Args:
      model: a `FlowModel`.
      x0: a point in the model's input space (`x = (k + 1/2) / 256 - 1/2`),
        `[H, W, C]`.
      batch_size: Hessian-vector products per call.

    Returns:
      `d^2 log p / dx_i^2` at `x0`, `[H, W, C]`.
    """
    shape = tuple(model.image_shape)
    dims = int(np.prod(shape))
    x0 = tf.constant(np.asarray(x0, np.float32).reshape(shape))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
    def diagonal_entries(indices):
        tangents = tf.reshape(tf.one_hot(indices, dims), (-1,) + shape)
        _, hvp = _gradient_and_hvp(model, x0, tangents)
        return tf.gather(tf.reshape(hvp, [-1, dims]), indices, axis=1, batch_dims=1)

    parts = [diagonal_entries(tf.range(i, min(i + batch_size, dims))).numpy()
             for i in range(0, dims, batch_size)]
    return np.concatenate(parts).reshape(shape)


def paper_alpha(model) -> np.ndarray:
    """The paper's `alpha_c = prod_k sum_j u_{k,c,j}` of a Glow's first level.

    Nalisnick et al. (2019, section 5) write CV-Glow's curvature at pixel
    `(h, w, c)` as `(d^2/dz^2 log p(z)) * alpha_c^2`, treating the flow as a
    stack of `K` per-pixel linear maps `u_k` (the 1x1 convolutions; the
    additive couplings have unit-diagonal Jacobians and are left out).

    How the pieces of our flow enter:

    - ActNorm comes before each 1x1 convolution and scales channel `j` of its
      input by `exp(-log_scale_j)` (its shift does not change derivatives), so
      step `k`'s linear map is `u_k = W_k @ diag(exp(-log_scale_k))`;
    - `sum_j u_{k,c,j}` is the column sum of `u_k` for input channel `c`:
      the summed effect of input channel `c` on all outputs of step `k`;
    - the first level works on squeezed `2 x 2` blocks (`4C` channels); the
      squeezed channels that hold colour channel `c` (one per position in the
      block) are averaged in `alpha_c^2`;
    - only the first level's `K` steps enter: later levels act on the half of
      the channels that is not factored out, which the single-scale formula
      does not describe.

    The formula is the paper's approximation; `second_order_difference` also
    reports the exact curvature of the whole flow (couplings, all levels),
    which is what its main prediction uses.

    Args:
      model: a `FlowModel` built by `tfp_ood.bijectors.glow` (Glow or CV-Glow).

    Returns:
      `alpha_c^2` per colour channel, `[C]` (float64).
    """
    levels = getattr(model, 'levels', ())
    if not levels:
        raise InputError('paper_alpha needs a multi-scale Glow (tfp_ood.bijectors.glow).')
    alpha = None
    for step in levels[0].steps:
        # ActNorm scales input channel j by exp(-log_scale_j) before the 1x1 convolution.
        scale = np.exp(-step.act_norm.log_scale.numpy().astype(np.float64))
        u = step.conv1x1.weight().numpy().astype(np.float64) * scale[np.newaxis, :]
        column_sums = u.sum(axis=0)
        alpha = column_sums if alpha is None else alpha * column_sums
    if alpha is None:
        raise InputError('paper_alpha: the model has no 1x1 convolutions in its first level.')
    channels = model.image_shape[-1]
    # space_to_depth puts colour channel c of block position p at index p * C + c.
    return np.mean(np.square(alpha).reshape(-1, channels), axis=0)


def quadratic_expansion_difference(model, x0: np.ndarray, x_p: np.ndarray, x_q: np.ndarray,
                                   batch_size: int = 64) -> float:
    """`E_q[log p(x)] - E_p*[log p(x)]` from the full second-order expansion at `x0`.

    With `g` and `H` the gradient and Hessian of the flow's `log p` at `x0` and
    `v = x - x0`, the expansion gives each image `g.v + 1/2 v^T H v`, so the
    difference of the two sample means is

        g.(mean_q v - mean_p* v) + 1/2 (mean_q v^T H v - mean_p* v^T H v),

    which keeps every off-diagonal covariance term that the per-pixel
    (diagonal) form drops. One Hessian-vector product per image
    (forward-over-reverse autodiff).

    Args:
      model: a `FlowModel`.
      x0: the expansion point in the model's input space, `[H, W, C]`.
      x_p, x_q: samples of the training set and of the other set in the
        model's input space (`x = (k + 1/2) / 256 - 1/2` for uint8 `k`),
        `[N, H, W, C]`.
      batch_size: images per Hessian-vector call.

    Returns:
      The predicted difference in nats per image.
    """
    shape = tuple(model.image_shape)
    x0 = tf.constant(np.asarray(x0, np.float32).reshape(shape))

    @tf.function(input_signature=[tf.TensorSpec((None,) + shape, tf.float32)])
    def linear_and_quadratic(v):
        gradient, hv = _gradient_and_hvp(model, x0, v)
        axes = list(range(1, len(shape) + 1))
        return tf.reduce_sum(gradient * v, axes), tf.reduce_sum(v * hv, axes)

    def mean_terms(x):
        x = np.asarray(x, np.float32)
        linear, quadratic = [], []
        for i in range(0, len(x), batch_size):
            lin, quad = linear_and_quadratic(tf.constant(x[i:i + batch_size]) - x0)
            linear.append(lin.numpy())
            quadratic.append(quad.numpy())
        return (np.concatenate(linear).astype(np.float64).mean()
                + 0.5 * np.concatenate(quadratic).astype(np.float64).mean())

    return float(mean_terms(x_q) - mean_terms(x_p))


@dataclasses.dataclass
class SecondOrderResult:
    """The second-order prediction of `E_q[log p(x)] - E_p*[log p(x)]` (nats).

    With `H` the Hessian of `log p` at the training mean `x0` and the
    covariances approximated by their diagonals (per-pixel variances),

        E_q[log p] - E_p*[log p] ~= 1/2 sum_i H_ii (sigma^2_q,i - sigma^2_p*,i).

    For CV-Glow the paper writes `H_ii ~= (d^2/dz^2 log p(z)) alpha_c^2` for
    every pixel of channel `c`; `effective_alpha_squared` is that `alpha_c^2`
    read off the exact Hessian (the per-channel mean of `-H_ii * sigma_psi^2`,
    with the base's curvature `-1 / sigma_psi^2 = -1`), so the paper's
    expression `1/2 * curvature * sum_c alpha_c^2 * sum_hw (sigma^2_q - sigma^2_p*)`
    can be set beside the full prediction.

    Attributes:
      channel_variance_difference: `sum_{h,w} (sigma^2_q - sigma^2_p*)` per
        channel, pixels scaled to [0, 1], `[C]`.
      effective_alpha_squared: `[C]`, as above.
      paper_alpha_squared: `[C]`, the paper's `alpha_c^2` from the first
        level's 1x1 convolutions and ActNorm scales (`paper_alpha`).
      curvature: `d^2/dz^2 log p(z)` of the base distribution (-1).
      predicted: the full diagonal prediction (nats per image).
      predicted_channelwise: the paper's expression with the effective alphas.
      predicted_paper_alpha: the paper's expression with `paper_alpha_squared`.
      measured: the measured difference of mean log-likelihoods, if given.
      predicted_full: the expansion with the full Hessian and the samples'
        full covariances (`quadratic_expansion_difference`), if computed.
    """

    channel_variance_difference: np.ndarray
    effective_alpha_squared: np.ndarray
    paper_alpha_squared: np.ndarray
    curvature: float
    predicted: float
    predicted_channelwise: float
    predicted_paper_alpha: float
    measured: float = float('nan')
    predicted_full: float = float('nan')

    def to_dict(self) -> Dict:
        d = dataclasses.asdict(self)
        return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in d.items()}


def second_order_difference(model, stats_p: ChannelStatistics, stats_q: ChannelStatistics,
                            measured: float = float('nan'),
                            hessian_diagonal: Optional[np.ndarray] = None) -> SecondOrderResult:
    """Predicts `E_q[log p(x)] - E_p*[log p(x)]` for a flow trained on `p*`.

    Args:
      model: a `FlowModel` (the expansion is the paper's for CV-Glow; for an
        affine Glow it is still the exact diagonal second-order term).
      stats_p, stats_q: `channel_statistics` of the training set and of the
        other set (pixels in [0, 1]).
      measured: the measured difference (e.g. mean `log_prob` of q minus that
        of p* from the evaluator), reported beside the prediction.
      hessian_diagonal: precomputed `log_prob_hessian_diagonal` at the training
        mean (it is computed when not given).
    """
    if stats_p.pixel_variance.shape != tuple(model.image_shape):
        raise InputError(f'Statistics of shape {stats_p.pixel_variance.shape} do not match '
                         f'the model ({model.image_shape}).')
    if hessian_diagonal is None:
        x0 = dequantize(stats_p.pixel_mean * 255.).numpy()  # The mean pixel, as seen.
        hessian_diagonal = log_prob_hessian_diagonal(model, x0)
    delta = stats_q.pixel_variance - stats_p.pixel_variance  # [0, 1] scale.
    predicted = 0.5 * float(np.sum(hessian_diagonal * delta * _MODEL_SCALE ** 2))
    curvature = -1.0  # Standard normal base.
    alpha_sq = np.mean(-hessian_diagonal, axis=(0, 1)) / -curvature * _MODEL_SCALE ** 2
    channel_delta = delta.sum(axis=(0, 1))
    channelwise = 0.5 * curvature * float(np.sum(alpha_sq * channel_delta))
    try:
        paper_sq = paper_alpha(model)
    except ValueError:  # Not a multi-scale Glow: no 1x1 convolutions.
        paper_sq = np.full(channel_delta.shape, np.nan)
    paper = 0.5 * curvature * float(np.sum(paper_sq * channel_delta * _MODEL_SCALE ** 2))
    return SecondOrderResult(channel_delta, alpha_sq, paper_sq, curvature, predicted,
                             channelwise, paper, float(measured))


def add_gray_versions(sets: Dict, names: Sequence[str]) -> Dict[str, str]:
    """Adds the grayscale version of each dataset `names[i]` of `sets` to `sets`.

    The gray version is named `'<name> (gray)'` for tables and figures; which
    set is the gray version of which is the returned mapping, never parsed
    back out of the names.

    Returns:
      `{colour set name: gray set name}`, for `graying_rows`.
    """
    gray_of = {}
    for name in names:
        gray_of[name] = f'{name} (gray)'
        sets[gray_of[name]] = grayscale(sets[name])
    return gray_of


def graying_rows(results: Dict, gray_of: Mapping[str, str]) -> list:
    """Colour against grayscale bits/dim for every (model, set) scored both ways.

    Args:
      results: `{(model, set_name): ScoreResult}` (as `report.score_all`
        returns).
      gray_of: `{colour set name: its grayscale version's set name}` (as
        `add_gray_versions` returns).

    Returns:
      Rows `{'model', 'set', 'bpd_colour', 'bpd_gray', 'difference'}`, with
      `difference = bpd_gray - bpd_colour` (negative: graying raised the
      likelihood, as the paper reports).
    """
    rows = []
    for (model, name), result in results.items():
        gray = results.get((model, gray_of.get(name)))
        if gray is None:
            continue
        colour_bpd, gray_bpd = result.summary()['bpd_mean'], gray.summary()['bpd_mean']
        rows.append({'model': model, 'set': name, 'bpd_colour': colour_bpd,
                     'bpd_gray': gray_bpd, 'difference': gray_bpd - colour_bpd})
    return rows


def graying_table(rows: Sequence[dict]) -> str:
    """`graying_rows` as a Markdown table."""
    lines = ['| model | set | bits/dim colour | bits/dim gray | gray - colour |',
             '|---|---|---:|---:|---:|']
    lines += [f'| {g["model"]} | {g["set"]} | {g["bpd_colour"]:.3f} | {g["bpd_gray"]:.3f} | '
              f'{g["difference"]:+.3f} |' for g in rows]
    return '\n'.join(lines) + '\n'
