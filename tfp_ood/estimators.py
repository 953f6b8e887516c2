"""How typical a vector of per-image statistics is: the density of states' estimators.

`tfp_ood.detectors.DensityOfStates` standardises each image's statistics
(with the training mean and deviation) and scores them with one of these.
Every estimator is fitted in NumPy / scikit-learn and **scores in TensorFlow
ops only** (float64), so the Python detector and its exported SavedModel run
one definition:

```none
estimator = ESTIMATORS[name](**options).fit(train)    # train: [n, d] standardised
estimator.score(values)                              # [N] float64 tensor: higher = less typical
estimator.get_state() / ESTIMATORS[name].from_state(state)   # JSON-able
```

| name | score |
|---|---|
| `kde` | `-log q(s)`, Gaussian kernels of Scott's bandwidth `n^(-1/(d+4))` [1] |
| `gaussian` | `-log N(s; mu, Sigma)`, maximum-likelihood covariance (+1e-6 I each) |
| `ledoit_wolf` | the same with the Ledoit-Wolf shrunk covariance [2] |
| `oas` | the same with the oracle approximating shrinkage covariance [3] |
| `gmm` | `-log` of a Gaussian mixture (full covariances) |
| `copod` | COPOD's empirical-copula tail score [4]: the largest of the left-tail, |
|  | right-tail and skewness-corrected sums of `-log` empirical tail probabilities |
| `tippett` | Tippett's combination [5]: `-log` of the smallest empirical tail |
|  | probability of any one statistic (either tail) |

COPOD and the Gaussians add up every statistic's evidence, which suits a
shift that moves many statistics a little; a shift that only one statistic
sees is diluted by the others. Tippett's minimum p-value keeps it: the
score is that statistic's own tail score, less only what testing `d`
statistics at once costs (a threshold about `log d` higher).

#### References

[1] Warren Morningstar et al. Density of States Estimation for
    Out-of-Distribution Detection. AISTATS 2021.
[2] Olivier Ledoit, Michael Wolf. A well-conditioned estimator for
    large-dimensional covariance matrices. J. Multivariate Analysis, 2004.
[3] Yilun Chen et al. Shrinkage Algorithms for MMSE Covariance Estimation.
    IEEE Trans. Signal Processing, 2010.
[4] Zheng Li et al. COPOD: Copula-Based Outlier Detection. ICDM 2020.
    https://arxiv.org/abs/2009.09463
[5] L. H. C. Tippett. The Methods of Statistics. Williams & Norgate, 1931
    (the minimum p-value combination of independent tests).
"""

import abc
import math
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from tfp_ood.errors import InputError

__all__ = ['COPOD', 'ESTIMATORS', 'Estimator', 'Gaussian', 'GaussianMixture', 'KDE',
           'Tippett', 'from_state', 'scott_bandwidth']

_LOG_2PI = math.log(2 * math.pi)


def scott_bandwidth(num_points: int, num_dims: int) -> float:
    """Scott's rule for standardised data, `n ** (-1 / (d + 4))`."""
    return num_points ** (-1. / (num_dims + 4))


def _as_values(train) -> np.ndarray:
    train = np.asarray(train, np.float64)
    if train.ndim != 2 or len(train) < 2 or not np.all(np.isfinite(train)):
        raise InputError(f'An estimator fits on finite statistics [n >= 2, d]; got shape '
                         f'{train.shape}' + ('' if np.all(np.isfinite(train)) else
                                             ' with non-finite values') + '.')
    return train


class Estimator(abc.ABC):
    """A score of standardised statistics: higher = less typical of the training set."""

    name = 'estimator'

    @abc.abstractmethod
    def fit(self, train: np.ndarray) -> 'Estimator':
        """Fits on standardised training statistics `[n, d]`; returns `self`."""

    @abc.abstractmethod
    def score(self, values: tf.Tensor) -> tf.Tensor:
        """`[N]` float64 scores of `[N, d]` standardised statistics, in TensorFlow ops."""

    @abc.abstractmethod
    def get_state(self) -> Dict:
        """What `fit` learned, JSON-able (`from_state` rebuilds the estimator)."""

    @classmethod
    @abc.abstractmethod
    def from_state(cls, state: Dict) -> 'Estimator':
        """The fitted estimator `get_state` described."""

    @staticmethod
    def _values(values) -> tf.Tensor:
        return tf.cast(tf.convert_to_tensor(values), tf.float64)


def _gaussian_log_prob(values: tf.Tensor, loc, scale_tril) -> tf.Tensor:
    """`log N(values; loc, L L^T)` per row, from the Cholesky factor `L`."""
    centred = values - tf.constant(loc, tf.float64)
    tril = tf.constant(scale_tril, tf.float64)
    whitened = tf.linalg.triangular_solve(tril, tf.transpose(centred), lower=True)
    log_det = float(np.sum(np.log(np.diag(scale_tril))))
    return (-0.5 * tf.reduce_sum(tf.square(whitened), axis=0) - log_det
            - 0.5 * len(loc) * _LOG_2PI)


