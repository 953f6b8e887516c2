"""Frozen configurations of the package's models.

Configurations are plain frozen dataclasses so that `dataclasses.asdict(cfg)`
can be written as JSON beside a checkpoint or SavedModel and read back with
`GlowConfig.from_dict(d)`, with no hand-copied keys.
"""

import dataclasses
from typing import Any, Dict, Sequence, Tuple

__all__ = ['GlowConfig', 'GLOW_CONFIG_NAMES', 'COUPLINGS']

COUPLINGS = ('affine', 'additive')

# (num_levels, num_steps_per_level, hidden_channels) by name, for colour
# (C = 3) and grayscale (C = 1) images.
_GLOW_SIZES = {
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
GLOW_CONFIG_NAMES = tuple(_GLOW_SIZES)


@dataclasses.dataclass(frozen=True)
class GlowConfig:
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
    """

    image_shape: Tuple[int, int, int] = (32, 32, 3)
    num_levels: int = 3
    num_steps_per_level: int = 8
    hidden_channels: int = 400
    coupling: str = 'affine'
    seed: int = 0

    def __post_init__(self):
        shape = tuple(int(d) for d in self.image_shape)
        object.__setattr__(self, 'image_shape', shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f'image_shape must be (H, W, C) with positive '
                             f'sizes; got {self.image_shape}.')
        if self.num_levels < 1 or self.num_steps_per_level < 1:
            raise ValueError(
                f'num_levels and num_steps_per_level must be >= 1; got '
                f'{self.num_levels} and {self.num_steps_per_level}.')
        if self.hidden_channels < 1:
            raise ValueError(f'hidden_channels must be >= 1; got '
                             f'{self.hidden_channels}.')
        factor = 2 ** self.num_levels
        height, width, _ = shape
        if height % factor or width % factor:
            raise ValueError(
                f'Image height and width must be divisible by 2**num_levels = '
                f'{factor}; got image_shape {shape} with num_levels '
                f'{self.num_levels}.')
        if self.coupling not in COUPLINGS:
            raise ValueError(f'coupling must be one of {COUPLINGS}; got '
                             f'{self.coupling!r}.')

    @property
    def family(self) -> str:
        """`'glow'` for affine coupling, `'cv_glow'` for additive."""
        return 'glow' if self.coupling == 'affine' else 'cv_glow'

    @classmethod
    def named(cls, name: str, image_shape: Sequence[int] = (32, 32, 3),
              coupling: str = 'affine', seed: int = 0) -> 'GlowConfig':
        """The named configuration `name` ('paper', 'cpu', 'small' or 'tiny')."""
        if name not in _GLOW_SIZES:
            raise ValueError(f'Unknown Glow configuration {name!r}; expected '
                             f'one of {GLOW_CONFIG_NAMES}.')
        channels = int(image_shape[-1])
        sizes = _GLOW_SIZES[name]
        levels, steps, hidden = sizes[1] if channels == 1 else sizes[3]
        return cls(image_shape=tuple(image_shape), num_levels=levels,
                   num_steps_per_level=steps, hidden_channels=hidden,
                   coupling=coupling, seed=seed)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d['image_shape'] = list(self.image_shape)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'GlowConfig':
        return cls(**d)
