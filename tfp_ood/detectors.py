"""Out-of-distribution detectors built on the package's density models.

Raw likelihood fails as an OOD score (the paper's finding). The detectors here
are the published remedies, each an object with one interface:

```none
detector.fit(in_distribution_images)   # where the detector needs it; returns self
detector.score(images) -> DetectorScores
  .ood_score   [N] (or one per batch of M images): higher = more out-of-distribution
  .components  {name: [N]}: the numbers the score was made from
```

| detector | score | reference |
|---|---|---|
| `RawLikelihood` | bits/dim, `-log p(x) / (D ln 2)` | Nalisnick et al., ICLR 2019 |
| `LikelihoodRatio` | `-(log p_fg(x) - log p_bg(x)) / (D ln 2)` | Ren et al., NeurIPS 2019 |
| `InputComplexity` | `-log2 p(x) / D - L(x) / D` | Serrà et al., ICLR 2020 |
| `Typicality` | `|mean_m bpd(x_m) - H|`, batches of `M` images | Nalisnick et al., 2019 |
| `WAIC` | `-(mean_k log p_k(x) - var_k log p_k(x))` over an ensemble | Choi et al., 2018 |
| `DensityOfStates` | `-log q(s(x))`, `q` a KDE of statistics `s` | Morningstar et al., 2021 |

Every likelihood goes through the shared evaluator (`tfp_ood.score`), so a
detector works for every model family and for SavedModels loaded with
`tfp_ood.export.load`. Inputs are uint8 images `[N, H, W, C]` (arrays or
datasets, as `tfp_ood.score` takes them). `detector_metrics` turns the scores
of an in-distribution and an out-of-distribution set into AUROC, AUPR and FPR
at 95% TPR, with the in-distribution set as the positive class.

#### References

[1] Jie Ren et al. Likelihood Ratios for Out-of-Distribution Detection.
    NeurIPS 2019. https://arxiv.org/abs/1906.02845
[2] Joan Serrà et al. Input Complexity and Out-of-distribution Detection
    with Likelihood-based Generative Models. ICLR 2020.
    https://arxiv.org/abs/1909.11480
[3] Eric Nalisnick et al. Detecting Out-of-Distribution Inputs to Deep
    Generative Models Using Typicality. arXiv 1906.02994, 2019.
[4] Hyunsun Choi, Eric Jang, Alexander Alemi. WAIC, but Why? Generative
    Ensembles for Robust Anomaly Detection. arXiv 1810.01392, 2018.
[5] Warren Morningstar et al. Density of States Estimation for
    Out-of-Distribution Detection. AISTATS 2021.
    https://arxiv.org/abs/2006.09273
"""

import abc
import dataclasses
import io
import math
from typing import Dict, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from tfp_ood import analysis
from tfp_ood.evaluate import score as evaluate_score
from tfp_ood.metrics import ood_metrics
from tfp_ood.models.base import DensityModel, check_images

__all__ = [
    'CODECS', 'DensityOfStates', 'Detector', 'DetectorScores', 'InputComplexity',
    'LikelihoodRatio', 'RawLikelihood', 'Typicality', 'WAIC', 'compressed_bits',
    'detector_metrics',
]

Images = Union[np.ndarray, tf.Tensor, tf.data.Dataset]
LN2 = math.log(2.0)


@dataclasses.dataclass
class DetectorScores:
    """What a detector says about a set of images.

    Attributes:
      detector: the detector's name.
      ood_score: `[N]` (`[N // M]` for batches of `M` images): higher = more
        out-of-distribution.
      components: `{name: [N]}`, the per-image numbers the score was made from
        (log-likelihoods in nats per image, lengths in bits, ...).
    """

    detector: str
    ood_score: np.ndarray
    components: Dict[str, np.ndarray]

    @property
    def num_nonfinite(self) -> int:
        return int(np.sum(~np.isfinite(self.ood_score)))


