"""The term names, defined once in tfp_ood.terms, are the keys the models return."""

import numpy as np

from tfp_ood import models, terms


def test_names_of_levels_and_steps():
    assert terms.level_term(0, terms.LOG_PZ) == 'level0_log_pz'
    assert terms.step_term(1, 3, terms.LOG_DET) == 'level1_step3_log_det'
    assert terms.is_level_term('level12_latent_mean_square')
    assert not any(terms.is_level_term(name) for name in
                   (terms.LOG_PROB, terms.LOG_PZ, terms.LOG_DET, 'levels', 'level_log_pz'))


def test_a_flows_terms_and_statistics_are_named_by_the_module():
    flow = models.named_model('glow', 'tiny', (8, 8, 1))
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    flow.initialize(images)
    returned = flow.log_prob_terms(images)
    assert set(returned) == {terms.LOG_PROB, *flow.term_names}
    assert flow.term_names == (terms.LOG_PZ, terms.LOG_DET, terms.DEQUANT_CONST,
                               'level0_log_pz', 'level0_log_det',
                               'level1_log_pz', 'level1_log_det')
    np.testing.assert_allclose(
        returned[terms.LOG_PROB],
        returned[terms.LOG_PZ] + returned[terms.LOG_DET] + returned[terms.DEQUANT_CONST],
        rtol=1e-6)
    assert all(terms.is_level_term(name) for name in flow.statistic_names)
    pixelcnn = models.named_model('pixelcnn', 'tiny', (8, 8, 1))
    assert set(pixelcnn.log_prob_terms(images)) == {terms.LOG_PROB}
