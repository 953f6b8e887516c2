"""Configurations of the package's models, and the one registry of their names and sizes.

Every architecture is a frozen dataclass (`GlowConfig`, `PixelCNNConfig`,
`VAEConfig`) so that `config.to_dict()` can be written as JSON beside a
checkpoint or SavedModel and read back with `Config.from_dict(d)`, with no
hand-copied keys.

`MODELS` is the registry of the model names that the command line, the
examples and the benchmarks accept (`glow`, `cv_glow`, `pixelcnn`, `vae`,
`vae_rnvp`): for each, its configuration class, the fields it fixes (a CV-Glow
is a Glow with additive couplings; `vae_rnvp` is a VAE with a RealNVP encoder
and a logistic decoder) and its named sizes (`paper`, `cpu`, `small`,
`tiny`). `named_config('cv_glow', 'cpu', (28, 28, 1))` is the only way a name
becomes a configuration; `tfp_ood.models.from_config` goes back from a saved
`get_config()` dict.
"""

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Type

from tfp_ood.errors import InputError

__all__ = ['COUPLINGS', 'GLOW_CONFIG_NAMES', 'GlowConfig', 'LIKELIHOODS', 'MODELS', 'MODEL_NAMES',
           'ModelSpec', 'PIXEL_CNN_CONFIG_NAMES', 'PixelCNNConfig', 'SIZE_NAMES',
           'VAE_CONFIG_NAMES', 'VAEConfig', 'complete_model_config', 'config_from_saved',
           'config_names', 'is_flow_family', 'named_config', 'spec_of_family']

COUPLINGS = ('affine', 'additive')
# How affine flow steps bound their scales (`tfp_ood.bijectors.Coupling`).
COUPLING_SCALES = ('symmetric', 'contracting')
#: How scoring and training distribute (`tfp_ood.distribute.create_strategy`).
STRATEGIES = ('default', 'mirrored', 'multi_worker')
#: Where a flow's coupling and prior networks compute (`precision=` of `bijectors.glow`).
PRECISIONS = ('float32', 'bfloat16')
LIKELIHOODS = ('categorical', 'logistic')


class _Config:
    """`to_dict` / `from_dict` and the `image_shape` check shared by the configurations."""

    def _normalise_image_shape(self):
        shape = tuple(int(d) for d in self.image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f'image_shape must be (H, W, C) with positive sizes; got '
                             f'{self.image_shape}.')
        object.__setattr__(self, 'image_shape', shape)

    def _check_at_least(self, minimum: int, *names: str):
        for name in names:
            if getattr(self, name) < minimum:
                raise InputError(f'{name} must be >= {minimum}; got {getattr(self, name)}.')

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d['image_shape'] = list(self.image_shape)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class GlowConfig(_Config):
    """Architecture of a Glow or CV-Glow.

    Attributes:
      image_shape: `(H, W, C)` of the images; `H` and `W` must be divisible by
        `2 ** num_levels`.
      num_levels: number of scales `L` (squeezes); `L - 1` splits.
      num_steps_per_level: flow steps `K` per level, each
        ActNorm -> invertible 1x1 convolution -> coupling.
      hidden_channels: width of the coupling networks.
      coupling: `'affine'` (Glow) or `'additive'` (CV-Glow: additive couplings
        and additive split priors, so the volume term is constant).
      seed: seed of the initial weights (1x1 rotations, network kernels).
      coupling_scale: how the affine flow steps bound their scales
        (`tfp_ood.bijectors.Coupling`): `'symmetric'` (stretch or shrink by
        up to `e^3`) or `'contracting'` (Glow's `sigmoid(raw + 2)`: the
        image-to-latent pass only shrinks; what the Glow background models of
        the likelihood ratio use, whose perturbed training images otherwise
        drive some latents to overflow). The split priors are unaffected.
    """

    image_shape: Tuple[int, int, int] = (32, 32, 3)
    num_levels: int = 3
    num_steps_per_level: int = 8
    hidden_channels: int = 400
    coupling: str = 'affine'
    seed: int = 0
    coupling_scale: str = 'symmetric'

    def __post_init__(self):
        self._normalise_image_shape()
        self._check_at_least(1, 'num_levels', 'num_steps_per_level', 'hidden_channels')
        if self.coupling_scale not in COUPLING_SCALES:
            raise InputError(f'coupling_scale must be one of {COUPLING_SCALES}; got '
                             f'{self.coupling_scale!r}.')
        factor = 2 ** self.num_levels
        height, width, _ = self.image_shape
        if height % factor or width % factor:
            raise InputError(
                f'Image height and width must be divisible by 2**num_levels = '
                f'{factor}; got image_shape {self.image_shape} with num_levels '
                f'{self.num_levels}.')
        if self.coupling not in COUPLINGS:
            raise InputError(f'coupling must be one of {COUPLINGS}; got '
                             f'{self.coupling!r}.')

    @property
    def family(self) -> str:
        """`'glow'` for affine coupling, `'cv_glow'` for additive."""
        return 'glow' if self.coupling == 'affine' else 'cv_glow'

    @classmethod
    def named(cls, name: str, image_shape: Sequence[int] = (32, 32, 3),
              coupling: str = 'affine', seed: int = 0) -> 'GlowConfig':
        """The named configuration `name` ('paper', 'cpu', 'small' or 'tiny')."""
        return named_config('glow' if coupling == 'affine' else 'cv_glow', name, image_shape,
                            seed=seed, coupling=coupling)