def detector_metrics(in_scores: DetectorScores, out_scores: DetectorScores
                     ) -> Dict[str, float]:
    """AUROC, AUPR-in, AUPR-out and FPR at 95% TPR of separating two score sets.

    The in-distribution set is the positive class, as in
    `tfp_ood.metrics.ood_metrics`; a non-finite OOD score (an image whose
    likelihood under-or-overflowed) ranks as the most out-of-distribution and
    is counted in `num_nonfinite_in` / `num_nonfinite_out`.
    """
    if in_scores.detector != out_scores.detector:
        raise ValueError(f'The two score sets come from different detectors: '
                         f'{in_scores.detector!r} and {out_scores.detector!r}.')
    # ood_metrics wants "higher = more in-distribution"; NaN stays NaN.
    return ood_metrics(-in_scores.ood_score, -out_scores.ood_score, nonfinite='lowest')


Terms = Dict[str, np.ndarray]


def _log_prob_terms(model: DensityModel, images: Images, what: str) -> Terms:
    return evaluate_score(model, images, name=what, progress=False).scores


class Detector(abc.ABC):
    """An OOD detector: `fit` (where it needs it), then `score`.

    A detector names the density models it needs in `models`; `score(images)`
    runs the shared evaluator once per model and passes the per-image terms to
    `score_terms`. Code that scores the same images under several detectors
    can evaluate each model once and call `score_terms` directly.
    """

    name: str = 'detector'
    models: Sequence[DensityModel] = ()
    needs_fit: bool = False

    def fit(self, images: Images) -> 'Detector':
        """Fits what the detector learns from in-distribution images; returns `self`."""
        if not self.needs_fit:
            return self
        if not isinstance(images, tf.data.Dataset):
            images = _as_array(images, self.models[0].image_shape, f'{self.name} fit images')
        terms = [_log_prob_terms(m, images, f'{self.name} fit images ({m.name})')
                 for m in self.models]
        return self.fit_terms(terms, images)

    def fit_terms(self, terms: Sequence[Terms], images: Images) -> 'Detector':
        """`fit` from the evaluator's terms of the fit images (see `score_terms`)."""
        del terms, images
        return self

    def score(self, images: Images) -> DetectorScores:
        """Per-image (or per-batch) OOD scores of `images`."""
        if not isinstance(images, tf.data.Dataset):
            images = _as_array(images, self.models[0].image_shape, 'images')
        terms = [_log_prob_terms(m, images, f'images ({m.name})') for m in self.models]
        return self.score_terms(terms, images)

    @abc.abstractmethod
    def score_terms(self, terms: Sequence[Terms], images: Images) -> DetectorScores:
        """The scores from the evaluator's per-image terms of each of `models`
        (`tfp_ood.score(model, images).scores`, in the order of `models`)."""


def _num_dims(model: DensityModel) -> int:
    return int(np.prod(model.image_shape))


def _check_same_shape(models: Sequence[DensityModel], what: str) -> None:
    shapes = {tuple(m.image_shape) for m in models}
    if len(shapes) != 1:
        raise ValueError(f'{what}: the models score images of different shapes {sorted(shapes)}.')


def _as_array(images: Images, image_shape, what: str) -> np.ndarray:
    """uint8 `[N, H, W, C]` NumPy images from an array or a dataset."""
    if isinstance(images, tf.data.Dataset):
        from tfp_ood.data import images_array
        images = images_array(images)
    return check_images(images, image_shape, what).numpy()


class RawLikelihood(Detector):
    """The baseline: bits/dim under one model (higher = less likely = more OOD)."""

    name = 'raw_likelihood'

    def __init__(self, model: DensityModel):
        self.models = (model,)

    def score_terms(self, terms, images=None) -> DetectorScores:
        return DetectorScores(self.name, terms[0]['bits_per_dim'].astype(np.float64), terms[0])


