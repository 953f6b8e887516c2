"""The baseline: the model's bits/dim as the OOD score (Nalisnick et al., 2019)."""

from tfp_ood.detectors.base import Detector, f64
from tfp_ood.models.base import DensityModel
from tfp_ood.terms import BITS_PER_DIM, LOG_PROB

__all__ = ['RawLikelihood']


class RawLikelihood(Detector):
    """Bits/dim under one model, `-log p(x) / (D ln 2)`: higher = less likely
    = more out-of-distribution. The paper's finding is that this fails: a
    CIFAR-10 model gives SVHN fewer bits/dim than its own test images.

    Args:
      model: the density model.
    """

    name = 'raw_likelihood'

    def __init__(self, model: DensityModel):
        self.models = (model,)

    def graph_score(self, terms, images):
        return f64(terms[0][BITS_PER_DIM]), {LOG_PROB: f64(terms[0][LOG_PROB])}
