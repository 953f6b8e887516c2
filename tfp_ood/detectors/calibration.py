"""A detector's decision threshold, set on held-out in-distribution images."""

import dataclasses
import math
from typing import Dict, List

import numpy as np

from tfp_ood.detectors.base import DetectorScores
from tfp_ood.errors import InputError

__all__ = ['Calibration', 'calibrate', 'minimum_validation_images']


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
