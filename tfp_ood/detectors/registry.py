"""The detectors by name: what `tfp-ood fit-detector --detector NAME` builds.

`DETECTORS` maps each name of `tfp_ood.config.DETECTOR_NAMES` to a factory
`(model, background=None, design=None, compressor=None) -> Detector`, as
`tfp_ood.config.MODELS` maps model families to their specifications.
"""

from typing import Callable, Dict, Optional

from tfp_ood.config import DETECTOR_NAMES, SELECTED
from tfp_ood.detectors import codecs
from tfp_ood.detectors.base import Detector, read_json
from tfp_ood.detectors.complexity import InputComplexity
from tfp_ood.detectors.density_of_states import ESTIMATORS, DensityOfStates
from tfp_ood.detectors.ratio import LikelihoodRatio
from tfp_ood.detectors.raw import RawLikelihood
from tfp_ood.detectors.typicality import Typicality
from tfp_ood.errors import InputError
from tfp_ood.models.base import DensityModel
from tfp_ood.terms import LOG_DET, LOG_PROB, LOG_PZ, is_level_term

__all__ = ['DETECTORS', 'FLOW_DETECTOR_NAMES', 'LIKELIHOOD_PATH', 'ONE_PASS', 'check_design',
           'named', 'read_design']

Factory = Callable[..., Detector]


def check_design(design) -> Dict:
    """A design (`{'statistics': [...], 'codecs': [...], 'estimator': ...}`), checked.

    Raises:
      InputError: a field missing or of the wrong type, an unknown codec or
        estimator, no statistics.
    """
    if not isinstance(design, dict):
        raise InputError(f'A design is a dict with statistics, codecs and estimator; got '
                         f'{type(design).__name__}.')
    statistics, names = design.get('statistics'), design.get('codecs', [])
    estimator = design.get('estimator')
    if (not isinstance(statistics, list) or not all(isinstance(x, str) for x in statistics)
            or not isinstance(names, list) or not all(c in codecs.CODECS for c in names)):
        raise InputError(f'A design needs "statistics" (a list of names) and "codecs" (a '
                         f'list of {sorted(codecs.CODECS)}); got {statistics!r} and '
                         f'{names!r}.')
    if estimator not in ESTIMATORS:
        raise InputError(f'A design\'s estimator must be one of {ESTIMATORS}; got '
                         f'{estimator!r}.')
    if not statistics and not names:
        raise InputError('A design needs at least one statistic.')
    return {'statistics': list(statistics), 'codecs': list(names), 'estimator': estimator}


def read_design(path: str) -> Dict:
    """The design in a JSON file (the detector search writes them)."""
    design = read_json(path, 'design')
    try:
        return check_design(design)
    except InputError as e:
        raise InputError(f'{path}: {e}') from None


def _likelihood_ratio(model, background=None, **unused):
    if background is None:
        raise InputError('likelihood_ratio needs a background model.')
    return LikelihoodRatio(model, background)


def _input_complexity(codec: str) -> Factory:
    def factory(model, compressor=None, **unused):
        return InputComplexity(model, codec=codec, compressor=compressor)
    return factory


def _density_of_states(model, **unused):
    return DensityOfStates(model, (LOG_PROB, LOG_PZ, LOG_DET) if model.is_flow else (LOG_PROB,))


def _density_of_states_terms(model, **unused):
    return DensityOfStates(model, (LOG_PZ, LOG_DET) if model.is_flow else (LOG_PROB,),
                           codec='png')


def _selected(model, design=None, compressor=None, **unused):
    if design is None:
        raise InputError(f'{SELECTED} needs a design (statistics, codecs, estimator).')
    design = check_design(design)
    return DensityOfStates(model, design['statistics'], codec=design['codecs'] or None,
                           estimator=design['estimator'], compressor=compressor)


def _every_level(codec, estimator: str, name: str) -> Factory:
    """The density of states of every level's terms (flows only)."""
    def factory(model, compressor=None, **unused):
        levels = [t for t in model.term_names if is_level_term(t)]
        if not levels:
            raise InputError(f'{name} needs a flow with per-level terms.')
        return DensityOfStates(model, levels, codec=codec, estimator=estimator,
                               compressor=compressor)
    return factory


#: The likelihood path's statistics (`VAE.statistics`): the encoder's two (the
#: posterior mean's norm, the posterior's mean log standard deviation), then the
#: decoder's two (the image's distance from its decoded mean, the norm of the
#: decoded standard deviations).
LIKELIHOOD_PATH = ('posterior_loc_norm', 'posterior_log_scale_mean', 'decoder_residual_norm',
                   'decoder_std_norm')


