"""How to train: `TrainConfig`, with the help text of its command-line flags.

Imports no TensorFlow: the command line builds its `train` flags from it
(`tfp-ood train --help` answers at once).
"""

import dataclasses
import math
from typing import Optional

from tfp_ood.errors import InputError

__all__ = ['TrainConfig']


def _field(default, help_text: str, flag: Optional[str] = None):
    """A `TrainConfig` field with its command-line help (and flag name, if not the field's)."""
    return dataclasses.field(default=default, metadata={'help': help_text, 'flag': flag})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
      num_steps: total optimizer steps (skipped non-finite steps count).
      batch_size: global batch size (split across replicas).
      learning_rate: peak Adam learning rate.
      warmup_steps: steps of linear warm-up from 0 to `learning_rate`.
      clip_norm: gradients are clipped to this global norm.
      max_consecutive_nonfinite: stop after this many skipped steps in a row.
      checkpoint_every: steps between checkpoints.
      eval_every: steps between evaluations of the held-out sets.
      log_every: steps between training scalars.
      sample_every: steps between sample images (0: with every evaluation).
      num_init_images: training images for data-dependent initialisation.
      num_eval_images: at most this many images of each held-out set.
      keep_checkpoints: checkpoints kept on disk.
      seed: seed of the data order and the dequantization noise.
      mutation_rate: each value of every training image is replaced with this
        probability by a uniform draw from 0..255 (`tfp_ood.data.perturb`);
        `> 0` trains the background model of the likelihood-ratio detector
        (Ren et al., 2019).
      weight_decay: L2 penalty `weight_decay * sum(kernel**2)` over every
        convolution and dense kernel, added to the per-image negative
        log-likelihood in nats (Ren et al.'s `lambda`; in the bits/dim loss it
        is divided by `D ln 2`). The kernels of the `cpu` Glows sum to about
        6,000 in squares, so `0.01` adds a few percent to their loss.
      ema_decay: keep an exponential moving average of the weights (Polyak
        averaging, as PixelCNN++ is trained) with this decay, and evaluate,
        export and score the run with the averages; `0` keeps none. See
        `WeightAverages`.
      init_from: a tfp_ood SavedModel (`tfp-ood export`, or a shipped model in
        `saved_models/`) whose weights start the run in place of the
        data-dependent initialisation: to train a model further, or to
        fine-tune it on other images. Its model configuration must be the
        run's, the model's seed included (`train_on_images` and `tfp-ood
        train` build the model with the export's seed; `seed` then orders
        the data); the optimizer starts afresh (with the warm-up). `''`: a
        run from scratch.
    """

    num_steps: int = _field(10000, 'total training steps', flag='steps')
    batch_size: int = _field(64, 'global batch size')
    learning_rate: float = _field(1e-3, 'peak Adam learning rate')
    warmup_steps: int = _field(500, 'steps of linear warm-up')
    clip_norm: float = _field(50.0, 'gradient clip norm')
    max_consecutive_nonfinite: int = _field(
        20, 'stop after this many non-finite steps in a row')
    checkpoint_every: int = _field(500, 'steps per checkpoint')
    eval_every: int = _field(1000, 'steps per evaluation of the held-out sets')
    log_every: int = _field(50, 'steps per training scalars (TensorBoard)')
    sample_every: int = _field(0, 'steps per sample images (0: with every evaluation)')
    num_init_images: int = _field(512, 'training images for the data-dependent initialisation')
    num_eval_images: int = _field(2000, 'images per held-out set')
    keep_checkpoints: int = _field(3, 'checkpoints kept on disk')
    seed: int = _field(0, 'seed of the weights, the data order and the dequantization noise')
    mutation_rate: float = _field(
        0.0, 'replace each training value with this probability by a uniform draw from '
        '0..255 (a background model for the likelihood-ratio detector)')
    weight_decay: float = _field(0.0, 'L2 penalty on every kernel, per image in nats')
    ema_decay: float = _field(
        0.0, 'decay of the moving average of the weights that is evaluated and exported '
        '(e.g. 0.999; 0: none)')
    init_from: str = _field(
        '', "a tfp_ood SavedModel whose weights start the run (train it further, or "
        "fine-tune it); its model configuration must be the run's ('': from scratch)")

    def __post_init__(self):
        for name in ('num_steps', 'batch_size', 'checkpoint_every', 'eval_every', 'log_every',
                     'max_consecutive_nonfinite', 'num_init_images', 'num_eval_images',
                     'keep_checkpoints'):
            if getattr(self, name) < 1:
                raise InputError(f'TrainConfig.{name} must be >= 1; got {getattr(self, name)}.')
        if not 0 <= self.seed < 2 ** 32:  # NumPy's and TensorFlow's seeds.
            raise InputError(f'TrainConfig.seed must be in 0..2**32 - 1; got {self.seed}.')
        # `not x > 0` also refuses NaN; clipping to an infinite norm gives NaN gradients.
        if not (0 < self.learning_rate < math.inf and 0 < self.clip_norm < math.inf
                and self.warmup_steps >= 0):
            raise InputError(f'learning_rate and clip_norm must be finite and > 0 and '
                             f'warmup_steps >= 0; got {self.learning_rate}, {self.clip_norm}, '
                             f'{self.warmup_steps}.')
        if self.sample_every < 0:
            raise InputError(f'TrainConfig.sample_every must be >= 0; got {self.sample_every}.')
        if not 0.0 <= self.mutation_rate <= 1.0:
            raise InputError(f'mutation_rate must be in [0, 1]; got {self.mutation_rate}.')
        if not 0.0 <= self.weight_decay < float('inf'):
            raise InputError(f'weight_decay must be finite and >= 0; got {self.weight_decay}.')
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f'ema_decay must be in [0, 1); got {self.ema_decay}.')
