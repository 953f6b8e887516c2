"""Lossless image codecs: the length of an image's code, Serrà et al.'s `L(x)`.

| codec | library | level | in a graph |
|---|---|---|---|
| `png` | libpng through `tf.io.encode_png` | zlib level 0-9 (9, as Serrà et al.) | yes |
| `jpeg2000` | OpenJPEG's reversible (5/3 wavelet) mode through Pillow | none | no |
| `jpegxl` | libjxl's lossless (modular) mode through imagecodecs | effort 1-9 (9) | no |

The PNG length is `tfp_ood.image_statistics.png_bits`, a TensorFlow function
that runs eagerly and inside an exported SavedModel. JPEG 2000 and JPEG XL
have no TensorFlow op: they are the package's only Python-only statistics,
computed by a `Compressor`, which remembers the lengths of the last few image
sets by content so that detectors sharing one compress a set once. FLIF,
Serrà et al.'s best codec, has no maintained Python binding; JPEG XL's modular
mode is its successor (FLIF's context trees).
"""

import collections
import hashlib
import io
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfp_ood.errors import InputError
from tfp_ood.image_statistics import png_bits

__all__ = ['CODECS', 'Compressor', 'GRAPH_CODECS', 'compressed_bits']

Encoder = Callable[[np.ndarray, Optional[int]], int]


def _jpeg2000_bits(image: np.ndarray, level: Optional[int]) -> int:
    del level  # OpenJPEG's lossless mode has no level.
    from PIL import Image
    buffer = io.BytesIO()
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(pixels).save(buffer, format='JPEG2000', irreversible=False)
    return 8 * len(buffer.getvalue())


def _jpegxl_bits(image: np.ndarray, level: Optional[int]) -> int:
    import imagecodecs
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    return 8 * len(imagecodecs.jpegxl_encode(pixels, lossless=True, effort=level))


#: Codec name -> its default level.
CODECS: Dict[str, Optional[int]] = {'png': 9, 'jpeg2000': None, 'jpegxl': 9}
#: The codecs with a TensorFlow op (an exported detector can use them).
GRAPH_CODECS = ('png',)
# The Python-only codecs: name -> (bits of one image at a level, default level).
_PYTHON_ENCODERS: Dict[str, Tuple[Encoder, Optional[int]]] = {
    'jpeg2000': (_jpeg2000_bits, None), 'jpegxl': (_jpegxl_bits, 9)}


# `png_bits` traced once per level (and image shape), not once per call.
_traced_png_bits = tf.function(png_bits, autograph=False, reduce_retracing=True)


def check_codec(codec: str) -> str:
    if codec not in CODECS:
        raise InputError(f'Unknown codec {codec!r}; expected one of {sorted(CODECS)}.')
    return codec


class Compressor:
    """Compresses image sets with the Python-only codecs, remembering the
    lengths of the last `max_sets` sets by content, codec and level (the
    codecs are deterministic), the oldest forgotten first.

    Args:
      max_sets: how many sets' lengths to keep.
      encoders: `{codec: (bits of one image at a level, default level)}`
        (default: JPEG 2000 and JPEG XL).
    """

    def __init__(self, max_sets: int = 64,
                 encoders: Optional[Dict[str, Tuple[Encoder, Optional[int]]]] = None):
        self.max_sets = max_sets
        self.encoders = dict(_PYTHON_ENCODERS if encoders is None else encoders)
        self._lengths: 'collections.OrderedDict[tuple, np.ndarray]' = (
            collections.OrderedDict())

    def bits(self, images: np.ndarray, codec: str, level: Optional[int] = None) -> np.ndarray:
        """`[N]` float64 lengths in bits of uint8 `images` `[N, H, W, C]`."""
        if codec not in self.encoders:
            raise InputError(f'{codec!r} is not a Python-only codec; expected one of '
                             f'{sorted(self.encoders)}.')
        encode, default = self.encoders[codec]
        level = default if level is None else level
        key = (hashlib.sha256(np.ascontiguousarray(images).data).hexdigest(), images.shape,
               codec, level)
        if key not in self._lengths:
            self._lengths[key] = np.array([encode(image, level) for image in images],
                                          np.float64)
            if len(self._lengths) > self.max_sets:
                self._lengths.popitem(last=False)
        self._lengths.move_to_end(key)
        return self._lengths[key].copy()


def compressed_bits(images: np.ndarray, codec: str = 'png', level: Optional[int] = None,
                    compressor: Optional[Compressor] = None) -> np.ndarray:
    """The length in bits of each image compressed losslessly by `codec`.

    The whole file counts (headers included), as in Serrà et al.; for images
    of one size the headers add the same number of bits to every image.

    Args:
      images: uint8 `[N, H, W, C]`.
      codec: a name of `CODECS` (`'png'`, `'jpeg2000'`, `'jpegxl'`).
      level: the codec's compression level.
        Default value: the codec's default (PNG: 9; JPEG XL: effort 9).
      compressor: the `Compressor` (and its cache) for a Python-only codec
        (default: a new one).

    Returns:
      `[N]` float64 lengths in bits.
    """
    check_codec(codec)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise InputError(f'compressed_bits needs uint8 images [N, H, W, C]; got dtype '
                         f'{images.dtype} and shape {images.shape}.')
    level = CODECS[codec] if level is None else level
    if codec in GRAPH_CODECS:
        return _traced_png_bits(tf.constant(images), level).numpy()
    return (compressor or Compressor()).bits(images, codec, level)
