"""Per-image complexity statistics that need no model, in TensorFlow ops.

A density model's likelihood is dominated by how simple an image is (Serrà et
al., 2020): smooth, low-contrast images get high likelihood whatever they
show. These statistics measure that simplicity directly, so that a detector
can tell "likely because simple" from "likely because typical". Each is
defined once, as a TensorFlow function of uint8 images `[N, H, W, C]` to
`[N]` float32, and runs unchanged eagerly and inside an exported SavedModel:

| name | what |
|---|---|
| `png<L>_bits` | bits of the PNG file at compression level `L` (1, 6, 9) |
| `jpeg<Q>_bits` | bits of the JPEG file at quality `Q` (30, 60, 90, 98; 4:4:4) |
| `total_variation` | mean absolute difference of adjacent pixels (across + down) |
| `gradient_mean_square` | the same with squared differences |
| `laplacian_mean_abs` | mean absolute 4-neighbour Laplacian |
| `loco_bits` | estimated bits of a lossless predictive code (LOCO-I / JPEG-LS style [2]) |
| `wavelet_bits` | estimated bits of a lossless wavelet code (JPEG 2000 style [3]) |
| `wavelet_rgb_bits` | the same without the colour transform, each channel coded alone |

`loco_bits` estimates what a lossless codec of the JPEG-LS family would
spend, in TensorFlow ops (no codec of that family has one). Colour images go
through JPEG 2000's reversible colour transform (`Y = floor((R + 2G + B) / 4)`,
`U = B - G`, `V = R - G`); each component's pixels are predicted, in raster
order, by the median edge detector from the left (`a`), upper (`b`) and
upper-left (`c`) neighbours (`min(a, b)` if `c >= max(a, b)`, `max(a, b)` if
`c <= min(a, b)`, else `a + b - c`; zero outside the image), and each
residual `r` costs `|r| / (s ln 2) + log2(2 s)` bits, the Laplace code
length with the scale `s` = 1/2 plus the mean absolute residual of the
pixel's four causal neighbours (left, upper-left, upper, upper-right) — the
context adaptation that makes JPEG-LS near JPEG 2000 in lossless size.
Blurred and upsampled images are cheap under it, and it follows the lossless
JPEG XL length (a predictive code too) closely: a correlation of 0.987 over
CIFAR-10 training images.

`wavelet_bits` estimates the lossless JPEG 2000 length the same way: the
same colour transform, then JPEG 2000's reversible 5/3 (LeGall) lifting
wavelet, two levels (each splits the low band into four: `d[n] = x[2n+1] -
floor((x[2n] + x[2n+2]) / 2)`, `s[n] = x[2n] + floor((d[n-1] + d[n] + 2) /
4)` along rows, then columns, with JPEG 2000's symmetric extension at the
edges; a side of odd length ends the levels early), and each band's integer
coefficients cost what `loco_bits` charges a residual, with the scale from
the coefficient's four causal neighbours in its band. A wavelet code
spends few bits on an image whose detail is only at coarse scales (blurred,
upsampled), where a pixel predictor still pays for every small residual.
`wavelet_rgb_bits` skips the colour transform and codes each channel alone,
as OpenJPEG does by default (Pillow's JPEG 2000 writer, the
`tfp_ood.detectors.codecs` length, enables no component transform): it is
the stand-in for that length.

Lossless lengths by codecs that have no TensorFlow op (JPEG 2000, JPEG XL)
are `tfp_ood.detectors.codecs`.

#### References

[1] Joan Serrà et al. Input Complexity and Out-of-distribution Detection
    with Likelihood-based Generative Models. ICLR 2020.
    https://arxiv.org/abs/1909.11480
[2] Marcelo J. Weinberger, Gadiel Seroussi, Guillermo Sapiro. The LOCO-I
    Lossless Image Compression Algorithm: Principles and Standardization
    into JPEG-LS. IEEE Trans. Image Processing, 2000.
[3] Michael D. Adams, Faouzi Kossentini. Reversible Integer-to-Integer
    Wavelet Transforms for Image Compression: Performance Evaluation and
    Analysis. IEEE Trans. Image Processing, 2000.
"""

import functools
from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfp_ood.errors import InputError

__all__ = ['IMAGE_STATISTICS', 'image_statistics', 'image_statistics_array', 'png_bits',
           'wavelet_bands']