class KDE(Estimator):
    """A Gaussian kernel density estimate (as scikit-learn's `KernelDensity`).

    Args:
      bandwidth: the kernel width in standardised units, or `None` for Scott's
        rule for the training set's size and dimension.
    """

    name = 'kde'

    def __init__(self, bandwidth: Optional[float] = None):
        if bandwidth is not None and not bandwidth > 0:
            raise InputError(f'KDE: bandwidth must be > 0; got {bandwidth}.')
        self.bandwidth = bandwidth
        self.train = None

    def fit(self, train):
        self.train = _as_values(train)
        self.bandwidth = float(self.bandwidth or scott_bandwidth(*self.train.shape))
        return self

    def score(self, values):
        values = self._values(values)
        train = tf.constant(self.train, tf.float64)
        h, (n, d) = self.bandwidth, self.train.shape
        # |v - t|^2 = |v|^2 - 2 v.t + |t|^2: [N, n] without an [N, n, d] tensor.
        squared = (tf.reduce_sum(tf.square(values), axis=1, keepdims=True)
                   - 2. * tf.matmul(values, train, transpose_b=True)
                   + tf.reduce_sum(tf.square(train), axis=1)[None])
        squared = tf.maximum(squared, 0.)
        log_density = (tf.reduce_logsumexp(-0.5 * squared / h ** 2, axis=1) - math.log(n)
                       - 0.5 * d * _LOG_2PI - d * math.log(h))
        return -log_density

    def get_state(self):
        return {'bandwidth': self.bandwidth, 'train': self.train.tolist()}

    @classmethod
    def from_state(cls, state):
        estimator = cls(float(state['bandwidth']))
        estimator.train = _as_values(state['train'])
        return estimator


class Gaussian(Estimator):
    """One Gaussian: `-log N(s; mu, Sigma)`, a Mahalanobis distance plus a constant.

    Args:
      covariance: `'empirical'` (maximum likelihood), `'ledoit_wolf'` or
        `'oas'` (scikit-learn's shrunk estimators, for many or strongly
        correlated statistics); `1e-6` is added to the diagonal of each.
    """

    name = 'gaussian'
    COVARIANCES = ('empirical', 'ledoit_wolf', 'oas')

    def __init__(self, covariance: str = 'empirical'):
        if covariance not in self.COVARIANCES:
            raise InputError(f'Gaussian: covariance must be one of {self.COVARIANCES}; got '
                             f'{covariance!r}.')
        self.covariance = covariance
        self.loc = self.scale_tril = None

    def fit(self, train):
        train = _as_values(train)
        if self.covariance == 'empirical':
            covariance = np.atleast_2d(np.cov(train, rowvar=False, bias=True))
            covariance = covariance + 1e-6 * np.eye(len(covariance))
        else:
            from sklearn.covariance import OAS, LedoitWolf
            covariance = {'ledoit_wolf': LedoitWolf, 'oas': OAS}[self.covariance]().fit(
                train).covariance_ + 1e-6 * np.eye(train.shape[1])
        self.loc = train.mean(axis=0)
        self.scale_tril = np.linalg.cholesky(covariance)
        return self

    def score(self, values):
        return -_gaussian_log_prob(self._values(values), self.loc, self.scale_tril)

    def get_state(self):
        return {'covariance': self.covariance, 'loc': self.loc.tolist(),
                'scale_tril': self.scale_tril.tolist()}

    @classmethod
    def from_state(cls, state):
        estimator = cls(state['covariance'])
        estimator.loc = np.asarray(state['loc'], np.float64)
        estimator.scale_tril = np.asarray(state['scale_tril'], np.float64)
        if estimator.scale_tril.shape != (len(estimator.loc),) * 2:
            raise InputError(f'Gaussian: a scale of shape {estimator.scale_tril.shape} for '
                             f'{len(estimator.loc)} statistics.')
        return estimator


class GaussianMixture(Estimator):
    """A mixture of full-covariance Gaussians (scikit-learn's EM, seeded).

    Args:
      components: the number of components.
      seed: EM's initialisation seed.
    """

    name = 'gmm'

    def __init__(self, components: int = 4, seed: int = 0):
        if components < 1:
            raise InputError(f'GaussianMixture: components must be >= 1; got {components}.')
        self.components, self.seed = int(components), int(seed)
        self.log_weights = self.locs = self.scale_trils = None

    def fit(self, train):
        from sklearn.mixture import GaussianMixture as SkGaussianMixture
        train = _as_values(train)
        mixture = SkGaussianMixture(self.components, covariance_type='full', reg_covar=1e-4,
                                    random_state=self.seed).fit(train)
        self.log_weights = np.log(mixture.weights_)
        self.locs = mixture.means_
        self.scale_trils = np.linalg.cholesky(mixture.covariances_)
        return self

    def score(self, values):
        values = self._values(values)
        per_component = tf.stack([w + _gaussian_log_prob(values, loc, tril) for w, loc, tril
                                  in zip(self.log_weights, self.locs, self.scale_trils)], axis=1)
        return -tf.reduce_logsumexp(per_component, axis=1)

    def get_state(self):
        return {'components': self.components, 'seed': self.seed,
                'log_weights': self.log_weights.tolist(), 'locs': self.locs.tolist(),
                'scale_trils': self.scale_trils.tolist()}

    @classmethod
    def from_state(cls, state):
        estimator = cls(state['components'], state.get('seed', 0))
        estimator.log_weights = np.asarray(state['log_weights'], np.float64)
        estimator.locs = np.asarray(state['locs'], np.float64)
        estimator.scale_trils = np.asarray(state['scale_trils'], np.float64)
        return estimator