class LikelihoodRatio(Detector):
    """Ren et al.'s likelihood ratio against a background model.

    `ood_score = -(log p_fg(x) - log p_bg(x)) / (D ln 2)`, in bits/dim. The
    background model is the same family trained on perturbed training images
    (`tfp-ood train --mutation-rate MU --weight-decay LAMBDA`), so it learns
    the population-level statistics (smoothness, background) that dominate
    `log p_fg` and cancel in the ratio.

    Args:
      foreground: the model trained on the in-distribution data.
      background: the background model.
    """

    name = 'likelihood_ratio'

    def __init__(self, foreground: DensityModel, background: DensityModel):
        _check_same_shape([foreground, background], 'LikelihoodRatio')
        self.models = (foreground, background)

    def score_terms(self, terms, images=None) -> DetectorScores:
        fg, bg = terms[0]['log_prob'], terms[1]['log_prob']
        log_ratio = fg.astype(np.float64) - bg.astype(np.float64)
        return DetectorScores(self.name, -log_ratio / (_num_dims(self.models[0]) * LN2),
                              {'log_prob': fg, 'background_log_prob': bg,
                               'log_ratio': log_ratio})


def _png_bits(image: np.ndarray, level: int) -> int:
    return 8 * len(tf.io.encode_png(image, compression=level).numpy())


def _jpeg2000_bits(image: np.ndarray, level: int) -> int:
    del level  # OpenJPEG's lossless mode has no level.
    from PIL import Image
    buffer = io.BytesIO()
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(pixels).save(buffer, format='JPEG2000', irreversible=False)
    return 8 * len(buffer.getvalue())


# Lossless image codecs for InputComplexity: name -> (bits of one image, default level).
# 'png' is libpng through `tf.io.encode_png` (zlib level 0-9; 9 as Serrà et al.),
# so the same codec runs inside a TensorFlow graph; 'jpeg2000' is OpenJPEG's
# lossless (reversible 5/3 wavelet) mode through Pillow.
CODECS = {'png': (_png_bits, 9), 'jpeg2000': (_jpeg2000_bits, None)}


def compressed_bits(images: np.ndarray, codec: str = 'png',
                    level: Optional[int] = None) -> np.ndarray:
    """The length in bits of each image compressed losslessly by `codec`.

    The whole file counts (headers included), as in Serrà et al.; for images
    of one size the headers add the same number of bits to every image.

    Args:
      images: uint8 `[N, H, W, C]`.
      codec: a name of `CODECS` (`'png'`, `'jpeg2000'`).
      level: the codec's compression level.
        Default value: the codec's default (PNG: 9).

    Returns:
      `[N]` float64 lengths in bits.
    """
    if codec not in CODECS:
        raise ValueError(f'Unknown codec {codec!r}; expected one of {sorted(CODECS)}.')
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f'compressed_bits needs uint8 images [N, H, W, C]; got dtype '
                         f'{images.dtype} and shape {images.shape}.')
    encode, default = CODECS[codec]
    level = default if level is None else level
    return np.array([encode(image, level) for image in images], dtype=np.float64)


class InputComplexity(Detector):
    """Serrà et al.'s input complexity: bits/dim minus the compressed bits/dim.

    `S(x) = -log2 p(x) / D - L(x) / D`, `L(x)` the length in bits of `x`
    compressed losslessly (`compressed_bits`). Simple images (SVHN's smooth
    digits, constant images) have both a high likelihood and a short code, so
    subtracting the code length corrects the likelihood for complexity.

    Args:
      model: the density model.
      codec: `'png'` (default, level 9) or `'jpeg2000'`.
      level: the codec's level (`None`: its default).
    """

    name = 'input_complexity'

    def __init__(self, model: DensityModel, codec: str = 'png', level: Optional[int] = None):
        if codec not in CODECS:
            raise ValueError(f'Unknown codec {codec!r}; expected one of {sorted(CODECS)}.')
        self.models, self.codec, self.level = (model,), codec, level

    def score_terms(self, terms, images) -> DetectorScores:
        images = _as_array(images, self.models[0].image_shape, 'InputComplexity images')
        bits = compressed_bits(images, self.codec, self.level)
        complexity = bits / _num_dims(self.models[0])
        return DetectorScores(self.name, terms[0]['bits_per_dim'] - complexity,
                              dict(terms[0], compressed_bits=bits,
                                   complexity_bits_per_dim=complexity))


