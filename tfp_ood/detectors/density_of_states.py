"""Morningstar et al.'s density of states, over any statistics and estimator.

#### References

[1] Warren Morningstar et al. Density of States Estimation for
    Out-of-Distribution Detection. AISTATS 2021.
    https://arxiv.org/abs/2006.09273
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from tfp_ood import estimators
from tfp_ood.detectors import codecs
from tfp_ood.detectors.base import (RETRACING, Detector, DetectorScores, detector_metrics,
                                    f64)
from tfp_ood.errors import InputError
from tfp_ood.image_statistics import IMAGE_STATISTICS, image_statistics, png_bits
from tfp_ood.models.base import DensityModel, tf_log_without
from tfp_ood.terms import LOG_PROB

__all__ = ['DensityOfStates', 'ESTIMATORS']

#: How `DensityOfStates` scores the statistics (`tfp_ood.estimators`).
ESTIMATORS = tuple(estimators.ESTIMATORS)


class DensityOfStates(Detector):
    """How typical an image's statistics are: `-log q(s(x))`.

    `fit(train_images)` computes each image's statistics `s(x)`, standardises
    them with the training mean and deviation, and fits an estimator `q` of
    `tfp_ood.estimators`: a Gaussian KDE (Scott's bandwidth, or `bandwidth`;
    the published design), one Gaussian with the maximum-likelihood,
    Ledoit-Wolf or OAS covariance (a Mahalanobis distance: it sees how the
    statistics vary together, which a kernel of one width in every
    standardised direction does not), a Gaussian mixture, or COPOD's
    empirical-copula tail score. `score` is `-log q(s(x))` (COPOD: its tail
    score).

    The statistics can be any of the model's terms (`log_prob`, a flow's
    `log_pz`, `log_det`, `level<i>_*`), its statistics along the computation
    (`model.statistic_names`, e.g. a flow's per-step log-determinants), the
    model-free complexity statistics of `tfp_ood.image_statistics` (PNG and
    JPEG lengths, total variation), and with `codec` the lossless compressed
    length by a codec of `tfp_ood.detectors.codecs` (JPEG 2000 and JPEG XL in
    Python only: a detector with them does not export).

    Args:
      model: the density model.
      statistics: which statistics to use (e.g. `('log_pz', 'log_det')` for a
        flow, `('log_prob',)` for any model).
      codec: also use the compressed length in bits by this codec (statistic
        `compressed_bits`), or by each of several codecs (statistics
        `<codec>_bits`), or `None`.
      bandwidth: the KDE's bandwidth in standardised units (`None`: Scott's
        rule, `n ** (-1 / (d + 4))`).
      max_fit_images: at most this many training images are kept.
      estimator: a name of `ESTIMATORS` (default `'kde'`).
      compressor: the `codecs.Compressor` whose cache Python-only codecs use.
    """

    name = 'density_of_states'
    needs_fit = True

    def __init__(self, model: DensityModel, statistics: Sequence[str] = (LOG_PROB,),
                 codec: Union[None, str, Sequence[str]] = None,
                 bandwidth: Optional[float] = None, max_fit_images: int = 10000,
                 estimator: str = 'kde', compressor: Optional[codecs.Compressor] = None):
        if estimator not in ESTIMATORS:
            raise InputError(f'Unknown estimator {estimator!r}; expected one of {ESTIMATORS}.')
        if bandwidth is not None and not (math.isfinite(bandwidth) and bandwidth > 0):
            raise InputError(f'DensityOfStates: bandwidth must be a number > 0; got {bandwidth}.')
        names = () if codec is None else (codec,) if isinstance(codec, str) else tuple(codec)
        if not statistics and not names:
            raise InputError('DensityOfStates needs at least one statistic.')
        self.codecs = tuple(codecs.check_codec(c) for c in names)
        self.models, self.statistics = (model,), tuple(statistics)
        self.bandwidth, self.max_fit_images = bandwidth, max_fit_images
        self.estimator, self.compressor = estimator, compressor
        self._density = None
        self._values = self._mean = self._scale = None

    @property
    def needs_statistics(self) -> Union[bool, str]:
        """`'gradients'` if a statistic is one of the model's gradient norms
        (`DensityModel.gradient_statistics`), else whether one is among its
        other statistics along its computation."""
        model = self.models[0]
        if set(self.statistics) & set(model.gradient_statistic_names):
            return 'gradients'
        return bool(set(self.statistics) & set(model.statistic_names))

    @property
    def reads_images(self) -> bool:
        return bool(self._image_statistics) or any(
            c in codecs.GRAPH_CODECS for c in self._codec_statistics.values())

    @property
    def is_fitted(self) -> bool:
        return self._density is not None

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
    def python_statistics(self):
        return {name: (codec, codecs.CODECS[codec])
                for name, codec in self._codec_statistics.items()
                if codec not in codecs.GRAPH_CODECS}

    @property
    def statistic_names(self) -> Tuple[str, ...]:
        return self.statistics + tuple(self._codec_statistics)

    def _columns(self, terms, images) -> Dict[str, tf.Tensor]:
        """Each statistic, `[N]` float64, in TensorFlow ops (the Python-only
        codecs' lengths are among the first model's terms)."""
        model_terms = terms[0]
        missing = [s for s in self.statistics
                   if s not in IMAGE_STATISTICS and s not in model_terms]
        if missing:
            raise InputError(f'DensityOfStates: the model has no {missing}; it reports '
                             f'{sorted(model_terms)}, and the image statistics are '
                             f'{sorted(IMAGE_STATISTICS)}.')
        columns = {k: f64(model_terms[k]) for k in self.statistics
                   if k not in IMAGE_STATISTICS}
        if self._image_statistics:
            columns.update({k: f64(v) for k, v in
                            image_statistics(images, self._image_statistics).items()})
        for name, codec in self._codec_statistics.items():
            columns[name] = (png_bits(images, codecs.CODECS[codec])
                             if codec in codecs.GRAPH_CODECS
                             else self.python_column(model_terms, name))
        return columns

    def fit_terms(self, terms, images) -> 'DensityOfStates':
        tensors, images = self.graph_inputs(terms, images)
        with tf_log_without(RETRACING):
            columns = tf.function(self._columns, autograph=False)(tensors, images)
        values = np.stack([columns[s].numpy() for s in self.statistic_names], axis=1)
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
        _check_state(state, len(self.statistic_names))
        parameters = state.get('parameters')
        if parameters is None and self.estimator == 'kde':  # Fits before 'parameters'.
            self.bandwidth = state['bandwidth']
        return self._set_density(state['values'], state['mean'], state['scale'], parameters)

    def _log_density(self, values) -> tf.Tensor:
        """`-score` of the estimator on raw statistics `[N, d]`; `-inf` where one
        is not finite."""
        values = f64(values)
        standardised = (values - self._mean) / self._scale
        finite = tf.reduce_all(tf.math.is_finite(standardised), axis=1)
        safe = tf.where(finite[:, None], standardised, tf.zeros_like(standardised))
        return tf.where(finite, -self._density.score(safe), -np.inf)

    def graph_score(self, terms, images):
        """The estimator's score over the statistics, in float64 ops."""
        self.check_fitted()
        columns = self._columns(terms, images)
        values = tf.stack([columns[k] for k in self.statistic_names], axis=1)
        log_density = self._log_density(values)
        return -log_density, dict(columns, log_density=log_density)

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
        self.check_fitted('ablation')
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


def _check_state(state: Dict, d: int) -> None:
    """A saved fit's values, mean and scale: finite, of `d` statistics."""
    values = np.asarray(state['values'], np.float64)
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