def _tail_scores(sorted_train: np.ndarray, values: tf.Tensor):
    """`-log` of each statistic's left and right empirical tail probabilities,
    `(count + 1) / (n + 1)` (never 0), each `[d, N]`."""
    n = len(sorted_train)
    columns = tf.constant(sorted_train.T, tf.float64)  # [d, n], each row sorted.
    queries = tf.transpose(values)                     # [d, N]
    at_or_below = tf.cast(tf.searchsorted(columns, queries, side='right'), tf.float64)
    below = tf.cast(tf.searchsorted(columns, queries, side='left'), tf.float64)
    return (-tf.math.log((at_or_below + 1.) / (n + 1.)),
            -tf.math.log((n - below + 1.) / (n + 1.)))


class COPOD(Estimator):
    """COPOD: how far into the tails of each statistic's empirical distribution an
    image is, summed over statistics as an empirical copula would (Li et al.).

    With `F_j` the empirical CDF of statistic `j` on the training set
    (`(count + 1) / (n + 1)`, so never 0), the left-tail score is
    `sum_j -log F_j(s_j)`, the right-tail score `sum_j -log(1 - F_j(s_j^-))`,
    the skewness-corrected score takes per statistic the tail its training
    skewness points to; the score is the largest of the three. No parameters
    but the sorted training values.
    """

    name = 'copod'

    def __init__(self):
        self.sorted = self.skewness = None

    def fit(self, train):
        train = _as_values(train)
        self.sorted = np.sort(train, axis=0)
        centred = train - train.mean(axis=0)
        std = centred.std(axis=0)
        safe_std = np.where(std > 0, std, 1.)
        self.skewness = np.where(std > 0, (centred ** 3).mean(axis=0) / safe_std ** 3, 0.)
        return self

    def score(self, values):
        left, right = _tail_scores(self.sorted, self._values(values))
        skewed = tf.where(tf.constant(self.skewness < 0)[:, None], left, right)
        return tf.reduce_max(tf.stack([tf.reduce_sum(t, axis=0) for t in (left, right, skewed)]),
                             axis=0)

    def get_state(self):
        return {'sorted': self.sorted.tolist(), 'skewness': self.skewness.tolist()}

    @classmethod
    def from_state(cls, state):
        estimator = cls()
        estimator.sorted = _as_values(state['sorted'])
        estimator.skewness = np.asarray(state['skewness'], np.float64)
        return estimator


class Tippett(Estimator):
    """Tippett's minimum p-value over the statistics: with `F_j` each statistic's
    empirical CDF on the training set (`(count + 1) / (n + 1)`, as COPOD's),
    the score is `max_j max(-log F_j(s_j), -log(1 - F_j(s_j^-)))`, how far into
    either tail the most extreme statistic is. One statistic that alone
    separates a shift keeps its separation whatever else is in the design.
    No parameters but the sorted training values.
    """

    name = 'tippett'

    def __init__(self):
        self.sorted = None

    def fit(self, train):
        self.sorted = np.sort(_as_values(train), axis=0)
        return self

    def score(self, values):
        left, right = _tail_scores(self.sorted, self._values(values))
        return tf.reduce_max(tf.maximum(left, right), axis=0)

    def get_state(self):
        return {'sorted': self.sorted.tolist()}

    @classmethod
    def from_state(cls, state):
        estimator = cls()
        estimator.sorted = _as_values(state['sorted'])
        return estimator


#: Estimator name -> a factory of an unfitted `Estimator`.
ESTIMATORS = {
    'kde': KDE,
    'gaussian': Gaussian,
    'ledoit_wolf': lambda: Gaussian('ledoit_wolf'),
    'oas': lambda: Gaussian('oas'),
    'gmm': GaussianMixture,
    'copod': COPOD,
    'tippett': Tippett,
}
_CLASSES = {'kde': KDE, 'gaussian': Gaussian, 'ledoit_wolf': Gaussian, 'oas': Gaussian,
            'gmm': GaussianMixture, 'copod': COPOD, 'tippett': Tippett}


def from_state(name: str, state: Dict) -> Estimator:
    """The estimator `name` of `ESTIMATORS` that `get_state` described."""
    if name not in _CLASSES:
        raise InputError(f'Unknown estimator {name!r}; expected one of {sorted(ESTIMATORS)}.')
    return _CLASSES[name].from_state(state)