class Typicality(Detector):
    """Nalisnick et al.'s typicality test on batches of `M` images.

    `fit(train_images)` estimates the model's entropy `H` as the mean
    bits/dim of in-distribution training images; a batch of `M` images scores
    `|mean_m bpd(x_m) - H|`: far from `H` in either direction is atypical
    (SVHN under a CIFAR-10 model is too likely, random images too unlikely).
    `fit(train_images, validation_images)` also sets `threshold`: the
    `1 - false_alarm_rate` quantile of the statistic over `num_bootstrap`
    batches of `M` drawn with replacement from the validation images.

    Args:
      model: the density model.
      batch_size: `M`, images per test.
      false_alarm_rate: the fraction of in-distribution batches the threshold
        flags.
      num_bootstrap: bootstrap batches for the threshold.
      seed: seed of the bootstrap.
    """

    name = 'typicality'

    def __init__(self, model: DensityModel, batch_size: int = 1,
                 false_alarm_rate: float = 0.01, num_bootstrap: int = 10000, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f'batch_size (M) must be >= 1; got {batch_size}.')
        if not 0. < false_alarm_rate < 1.:
            raise ValueError(f'false_alarm_rate must be in (0, 1); got {false_alarm_rate}.')
        self.models, self.batch_size = (model,), batch_size
        self.false_alarm_rate, self.num_bootstrap, self.seed = (false_alarm_rate,
                                                                num_bootstrap, seed)
        self.entropy: Optional[float] = None
        self.threshold: Optional[float] = None

    def _bpd(self, images: Images, what: str) -> np.ndarray:
        bpd = _log_prob_terms(self.models[0], images, what)['bits_per_dim'].astype(np.float64)
        if not np.all(np.isfinite(bpd)):
            raise ValueError(f'{what}: {int(np.sum(~np.isfinite(bpd)))} images have a '
                             f'non-finite likelihood; the typicality test needs finite ones.')
        return bpd

    needs_fit = True

    def fit_terms(self, terms, images=None) -> 'Typicality':
        bpd = terms[0]['bits_per_dim'].astype(np.float64)
        if bpd.size == 0 or not np.all(np.isfinite(bpd)):
            raise ValueError('Typicality: the training images need finite likelihoods, and '
                             'at least one image.')
        self.entropy = float(np.mean(bpd))
        return self

    def fit(self, images: Images, validation_images: Optional[Images] = None) -> 'Typicality':
        self.entropy = float(np.mean(self._bpd(images, 'Typicality training images')))
        if validation_images is not None:
            bpd = self._bpd(validation_images, 'Typicality validation images')
            rng = np.random.default_rng(self.seed)
            draws = rng.integers(0, len(bpd), size=(self.num_bootstrap, self.batch_size))
            statistic = np.abs(bpd[draws].mean(axis=1) - self.entropy)
            self.threshold = float(np.quantile(statistic, 1. - self.false_alarm_rate))
        return self

    def batch_statistic(self, bits_per_dim: np.ndarray) -> np.ndarray:
        """`|mean bpd - H|` of consecutive, non-overlapping batches of `M` images."""
        if self.entropy is None:
            raise ValueError('Typicality: call fit(train_images) before scoring.')
        bits_per_dim = np.asarray(bits_per_dim, dtype=np.float64)
        num_batches = len(bits_per_dim) // self.batch_size
        if num_batches == 0:
            raise ValueError(f'Typicality: {len(bits_per_dim)} images are fewer than one '
                             f'batch of M = {self.batch_size}.')
        batches = bits_per_dim[:num_batches * self.batch_size].reshape(num_batches, -1)
        return np.abs(batches.mean(axis=1) - self.entropy)

    def score_terms(self, terms, images=None) -> DetectorScores:
        return DetectorScores(self.name, self.batch_statistic(terms[0]['bits_per_dim']),
                              terms[0])


