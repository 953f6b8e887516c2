"""Which statistics a density-of-states detector should use: chosen on validation sets.

Adding a weak statistic to a density of states can lose signal: the estimator
spreads its attention over every direction, so a strong statistic is
diluted by correlated or useless ones (a combination can then score below
its own best part). `select_statistics` chooses greedily instead: starting
from nothing, it adds the candidate statistic that raises the mean
validation score most (by default the mean AUROC; with
`criterion='detection_rate'`, the mean fraction of each validation OOD set
flagged at the threshold that keeps 95% of the held-out in-distribution
images, `1 - FPR at 95% TPR`, the rate a deployed detector delivers)
**without falling below any of its chosen statistics alone on any
validation set** (by more than `rule_tolerance`), and stops
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
selection.detection_rates   # {validation set: fraction flagged at 95% TPR}
selection.best_single       # {validation set: the best AUROC of one chosen statistic alone}
```

Each argument holding statistics is a dict `{statistic: [N] values}`.
"""

import dataclasses
from typing import Dict, List, Mapping, Sequence

import numpy as np

from tfp_ood import estimators
from tfp_ood.errors import InputError
from tfp_ood.metrics import auroc_and_fpr

__all__ = ['CRITERIA', 'Selection', 'best_single_statistics', 'design_metrics',
           'evaluate_design', 'select_statistics', 'validation_aurocs', 'validation_metrics']

#: What a selection maximises, averaged over the validation OOD sets.
CRITERIA = ('auroc', 'detection_rate')
#: Rows an estimator scores per call in `validation_metrics` (a KDE's
#: [rows, training images] float64 matrices: 190 MB for 3,000 training images).
SCORE_ROWS = 8192

Statistics = Mapping[str, np.ndarray]


@dataclasses.dataclass
class Selection:
    """What `select_statistics` chose and how it scored.

    Attributes:
      estimator: the estimator's name (`tfp_ood.estimators.ESTIMATORS`).
      statistics: the chosen statistics, in the order they were added.
      aurocs: `{validation set: AUROC}` of the chosen design.
      mean_auroc: their mean.
      singles: `{statistic: {validation set: AUROC}}` of each candidate alone.
      steps: the criterion's mean after each addition.
      detection_rates: `{validation set: the fraction of it flagged at the
        threshold that keeps 95% of the held-out in-distribution images}`.
      mean_detection_rate: their mean.
      criterion: what the selection maximised, one of `CRITERIA`.
    """

    estimator: str
    statistics: List[str]
    aurocs: Dict[str, float]
    mean_auroc: float
    singles: Dict[str, Dict[str, float]]
    steps: List[float]
    detection_rates: Dict[str, float] = dataclasses.field(default_factory=dict)
    mean_detection_rate: float = float('nan')
    criterion: str = 'auroc'

    @property
    def score(self) -> float:
        """The mean of the criterion the selection maximised."""
        return self.mean_auroc if self.criterion == 'auroc' else self.mean_detection_rate

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
    metrics = validation_metrics(estimator, train, held_out, shifted)
    return {k: v['auroc'] for k, v in metrics.items()}


def validation_metrics(estimator: str, train: np.ndarray, held_out: np.ndarray,
                       shifted: Mapping[str, np.ndarray]) -> Dict[str, Dict[str, float]]:
    """`{validation set: {'auroc': ..., 'detection_rate': ...}}` of `estimator`
    fitted on `train` `[n, d]` (standardised here); the detection rate is the
    fraction of the set scored above the 95th percentile of `held_out`'s
    scores, `1 - FPR at 95% TPR` (`tfp_ood.metrics.auroc_and_fpr`)."""
    finite = np.all(np.isfinite(train), axis=1)
    train = train[finite]
    mean = train.mean(axis=0)
    scale = np.where(train.std(axis=0) > 0, train.std(axis=0), 1.)
    density = estimators.ESTIMATORS[estimator]().fit((train - mean) / scale)

    # Every set scored together (an estimator scores each row on its own), so
    # the greedy search's thousands of evaluations do not pay TensorFlow's
    # per-call cost once per set; in blocks of SCORE_ROWS rows, which bound a
    # KDE's [rows, training images] matrices.
    sets = [held_out, *shifted.values()]
    standardised = (np.concatenate(sets, axis=0) - mean) / scale
    ok = np.all(np.isfinite(standardised), axis=1)
    scores = np.full(len(standardised), np.inf)
    if ok.any():
        rows = standardised[ok]
        scores[ok] = np.concatenate([density.score(rows[i:i + SCORE_ROWS]).numpy()
                                     for i in range(0, len(rows), SCORE_ROWS)])
    in_scores, *shifted_scores = np.split(scores, np.cumsum([len(v) for v in sets])[:-1])
    out = {}
    for k, shifted_score in zip(shifted, shifted_scores):
        metrics = auroc_and_fpr(in_scores, shifted_score, nonfinite='most_ood')
        out[k] = {'auroc': metrics['auroc'], 'detection_rate': 1. - metrics['fpr_at_95_tpr']}
    return out


