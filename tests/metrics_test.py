"""Tests of the OOD detection metrics against hand computations.

The scores are OOD scores: higher = more out-of-distribution.
"""

import numpy as np
import tensorflow as tf

from tfp_ood.metrics import auroc_and_fpr, ood_metrics


class MetricsTest(tf.test.TestCase):

    def test_hand_computed_case(self):
        # In: 3, 4, 5; out: 1, 2, 3.5 (as OOD scores: in lower). Of the 9 (in, out)
        # pairs, in scores lower in 8 and higher (-3 > -3.5) in 1: AUROC = 8/9.
        metrics = ood_metrics([-3., -4., -5.], [-1., -2., -3.5])
        self.assertAlmostEqual(metrics['auroc'], 8 / 9)
        # Keeping 95% of in-distribution needs the threshold at -3: out -3.5 passes.
        self.assertAlmostEqual(metrics['fpr_at_95_tpr'], 1 / 3)
        # In as positive, ranked by -score (desc): 5 in, 4 in, 3.5 out, 3 in, ...
        # AP_in = (1 + 1 + 3/4) / 3.
        self.assertAlmostEqual(metrics['aupr_in'], (1 + 1 + 0.75) / 3)
        # Out as positive, ranked by score: -1 out, -2 out, -3 in, -3.5 out: (1 + 1 + 3/4) / 3.
        self.assertAlmostEqual(metrics['aupr_out'], (1 + 1 + 0.75) / 3)

    def test_ties_and_reversed(self):
        self.assertAlmostEqual(ood_metrics([1., 1.], [1., 1.])['auroc'], 0.5)
        self.assertAlmostEqual(ood_metrics([2., 3.], [0., 1.])['auroc'], 0.)
        self.assertAlmostEqual(ood_metrics([0., 1.], [2., 3.])['auroc'], 1.)
        self.assertAlmostEqual(ood_metrics([0., 1.], [2., 3.])['fpr_at_95_tpr'], 0.)

    def test_most_ood_policy_ranks_nonfinite_as_most_out_of_distribution(self):
        metrics = ood_metrics([1., 2.], [np.inf, np.nan, 3.], nonfinite='most_ood')
        self.assertAlmostEqual(metrics['auroc'], 1.)
        self.assertEqual(metrics['num_nonfinite_out'], 2)
        # -inf (a log-likelihood of +inf negated) is not finite either: most OOD.
        metrics = ood_metrics([-np.inf, 1.], [2., 3.], nonfinite='most_ood')
        self.assertAlmostEqual(metrics['auroc'], 0.5)
        with self.assertRaisesRegex(ValueError, 'nonfinite must be one of'):
            ood_metrics([1.], [0.], nonfinite='drop')
        with self.assertRaisesRegex(ValueError, 'no scores'):
            ood_metrics([], [0.])

    def test_the_fast_pair_equals_scikit_learns(self):
        # Sets of 1-60 scores, half of them small integers (ties within and
        # across the sets), a third with NaN and infinite scores.
        rng = np.random.default_rng(0)
        for trial in range(600):
            n_in, n_out = rng.integers(1, 60, 2)
            if trial % 2:
                s_in = rng.integers(0, 8, n_in).astype(float)
                s_out = rng.integers(0, 8, n_out) + float(rng.integers(0, 2))
            else:
                s_in, s_out = rng.normal(size=n_in), rng.normal(0.5, size=n_out)
            if trial % 3 == 0:
                s_in[rng.random(n_in) < 0.1] = np.nan
                s_out[rng.random(n_out) < 0.1] = -np.inf
            full = ood_metrics(s_in, s_out, nonfinite='most_ood')
            fast = auroc_and_fpr(s_in, s_out, nonfinite='most_ood')
            self.assertEqual(set(fast), {'auroc', 'fpr_at_95_tpr'})
            for k, v in fast.items():
                self.assertAlmostEqual(v, full[k], places=12, msg=(trial, k))
        self.assertAlmostEqual(auroc_and_fpr([-3., -4., -5.], [-1., -2., -3.5])['auroc'], 8 / 9)
        with self.assertRaisesRegex(ValueError, 'not finite'):
            auroc_and_fpr([np.nan], [0.])
        with self.assertRaisesRegex(ValueError, 'nonfinite must be one of'):
            auroc_and_fpr([1.], [0.], nonfinite='drop')


if __name__ == '__main__':
    tf.test.main()