class WAIC(Detector):
    """Choi et al.'s WAIC over an ensemble: `-(mean_k log p_k - var_k log p_k)`.

    Args:
      members: two or more models of the same image shape.
    """

    name = 'waic'

    def __init__(self, members: Sequence[DensityModel]):
        if len(members) < 2:
            raise ValueError(f'WAIC needs at least two ensemble members; got {len(members)}.')
        _check_same_shape(members, 'WAIC')
        self.models = tuple(members)

    def score_terms(self, terms, images=None) -> DetectorScores:
        log_probs = [t['log_prob'] for t in terms]
        values = analysis.waic(log_probs)
        components = {f'log_prob_{k}': lp for k, lp in enumerate(log_probs)}
        components['waic'] = values
        return DetectorScores(self.name, -values / (_num_dims(self.models[0]) * LN2),
                              components)


class DensityOfStates(Detector):
    """Morningstar et al.'s density of states: a KDE of per-image statistics.

    `fit(train_images)` computes each image's summary statistics `s(x)` (the
    model's log-likelihood terms, and with `codec` the compressed length),
    standardises them with the training mean and deviation, and fits a
    Gaussian kernel density `q` (bandwidth by Scott's rule, or `bandwidth`);
    `score` is `-log q(s(x))`. For flows, the distribution term `log_pz` and
    the volume term `log_det` are statistics that no single likelihood shows.

    Args:
      model: the density model.
      statistics: which of the model's per-image terms to use (e.g.
        `('log_pz', 'log_det')` for a flow, `('log_prob',)` for any model).
      codec: also use the compressed length in bits (`compressed_bits`), or
        `None`.
      bandwidth: the kernel bandwidth in standardised units (`None`: Scott's
        rule, `n ** (-1 / (d + 4))`).
      max_fit_images: at most this many training images are kept in the KDE.
    """

    name = 'density_of_states'

    def __init__(self, model: DensityModel, statistics: Sequence[str] = ('log_prob',),
                 codec: Optional[str] = None, bandwidth: Optional[float] = None,
                 max_fit_images: int = 10000):
        if not statistics and codec is None:
            raise ValueError('DensityOfStates needs at least one statistic.')
        if codec is not None and codec not in CODECS:
            raise ValueError(f'Unknown codec {codec!r}; expected one of {sorted(CODECS)}.')
        self.models, self.statistics, self.codec = (model,), tuple(statistics), codec
        self.bandwidth, self.max_fit_images = bandwidth, max_fit_images
        self._kde = None
        self._mean = self._scale = None

    @property
    def statistic_names(self):
        return self.statistics + (('compressed_bits',) if self.codec else ())

    def _statistics(self, terms: Terms, images: Images, what: str):
        images = _as_array(images, self.models[0].image_shape, what)
        missing = [s for s in self.statistics if s not in terms]
        if missing:
            raise ValueError(f'DensityOfStates: the model has no {missing}; it reports '
                             f'{sorted(terms)}.')
        if self.codec:
            terms = dict(terms, compressed_bits=compressed_bits(images, self.codec))
        values = np.stack([terms[s].astype(np.float64) for s in self.statistic_names], axis=1)
        return values, terms

    needs_fit = True

    def fit_terms(self, terms, images) -> 'DensityOfStates':
        from sklearn.neighbors import KernelDensity
        values, _ = self._statistics(terms[0], images, 'DensityOfStates training images')
        values = values[np.all(np.isfinite(values), axis=1)][:self.max_fit_images]
        if len(values) < 2:
            raise ValueError('DensityOfStates: fewer than two training images with finite '
                             'statistics.')
        self._mean = values.mean(axis=0)
        self._scale = np.where(values.std(axis=0) > 0, values.std(axis=0), 1.)
        bandwidth = self.bandwidth or len(values) ** (-1. / (values.shape[1] + 4))
        self._kde = KernelDensity(bandwidth=bandwidth).fit((values - self._mean) / self._scale)
        return self

    def score_terms(self, terms, images) -> DetectorScores:
        if self._kde is None:
            raise ValueError('DensityOfStates: call fit(train_images) before scoring.')
        values, terms = self._statistics(terms[0], images, 'images')
        finite = np.all(np.isfinite(values), axis=1)
        log_density = np.full(len(values), -np.inf)
        if finite.any():
            log_density[finite] = self._kde.score_samples(
                (values[finite] - self._mean) / self._scale)
        return DetectorScores(self.name, -log_density, dict(terms, log_density=log_density))