def _selection(estimator, names, metrics, singles, steps, criterion) -> Selection:
    aurocs = {k: v['auroc'] for k, v in metrics.items()}
    rates = {k: v['detection_rate'] for k, v in metrics.items()}
    return Selection(estimator, list(names), aurocs, float(np.mean(list(aurocs.values()))),
                     singles, steps, rates, float(np.mean(list(rates.values()))), criterion)


def select_statistics(train: Statistics, held_out: Statistics,
                      shifted: Mapping[str, Statistics], candidates: Sequence[str],
                      estimator: str = 'ledoit_wolf', max_statistics: int = 12,
                      tolerance: float = 1e-4, rule_tolerance: float = 0.,
                      criterion: str = 'auroc') -> Selection:
    """Greedy forward selection of statistics on the mean of a validation criterion.

    Args:
      train: the statistics of the images the detector fits on.
      held_out: those of held-out in-distribution validation images.
      shifted: `{validation set: statistics}` of the validation OOD sets.
      candidates: the statistics to choose among (keys of every dict above).
      estimator: a name of `tfp_ood.estimators.ESTIMATORS`.
      max_statistics: at most this many are chosen.
      tolerance: an addition must raise the criterion's mean by more than this.
      rule_tolerance: how far below one of its chosen statistics alone the
        design may fall on a validation set, in AUROC (`np.inf`: no rule).
      criterion: what to maximise, one of `CRITERIA`: the mean AUROC, or the
        mean fraction flagged at 95% TPR (`'detection_rate'`).

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
    if criterion not in CRITERIA:
        raise InputError(f'Unknown criterion {criterion!r}; expected one of {CRITERIA}.')
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
        return validation_metrics(estimator, matrices['train'][:, columns],
                                  matrices['held_out'][:, columns],
                                  {k: v[:, columns] for k, v in shifted_matrices.items()})

    single_metrics = {name: evaluate([i]) for i, name in enumerate(candidates)}
    singles = {name: {k: v['auroc'] for k, v in m.items()}
               for name, m in single_metrics.items()}

    def keeps_the_rule(columns, result):
        return all(v['auroc'] >= max(singles[candidates[c]][k] for c in columns) - rule_tolerance
                   for k, v in result.items())

    def mean(result):
        return float(np.mean([v[criterion] for v in result.values()]))

    chosen, metrics, steps, best = [], {}, [], -np.inf
    while len(chosen) < max_statistics:
        trials = [(mean(r), i, r) for i, r in (
            (i, single_metrics[candidates[i]] if not chosen else evaluate(chosen + [i]))
            for i in range(len(candidates)) if i not in chosen)
            if keeps_the_rule(chosen + [i], r)]
        if not trials:
            break
        value, i, result = max(trials, key=lambda t: t[0])
        if value <= best + tolerance:
            break
        chosen.append(i)
        metrics, best = result, value
        steps.append(value)
    if not chosen:
        return Selection(estimator, [], {}, -np.inf, singles, [], {}, -np.inf, criterion)
    return _selection(estimator, [candidates[i] for i in chosen], metrics, singles, steps,
                      criterion)


def design_metrics(train: Statistics, held_out: Statistics, shifted: Mapping[str, Statistics],
                   statistics: Sequence[str], estimator: str) -> Dict[str, Dict[str, float]]:
    """`validation_metrics` of one design (the columns `statistics` of each
    set, under `estimator`), without scoring each statistic alone."""
    return validation_metrics(estimator, _matrix(train, statistics),
                              _matrix(held_out, statistics),
                              {k: _matrix(v, statistics) for k, v in shifted.items()})


def evaluate_design(train: Statistics, held_out: Statistics, shifted: Mapping[str, Statistics],
                    statistics: Sequence[str], estimator: str,
                    criterion: str = 'auroc') -> Selection:
    """A given design (statistics and estimator) scored as `select_statistics`
    scores its choice: validation AUROCs and detection rates, their means, and
    each statistic alone."""
    if criterion not in CRITERIA:
        raise InputError(f'Unknown criterion {criterion!r}; expected one of {CRITERIA}.')

    def metrics(names):
        return design_metrics(train, held_out, shifted, names, estimator)

    singles = {name: {k: v['auroc'] for k, v in metrics([name]).items()}
               for name in statistics}
    return _selection(estimator, statistics, metrics(list(statistics)), singles, [], criterion)


def best_single_statistics(train: Statistics, held_out: Statistics,
                           shifted: Mapping[str, Statistics], candidates: Sequence[str],
                           estimator: str = 'gaussian') -> Dict[str, tuple]:
    """`{validation set: (AUROC, statistic)}`: the candidate that separates each set
    best on its own, and how well.

    A set on which no statistic alone does much better than chance cannot rank
    designs: there the differences between designs are of the size of the
    change between two halves of the same set.
    """
    best = {k: (-np.inf, None) for k in shifted}
    for name in candidates:
        if not np.nanstd(np.asarray(train[name], np.float64)) > 0:
            continue
        aurocs = validation_aurocs(estimator, _matrix(train, [name]), _matrix(held_out, [name]),
                                   {k: _matrix(v, [name]) for k, v in shifted.items()})
        for k, v in aurocs.items():
            if v > best[k][0]:
                best[k] = (v, name)
    return best
