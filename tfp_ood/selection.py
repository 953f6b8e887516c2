"""Which statistics a density-of-states detector should use: chosen on validation sets.

Adding a weak statistic to a density of states can lose signal: the estimator
spreads its attention over every direction, so a strong statistic is
diluted by correlated or useless ones (a combination can then score below
its own best part). `select_statistics` chooses greedily instead: starting
from nothing, it adds the candidate statistic that raises the mean
validation AUROC most **without falling below any of its chosen statistics
alone on any validation set** (by more than `rule_tolerance`), and stops
when no such candidate raises the mean by more than `tolerance`. So the
design it returns is at least as good as its best single statistic on every
validation set. Validation sets are in-distribution images held out of the fit
and OOD sets that are **not** the test pairs (`tfp_ood.shifts`, uniform
noise, another dataset resized).

```python
selection = select_statistics(train, held_out, {'blur': blurred, ...},
                              candidates=sorted(train), estimator='ledoit_wolf')
selection.statistics        # the chosen statistics, in the order they were added
selection.aurocs            # {validation set: AUROC}
selection.best_single       # {validation set: the best AUROC of one chosen statistic alone}
```

Each argument holding statistics is a dict `{statistic: [N] values}`.
"""

import dataclasses
from typing import Dict, List, Mapping, Sequence

import numpy as np

from tfp_ood import estimators
from tfp_ood.errors import InputError
from tfp_ood.metrics import ood_metrics

__all__ = ['Selection', 'evaluate_design', 'select_statistics', 'validation_aurocs']

Statistics = Mapping[str, np.ndarray]


@dataclasses.dataclass
class Selection:
    """What `select_statistics` chose and how it scored.

    Attributes:
      estimator: the estimator's name (`tfp_ood.estimators.ESTIMATORS`).
      statistics: the chosen statistics, in the order they were added.
      aurocs: `{validation set: AUROC}` of the chosen design.
      mean_auroc: their mean, the quantity the selection maximised.
      singles: `{statistic: {validation set: AUROC}}` of each candidate alone.
      steps: the mean validation AUROC after each addition.
    """

    estimator: str
    statistics: List[str]
    aurocs: Dict[str, float]
    mean_auroc: float
    singles: Dict[str, Dict[str, float]]
    steps: List[float]

    @property
    def best_single(self) -> Dict[str, float]:
        """Per validation set, the best AUROC of one chosen statistic alone."""
        return {k: max(self.singles[s][k] for s in self.statistics) for k in self.aurocs}

    @property
    def loses_to_a_part(self) -> Dict[str, float]:
        """`{validation set: shortfall}` where the design scores below its best
        single statistic (empty: the rule holds on every set)."""
        return {k: self.best_single[k] - v for k, v in self.aurocs.items()
                if v < self.best_single[k]}

    def to_dict(self) -> Dict:
        return dict(dataclasses.asdict(self), best_single=self.best_single,
                    loses_to_a_part=self.loses_to_a_part)


def _matrix(statistics: Statistics, names: Sequence[str]) -> np.ndarray:
    return np.stack([np.asarray(statistics[k], np.float64) for k in names], axis=1)


def validation_aurocs(estimator: str, train: np.ndarray, held_out: np.ndarray,
                      shifted: Mapping[str, np.ndarray]) -> Dict[str, float]:
    """AUROC of `estimator` fitted on `train` `[n, d]` (standardised here) in
    separating `held_out` from each of `shifted` (rows with a non-finite
    statistic rank as the most out-of-distribution)."""
    finite = np.all(np.isfinite(train), axis=1)
    train = train[finite]
    mean = train.mean(axis=0)
    scale = np.where(train.std(axis=0) > 0, train.std(axis=0), 1.)
    density = estimators.ESTIMATORS[estimator]().fit((train - mean) / scale)

    def score(values):
        standardised = (values - mean) / scale
        ok = np.all(np.isfinite(standardised), axis=1)
        out = np.full(len(values), np.inf)
        if ok.any():
            out[ok] = density.score(standardised[ok]).numpy()
        return out

    in_scores = score(held_out)
    return {k: ood_metrics(in_scores, score(v), nonfinite='most_ood')['auroc']
            for k, v in shifted.items()}


