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
import collections
import collections.abc
import dataclasses
import hashlib
import io
import json
import math
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_ood import analysis, estimators, export
from tfp_ood.errors import InputError
from tfp_ood.image_statistics import (IMAGE_STATISTICS, image_statistics,
                                      image_statistics_array)
from tfp_ood.config import DETECTOR_NAMES, SELECTED, is_flow_family
from tfp_ood.evaluate import as_image_dataset, score as evaluate_score
from tfp_ood.metrics import ood_metrics
from tfp_ood.models.base import DensityModel, check_images
from tfp_ood.terms import BITS_PER_DIM, LOG_DET, LOG_PROB, LOG_PZ, is_level_term

tfd = tfp.distributions

__all__ = [
    'CODECS', 'Calibration', 'DETECTOR_NAMES', 'DensityOfStates', 'Detector', 'DetectorScores',
    'ESTIMATORS', 'FLOW_DETECTOR_NAMES', 'FittedDetector', 'InputComplexity', 'LikelihoodRatio',
    'RawLikelihood', 'Typicality',
    'WAIC', 'calibrate', 'compressed_bits', 'detector_metrics', 'fit_detector',
    'SELECTED', 'check_design', 'load_detector', 'minimum_validation_images', 'model_identity',
    'named', 'read_design',
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
        raise InputError(f'The two score sets come from different detectors: '
                         f'{in_scores.detector!r} and {out_scores.detector!r}.')
    # ood_metrics wants "higher = more in-distribution"; NaN stays NaN.
    return ood_metrics(-in_scores.ood_score, -out_scores.ood_score, nonfinite='lowest')


Terms = Dict[str, np.ndarray]


def _log_prob_terms(model: DensityModel, images: Images, what: str,
                    strategy: Optional[tf.distribute.Strategy] = None,
                    statistics: bool = False) -> Terms:
    return evaluate_score(model, images, name=what, progress=False, strategy=strategy,
                          statistics=statistics).scores


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
    # Whether the score reads the models' statistics along their computation
    # (`DensityModel.statistics`), not only their terms.
    needs_statistics: bool = False
    # The lossless codecs the score compresses images with (only PNG runs in a graph).
    codecs: Sequence[str] = ()

    def fit(self, images: Images) -> 'Detector':
        """Fits what the detector learns from in-distribution images; returns `self`."""
        if not self.needs_fit:
            return self
        if not isinstance(images, tf.data.Dataset):
            images = _as_array(images, self.models[0].image_shape, f'{self.name} fit images')
        terms = [_log_prob_terms(m, images, f'{self.name} fit images ({m.name})',
                                 statistics=self.needs_statistics) for m in self.models]
        return self.fit_terms(terms, images)

    def fit_terms(self, terms: Sequence[Terms], images: Images) -> 'Detector':
        """`fit` from the evaluator's terms of the fit images (see `score_terms`)."""
        del terms, images
        return self

    def score(self, images: Images,
              strategy: Optional[tf.distribute.Strategy] = None,
              terms: Optional[Sequence[Terms]] = None) -> DetectorScores:
        """Per-image (or per-batch) OOD scores of `images` (the likelihoods
        computed under `strategy`, as `tfp_ood.score` does, if given).

        `terms`: the evaluator's scores of these very images under each of
        `models`, when they were computed already (`tfp_ood.score(model,
        images).scores`); the models are then not run again.
        """
        if not isinstance(images, tf.data.Dataset):
            images = _as_array(images, self.models[0].image_shape, 'images')
        if terms is None:
            terms = [_log_prob_terms(m, images, f'images ({m.name})', strategy,
                                     self.needs_statistics) for m in self.models]
        elif len(terms) != len(self.models):
            raise InputError(f'{self.name}: terms of {len(terms)} models given; the detector '
                             f'has {len(self.models)}.')
        elif not isinstance(images, tf.data.Dataset):
            for model_terms in terms:
                lengths = {len(np.atleast_1d(v)) for v in model_terms.values()}
                if lengths != {len(images)}:
                    raise InputError(f'{self.name}: the terms given are of {sorted(lengths)} '
                                     f'images; {len(images)} images to score.')
        return self.score_terms(terms, images)

    @abc.abstractmethod
    def score_terms(self, terms: Sequence[Terms], images: Images) -> DetectorScores:
        """The scores from the evaluator's per-image terms of each of `models`
        (`tfp_ood.score(model, images).scores`, in the order of `models`)."""

    def get_state(self) -> Dict:
        """What `fit` learned, as JSON-able data (`set_state` puts it back)."""
        return {}

    def graph_score(self, terms: Sequence[Dict[str, tf.Tensor]], images: tf.Tensor):
        """`score_terms` in TensorFlow ops, for `export_detector`: `(ood_score,
        components)` as float64 tensors from each model's traced terms (with
        `bits_per_dim`) and the uint8 images."""
        raise NotImplementedError(f'{type(self).__name__} cannot be exported as a graph.')

    def set_state(self, state: Dict) -> 'Detector':
        del state
        return self


def _num_dims(model: DensityModel) -> int:
    return int(np.prod(model.image_shape))


def _check_same_shape(models: Sequence[DensityModel], what: str) -> None:
    shapes = {tuple(m.image_shape) for m in models}
    if len(shapes) != 1:
        raise InputError(f'{what}: the models score images of different shapes {sorted(shapes)}.')


def _as_array(images: Images, image_shape, what: str) -> np.ndarray:
    """uint8 `[N, H, W, C]` NumPy images from an array, a list or a dataset (of
    the kinds `tfp_ood.score` reads)."""
    if isinstance(images, tf.data.Dataset):
        batches = [b for b, _ in as_image_dataset(images, image_shape, what).batch(1024)
                   .as_numpy_iterator()]
        if not batches:
            raise InputError(f'{what}: the dataset is empty; no images.')
        images = np.concatenate(batches)
    return check_images(images, image_shape, what).numpy()


class RawLikelihood(Detector):
    """The baseline: bits/dim under one model (higher = less likely = more OOD)."""

    name = 'raw_likelihood'

    def __init__(self, model: DensityModel):
        self.models = (model,)

    def score_terms(self, terms, images=None) -> DetectorScores:
        return DetectorScores(self.name, terms[0][BITS_PER_DIM].astype(np.float64), terms[0])

    def graph_score(self, terms, images):
        return _f64(terms[0][BITS_PER_DIM]), {LOG_PROB: _f64(terms[0][LOG_PROB])}


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
        fg, bg = terms[0][LOG_PROB], terms[1][LOG_PROB]
        log_ratio = fg.astype(np.float64) - bg.astype(np.float64)
        return DetectorScores(self.name, -log_ratio / (_num_dims(self.models[0]) * LN2),
                              {LOG_PROB: fg, 'background_log_prob': bg,
                               'log_ratio': log_ratio})

    def graph_score(self, terms, images):
        fg, bg = _f64(terms[0][LOG_PROB]), _f64(terms[1][LOG_PROB])
        return (-(fg - bg) / (_num_dims(self.models[0]) * LN2),
                {LOG_PROB: fg, 'background_log_prob': bg})


def _png_bits(image: np.ndarray, level: int) -> int:
    return 8 * len(tf.io.encode_png(image, compression=level).numpy())


def _jpeg2000_bits(image: np.ndarray, level: int) -> int:
    del level  # OpenJPEG's lossless mode has no level.
    from PIL import Image
    buffer = io.BytesIO()
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(pixels).save(buffer, format='JPEG2000', irreversible=False)
    return 8 * len(buffer.getvalue())


def _jpegxl_bits(image: np.ndarray, level: int) -> int:
    import imagecodecs
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    return 8 * len(imagecodecs.jpegxl_encode(pixels, lossless=True, effort=level))


# Lossless image codecs for InputComplexity: name -> (bits of one image, default level).
# 'png' is libpng through `tf.io.encode_png` (zlib level 0-9; 9 as Serrà et al.),
# so the same codec runs inside a TensorFlow graph; 'jpeg2000' is OpenJPEG's
# lossless (reversible 5/3 wavelet) mode through Pillow; 'jpegxl' is libjxl's
# lossless (modular) mode through imagecodecs, the level its effort 1-9 (9, the
# slowest and smallest). FLIF, Serrà et al.'s best codec, has no maintained
# Python binding; JPEG XL's modular mode is its successor (FLIF's context trees).
CODECS = {'png': (_png_bits, 9), 'jpeg2000': (_jpeg2000_bits, None),
          'jpegxl': (_jpegxl_bits, 9)}


# Lengths of recently compressed arrays, keyed by their content, codec and level
# (the codecs are deterministic): detectors and models that share a codec compress
# a set once. Bounded; the oldest entry goes first.
_LENGTHS: 'collections.OrderedDict[tuple, np.ndarray]' = collections.OrderedDict()
_MAX_CACHED_SETS = 64


def compressed_bits(images: np.ndarray, codec: str = 'png',
                    level: Optional[int] = None) -> np.ndarray:
    """The length in bits of each image compressed losslessly by `codec`.

    The whole file counts (headers included), as in Serrà et al.; for images
    of one size the headers add the same number of bits to every image. The
    lengths of the last few arrays are remembered by content, so scoring a set
    with several detectors compresses it once per codec.

    Args:
      images: uint8 `[N, H, W, C]`.
      codec: a name of `CODECS` (`'png'`, `'jpeg2000'`, `'jpegxl'`).
      level: the codec's compression level.
        Default value: the codec's default (PNG: 9; JPEG XL: effort 9).

    Returns:
      `[N]` float64 lengths in bits.
    """
    if codec not in CODECS:
        raise InputError(f'Unknown codec {codec!r}; expected one of {sorted(CODECS)}.')
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise InputError(f'compressed_bits needs uint8 images [N, H, W, C]; got dtype '
                         f'{images.dtype} and shape {images.shape}.')
    encode, default = CODECS[codec]
    level = default if level is None else level
    key = (hashlib.sha256(np.ascontiguousarray(images).data).hexdigest(), images.shape,
           codec, level)
    if key not in _LENGTHS:
        _LENGTHS[key] = np.array([encode(image, level) for image in images], dtype=np.float64)
        if len(_LENGTHS) > _MAX_CACHED_SETS:
            _LENGTHS.popitem(last=False)
    _LENGTHS.move_to_end(key)
    return _LENGTHS[key].copy()


def _f64(tensor) -> tf.Tensor:
    return tf.cast(tensor, tf.float64)


def graph_compressed_bits(images: tf.Tensor, codec: str = 'png',
                          level: Optional[int] = None) -> tf.Tensor:
    """`compressed_bits` in TensorFlow ops (PNG only: `tf.io.encode_png`, the
    same libpng the Python path calls), `[N]` float64."""
    if codec != 'png':
        raise InputError(f'Only the png codec runs inside a TensorFlow graph; got {codec!r}.')
    level = CODECS['png'][1] if level is None else level
    lengths = tf.map_fn(lambda image: tf.strings.length(tf.io.encode_png(image, level)),
                        images, fn_output_signature=tf.int32)
    return 8. * tf.cast(lengths, tf.float64)


class InputComplexity(Detector):
    """Serrà et al.'s input complexity: bits/dim minus the compressed bits/dim.

    `S(x) = -log2 p(x) / D - L(x) / D`, `L(x)` the length in bits of `x`
    compressed losslessly (`compressed_bits`). Simple images (SVHN's smooth
    digits, constant images) have both a high likelihood and a short code, so
    subtracting the code length corrects the likelihood for complexity.

    Args:
      model: the density model.
      codec: `'png'` (default, level 9), `'jpeg2000'` or `'jpegxl'` (effort 9).
      level: the codec's level (`None`: its default).
    """

    name = 'input_complexity'

    def __init__(self, model: DensityModel, codec: str = 'png', level: Optional[int] = None):
        if codec not in CODECS:
            raise InputError(f'Unknown codec {codec!r}; expected one of {sorted(CODECS)}.')
        self.models, self.codec, self.level = (model,), codec, level
        self.codecs = (codec,)

    def score_terms(self, terms, images) -> DetectorScores:
        images = _as_array(images, self.models[0].image_shape, 'InputComplexity images')
        bits = compressed_bits(images, self.codec, self.level)
        complexity = bits / _num_dims(self.models[0])
        return DetectorScores(self.name, terms[0][BITS_PER_DIM] - complexity,
                              dict(terms[0], compressed_bits=bits,
                                   complexity_bits_per_dim=complexity))

    def graph_score(self, terms, images):
        bits = graph_compressed_bits(images, self.codec, self.level)
        return (_f64(terms[0][BITS_PER_DIM]) - bits / _num_dims(self.models[0]),
                {LOG_PROB: _f64(terms[0][LOG_PROB]), 'compressed_bits': bits})


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
            raise InputError(f'batch_size (M) must be >= 1; got {batch_size}.')
        if not 0. < false_alarm_rate < 1.:
            raise InputError(f'false_alarm_rate must be in (0, 1); got {false_alarm_rate}.')
        self.models, self.batch_size = (model,), batch_size
        self.false_alarm_rate, self.num_bootstrap, self.seed = (false_alarm_rate,
                                                                num_bootstrap, seed)
        self.entropy: Optional[float] = None
        self.threshold: Optional[float] = None

    def _bpd(self, images: Images, what: str) -> np.ndarray:
        bpd = _log_prob_terms(self.models[0], images, what)[BITS_PER_DIM].astype(np.float64)
        if not np.all(np.isfinite(bpd)):
            raise InputError(f'{what}: {int(np.sum(~np.isfinite(bpd)))} images have a '
                             f'non-finite likelihood; the typicality test needs finite ones.')
        return bpd

    needs_fit = True

    def fit_terms(self, terms, images=None) -> 'Typicality':
        bpd = terms[0][BITS_PER_DIM].astype(np.float64)
        if bpd.size == 0 or not np.all(np.isfinite(bpd)):
            raise InputError('Typicality: the training images need finite likelihoods, and '
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

    def get_state(self) -> Dict:
        return {'entropy': self.entropy, 'threshold': self.threshold}

    def set_state(self, state: Dict) -> 'Typicality':
        self.entropy, self.threshold = state['entropy'], state.get('threshold')
        return self

    def batch_statistic(self, bits_per_dim: np.ndarray) -> np.ndarray:
        """`|mean bpd - H|` of consecutive, non-overlapping batches of `M` images."""
        if self.entropy is None:
            raise InputError('Typicality: call fit(train_images) before scoring.')
        bits_per_dim = np.asarray(bits_per_dim, dtype=np.float64)
        num_batches = len(bits_per_dim) // self.batch_size
        if num_batches == 0:
            raise InputError(f'Typicality: {len(bits_per_dim)} images are fewer than one '
                             f'batch of M = {self.batch_size}.')
        batches = bits_per_dim[:num_batches * self.batch_size].reshape(num_batches, -1)
        return np.abs(batches.mean(axis=1) - self.entropy)

    def score_terms(self, terms, images=None) -> DetectorScores:
        return DetectorScores(self.name, self.batch_statistic(terms[0][BITS_PER_DIM]),
                              terms[0])

    def graph_score(self, terms, images):
        if self.batch_size != 1 or self.entropy is None:
            raise InputError('Typicality: only a fitted single-image test (M = 1) exports.')
        bpd = _f64(terms[0][BITS_PER_DIM])
        return tf.abs(bpd - self.entropy), {LOG_PROB: _f64(terms[0][LOG_PROB])}


class WAIC(Detector):
    """Choi et al.'s WAIC over an ensemble: `-(mean_k log p_k - var_k log p_k)`.

    Args:
      members: two or more models of the same image shape.
    """

    name = 'waic'

    def __init__(self, members: Sequence[DensityModel]):
        if len(members) < 2:
            raise InputError(f'WAIC needs at least two ensemble members; got {len(members)}.')
        _check_same_shape(members, 'WAIC')
        self.models = tuple(members)

    def score_terms(self, terms, images=None) -> DetectorScores:
        log_probs = [t[LOG_PROB] for t in terms]
        values = analysis.waic(log_probs)
        components = {f'log_prob_{k}': lp for k, lp in enumerate(log_probs)}
        components['waic'] = values
        return DetectorScores(self.name, -values / (_num_dims(self.models[0]) * LN2),
                              components)


#: How `DensityOfStates` scores the statistics (`tfp_ood.estimators`).
ESTIMATORS = tuple(estimators.ESTIMATORS)


class DensityOfStates(Detector):
    """Morningstar et al.'s density of states: how typical an image's statistics are.

    `fit(train_images)` computes each image's statistics `s(x)`, standardises
    them with the training mean and deviation, and fits an estimator `q` of
    `tfp_ood.estimators`: a Gaussian KDE (Scott's bandwidth, or `bandwidth`;
    the published design), one Gaussian with the maximum-likelihood,
    Ledoit-Wolf or OAS covariance (a Mahalanobis distance: it sees how the
    statistics vary together, which a kernel of one width in every
    standardised direction does not), a Gaussian mixture, or COPOD's
    empirical-copula tail score. `score` is `-log q(s(x))` (COPOD: its tail
    score), computed in TensorFlow ops, the same ops an exported detector runs.

    The statistics can be any of the model's terms (`log_prob`, a flow's
    `log_pz`, `log_det`, `level<i>_*`), its statistics along the computation
    (`model.statistic_names`, e.g. a flow's per-step log-determinants), the
    model-free complexity statistics of `tfp_ood.image_statistics` (PNG and
    JPEG lengths, total variation), and with `codec` the lossless compressed
    length by a codec of `CODECS` (JPEG 2000 and JPEG XL run in Python only).

    Args:
      model: the density model.
      statistics: which statistics to use (e.g. `('log_pz', 'log_det')` for a
        flow, `('log_prob',)` for any model).
      codec: also use the compressed length in bits (`compressed_bits`) by
        this codec (statistic `compressed_bits`), or by each of several codecs
        (statistics `<codec>_bits`), or `None`.
      bandwidth: the KDE's bandwidth in standardised units (`None`: Scott's
        rule, `n ** (-1 / (d + 4))`).
      max_fit_images: at most this many training images are kept.
      estimator: a name of `ESTIMATORS` (default `'kde'`).
    """

    name = 'density_of_states'
    needs_fit = True

    def __init__(self, model: DensityModel, statistics: Sequence[str] = (LOG_PROB,),
                 codec: Union[None, str, Sequence[str]] = None,
                 bandwidth: Optional[float] = None, max_fit_images: int = 10000,
                 estimator: str = 'kde'):
        if estimator not in ESTIMATORS:
            raise InputError(f'Unknown estimator {estimator!r}; expected one of {ESTIMATORS}.')
        if bandwidth is not None and not (math.isfinite(bandwidth) and bandwidth > 0):
            raise InputError(f'DensityOfStates: bandwidth must be a number > 0; got {bandwidth}.')
        codecs = () if codec is None else (codec,) if isinstance(codec, str) else tuple(codec)
        if not statistics and not codecs:
            raise InputError('DensityOfStates needs at least one statistic.')
        for name in codecs:
            if name not in CODECS:
                raise InputError(f'Unknown codec {name!r}; expected one of {sorted(CODECS)}.')
        self.models, self.statistics, self.codecs = (model,), tuple(statistics), codecs
        self.bandwidth, self.max_fit_images = bandwidth, max_fit_images
        self.estimator = estimator
        self._density = None
        self._mean = self._scale = None

    @property
    def needs_statistics(self) -> bool:
        return bool(set(self.statistics) & set(self.models[0].statistic_names))

    @property
    def _image_statistics(self) -> Tuple[str, ...]:
        return tuple(s for s in self.statistics if s in IMAGE_STATISTICS)

    @property
    def _codec_statistics(self) -> Dict[str, str]:
        """Statistic name -> codec: `compressed_bits` for one, `<codec>_bits` for several."""
        if len(self.codecs) == 1:
            return {'compressed_bits': self.codecs[0]}
        return {f'{codec}_bits': codec for codec in self.codecs}

    @property
    def statistic_names(self):
        return self.statistics + tuple(self._codec_statistics)

    def _statistics(self, terms: Terms, images: Images, what: str):
        images = _as_array(images, self.models[0].image_shape, what)
        computed = dict(terms, **image_statistics_array(images, self._image_statistics))
        computed.update({name: compressed_bits(images, codec)
                         for name, codec in self._codec_statistics.items()})
        missing = [s for s in self.statistic_names if s not in computed]
        if missing:
            raise InputError(f'DensityOfStates: the model has no {missing}; it reports '
                             f'{sorted(terms)}, and the image statistics are '
                             f'{sorted(IMAGE_STATISTICS)}.')
        values = np.stack([np.asarray(computed[s], np.float64) for s in self.statistic_names],
                          axis=1)
        return values, computed

    def fit_terms(self, terms, images) -> 'DensityOfStates':
        values, _ = self._statistics(terms[0], images, 'DensityOfStates training images')
        values = values[np.all(np.isfinite(values), axis=1)][:self.max_fit_images]
        if len(values) < 2:
            raise InputError('DensityOfStates: fewer than two training images with finite '
                             'statistics.')
        mean = values.mean(axis=0)
        scale = np.where(values.std(axis=0) > 0, values.std(axis=0), 1.)
        return self._set_density(values, mean, scale)

    def _set_density(self, values, mean, scale, parameters=None) -> 'DensityOfStates':
        """Fits the estimator to `values` (or restores it from `parameters`)."""
        self._values, self._mean, self._scale = (np.asarray(values, np.float64),
                                                 np.asarray(mean, np.float64),
                                                 np.asarray(scale, np.float64))
        if parameters is not None:
            self._density = estimators.from_state(self.estimator, parameters)
        else:
            self._density = self._new_estimator().fit((self._values - self._mean) / self._scale)
        return self

    def _new_estimator(self) -> estimators.Estimator:
        if self.estimator == 'kde':
            return estimators.KDE(self.bandwidth)
        return estimators.ESTIMATORS[self.estimator]()

    def get_state(self) -> Dict:
        if self._density is None:
            return {}
        return {'statistics': list(self.statistic_names), 'estimator': self.estimator,
                'mean': self._mean.tolist(), 'scale': self._scale.tolist(),
                'values': self._values.tolist(),
                'parameters': self._density.get_state()}

    def set_state(self, state: Dict) -> 'DensityOfStates':
        if list(state['statistics']) != list(self.statistic_names):
            raise InputError(f'DensityOfStates: the saved fit is of the statistics '
                             f'{state["statistics"]}, not {list(self.statistic_names)}.')
        if state.get('estimator', 'kde') != self.estimator:  # Fits before 'estimator': KDEs.
            raise InputError(f'DensityOfStates: the saved fit is a {state["estimator"]}, not '
                             f'a {self.estimator}.')
        values = np.asarray(state['values'], np.float64)
        d = len(self.statistic_names)
        if values.ndim != 2 or values.shape[1] != d or len(values) < 2 or not np.all(
                np.isfinite(values)):
            raise InputError(f'DensityOfStates: the saved fit\'s values must be finite '
                             f'statistics of at least two training images, [N >= 2, {d}]; '
                             f'got shape {list(values.shape)}.')
        for key in ('mean', 'scale'):
            vector = np.asarray(state[key], np.float64)
            if vector.shape != (d,) or not np.all(np.isfinite(vector)) or (
                    key == 'scale' and not np.all(vector > 0)):
                raise InputError(f'DensityOfStates: the saved fit\'s {key} must be {d} finite '
                                 f'numbers{" > 0" if key == "scale" else ""}; got '
                                 f'{state[key]!r:.80}.')
        parameters = state.get('parameters')
        if parameters is None and self.estimator == 'kde':  # Fits before 'parameters'.
            self.bandwidth = state['bandwidth']
        return self._set_density(state['values'], state['mean'], state['scale'], parameters)

    def _log_density(self, values) -> tf.Tensor:
        """`-score` of the estimator on raw statistics `[N, d]`; `-inf` where one
        is not finite."""
        values = _f64(values)
        standardised = (values - self._mean) / self._scale
        finite = tf.reduce_all(tf.math.is_finite(standardised), axis=1)
        safe = tf.where(finite[:, None], standardised, tf.zeros_like(standardised))
        return tf.where(finite, -self._density.score(safe), -np.inf)

    def _check_fitted(self, what: str) -> None:
        if self._density is None:
            raise InputError(f'DensityOfStates: call fit(train_images) before {what}.')

    def score_terms(self, terms, images) -> DetectorScores:
        self._check_fitted('scoring')
        values, terms = self._statistics(terms[0], images, 'images')
        log_density = self._log_density(values).numpy()
        return DetectorScores(self.name, -log_density, dict(terms, log_density=log_density))

    def ablation(self, in_scores: DetectorScores, out_scores: DetectorScores) -> List[Dict]:
        """Which statistics carry the detection of `out_scores` against `in_scores`.

        For each statistic, the AUROC of the density of states refitted (same
        training images, same standardisation and estimator; a KDE with
        Scott's bandwidth for the dimension, or this detector's `bandwidth`)
        on that statistic alone and on all the others; with the AUROC of all
        of them as `auroc_all`.

        Args:
          in_scores, out_scores: this detector's scores of in- and
            out-of-distribution images (their components hold the statistics).

        Returns:
          One dict per statistic: `statistic`, `auroc_alone`, `auroc_without`,
          `auroc_all`.
        """
        self._check_fitted('ablation')
        names = list(self.statistic_names)
        train = (self._values - self._mean) / self._scale

        def values(scores):
            return (np.stack([np.asarray(scores.components[k], np.float64) for k in names], 1)
                    - self._mean) / self._scale

        in_values, out_values = values(in_scores), values(out_scores)

        def auroc(columns):
            density = self._new_estimator().fit(train[:, columns])
            scores = [DetectorScores(self.name, density.score(v[:, columns]).numpy(), {})
                      for v in (in_values, out_values)]
            return detector_metrics(*scores)['auroc']

        everything = auroc(list(range(len(names))))
        return [{'statistic': name, 'auroc_alone': auroc([i]),
                 'auroc_without': auroc([j for j in range(len(names)) if j != i])
                 if len(names) > 1 else None, 'auroc_all': everything}
                for i, name in enumerate(names)]

    def graph_score(self, terms, images):
        """The estimator's score in float64 ops over the model's traced
        statistics, the image statistics and the PNG length."""
        self._check_fitted('exporting')
        columns = {k: _f64(terms[0][k]) for k in self.statistics if k not in IMAGE_STATISTICS}
        columns.update({k: _f64(v) for k, v in
                        image_statistics(images, self._image_statistics).items()})
        for name, codec in self._codec_statistics.items():
            columns[name] = graph_compressed_bits(images, codec)
        values = tf.stack([columns[k] for k in self.statistic_names], axis=1)
        log_density = self._log_density(values)
        return -log_density, dict(columns, log_density=log_density)


# The density-of-states detectors of every level's terms (flows only): their
# codecs and estimator.
_LEVEL_DESIGNS = {'density_of_states_levels': ('png', 'kde'),
                  'density_of_states_levels_png_jpeg2000': (('png', 'jpeg2000'), 'kde'),
                  'density_of_states_gaussian': (('png', 'jpeg2000', 'jpegxl'), 'gaussian')}
#: The detectors of `DETECTOR_NAMES` that need a flow's per-level terms.
FLOW_DETECTOR_NAMES = tuple(_LEVEL_DESIGNS)


def check_design(design) -> Dict:
    """A design (`{'statistics': [...], 'codecs': [...], 'estimator': ...}`), checked.

    Raises:
      ValueError: a field missing or of the wrong type, an unknown codec or
        estimator, no statistics.
    """
    if not isinstance(design, dict):
        raise InputError(f'A design is a dict with statistics, codecs and estimator; got '
                         f'{type(design).__name__}.')
    statistics, codecs = design.get('statistics'), design.get('codecs', [])
    estimator = design.get('estimator')
    if (not isinstance(statistics, list) or not all(isinstance(x, str) for x in statistics)
            or not isinstance(codecs, list) or not all(c in CODECS for c in codecs)):
        raise InputError(f'A design needs "statistics" (a list of names) and "codecs" (a '
                         f'list of {sorted(CODECS)}); got {statistics!r} and {codecs!r}.')
    if estimator not in ESTIMATORS:
        raise InputError(f'A design\'s estimator must be one of {ESTIMATORS}; got '
                         f'{estimator!r}.')
    if not statistics and not codecs:
        raise InputError('A design needs at least one statistic.')
    return {'statistics': list(statistics), 'codecs': list(codecs), 'estimator': estimator}


def _read_json(path: str, what: str):
    """The JSON in `path`; a missing file or one that is not JSON is one line naming `what`."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f'No {what} at {path}.') from None
    except ValueError as e:
        raise InputError(f'{path} is not a {what} (not JSON: {e}).') from None


def read_design(path: str) -> Dict:
    """The design in a JSON file (`examples/detector_search.py` writes them)."""
    design = _read_json(path, 'design')
    try:
        return check_design(design)
    except ValueError as e:
        raise InputError(f'{path}: {e}') from None


def named(name: str, model: DensityModel, background: Optional[DensityModel] = None,
          design: Optional[Dict] = None) -> Detector:
    """The single-image detector `name` of `DETECTOR_NAMES` over `model`.

    `density_of_states` uses the published statistics (the log-likelihood
    and, for a flow, its two terms); ours are `density_of_states_terms` (a
    flow's two terms and the PNG length), `density_of_states_levels` (every
    level's two terms and the PNG length; flows only),
    `density_of_states_levels_png_jpeg2000` (also the JPEG 2000 length) and
    `density_of_states_gaussian` (every level's terms and the PNG, JPEG 2000
    and JPEG XL lengths, under one full-covariance Gaussian instead of a KDE).
    The last two are not exportable as SavedModels: JPEG 2000 and JPEG XL have
    no TensorFlow ops. `input_complexity` compresses with PNG,
    `input_complexity_jpeg2000` with lossless JPEG 2000,
    `input_complexity_jpegxl` with lossless JPEG XL. `likelihood_ratio` needs
    `background`. `density_of_states_selected` is the density of states of
    `design` (`check_design`): its statistics, codecs and estimator.
    """
    flow = model.is_flow
    if name == 'raw_likelihood':
        return RawLikelihood(model)
    if name == 'likelihood_ratio':
        if background is None:
            raise InputError('likelihood_ratio needs a background model.')
        return LikelihoodRatio(model, background)
    if name == 'input_complexity':
        return InputComplexity(model, codec='png')
    if name in ('input_complexity_jpeg2000', 'input_complexity_jpegxl'):
        return InputComplexity(model, codec=name[len('input_complexity_'):])
    if name == 'typicality':
        return Typicality(model, batch_size=1)
    if name == 'density_of_states':
        return DensityOfStates(model, (LOG_PROB, LOG_PZ, LOG_DET) if flow
                               else (LOG_PROB,))
    if name == 'density_of_states_terms':
        return DensityOfStates(model, (LOG_PZ, LOG_DET) if flow else (LOG_PROB,),
                               codec='png')
    if name == SELECTED:
        if design is None:
            raise InputError(f'{SELECTED} needs a design (statistics, codecs, estimator).')
        design = check_design(design)
        return DensityOfStates(model, design['statistics'], codec=design['codecs'] or None,
                               estimator=design['estimator'])
    if name in _LEVEL_DESIGNS:
        levels = [t for t in model.term_names if is_level_term(t)]
        if not levels:
            raise InputError(f'{name} needs a flow with per-level terms.')
        codecs, estimator = _LEVEL_DESIGNS[name]
        return DensityOfStates(model, levels, codec=codecs, estimator=estimator)
    raise InputError(f'Unknown detector {name!r}; expected one of {DETECTOR_NAMES}.')


@dataclasses.dataclass
class Calibration:
    """A detector's decision threshold, set on held-out in-distribution images.

    `is_ood = ood_score > threshold`: the threshold is the smallest score at
    or below which `true_positive_rate` of the validation images fall, so an
    in-distribution image is flagged with probability about
    `1 - true_positive_rate` ("less typical than 95% of the training
    distribution" at the default).

    Attributes:
      threshold: the score above which an image is out of distribution.
      true_positive_rate: the fraction of validation images kept.
      validation_scores: the scores it was set on (for histograms and checks).
    """

    threshold: float
    true_positive_rate: float
    validation_scores: np.ndarray

    def decide(self, ood_score: np.ndarray) -> np.ndarray:
        """`is_ood` per image (a non-finite score is out of distribution)."""
        ood_score = np.asarray(ood_score, np.float64)
        return ~(ood_score <= self.threshold)

    def interval(self, confidence: float = 0.95, num_resamples: int = 1000,
                 seed: int = 0) -> Dict[str, List[float]]:
        """How much the threshold owes to which validation images were drawn.

        Resamples the validation scores with replacement `num_resamples` times,
        sets the threshold on each resample as `calibrate` does, and returns
        the central `confidence` intervals of those thresholds (`threshold`)
        and of the fraction of the validation images each of them flags
        (`flagged`): with few validation images the second is wide, and the
        rate at which held-out in-distribution images are flagged can be far
        from `1 - true_positive_rate`.
        """
        scores = np.sort(np.where(np.isfinite(self.validation_scores),
                                  self.validation_scores, np.inf))
        n = len(scores)
        kept = int(math.ceil(self.true_positive_rate * n))
        rng = np.random.default_rng(seed)
        thresholds = []
        for start in range(0, num_resamples, 100):
            draws = np.sort(rng.choice(scores, (min(100, num_resamples - start), n)), axis=1)
            thresholds.append(draws[:, kept - 1])
        thresholds = np.concatenate(thresholds)
        flagged = 1. - np.searchsorted(scores, thresholds, side='right') / n
        tails = [100. * (1. - confidence) / 2., 100. * (1. + confidence) / 2.]
        return {'confidence': confidence,
                'threshold': [float(v) for v in np.percentile(thresholds, tails)],
                'flagged': [float(v) for v in np.percentile(flagged, tails)]}


def minimum_validation_images(true_positive_rate: float, expected_flagged: int = 20) -> int:
    """Validation images for a threshold at `true_positive_rate` with about
    `expected_flagged` of them beyond it (400 at 95%): with fewer, which
    images were drawn moves the flagged rate by several points (see
    `Calibration.interval`)."""
    if true_positive_rate >= 1.:
        return 1
    return int(math.ceil(expected_flagged / (1. - true_positive_rate) - 1e-9))


def calibrate(validation: DetectorScores, true_positive_rate: float = 0.95) -> Calibration:
    """The threshold at `true_positive_rate` of in-distribution validation scores.

    Non-finite validation scores count as the most out-of-distribution.
    """
    if not 0. < true_positive_rate <= 1.:
        raise InputError(f'true_positive_rate must be in (0, 1]; got {true_positive_rate}.')
    scores = np.asarray(validation.ood_score, np.float64)
    if scores.size == 0:
        raise InputError('calibrate: no validation scores.')
    ordered = np.sort(np.where(np.isfinite(scores), scores, np.inf))
    kept = int(math.ceil(true_positive_rate * len(ordered)))
    threshold = float(ordered[kept - 1])
    if not math.isfinite(threshold):
        raise InputError(f'calibrate: fewer than {kept} of the {len(ordered)} validation '
                         f'images have a finite score.')
    return Calibration(threshold, true_positive_rate, scores)


FIT_FORMAT = 'tfp_ood.fitted_detector/1'


@dataclasses.dataclass
class FittedDetector:
    """A fitted, calibrated detector: what `tfp-ood detect` runs.

    Attributes:
      name: its name in `DETECTOR_NAMES`.
      detector: the `Detector`, fitted.
      calibration: its `Calibration`.
      model_dirs: the SavedModels of its models (foreground, then background).
      provenance: what it was fitted and calibrated on.
      design: the design of a `density_of_states_selected`, else `None`.
    """

    name: str
    detector: Detector
    calibration: Calibration
    model_dirs: Sequence[str]
    provenance: Dict
    design: Optional[Dict] = None

    def detect(self, images: Images,
               strategy: Optional[tf.distribute.Strategy] = None,
               terms: Optional[Sequence[Terms]] = None) -> DetectorScores:
        """Scores with `is_ood` (0/1) among the components (see `Detector.score`)."""
        scores = self.detector.score(images, strategy=strategy, terms=terms)
        scores.components = dict(scores.components,
                                 is_ood=self.calibration.decide(scores.ood_score))
        return scores

    def export(self, path: str, overwrite: bool = False) -> str:
        """Writes the detector as a SavedModel that plain TensorFlow runs
        (`tfp_ood.export.export_detector`): images in, `ood_score`, `is_ood`
        and the components out."""
        models = [export.restore(d) for d in self.model_dirs]  # Python models, not adapters.
        detector = named(self.name, models[0], models[1] if len(models) > 1 else None,
                         self.design)
        detector.set_state(self.detector.get_state())
        return export.export_detector(detector, self.name, self.calibration.threshold,
                                      self.calibration.true_positive_rate, self.model_dirs,
                                      path, self.provenance, overwrite)

    def save(self, path: str) -> str:
        """Writes the fit as JSON (model paths relative to the file's folder)."""
        folder = os.path.dirname(os.path.abspath(path))
        record = {
            'format': FIT_FORMAT, 'detector': self.name,
            'models': [os.path.relpath(os.path.abspath(d), folder) for d in self.model_dirs],
            'state': self.detector.get_state(),
            'threshold': self.calibration.threshold,
            'true_positive_rate': self.calibration.true_positive_rate,
            'validation_scores': [float(v) for v in self.calibration.validation_scores],
            'provenance': dict(self.provenance),
            # What identifies each model, checked when the fit is read.
            'model_identities': [model_identity(d) for d in self.model_dirs],
        }
        if self.design is not None:
            record['design'] = self.design
        with open(path + '.tmp', 'w') as f:
            json.dump(record, f)
        os.replace(path + '.tmp', path)
        return path


def fit_detector(name: str, model_dirs: Sequence[str], fit_images: Images,
                 validation_images: Images, true_positive_rate: float = 0.95,
                 provenance: Optional[Dict] = None,
                 design: Optional[Dict] = None) -> FittedDetector:
    """Builds detector `name` over the SavedModels `model_dirs` (foreground, and a
    background for `likelihood_ratio`; `design` for `density_of_states_selected`),
    fits it on `fit_images` and sets its threshold on the held-out
    in-distribution `validation_images`."""
    if isinstance(model_dirs, (str, bytes, os.PathLike)) or not isinstance(
            model_dirs, collections.abc.Sequence):
        raise TypeError(f'fit_detector: model_dirs must be a list of SavedModel folders, e.g. '
                        f"['saved_models/glow_cifar10']; got {model_dirs!r:.80}.")
    if not 1 <= len(model_dirs) <= 2:
        raise InputError(f'fit_detector: model_dirs must name one SavedModel (two for '
                         f'likelihood_ratio: foreground, background); got {len(model_dirs)}.')
    if not 0. < true_positive_rate <= 1.:
        raise InputError(f'true_positive_rate must be in (0, 1]; got {true_positive_rate}.')
    models = [_load_model(d) for d in model_dirs]
    shape = models[0].image_shape
    fit_images = _as_array(fit_images, shape, f'{name} fit images')
    validation_images = _as_array(validation_images, shape, f'{name} validation images')
    _check_validation(fit_images, validation_images, true_positive_rate)
    design = check_design(design) if design is not None else None
    detector = named(name, models[0], models[1] if len(models) > 1 else None, design)
    detector.fit(fit_images)
    calibration = calibrate(detector.score(validation_images), true_positive_rate)
    return FittedDetector(name, detector, calibration, list(model_dirs), dict(provenance or {}),
                          design)


def _image_digests(images: np.ndarray) -> List[bytes]:
    return [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in images]


def _check_validation(fit_images: np.ndarray, validation_images: np.ndarray,
                      true_positive_rate: float) -> None:
    """Refuses validation images that cannot set a threshold (all among the fit
    images; fewer than one expected beyond it) and warns where the threshold
    would be unreliable (some among the fit images; fewer than
    `minimum_validation_images`)."""
    n = len(validation_images)
    fitted = set(_image_digests(fit_images))
    shared = sum(d in fitted for d in _image_digests(validation_images))
    if shared == n:
        raise InputError(f'fit_detector: every one of the {n} validation images is also a fit '
                         f'image; the threshold must be set on held-out images (on fitted '
                         f'ones, held-out images are flagged more often than '
                         f'{1 - true_positive_rate:.0%}). Pass another split.')
    if shared:
        warnings.warn(f'{shared} of the {n} validation images are also fit images; the '
                      f'threshold is set partly on images the detector has seen, so held-out '
                      f'images may be flagged more often than {1 - true_positive_rate:.0%}.',
                      UserWarning, stacklevel=3)
    if true_positive_rate < 1. and n * (1. - true_positive_rate) < 1.:
        raise InputError(f'fit_detector: {n} validation images cannot set a threshold that '
                         f'flags {1 - true_positive_rate:.1%} of them (at least '
                         f'{minimum_validation_images(true_positive_rate, 1)} are needed; '
                         f'{minimum_validation_images(true_positive_rate)} for a threshold '
                         f'whose flagged rate is within a few points).')
    if n < minimum_validation_images(true_positive_rate):
        warnings.warn(f'only {n} validation images: fewer than '
                      f'{minimum_validation_images(true_positive_rate)} for a threshold at '
                      f'{true_positive_rate:.0%}, so the rate at which in-distribution images '
                      f'are flagged is uncertain (see the threshold\'s bootstrap interval).',
                      UserWarning, stacklevel=3)


def _load_model(path: str) -> DensityModel:
    """A flow rebuilt from its weights (for every per-level term); other models
    as their SavedModel."""
    family = export.read_metadata(path)['model'].get('family')
    return export.restore(path) if is_flow_family(family) else export.load(path)


def model_identity(model_dir: str) -> Dict:
    """What identifies an exported model: its configuration and the SHA-256 of
    its variables' values (read from the SavedModel's checkpoint, by name), so
    a fit can tell the model it was fitted on from another of the same shape,
    or from the same folder re-exported with other weights. Exporting the same
    weights again keeps the identity."""
    reader = tf.train.load_checkpoint(os.path.join(model_dir, 'variables', 'variables'))
    digest = hashlib.sha256()
    for name in sorted(reader.get_variable_to_shape_map()):
        if name.startswith(('_CHECKPOINTABLE_OBJECT_GRAPH', 'save_counter')):
            continue  # Bookkeeping, not weights.
        value = np.ascontiguousarray(reader.get_tensor(name))
        digest.update(f'{name}:{value.dtype}:{value.shape}'.encode())
        digest.update(value.tobytes())
    return {'config': export.read_metadata(model_dir)['model'],
            'variables_sha256': digest.hexdigest()}


def _check_models(record: Dict, model_dirs: Sequence[str], path: str) -> None:
    """The models at `model_dirs` are those the fit was made on (fits written
    before `model_identities` are taken as they are)."""
    identities = record.get('model_identities')
    if identities is None:
        return
    if not isinstance(identities, list) or len(identities) != len(model_dirs) or not all(
            isinstance(i, dict) and isinstance(i.get('variables_sha256'), str)
            for i in identities):
        raise InputError(f'{path}: "model_identities" must be one object per model with its '
                         f'"variables_sha256"; got {identities!r:.80}. Re-fit it with '
                         f'tfp-ood fit-detector.')
    for model_dir, fitted in zip(model_dirs, identities):
        try:
            current = model_identity(model_dir)
        except (OSError, ValueError, tf.errors.OpError) as e:
            raise InputError(f'{path}: cannot read the model it was fitted on at {model_dir} '
                             f'({str(e).splitlines()[0]}).') from None
        if current['config'] != fitted.get('config'):
            raise InputError(f'{path} was fitted on another model than the one now at '
                             f'{model_dir} (its configuration differs). Re-fit it with '
                             f'tfp-ood fit-detector.')
        if current['variables_sha256'] != fitted['variables_sha256']:
            raise InputError(f'{path} was fitted on other weights than those now at '
                             f'{model_dir} (re-trained or re-exported since?). Re-fit it '
                             f'with tfp-ood fit-detector.')


def _check_record(record: Dict, path: str) -> None:
    """Every field of a fit's JSON present, of its type and in its range."""
    def bad(field, expected):
        raise InputError(f'{path}: "{field}" must be {expected}; got '
                         f'{record.get(field)!r:.80}. Re-fit it with tfp-ood fit-detector.')

    if record.get('detector') not in DETECTOR_NAMES:
        bad('detector', f'one of {DETECTOR_NAMES}')
    models = record.get('models')
    if not isinstance(models, list) or not 1 <= len(models) <= 2 or not all(
            isinstance(m, str) and m for m in models):
        bad('models', 'a list of one or two SavedModel paths')
    if not isinstance(record.get('state'), dict):
        bad('state', 'an object')
    threshold = record.get('threshold')
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
            math.isfinite(threshold)):
        bad('threshold', 'a finite number')
    rate = record.get('true_positive_rate')
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        bad('true_positive_rate', 'a number in (0, 1]')
    scores = record.get('validation_scores')
    if not isinstance(scores, list) or not scores or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores):
        bad('validation_scores', 'a non-empty list of numbers')


def load_detector(path: str) -> FittedDetector:
    """A `FittedDetector` saved with `FittedDetector.save`, exactly as fitted."""
    if os.path.isdir(path):
        raise InputError(f'{path} is a folder; a fitted detector is its JSON file (a '
                         f'SavedModel folder is run with tf.saved_model.load).')
    record = _read_json(path, 'fitted detector')
    if not isinstance(record, dict) or record.get('format') != FIT_FORMAT:
        raise InputError(f'{path} is not a fitted detector of this version (format '
                         f'{record.get("format") if isinstance(record, dict) else None!r}, '
                         f'expected {FIT_FORMAT!r}).')
    _check_record(record, path)
    folder = os.path.dirname(os.path.abspath(path))
    model_dirs = [os.path.normpath(os.path.join(folder, d)) for d in record['models']]
    _check_models(record, model_dirs, path)
    models = [_load_model(d) for d in model_dirs]
    design = record.get('design')
    try:
        detector = named(record['detector'], models[0], models[1] if len(models) > 1 else None,
                         design)
        detector.set_state(record['state'])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise InputError(f'{path}: its state does not describe a fitted {record["detector"]} '
                         f'({type(e).__name__}: {e}). Re-fit it with tfp-ood fit-detector.'
                         ) from None
    calibration = Calibration(float(record['threshold']), float(record['true_positive_rate']),
                              np.asarray(record['validation_scores'], np.float64))
    return FittedDetector(record['detector'], detector, calibration, model_dirs,
                          record.get('provenance', {}), design)