def _likelihood_path(model, **unused):
    if not set(LIKELIHOOD_PATH) <= set(model.statistic_names):
        raise InputError(f'likelihood_path reads a VAE\'s encoder and decoder statistics '
                         f'({", ".join(LIKELIHOOD_PATH)}); {type(model).__name__} has none '
                         f'(restore a VAE with tfp_ood.export.restore, not load).')
    return DensityOfStates(model, LIKELIHOOD_PATH, estimator='copod')


#: The detectors that read a VAE's statistics at its posterior mean and not its
#: log-likelihood: `fit_detector` and `load_detector` rebuild the VAE with one
#: importance sample (one pass of each network, not K decoder passes).
ONE_PASS = ('likelihood_path',)


def _gradient_norms(model, **unused):
    names = model.gradient_statistic_names
    if not names:
        raise InputError(f'gradient_norms needs a model with parameters to take gradients '
                         f'over; {type(model).__name__} has none (restore the model with '
                         f'tfp_ood.export.restore, not load).')
    return DensityOfStates(model, names, estimator='gaussian')


_LEVEL_DESIGNS = {'density_of_states_levels': ('png', 'kde'),
                  'density_of_states_levels_png_jpeg2000': (('png', 'jpeg2000'), 'kde'),
                  'density_of_states_gaussian': (('png', 'jpeg2000', 'jpegxl'), 'gaussian')}
#: The detectors of `DETECTOR_NAMES` that need a flow's per-level terms.
FLOW_DETECTOR_NAMES = tuple(_LEVEL_DESIGNS)

#: Name (of `tfp_ood.config.DETECTOR_NAMES`, in its order) -> factory.
DETECTORS: Dict[str, Factory] = {
    'raw_likelihood': lambda model, **unused: RawLikelihood(model),
    'likelihood_ratio': _likelihood_ratio,
    'input_complexity': _input_complexity('png'),
    'input_complexity_jpeg2000': _input_complexity('jpeg2000'),
    'input_complexity_jpegxl': _input_complexity('jpegxl'),
    'typicality': lambda model, **unused: Typicality(model, batch_size=1),
    'density_of_states': _density_of_states,
    'density_of_states_terms': _density_of_states_terms,
    **{name: _every_level(*design, name) for name, design in _LEVEL_DESIGNS.items()},
    SELECTED: _selected,
    'gradient_norms': _gradient_norms,
    'likelihood_path': _likelihood_path,
}


def named(name: str, model: DensityModel, background: Optional[DensityModel] = None,
          design: Optional[Dict] = None,
          compressor: Optional[codecs.Compressor] = None) -> Detector:
    """The single-image detector `name` of `DETECTOR_NAMES` over `model`.

    `density_of_states` uses the published statistics (the log-likelihood
    and, for a flow, its two terms); ours are `density_of_states_terms` (a
    flow's two terms and the PNG length), `density_of_states_levels` (every
    level's two terms and the PNG length; flows only),
    `density_of_states_levels_png_jpeg2000` (also the JPEG 2000 length) and
    `density_of_states_gaussian` (every level's terms and the PNG, JPEG 2000
    and JPEG XL lengths, under one full-covariance Gaussian instead of a KDE).
    The last two are not exportable as SavedModels: JPEG 2000 and JPEG XL have
    no TensorFlow ops. `input_complexity` compresses with PNG,
    `input_complexity_jpeg2000` with lossless JPEG 2000,
    `input_complexity_jpegxl` with lossless JPEG XL. `likelihood_ratio` needs
    `background`. `density_of_states_selected` is the density of states of
    `design` (`check_design`): its statistics, codecs and estimator.
    `gradient_norms` is a full-covariance Gaussian over the log-norms of each
    image's log-likelihood gradient per group of the model's parameters
    (`DensityModel.gradient_statistics`; for a flow, each step's ActNorm, 1x1
    convolution and coupling and each split prior), after Dauncey et al.,
    "Approximations to the Fisher Information Metric of Deep Generative Models
    for Out-Of-Distribution Detection" (2024). `compressor`: the
    `codecs.Compressor` that detectors scoring the same images share.
    """
    if name not in DETECTORS:
        raise InputError(f'Unknown detector {name!r}; expected one of {DETECTOR_NAMES}.')
    return DETECTORS[name](model, background=background, design=design,
                           compressor=compressor)
