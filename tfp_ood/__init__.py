"""tfp_ood: do deep generative models know what they don't know?

Glow, CV-Glow and friends on TensorFlow Probability, with one evaluator that
turns any model and dataset into per-image log-likelihoods, bits/dim and (for
flows) the distribution and volume terms.

One sign convention holds everywhere: an OOD score (a detector's
`ood_score`, what `tfp_ood.ood_metrics` ranks, bits/dim) is higher for an
input that looks more out-of-distribution; log-likelihoods and WAIC keep
their usual sense (higher = more likely), so they enter `ood_metrics`
negated. AUROC takes the in-distribution set as the positive class: below 0.5
means the model prefers the out-of-distribution data.

Importing the package does not import TensorFlow (the command line answers
`--help` at once); its modules and names load on first use, e.g.
`tfp_ood.score` or `from tfp_ood import export`. TensorFlow is then imported
without its CUDA and CPU-feature start-up notices and with its oneDNN kernels
on (see `tfp_ood._startup`; `TF_CPP_MIN_LOG_LEVEL=0` keeps the notices,
`TF_ENABLE_ONEDNN_OPTS=0` turns oneDNN off).
"""

import importlib

from tfp_ood import _startup

_startup.install()

__version__ = '0.1.0'

# The public names, by the module that defines them (imported on first use).
_NAMES = {
    'GlowConfig': 'tfp_ood.config', 'ScoreResult': 'tfp_ood.evaluate',
    'score': 'tfp_ood.evaluate', 'ood_metrics': 'tfp_ood.metrics',
    'DensityModel': 'tfp_ood.models', 'FlowModel': 'tfp_ood.models',
}
_MODULES = ('analysis', 'bijectors', 'data', 'evaluate', 'metrics', 'models', 'plotting')

__all__ = sorted(list(_NAMES) + list(_MODULES))


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    else:  # A module of the package, e.g. tfp_ood.export.
        try:
            value = importlib.import_module(f'{__name__}.{name}')
        except ModuleNotFoundError as e:
            if e.name != f'{__name__}.{name}':
                raise
            raise AttributeError(f'module {__name__!r} has no attribute {name!r}') from None
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
