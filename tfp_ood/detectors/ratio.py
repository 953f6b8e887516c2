"""Ren et al.'s likelihood ratio against a background model.

#### References

[1] Jie Ren et al. Likelihood Ratios for Out-of-Distribution Detection.
    NeurIPS 2019. https://arxiv.org/abs/1906.02845
"""

from tfp_ood.detectors.base import LN2, Detector, check_same_shape, f64, num_dims
from tfp_ood.models.base import DensityModel
from tfp_ood.terms import LOG_PROB

__all__ = ['LikelihoodRatio']


class LikelihoodRatio(Detector):
    """`ood_score = -(log p_fg(x) - log p_bg(x)) / (D ln 2)`, in bits/dim.

    The background model is the same family trained on perturbed training
    images (`tfp-ood train --mutation-rate MU --weight-decay LAMBDA`), so it
    learns the population-level statistics (smoothness, background) that
    dominate `log p_fg` and cancel in the ratio.

    Args:
      foreground: the model trained on the in-distribution data.
      background: the background model.
    """

    name = 'likelihood_ratio'

    def __init__(self, foreground: DensityModel, background: DensityModel):
        check_same_shape([foreground, background], 'LikelihoodRatio')
        self.models = (foreground, background)

    def graph_score(self, terms, images):
        fg, bg = f64(terms[0][LOG_PROB]), f64(terms[1][LOG_PROB])
        log_ratio = fg - bg
        return (-log_ratio / (num_dims(self.models[0]) * LN2),
                {LOG_PROB: fg, 'background_log_prob': bg, 'log_ratio': log_ratio})
