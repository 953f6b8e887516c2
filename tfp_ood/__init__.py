"""tfp_ood: do deep generative models know what they don't know?

Glow, CV-Glow and friends on TensorFlow Probability, with one evaluator that
turns any model and dataset into per-image log-likelihoods, bits/dim and (for
flows) the distribution and volume terms.
"""

from tfp_ood import analysis, bijectors, data, evaluate, metrics, models, plotting
from tfp_ood.config import GlowConfig
from tfp_ood.evaluate import ScoreResult, score
from tfp_ood.metrics import ood_metrics
from tfp_ood.models import DensityModel, FlowModel

__version__ = '0.1.0'

__all__ = [
    'DensityModel', 'FlowModel', 'GlowConfig', 'ScoreResult', 'analysis', 'bijectors', 'data',
    'evaluate', 'metrics', 'models', 'ood_metrics', 'plotting', 'score',
]
