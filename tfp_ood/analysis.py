"""The paper's analyses as functions: dataset statistics and ensembles.

- `channel_statistics`: per-channel mean and standard deviation of a dataset
  (pixels scaled to [0, 1]) and its per-pixel, per-channel variance map, the
  quantities behind the paper's explanation of why SVHN "sits inside"
  CIFAR-10;
- `log_mean_exp` and `ensemble_scores`: an ensemble's log-likelihood
  `log (1/M) sum_m p_m(x)`, computed stably;
- `waic`: the Watanabe-Akaike criterion of Choi et al. (2018) as an OOD
  score, `mean_m log p_m(x) - var_m log p_m(x)`.

#### References

[1]: Eric Nalisnick et al. Do Deep Generative Models Know What They Don't
     Know? ICLR 2019. https://arxiv.org/abs/1810.09136
[2]: Hyunsun Choi, Eric Jang, Alexander A. Alemi. WAIC, but Why? Generative
     Ensembles for Robust Anomaly Detection. https://arxiv.org/abs/1810.01392
"""

import dataclasses
from typing import Dict, Iterable, Sequence, Union

import numpy as np
import tensorflow as tf

__all__ = ['ChannelStatistics', 'channel_statistics', 'ensemble_scores', 'log_mean_exp',
           'waic']


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
            raise ValueError(f'{name or "images"}: expected [N, H, W, C]; got shape '
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
        raise ValueError(f'{name or "images"}: no images.')
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
        raise ValueError(f'Expected M arrays of per-image log-likelihoods [N]; got '
                         f'shape {list(stacked.shape)}.')
    return stacked


def ensemble_scores(member_log_probs: Sequence[np.ndarray]) -> np.ndarray:
    """The ensemble's log-likelihood `log (1/M) sum_m p_m(x)` per image, `[N]`."""
    return log_mean_exp(_stack(member_log_probs), axis=0)


def waic(member_log_probs: Sequence[np.ndarray]) -> np.ndarray:
    """WAIC per image: `mean_m log p_m(x) - var_m log p_m(x)` (higher = more in)."""
    stacked = _stack(member_log_probs)
    if stacked.shape[0] < 2:
        raise ValueError('WAIC needs at least two ensemble members.')
    return stacked.mean(axis=0) - stacked.var(axis=0)