def _encoded_bits(encode: Callable[[tf.Tensor], tf.Tensor], images) -> tf.Tensor:
    """`[N]` float64: 8 times the length of each image's code."""
    def length(image):
        return tf.strings.length(encode(image))
    return 8. * tf.cast(tf.map_fn(length, images, fn_output_signature=tf.int32), tf.float64)


def png_bits(images, level: int = 9) -> tf.Tensor:
    """The length in bits of each uint8 image `[N, H, W, C]` as a PNG file at
    zlib `level` (`tf.io.encode_png`), `[N]` float64."""
    return _encoded_bits(lambda image: tf.io.encode_png(image, compression=level), images)


def _png(level: int):
    return lambda images: tf.cast(png_bits(images, level), tf.float32)


def _jpeg(quality: int):
    def encode(image):
        return tf.io.encode_jpeg(image, quality=quality, chroma_downsampling=False)
    return lambda images: tf.cast(_encoded_bits(encode, images), tf.float32)


def _differences(images):
    x = tf.cast(images, tf.float32)
    return x[:, :, 1:] - x[:, :, :-1], x[:, 1:] - x[:, :-1]


def _total_variation(images):
    dx, dy = _differences(images)
    return (tf.reduce_mean(tf.abs(dx), axis=[1, 2, 3]) +
            tf.reduce_mean(tf.abs(dy), axis=[1, 2, 3]))


def _gradient_mean_square(images):
    dx, dy = _differences(images)
    return (tf.reduce_mean(tf.square(dx), axis=[1, 2, 3]) +
            tf.reduce_mean(tf.square(dy), axis=[1, 2, 3]))


def _laplacian_mean_abs(images):
    x = tf.cast(images, tf.float32)
    laplacian = (4. * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1]
                 - x[:, 1:-1, :-2] - x[:, 1:-1, 2:])
    return tf.reduce_mean(tf.abs(laplacian), axis=[1, 2, 3])


def _shifted(x, down: int, right: int):
    """`x [N, H, W, C]` moved `down` rows and `right` columns (either may be
    negative), zeros coming in: the neighbour at offset `(-down, -right)`."""
    height, width = x.shape[1], x.shape[2]
    padded = tf.pad(x, [[0, 0], [max(down, 0), max(-down, 0)], [max(right, 0), max(-right, 0)],
                        [0, 0]])
    top, left = max(-down, 0), max(-right, 0)
    return padded[:, top:top + height, left:left + width]


def _reversible_colour_transform(x):
    """JPEG 2000's reversible colour transform of int32 images (1 channel: as is)."""
    if x.shape[-1] != 3:
        return x
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    return tf.stack([tf.math.floordiv(r + 2 * g + b, 4), b - g, r - g], axis=-1)


def _laplace_code_bits(residual):
    """`[N]`: bits of the absolute integer residuals `[N, H, W, C]` under a
    Laplace of scale 1/2 plus the mean of the four causal neighbours'."""
    scale = 0.5 + 0.25 * (_shifted(residual, 0, 1) + _shifted(residual, 1, 1)
                          + _shifted(residual, 1, 0) + _shifted(residual, 1, -1))
    bits = residual / (scale * np.log(2.)) + tf.math.log(2. * scale) / np.log(2.)
    return tf.reduce_sum(bits, axis=[1, 2, 3])


def _loco_bits(images):
    x = _reversible_colour_transform(tf.cast(images, tf.int32))
    a, b, c = _shifted(x, 0, 1), _shifted(x, 1, 0), _shifted(x, 1, 1)
    high, low = tf.maximum(a, b), tf.minimum(a, b)
    prediction = tf.where(c >= high, low, tf.where(c <= low, high, a + b - c))
    return _laplace_code_bits(tf.abs(tf.cast(x - prediction, tf.float32)))


WAVELET_LEVELS = 2


def _lift_53(x, axis: int):
    """One level of the reversible 5/3 lifting of int32 `x [N, H, W, C]` along
    `axis` (1: the height, 2: the width; even there): the low-pass `s` and the
    high-pass `d`, each half as long along `axis`, with JPEG 2000's symmetric
    extension at the edges. Sliced in place, not transposed: oneDNN's transpose
    has no int32 kernel on some CPUs and says so in the log."""
    def part(start=None, stop=None, step=None):
        index = [slice(None)] * 4
        index[axis] = slice(start, stop, step)
        return tuple(index)
    even, odd = x[part(0, None, 2)], x[part(1, None, 2)]
    after = tf.concat([even[part(1)], even[part(-1)]], axis=axis)  # x[2n + 2]; x[W] = x[W - 2].
    d = odd - tf.math.floordiv(even + after, 2)
    before = tf.concat([d[part(None, 1)], d[part(None, -1)]], axis=axis)  # d[n - 1]; d[-1] = d[0].
    return even + tf.math.floordiv(before + d + 2, 4), d