@dataclasses.dataclass(frozen=True)
class PixelCNNConfig(_Config):
    """Architecture of a PixelCNN++ (arguments of `tfd.PixelCNN`)."""

    image_shape: Tuple[int, int, int] = (32, 32, 3)
    num_resnet: int = 5
    num_hierarchies: int = 3
    num_filters: int = 160
    num_logistic_mix: int = 10
    dropout_p: float = 0.5

    family = 'pixelcnn'

    def __post_init__(self):
        self._normalise_image_shape()
        self._check_at_least(1, 'num_resnet', 'num_hierarchies', 'num_filters',
                             'num_logistic_mix')

    @classmethod
    def named(cls, name: str, image_shape: Sequence[int] = (32, 32, 3)) -> 'PixelCNNConfig':
        return named_config('pixelcnn', name, image_shape)


@dataclasses.dataclass(frozen=True)
class VAEConfig(_Config):
    """Architecture of a VAE.

    Attributes:
      image_shape: `(H, W, C)`, `H` and `W` divisible by 4.
      latent_dim: size of the latent `z`.
      filters: width of the convolutional encoder and decoder.
      encoder_flow_layers: RealNVP couplings on the posterior (0: diagonal Gaussian).
      likelihood: `'categorical'` (256-way) or `'logistic'` (discretized).
      num_importance_samples: `K` of the importance-weighted scores.
      seed: seed of the weights and of the scoring draws.
    """

    image_shape: Tuple[int, int, int] = (32, 32, 3)
    latent_dim: int = 64
    filters: int = 64
    encoder_flow_layers: int = 0
    likelihood: str = 'categorical'
    num_importance_samples: int = 100
    seed: int = 0

    family = 'vae'

    def __post_init__(self):
        self._normalise_image_shape()
        height, width, _ = self.image_shape
        if height % 4 or width % 4:
            raise InputError(f'VAE image height and width must be divisible by 4; got '
                             f'{self.image_shape}.')
        if self.likelihood not in LIKELIHOODS:
            raise InputError(f'likelihood must be one of {LIKELIHOODS}; got '
                             f'{self.likelihood!r}.')
        self._check_at_least(2, 'latent_dim')
        self._check_at_least(1, 'filters', 'num_importance_samples')
        self._check_at_least(0, 'encoder_flow_layers')

    @classmethod
    def named(cls, name: str, image_shape: Sequence[int] = (32, 32, 3),
              variant: str = 'conv_categorical', **kwargs) -> 'VAEConfig':
        """`variant`: `'conv_categorical'` or `'rnvp_encoder'` (the paper's two VAEs)."""
        variants = {'conv_categorical': 'vae', 'rnvp_encoder': 'vae_rnvp'}
        if variant not in variants:
            raise InputError(f'Unknown VAE variant {variant!r}; expected one of '
                             f'{sorted(variants)}.')
        return named_config(variants[variant], name, image_shape, **kwargs)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model name of the registry.

    Attributes:
      name: what `--model` accepts.
      family: the `family` of the model's `get_config()` (what a saved model
        is rebuilt from).
      config_class: its configuration dataclass.
      fixed: fields the family fixes (`coupling='additive'` for `cv_glow`):
        a saved configuration of the family is rebuilt with them.
      sizes: named sizes: for each, the fields it sets for 1 and for 3 channels.
      description: one line for `--help`.
      variant: further fields the name sets (the two VAEs of the `vae` family).
      is_flow: whether it is a normalizing flow: exact log-likelihood split
        into the distribution and volume terms, per level, and a `precision`
        for its coupling networks.
      sample_temperatures: the temperatures its samples are drawn at in
        training summaries.
      any_temperature: whether it samples at any temperature (a PixelCNN
        samples at temperature 1 only).
    """

    name: str
    family: str
    config_class: Type[_Config]
    fixed: Mapping[str, Any]
    sizes: Mapping[str, Mapping[int, Mapping[str, Any]]]
    description: str
    variant: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    is_flow: bool = False
    sample_temperatures: Tuple[float, ...] = (0.7, 1.0)
    any_temperature: bool = True


def _glow_sizes() -> Dict[str, Dict[int, Dict[str, Any]]]:
    # (num_levels, num_steps_per_level, hidden_channels) by name, for colour
    # (C = 3) and grayscale (C = 1) images.
    sizes = {
        # Kingma and Dhariwal (2018) / Nalisnick et al. (2019): 3 x 8 x 400 for
        # 32x32x3 data, 2 x 16 x 200 for 28x28x1 data.
        'paper': {3: (3, 8, 400), 1: (2, 16, 200)},
        # Sized for a 2-core CPU: the largest model whose training step still runs
        # at >= 100 images/s at batch 64. Measured with benchmarks/cpu_config.py
        # on the 2-core development machine (two runs each): 3 x 8 x 128 trains at
        # 114-126 images/s on 32x32x3 (3 x 8 x 160: 92-102); 2 x 16 x 128 at
        # 108-112 images/s on 28x28x1.
        'cpu': {3: (3, 8, 128), 1: (2, 16, 128)},
        # Ensemble members and quick experiments: a quarter of the `cpu` steps at
        # half its width (the 3 x 4 x 64 row of the benchmarks' TFP comparison).
        'small': {3: (3, 4, 64), 1: (2, 8, 64)},
        # For tests: traces in a few seconds.
        'tiny': {3: (2, 1, 16), 1: (2, 1, 16)},
    }
    keys = ('num_levels', 'num_steps_per_level', 'hidden_channels')
    return {name: {c: dict(zip(keys, v)) for c, v in by_channels.items()}
            for name, by_channels in sizes.items()}


def _same_for_any_channels(sizes: Dict[str, Tuple], keys: Sequence[str]):
    return {name: {c: dict(zip(keys, v)) for c in (1, 3)} for name, v in sizes.items()}


_PIXEL_CNN_SIZES = _same_for_any_channels({
    # PixelCNN++ as in Salimans et al. (2017) and the paper.
    'paper': (5, 3, 160, 10, 0.5),
    # For a 2-core CPU: the largest candidate whose training step runs at >= 30
    # images/s at batch 32. Measured on the 2-core development machine with
    # `python benchmarks/cpu_config.py --family pixelcnn --batch-size 32
    # --repeats 3` (benchmarks/results/cpu_config_pixelcnn.json): 1 x 2 x 32
    # (628k parameters) trains at 42.7 images/s; the next size up, 2 x 2 x 32,
    # at 27.6; 1 x 1 x 32 at 69.6.
    'cpu': (1, 2, 32, 5, 0.0),
    'tiny': (1, 1, 8, 2, 0.0),
}, ('num_resnet', 'num_hierarchies', 'num_filters', 'num_logistic_mix', 'dropout_p'))

_VAE_SIZES = _same_for_any_channels(
    {'paper': (128, 128), 'cpu': (64, 64), 'tiny': (4, 8)}, ('latent_dim', 'filters'))

MODELS: Dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec('glow', 'glow', GlowConfig, {'coupling': 'affine'}, _glow_sizes(),
              'Glow (affine couplings)', is_flow=True),
    ModelSpec('cv_glow', 'cv_glow', GlowConfig, {'coupling': 'additive'}, _glow_sizes(),
              'constant-volume Glow (additive couplings)', is_flow=True),
    ModelSpec('pixelcnn', 'pixelcnn', PixelCNNConfig, {}, _PIXEL_CNN_SIZES, 'PixelCNN++',
              sample_temperatures=(1.0,), any_temperature=False),
    ModelSpec('vae', 'vae', VAEConfig, {}, _VAE_SIZES, 'the conv-categorical VAE',
              variant={'encoder_flow_layers': 0, 'likelihood': 'categorical'}),
    ModelSpec('vae_rnvp', 'vae', VAEConfig, {}, _VAE_SIZES, 'the VAE with a RealNVP encoder',
              variant={'encoder_flow_layers': 4, 'likelihood': 'logistic'}),
)}
MODEL_NAMES = tuple(MODELS)
#: Every size name of any model (each model has its own subset: `config_names`).
SIZE_NAMES = tuple(dict.fromkeys(n for spec in MODELS.values() for n in spec.sizes))

GLOW_CONFIG_NAMES = tuple(MODELS['glow'].sizes)
PIXEL_CNN_CONFIG_NAMES = tuple(MODELS['pixelcnn'].sizes)
VAE_CONFIG_NAMES = tuple(MODELS['vae'].sizes)


def _spec(model: str) -> ModelSpec:
    if model not in MODELS:
        raise InputError(f'Unknown model {model!r}; expected one of {MODEL_NAMES}.')
    return MODELS[model]


def config_names(model: str) -> Tuple[str, ...]:
    """The named sizes of `model`."""
    return tuple(_spec(model).sizes)


def named_config(model: str, size: str, image_shape: Sequence[int] = (32, 32, 3),
                 **overrides):
    """The configuration of model name `model` at named size `size`.

    Args:
      model: one of `MODEL_NAMES`.
      size: one of `config_names(model)` (`paper`, `cpu`, ...).
      image_shape: `(H, W, C)`; grayscale images take the sizes given for one
        channel (the paper's FashionMNIST Glow is 2 x 16 x 200).
      **overrides: other fields (e.g. `seed`, `num_importance_samples`).
    """
    spec = _spec(model)
    if size not in spec.sizes:
        family = spec.config_class.__name__[:-len('Config')]
        raise InputError(f'Unknown {family} configuration {size!r} for model {model!r}; '
                         f'expected one of {tuple(spec.sizes)}.')
    channels = 1 if int(image_shape[-1]) == 1 else 3
    fields = dict(spec.sizes[size][channels], **spec.variant, **spec.fixed)
    for key, value in overrides.items():
        if key in spec.fixed and spec.fixed[key] != value:
            raise InputError(f'Model {model!r} has {key}={spec.fixed[key]!r}; got {value!r}.')
        fields[key] = value
    return spec.config_class(image_shape=tuple(image_shape), **fields)


def spec_of_family(family: str) -> ModelSpec:
    """The registry entry that a saved `get_config()['family']` names (the first
    of its names: `vae` for the `vae` family)."""
    for spec in MODELS.values():
        if spec.family == family:
            return spec
    raise InputError(f'Unknown model family {family!r}; expected one of '
                     f'{sorted({s.family for s in MODELS.values()})}.')


def is_flow_family(family: Optional[str]) -> bool:
    """Whether a saved configuration's `family` is a normalizing flow (`False`
    for a family the registry does not know)."""
    return any(spec.is_flow and spec.family == family for spec in MODELS.values())


def config_from_saved(model_config: Mapping[str, Any]):
    """The configuration a saved `get_config()` (`{'family': ..., ...}`) describes.

    Fields saved before they existed take their defaults; the fields the
    family fixes (a CV-Glow's additive coupling) are set.
    """
    model_config = dict(model_config)
    spec = spec_of_family(model_config.pop('family', None))
    return spec.config_class.from_dict(dict(model_config, **spec.fixed))


def complete_model_config(model_config: Mapping[str, Any]) -> Dict[str, Any]:
    """A saved `get_config()` with every field of its configuration class, so a
    run or an export saved before a field existed compares equal to the model
    the current code builds from it."""
    return dict(family=model_config.get('family'),
                **config_from_saved(model_config).to_dict())


#: The detectors `tfp_ood.detectors.named` builds, for a model (and a
#: background model), with what each scores.
DETECTORS: Dict[str, str] = {
    'raw_likelihood': 'bits/dim under the model',
    'likelihood_ratio': 'Ren et al.: the log-likelihood ratio against a background model',
    'input_complexity': 'Serra et al.: bits/dim minus the PNG length in bits/dim',
    'input_complexity_jpeg2000': 'as input_complexity, with lossless JPEG 2000',
    'input_complexity_jpegxl': 'as input_complexity, with lossless JPEG XL',
    'typicality': 'Nalisnick et al.: distance of one image\'s bits/dim from the entropy',
    'density_of_states': 'Morningstar et al.: a KDE over the log-likelihood (and a flow\'s '
                         'two terms)',
    'density_of_states_terms': 'a KDE over a flow\'s two terms and the PNG length',
    'density_of_states_levels': 'a KDE over every level\'s terms and the PNG length (flows)',
    'density_of_states_levels_png_jpeg2000': 'as density_of_states_levels, with the JPEG 2000 '
                                             'length',
    'density_of_states_gaussian': 'a Gaussian over every level\'s terms and the PNG, JPEG '
                                  '2000 and JPEG XL lengths (flows)',
    'density_of_states_selected': 'the statistics, codecs and estimator of a design (--design)',
    'gradient_norms': 'after Dauncey et al.: a Gaussian over the log-norms of each image\'s '
                      'log-likelihood gradient per group of parameters',
    'likelihood_path': 'after Huang et al. (LPath): COPOD over four statistics of a VAE\'s '
                       'encoder and decoder (VAEs)',
}
DETECTOR_NAMES = tuple(DETECTORS)
#: The density of states whose statistics and estimator a design names: what
#: `tfp_ood.experiments.detector_search` chooses on validation sets.
SELECTED = 'density_of_states_selected'
