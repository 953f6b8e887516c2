"""Choi et al.'s WAIC over an ensemble of density models.

#### References

[1] Hyunsun Choi, Eric Jang, Alexander Alemi. WAIC, but Why? Generative
    Ensembles for Robust Anomaly Detection. arXiv 1810.01392, 2018.
"""

from typing import Sequence

import tensorflow as tf

from tfp_ood.analysis import waic_of
from tfp_ood.detectors.base import LN2, Detector, check_same_shape, f64, num_dims
from tfp_ood.errors import InputError
from tfp_ood.models.base import DensityModel
from tfp_ood.terms import LOG_PROB

__all__ = ['WAIC']


class WAIC(Detector):
    """`ood_score = -(mean_k log p_k(x) - var_k log p_k(x)) / (D ln 2)`, the
    WAIC of `tfp_ood.analysis.waic` in bits/dim, negated.

    Args:
      members: two or more models of the same image shape.
    """

    name = 'waic'

    def __init__(self, members: Sequence[DensityModel]):
        if len(members) < 2:
            raise InputError(f'WAIC needs at least two ensemble members; got {len(members)}.')
        check_same_shape(members, 'WAIC')
        self.models = tuple(members)

    def graph_score(self, terms, images):
        log_probs = [f64(t[LOG_PROB]) for t in terms]
        values = waic_of(tf.stack(log_probs))
        components = {f'log_prob_{k}': lp for k, lp in enumerate(log_probs)}
        components['waic'] = values
        return -values / (num_dims(self.models[0]) * LN2), components
