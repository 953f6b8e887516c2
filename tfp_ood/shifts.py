"""Out-of-distribution validation sets made from in-distribution images alone.

A detector's design (which statistics, which estimator) is a choice, and a
choice made on the test pair (CIFAR-10 against SVHN) would flatter it. These
shifts turn held-out training images into validation OOD sets that any user
can make for their own data, each a different way of leaving the training
distribution:

| name | what it changes |
|---|---|
| `blur` | Gaussian blur of standard deviation 1 pixel: smoother, simpler images |
| `low_resolution` | down-sampled by 2 and back (bilinear): less detail |
| `jpeg` | JPEG at quality 20: block artefacts |
| `pixel_shuffle` | 4x4 blocks permuted at random: local statistics kept, layout lost |
| `invert` | `255 - x`: every intensity reversed |
| `vertical_flip` | upside down: content the right way round is gone |
| `grayscale` | RGB images to gray (ITU-R 601 luma), replicated to 3 channels |
| `blur_mild` | Gaussian blur of standard deviation 0.5 pixel |
| `low_resolution_mild` | down-sampled to 3/4 of the size and back |
| `jpeg_mild` | JPEG at quality 65 |
| `pixel_shuffle_mild` | 8x8 blocks permuted at random |
| `contrast` | each channel's deviations from its mean scaled by 0.4: lower variance |
| `contrast_mild` | the same scaled by 0.75 |
| `gaussian_noise` | Gaussian noise of standard deviation 0.04 of the range: higher variance |

The mild ones are the first four at a lower severity (graded severities as
in CIFAR-10-C, Hendrycks & Dietterich, 2019). A strong shift that every
design flags in full cannot rank designs; its mild version, which designs
flag in part, can. The last three are CIFAR-10-C's contrast (severities 3
and 1) and Gaussian noise (severity 1): they change the images' variance
alone, down and up, which is what the paper's analysis puts the
likelihood's preference for SVHN down to (for a constant-volume flow the
gap in log-likelihood follows the gap in pixel variance).

`make_shifts(images, seed)` returns every shift that applies to the images'
channels; all are deterministic given `seed`.
"""

from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from tfp_ood.errors import InputError

__all__ = ['SHIFTS', 'make_shifts', 'shift']

#: The shifts `make_shifts` makes, in order.
SHIFTS = ('blur', 'low_resolution', 'jpeg', 'pixel_shuffle', 'invert', 'vertical_flip',
          'grayscale', 'blur_mild', 'low_resolution_mild', 'jpeg_mild', 'pixel_shuffle_mild',
          'contrast', 'contrast_mild', 'gaussian_noise')


def _as_uint8(x: tf.Tensor) -> np.ndarray:
    return tf.cast(tf.clip_by_value(tf.round(x), 0., 255.), tf.uint8).numpy()


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
    taps = np.exp(-0.5 * (np.arange(-3, 4) / sigma) ** 2)
    taps /= taps.sum()
    channels = images.shape[-1]
    kernel = np.tile(np.outer(taps, taps)[:, :, None, None], (1, 1, channels, 1))
    x = tf.cast(images, tf.float32)
    padded = tf.pad(x, [[0, 0], [3, 3], [3, 3], [0, 0]], mode='REFLECT')
    return _as_uint8(tf.nn.depthwise_conv2d(padded, tf.constant(kernel, tf.float32),
                                            [1, 1, 1, 1], 'VALID'))


def _low_resolution(images: np.ndarray, scale: float) -> np.ndarray:
    height, width = images.shape[1:3]
    small = tf.image.resize(tf.cast(images, tf.float32),
                            (max(1, round(height * scale)), max(1, round(width * scale))),
                            'bilinear', antialias=True)
    return _as_uint8(tf.image.resize(small, (height, width), 'bilinear'))


def _jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    return np.stack([tf.io.decode_jpeg(tf.io.encode_jpeg(image, quality=quality),
                                       channels=images.shape[-1]).numpy() for image in images])


def _pixel_shuffle(images: np.ndarray, rng: np.random.Generator, block: int) -> np.ndarray:
    n, height, width, channels = images.shape
    rows, cols = height // block, width // block
    kept = images[:, :rows * block, :cols * block]
    blocks = kept.reshape(n, rows, block, cols, block, channels).transpose(0, 1, 3, 2, 4, 5)
    blocks = blocks.reshape(n, rows * cols, block, block, channels)
    order = np.argsort(rng.random((n, rows * cols)), axis=1)
    blocks = np.take_along_axis(blocks, order[:, :, None, None, None], axis=1)
    out = images.copy()
    out[:, :rows * block, :cols * block] = blocks.reshape(n, rows, cols, block, block, channels
                                                          ).transpose(0, 1, 3, 2, 4, 5).reshape(
        n, rows * block, cols * block, channels)
    return out


def _contrast(images: np.ndarray, factor: float) -> np.ndarray:
    x = images.astype(np.float64)
    means = x.mean(axis=(1, 2), keepdims=True)  # Per image and channel, as CIFAR-10-C.
    return np.clip(np.round((x - means) * factor + means), 0, 255).astype(np.uint8)


def _gaussian_noise(images: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    x = images.astype(np.float64) + rng.normal(0., std * 255., images.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _grayscale(images: np.ndarray) -> np.ndarray:
    luma = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.repeat(np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def shift(name: str, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Images with shift `name` of `SHIFTS` applied (uint8 in, uint8 out, same shape)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise InputError(f'shift needs uint8 images [N, H, W, 1 or 3]; got {images.dtype} '
                         f'{images.shape}.')
    if name == 'grayscale' and images.shape[-1] != 3:
        raise InputError('The grayscale shift needs RGB images.')
    transforms = {
        'blur': lambda x: _blur(x, 1.), 'blur_mild': lambda x: _blur(x, .5),
        'low_resolution': lambda x: _low_resolution(x, .5),
        'low_resolution_mild': lambda x: _low_resolution(x, .75),
        'jpeg': lambda x: _jpeg(x, 20), 'jpeg_mild': lambda x: _jpeg(x, 65),
        'pixel_shuffle': lambda x: _pixel_shuffle(x, np.random.default_rng(seed), 4),
        'pixel_shuffle_mild': lambda x: _pixel_shuffle(x, np.random.default_rng(seed), 8),
        'invert': lambda x: 255 - x, 'vertical_flip': lambda x: x[:, ::-1].copy(),
        'grayscale': _grayscale,
        'contrast': lambda x: _contrast(x, .4), 'contrast_mild': lambda x: _contrast(x, .75),
        'gaussian_noise': lambda x: _gaussian_noise(x, np.random.default_rng(seed), .04),
    }
    if name not in transforms:
        raise InputError(f'Unknown shift {name!r}; expected one of {SHIFTS}.')
    return transforms[name](images)


def make_shifts(images: np.ndarray, seed: int = 0,
                names: Sequence[str] = SHIFTS) -> Dict[str, np.ndarray]:
    """`{name: shifted images}` for each shift of `names` that applies to the
    images' channels (`grayscale` only to RGB)."""
    images = np.asarray(images)
    return {name: shift(name, images, seed) for name in names
            if not (name == 'grayscale' and images.shape[-1] != 3)}