def wavelet_bands(images, levels: int = WAVELET_LEVELS, colour_transform: bool = True):
    """The integer bands of `wavelet_bits`: the uint8 images `[N, H, W, C]`,
    colour-transformed (or, `colour_transform=False`, each channel as it is),
    through `levels` levels of the 2-D reversible 5/3 lifting (fewer where a
    side is odd), finest detail bands first and the last low band at the end,
    each int32 `[N, h, w, C]`."""
    low, bands = tf.cast(images, tf.int32), []
    if low.shape[1] is None or low.shape[2] is None:
        raise InputError(f'The wavelet statistics need images of a known height and width; '
                         f'got shape {low.shape}.')
    if colour_transform:
        low = _reversible_colour_transform(low)
    for _ in range(levels):
        if low.shape[1] % 2 or low.shape[2] % 2:
            break
        column_low, column_high = _lift_53(low, axis=2)
        low, low_high = _lift_53(column_low, axis=1)
        high_low, high_high = _lift_53(column_high, axis=1)
        bands += [low_high, high_low, high_high]
    return bands + [low]


def _wavelet(colour_transform: bool):
    def bits(images):
        return tf.add_n([_laplace_code_bits(tf.abs(tf.cast(band, tf.float32)))
                         for band in wavelet_bands(images, colour_transform=colour_transform)])
    return bits


#: Name -> function of uint8 images `[N, H, W, C]` to `[N]` float32.
IMAGE_STATISTICS: Dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    **{f'png{level}_bits': _png(level) for level in (1, 6, 9)},
    **{f'jpeg{quality}_bits': _jpeg(quality) for quality in (30, 60, 90, 98)},
    'total_variation': _total_variation,
    'gradient_mean_square': _gradient_mean_square,
    'laplacian_mean_abs': _laplacian_mean_abs,
    'loco_bits': _loco_bits,
    'wavelet_bits': _wavelet(colour_transform=True),
    'wavelet_rgb_bits': _wavelet(colour_transform=False),
}


def image_statistics(images, names: Sequence[str]) -> Dict[str, tf.Tensor]:
    """The statistics `names` of `IMAGE_STATISTICS` of uint8 images `[N, H, W, C]`.

    Raises:
      ValueError: an unknown name, or images that are not uint8 `[N, H, W, C]`
        with 1 or 3 channels (what PNG and JPEG encode).
    """
    unknown = sorted(set(names) - set(IMAGE_STATISTICS))
    if unknown:
        raise InputError(f'Unknown image statistics {unknown}; expected names of '
                         f'{sorted(IMAGE_STATISTICS)}.')
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8 or images.shape.rank != 4 or images.shape[-1] not in (1, 3):
        raise InputError(f'image_statistics needs uint8 images [N, H, W, 1 or 3]; got '
                         f'{images.dtype.name} {images.shape}.')
    return {name: IMAGE_STATISTICS[name](images) for name in names}


@functools.lru_cache(maxsize=None)
def _traced(names: Tuple[str, ...], image_shape: Tuple[int, int, int]):
    """`image_statistics` of `names` as one traced function for images of
    `image_shape` and any batch size (the encoders' map_fn runs about ten times
    faster in a graph than eagerly). The height and width stay static: the
    wavelet's levels and the neighbours' padding are set by them."""
    signature = [tf.TensorSpec([None, *image_shape], tf.uint8)]
    return tf.function(lambda images: {n: IMAGE_STATISTICS[n](images) for n in names},
                       input_signature=signature)


def image_statistics_array(images: np.ndarray, names: Sequence[str],
                           batch_size: int = 1000) -> Dict[str, np.ndarray]:
    """`image_statistics` of a uint8 array, run in batches in a traced function,
    as float64 arrays."""
    if not names:
        return {}
    image_statistics(images[:1], names)  # Checks the names and the images.
    if not len(images):
        return {k: np.zeros([0]) for k in names}
    traced = _traced(tuple(names), tuple(images.shape[1:]))
    chunks = [traced(tf.convert_to_tensor(images[i:i + batch_size]))
              for i in range(0, len(images), batch_size)]
    return {k: np.concatenate([c[k].numpy() for c in chunks]).astype(np.float64)
            for k in names}
