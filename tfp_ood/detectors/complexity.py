"""Serrà et al.'s input complexity: bits/dim minus the compressed bits/dim.

#### References

[1] Joan Serrà et al. Input Complexity and Out-of-distribution Detection
    with Likelihood-based Generative Models. ICLR 2020.
    https://arxiv.org/abs/1909.11480
"""

from typing import Optional

from tfp_ood.detectors import codecs
from tfp_ood.detectors.base import Detector, f64, num_dims
from tfp_ood.image_statistics import png_bits
from tfp_ood.models.base import DensityModel
from tfp_ood.terms import BITS_PER_DIM, LOG_PROB

__all__ = ['InputComplexity']


class InputComplexity(Detector):
    """`S(x) = -log2 p(x) / D - L(x) / D`, `L(x)` the length in bits of `x`
    compressed losslessly (`tfp_ood.detectors.codecs`). Simple images (SVHN's
    smooth digits, constant images) have both a high likelihood and a short
    code, so subtracting the code length corrects the likelihood for
    complexity.

    Args:
      model: the density model.
      codec: `'png'` (default, level 9; in TensorFlow ops), `'jpeg2000'` or
        `'jpegxl'` (effort 9; Python only, so not exportable).
      level: the codec's level (`None`: its default).
      compressor: the `codecs.Compressor` whose cache a Python-only codec uses.
    """

    name = 'input_complexity'
    reads_images = True

    def __init__(self, model: DensityModel, codec: str = 'png', level: Optional[int] = None,
                 compressor: Optional[codecs.Compressor] = None):
        self.models, self.codec = (model,), codecs.check_codec(codec)
        self.level = codecs.CODECS[codec] if level is None else level
        self.compressor = compressor

    @property
    def python_statistics(self):
        if self.codec in codecs.GRAPH_CODECS:
            return {}
        return {'compressed_bits': (self.codec, self.level)}

    def graph_score(self, terms, images):
        bits = (png_bits(images, self.level) if self.codec in codecs.GRAPH_CODECS
                else self.python_column(terms[0], 'compressed_bits'))
        complexity = bits / num_dims(self.models[0])
        return (f64(terms[0][BITS_PER_DIM]) - complexity,
                {LOG_PROB: f64(terms[0][LOG_PROB]), 'compressed_bits': bits,
                 'complexity_bits_per_dim': complexity})
