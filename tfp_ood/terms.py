"""The names of the per-image scores a model returns, defined once.

Every model's `log_prob_terms` returns `LOG_PROB` (log p(x) in nats); the
evaluator adds `BITS_PER_DIM`. A flow also returns its distribution term
`LOG_PZ` and volume term `LOG_DET` (with `DEQUANT_CONST`, the dequantization
constant, `LOG_PROB = LOG_PZ + LOG_DET + DEQUANT_CONST`), the same two terms
per level (`level_term(i, LOG_PZ)`, `'level0_log_pz'`), and with
`statistics=True` per-step statistics (`step_term(i, j, 'log_det')`,
`'level0_step3_log_det'`). Imports no TensorFlow.
"""

import re

__all__ = ['BITS_PER_DIM', 'DEQUANT_CONST', 'FLOW_TERMS', 'LOG_DET', 'LOG_PROB', 'LOG_PZ',
           'is_level_term', 'level_term', 'step_term']

LOG_PROB = 'log_prob'
BITS_PER_DIM = 'bits_per_dim'
LOG_PZ = 'log_pz'
LOG_DET = 'log_det'
DEQUANT_CONST = 'dequant_const'
#: A flow's two terms: the distribution term and the volume term.
FLOW_TERMS = (LOG_PZ, LOG_DET)

_LEVEL = re.compile(r'^level\d+_')


def level_term(level: int, name: str) -> str:
    """The name of level `level`'s `name` term or statistic, e.g. `'level0_log_pz'`."""
    return f'level{level}_{name}'


def step_term(level: int, step: int, name: str) -> str:
    """The name of a statistic of step `step` of level `level`, e.g.
    `'level0_step3_log_det'`."""
    return level_term(level, f'step{step}_{name}')


def is_level_term(name: str) -> bool:
    """Whether `name` is a per-level term or statistic (`level_term`, `step_term`)."""
    return bool(_LEVEL.match(name))