def select_statistics(train: Statistics, held_out: Statistics,
                      shifted: Mapping[str, Statistics], candidates: Sequence[str],
                      estimator: str = 'ledoit_wolf', max_statistics: int = 12,
                      tolerance: float = 1e-4, rule_tolerance: float = 0.) -> Selection:
    """Greedy forward selection of statistics on the mean validation AUROC.

    Args:
      train: the statistics of the images the detector fits on.
      held_out: those of held-out in-distribution validation images.
      shifted: `{validation set: statistics}` of the validation OOD sets.
      candidates: the statistics to choose among (keys of every dict above).
      estimator: a name of `tfp_ood.estimators.ESTIMATORS`.
      max_statistics: at most this many are chosen.
      tolerance: an addition must raise the mean AUROC by more than this.
      rule_tolerance: how far below one of its chosen statistics alone the
        design may fall on a validation set (`np.inf`: no rule).

    Returns:
      A `Selection`.

    Raises:
      ValueError: no candidates, no validation OOD sets, or a candidate
        missing from one of the sets.
    """
    if not candidates:
        raise InputError('select_statistics: no candidate statistics.')
    if not shifted:
        raise InputError('select_statistics: no validation OOD sets.')
    if estimator not in estimators.ESTIMATORS:
        raise InputError(f'Unknown estimator {estimator!r}; expected one of '
                         f'{sorted(estimators.ESTIMATORS)}.')
    for what, statistics in [('train', train), ('held_out', held_out), *shifted.items()]:
        missing = sorted(set(candidates) - set(statistics))
        if missing:
            raise InputError(f'select_statistics: {what} has no {missing}.')
    # A statistic that is the same for every training image cannot help.
    candidates = [k for k in dict.fromkeys(candidates)
                  if np.nanstd(np.asarray(train[k], np.float64)) > 0]
    if not candidates:
        raise InputError('select_statistics: every candidate is constant on the training set.')
    matrices = {'train': _matrix(train, candidates), 'held_out': _matrix(held_out, candidates)}
    shifted_matrices = {k: _matrix(v, candidates) for k, v in shifted.items()}

    def evaluate(columns):
        return validation_aurocs(estimator, matrices['train'][:, columns],
                                 matrices['held_out'][:, columns],
                                 {k: v[:, columns] for k, v in shifted_matrices.items()})

    singles = {name: evaluate([i]) for i, name in enumerate(candidates)}

    def keeps_the_rule(columns, result):
        return all(v >= max(singles[candidates[c]][k] for c in columns) - rule_tolerance
                   for k, v in result.items())

    chosen, aurocs, steps, best = [], {}, [], -np.inf
    while len(chosen) < max_statistics:
        trials = [(float(np.mean(list(r.values()))), i, r) for i, r in (
            (i, singles[candidates[i]] if not chosen else evaluate(chosen + [i]))
            for i in range(len(candidates)) if i not in chosen)
            if keeps_the_rule(chosen + [i], r)]
        if not trials:
            break
        mean, i, result = max(trials, key=lambda t: t[0])
        if mean <= best + tolerance:
            break
        chosen.append(i)
        aurocs, best = result, mean
        steps.append(mean)
    return Selection(estimator, [candidates[i] for i in chosen], aurocs, best, singles, steps)


def evaluate_design(train: Statistics, held_out: Statistics, shifted: Mapping[str, Statistics],
                    statistics: Sequence[str], estimator: str) -> Selection:
    """A given design (statistics and estimator) scored as `select_statistics`
    scores its choice: validation AUROCs, their mean, and each statistic alone."""
    def aurocs(names):
        return validation_aurocs(estimator, _matrix(train, names), _matrix(held_out, names),
                                 {k: _matrix(v, names) for k, v in shifted.items()})

    result = aurocs(list(statistics))
    return Selection(estimator, list(statistics), result, float(np.mean(list(result.values()))),
                     {name: aurocs([name]) for name in statistics}, [])
