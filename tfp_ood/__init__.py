"""tfp_ood: do deep generative models know what they don't know?

Glow, CV-Glow and friends on TensorFlow Probability, with one evaluator that
turns any model and dataset into per-image log-likelihoods, bits/dim and (for
flows) the distribution and volume terms.

Importing the package imports TensorFlow without its CUDA and CPU-feature
start-up notices (see `tfp_ood._startup`; `TF_CPP_MIN_LOG_LEVEL=0` keeps them).
"""

from tfp_ood import _startup

_startup.import_tensorflow()

# The rest after TensorFlow's quiet import.
from tfp_ood import analysis, bijectors, data, evaluate, metrics, models, plotting  # noqa: E402
from tfp_ood.config import GlowConfig  # noqa: E402
from tfp_ood.evaluate import ScoreResult, score  # noqa: E402
from tfp_ood.metrics import ood_metrics  # noqa: E402
from tfp_ood.models import DensityModel, FlowModel  # noqa: E402

__version__ = '0.1.0'

__all__ = [
    'DensityModel', 'FlowModel', 'GlowConfig', 'ScoreResult', 'analysis', 'bijectors', 'data',
    'evaluate', 'metrics', 'models', 'ood_metrics', 'plotting', 'score',
]
