"""Affine and additive coupling, also used as the split prior of Glow.

A coupling bijector leaves the first half of the channels, `y_a`, unchanged
and transforms the second half, `y_b`, with a shift (and, if affine, a scale)
computed from `y_a` by a network:

```none
inverse:  x_b = (y_b - shift(y_a)) * exp(-log_scale(y_a))
forward:  y_b = x_b * exp(log_scale(x_a)) + shift(x_a)        (x_a = y_a)
```

Whether the coupling is affine or additive is decided by the width of the
network's output (as in TFP's Glow): `C_b` channels is a shift only
(additive, log-determinant zero, constant volume), `2 * C_b` channels is a
shift and a log-scale (affine).

The same bijector with `log_det_term='distribution'` is the learned
conditional prior of a multi-scale split: with `y_b` the factored-out
channels, `x_b` is standard normal exactly when
`y_b ~ N(shift(y_a), exp(log_scale(y_a))^2)`, so its log-determinant is part
of the distribution term `log p(z)`, not the volume term.
"""

from typing import Sequence

import tensorflow as tf

from tfp_ood.bijectors.layers import DISTRIBUTION, VOLUME, ImageBijector
from tfp_ood.config import COUPLING_SCALES
from tfp_ood.errors import InputError

__all__ = ['Coupling', 'MAX_LOG_SCALE', 'SCALES']

# Log-scales are soft-clamped to (-MAX_LOG_SCALE, MAX_LOG_SCALE) with tanh,
# which is the identity near zero (so a zero-initialised network gives an
# identity flow) and keeps one bad step from producing an overflow.
MAX_LOG_SCALE = 3.0
# How an affine coupling's raw network output becomes its log-scale:
# 'symmetric': MAX_LOG_SCALE * tanh(raw / MAX_LOG_SCALE), either way;
# 'contracting': the image-to-latent pass multiplies by sigmoid(raw + 2)
#   (Kingma & Dhariwal's Glow), so it can only shrink.
SCALES = COUPLING_SCALES


class Coupling(ImageBijector):
    """Affine or additive coupling on `[..., H, W, C]` events.

    Args:
      event_shape: `[H, W, C]`.
      network: a `tf_keras.Model` from `[N, H, W, C // 2]` to
        `[N, H, W, C - C // 2]` (additive) or `[N, H, W, 2 * (C - C // 2)]`
        (affine: shift, then raw log-scale). Build it with `tf_keras`, not
        Keras 3, or its weights are not tracked (docs/stack.md, note 1).
      log_det_term: `'volume'` for a flow step, `'distribution'` for a split
        prior.
        Default value: `'volume'`.
      scale: how an affine coupling's log-scale is bounded. `'symmetric'`:
        `log_scale = 3 tanh(raw / 3)`, so each step may stretch or shrink by
        up to `e^3` (the identity at a zero-initialised network).
        `'contracting'`: the image-to-latent pass multiplies by
        `sigmoid(raw + 2)` as in Kingma & Dhariwal's Glow, i.e. `log_scale =
        softplus(-(raw + 2)) >= 0`: it can only shrink, so a chain of steps
        cannot amplify an unusual input step after step until its latent
        overflows (the "exploding inverse" of Behrmann et al., 2021, which
        stopped the FashionMNIST Glow's background training).
        Default value: `'symmetric'`.
      name: name of the bijector.
    """

    def __init__(self, event_shape: Sequence[int], network,
                 log_det_term: str = VOLUME, scale: str = 'symmetric',
                 name: str = 'coupling'):
        parameters = dict(locals())
        height, width, channels = (int(d) for d in event_shape)
        if channels < 2:
            raise InputError(f'Coupling: needs at least 2 channels to split; '
                             f'got event shape {list(event_shape)}.')
        if log_det_term not in (VOLUME, DISTRIBUTION):
            raise InputError(f'Coupling: log_det_term must be {VOLUME!r} or '
                             f'{DISTRIBUTION!r}; got {log_det_term!r}.')
        if scale not in SCALES:
            raise InputError(f'Coupling: scale must be one of {SCALES}; got {scale!r}.')
        self._num_conditioning = channels // 2
        num_transformed = channels - self._num_conditioning
        expected_in = (height, width, self._num_conditioning)
        if tuple(network.input_shape[1:]) != expected_in:
            raise InputError(f'Coupling: the network must take inputs of shape '
                             f'[N, {", ".join(map(str, expected_in))}]; it '
                             f'takes {network.input_shape}.')
        out_channels = network.output_shape[-1]
        if out_channels == num_transformed:
            self._affine = False
        elif out_channels == 2 * num_transformed:
            self._affine = True
        else:
            raise InputError(
                f'Coupling: the network must output {num_transformed} '
                f'(additive) or {2 * num_transformed} (affine) channels; it '
                f'outputs {out_channels}.')
        self.network = network
        self.log_det_term = log_det_term
        self.scale = scale
        super().__init__(event_shape, event_shape,
                         is_constant_jacobian=not self._affine,
                         parameters=parameters, name=name)

    @property
    def is_affine(self) -> bool:
        return self._affine

    def _shift_and_log_scale(self, conditioning):
        # A network computing in bfloat16 returns bfloat16: back to the data's
        # dtype before it touches the data (a no-op for float32 networks).
        h = tf.cast(self.network(conditioning), conditioning.dtype)
        if not self._affine:
            return h, None
        shift, raw = tf.split(h, 2, axis=-1)
        if self.scale == 'contracting':
            return shift, tf.nn.softplus(-(raw + 2.))
        return shift, MAX_LOG_SCALE * tf.tanh(raw / MAX_LOG_SCALE)

    def _forward_4d(self, x):
        x_a, x_b = x[..., :self._num_conditioning], x[..., self._num_conditioning:]
        shift, log_scale = self._shift_and_log_scale(x_a)
        if log_scale is not None:
            x_b = x_b * tf.exp(log_scale)
        return tf.concat([x_a, x_b + shift], axis=-1)

    def _inverse_and_log_det_4d(self, y):
        y_a, y_b = y[..., :self._num_conditioning], y[..., self._num_conditioning:]
        shift, log_scale = self._shift_and_log_scale(y_a)
        x_b = y_b - shift
        if log_scale is None:
            return tf.concat([y_a, x_b], axis=-1), tf.constant(0.)
        x_b = x_b * tf.exp(-log_scale)
        ildj = -tf.reduce_sum(log_scale, axis=[1, 2, 3])
        return tf.concat([y_a, x_b], axis=-1), ildj
