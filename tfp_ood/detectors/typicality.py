"""Nalisnick et al.'s typicality test.

#### References

[1] Eric Nalisnick et al. Detecting Out-of-Distribution Inputs to Deep
    Generative Models Using Typicality. arXiv 1906.02994, 2019.
"""

from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from tfp_ood.detectors.base import Detector, Images, as_array, evaluator_terms, f64
from tfp_ood.errors import InputError
from tfp_ood.models.base import DensityModel
from tfp_ood.terms import BITS_PER_DIM, LOG_PROB

__all__ = ['Typicality']


class Typicality(Detector):
    """The typicality test on batches of `M` images: `|mean_m bpd(x_m) - H|`.

    `fit(train_images)` estimates the model's entropy `H` as the mean
    bits/dim of in-distribution training images; a batch of `M` consecutive
    images scores `|mean_m bpd(x_m) - H|`: far from `H` in either direction
    is atypical (SVHN under a CIFAR-10 model is too likely, random images too
    unlikely). `bootstrap_threshold(validation_images)` sets `threshold`: the
    `1 - false_alarm_rate` quantile of the statistic over `num_bootstrap`
    batches of `M` drawn with replacement from held-out images.

    Args:
      model: the density model.
      batch_size: `M`, images per test (only `M = 1` exports).
      false_alarm_rate: the fraction of in-distribution batches the threshold
        flags.
      num_bootstrap: bootstrap batches for the threshold.
      seed: seed of the bootstrap.
    """

    name = 'typicality'
    needs_fit = True

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

    @property
    def is_fitted(self) -> bool:
        return self.entropy is not None

    def fit_terms(self, terms, images=None) -> 'Typicality':
        bpd = _finite_bits_per_dim(terms[0], 'Typicality training images')
        self.entropy = float(np.mean(bpd))
        return self

    def bootstrap_threshold(self, validation_images: Images) -> float:
        """Sets and returns `threshold` from held-out in-distribution images."""
        self.check_fitted('bootstrap_threshold')
        images = as_array(validation_images, self.models[0].image_shape,
                          'Typicality validation images')
        terms = evaluator_terms(self.models[0], images, 'Typicality validation images')
        bpd = _finite_bits_per_dim(terms, 'Typicality validation images')
        draws = np.random.default_rng(self.seed).integers(
            0, len(bpd), size=(self.num_bootstrap, self.batch_size))
        statistic = self.graph_score([{BITS_PER_DIM: tf.constant(bpd[draws].ravel())}],
                                     None)[0].numpy()
        self.threshold = float(np.quantile(statistic, 1. - self.false_alarm_rate))
        return self.threshold

    def get_state(self) -> Dict:
        return {'entropy': self.entropy, 'threshold': self.threshold}

    def set_state(self, state: Dict) -> 'Typicality':
        self.entropy, self.threshold = state['entropy'], state.get('threshold')
        return self

    def score_terms(self, terms, images=None):
        num_images = len(np.atleast_1d(terms[0][BITS_PER_DIM]))
        if num_images < self.batch_size:
            raise InputError(f'Typicality: {num_images} images are fewer than one batch of '
                             f'M = {self.batch_size}.')
        return super().score_terms(terms, images)

    def graph_score(self, terms, images):
        """`|mean bpd - H|` of consecutive, non-overlapping batches of `M` images
        (a last, incomplete batch is left out)."""
        self.check_fitted()
        bpd = f64(terms[0][BITS_PER_DIM])
        if self.batch_size > 1:
            num_batches = tf.shape(bpd)[0] // self.batch_size
            bpd = tf.reduce_mean(tf.reshape(bpd[:num_batches * self.batch_size],
                                            [num_batches, self.batch_size]), axis=1)
        components = {LOG_PROB: f64(terms[0][LOG_PROB])} if LOG_PROB in terms[0] else {}
        return tf.abs(bpd - self.entropy), components


def _finite_bits_per_dim(terms, what: str) -> np.ndarray:
    bpd = np.asarray(terms[BITS_PER_DIM], np.float64)
    if bpd.size == 0 or not np.all(np.isfinite(bpd)):
        raise InputError(f'{what}: {int(np.sum(~np.isfinite(bpd)))} of {bpd.size} images '
                         f'have a non-finite likelihood; the typicality test needs finite '
                         f'ones, and at least one image.')
    return bpd
