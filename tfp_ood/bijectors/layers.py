"""Image bijectors: the building blocks of Glow and CV-Glow.

Direction follows TFP: `forward` maps a latent to an image (sampling) and
`inverse` maps an image to a latent (scoring). Every bijector here acts on
events of shape `[H, W, C]` (`forward_min_event_ndims = 3`) with any number of
leading batch dimensions, including an unknown batch size inside a
`tf.function` (TFP's `tfb.Glow` needs a static one; see docs/stack.md, note 2).

Besides the standard `tfb.Bijector` methods, each bijector has
`inverse_and_log_det(y)`, which returns the inverse and its log-determinant
per example in one pass. TFP's `inverse` + `inverse_log_det_jacobian` would
run a coupling network twice (docs/stack.md, note 10); the package's flows score
through `tfp_ood.bijectors.inverse_and_log_det_terms`, which uses the one-pass
method. Each bijector also names the likelihood term its log-determinant
belongs to (`log_det_term`): `'volume'` for the flow's own layers,
`'distribution'` for the learned conditional priors of the multi-scale split.
"""

from typing import Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfb = tfp.bijectors

# `tfb.Chain(bijectors)` returns an instance of TFP's private `_Chain` (not a
# `tfb.Chain`) when its bijectors are not CompositeTensors, as ours are not.
_CHAIN_TYPES = (tfb.Chain, tfb.chain._Chain)

__all__ = [
        'ImageBijector',
        'ActNorm',
        'InvertibleConv1x1',
        'Squeeze',
        'ApplyToChannels',
        'inverse_and_log_det_terms',
        'VOLUME',
        'DISTRIBUTION',
]

VOLUME = 'volume'
DISTRIBUTION = 'distribution'
_TERMS = (VOLUME, DISTRIBUTION)


def _check_event_shape(x: tf.Tensor, expected: Tuple[int, int, int],
                       owner: str) -> None:
    if x.shape.rank is None:
        raise ValueError(f'{owner}: input rank must be known statically; '
                         f'got a tensor of unknown rank.')
    if x.shape.rank < 3:
        raise ValueError(f'{owner}: expected an input of shape '
                         f'[..., {", ".join(map(str, expected))}]; got rank '
                         f'{x.shape.rank} with shape {x.shape}.')
    seen = tuple(x.shape[-3:])
    for s, e in zip(seen, expected):
        if s is not None and s != e:
            raise ValueError(f'{owner}: expected events of shape {list(expected)} '
                             f'(H, W, C); got {list(seen)} in an input of shape '
                             f'{x.shape}.')


class ImageBijector(tfb.Bijector):
    """Base class for bijectors on `[..., H, W, C]` events.

    Subclasses implement two methods on rank-4 tensors `[N, H, W, C]`:

    - `_forward_4d(x) -> y`
    - `_inverse_and_log_det_4d(y) -> (x, ildj)`, `ildj` of shape `[N]`, or a
        scalar when the Jacobian is constant.

    The base class handles arbitrary batch shapes, shape checks and the TFP
    plumbing. `y` is the image side (`image_event_shape`), `x` the latent side
    (`latent_event_shape`); they differ only for `Squeeze`.
    """

    log_det_term = VOLUME

    def __init__(self,
                 image_event_shape: Sequence[int],
                 latent_event_shape: Sequence[int],
                 is_constant_jacobian: bool,
                 parameters: dict,
                 name: str,
                 validate_args: bool = False):
        self._image_event_shape = tuple(int(d) for d in image_event_shape)
        self._latent_event_shape = tuple(int(d) for d in latent_event_shape)
        if len(self._image_event_shape) != 3:
            raise ValueError(f'{name}: event shape must be [H, W, C]; got '
                             f'{list(image_event_shape)}.')
        super().__init__(
                forward_min_event_ndims=3,
                is_constant_jacobian=is_constant_jacobian,
                validate_args=validate_args,
                parameters=parameters,
                dtype=tf.float32,
                name=name)

    # No parameter of these bijectors has a batch shape: one transformation is
    # shared by every image.
    @classmethod
    def _parameter_properties(cls, dtype):
        return dict()

    @property
    def image_event_shape(self) -> Tuple[int, int, int]:
        return self._image_event_shape

    @property
    def latent_event_shape(self) -> Tuple[int, int, int]:
        return self._latent_event_shape

    # ---------------------------------------------------------------------------
    # Subclass hooks.
    def _forward_4d(self, x):
        raise NotImplementedError

    def _inverse_and_log_det_4d(self, y):
        raise NotImplementedError

    # ---------------------------------------------------------------------------
    # Batch handling.
    def _to_4d(self, t, event_shape):
        if t.shape.rank == 4:
            return t, None
        batch_shape = tf.shape(t)[:-3]
        return tf.reshape(t, (-1,) + event_shape), batch_shape

    @staticmethod
    def _from_4d(t, batch_shape, event_shape):
        if batch_shape is None:
            return t
        return tf.reshape(t, tf.concat([batch_shape, event_shape], axis=0))

    def _from_4d_log_det(self, ldj, batch_shape):
        if batch_shape is None or ldj.shape.rank == 0:
            return ldj
        return tf.reshape(ldj, batch_shape)

    # ---------------------------------------------------------------------------
    # Public one-pass inverse.
    def inverse_and_log_det(self, y: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """Returns `(inverse(y), inverse_log_det_jacobian(y))` in one pass.

        Args:
            y: image-side tensor `[..., H, W, C]`.

        Returns:
            x: latent-side tensor.
            ildj: log-determinant of the inverse per example, shape `[...]`;
                a scalar when the Jacobian is constant.
        """
        _check_event_shape(y, self._image_event_shape, self.name)
        y4, batch_shape = self._to_4d(y, self._image_event_shape)
        x4, ildj = self._inverse_and_log_det_4d(y4)
        return (self._from_4d(x4, batch_shape, self._latent_event_shape),
                self._from_4d_log_det(ildj, batch_shape))

    # ---------------------------------------------------------------------------
    # tfb.Bijector interface.
    def _forward(self, x):
        _check_event_shape(x, self._latent_event_shape, self.name)
        x4, batch_shape = self._to_4d(x, self._latent_event_shape)
        return self._from_4d(self._forward_4d(x4), batch_shape,
                             self._image_event_shape)

    def _inverse(self, y):
        return self.inverse_and_log_det(y)[0]

    def _inverse_log_det_jacobian(self, y):
        return self.inverse_and_log_det(y)[1]

    def _forward_event_shape(self, input_shape):
        return input_shape[:-3].concatenate(self._image_event_shape)

    def _forward_event_shape_tensor(self, input_shape):
        return tf.concat([input_shape[:-3], self._image_event_shape], axis=0)

    def _inverse_event_shape(self, output_shape):
        return output_shape[:-3].concatenate(self._latent_event_shape)

    def _inverse_event_shape_tensor(self, output_shape):
        return tf.concat([output_shape[:-3], self._latent_event_shape], axis=0)


class ActNorm(ImageBijector):
    """Activation normalisation (Kingma and Dhariwal, 2018).

    A per-channel affine map with learned `loc` and `log_scale`:
    `inverse(y) = (y - loc) * exp(-log_scale)`,
    `forward(x) = x * exp(log_scale) + loc`. Its log-determinant depends on the
    parameters only: `-H * W * sum(log_scale)` for the inverse.

    The parameters start at the identity; `initialize(y)` sets them from a
    batch of data (data-dependent initialisation) so that the inverse output
    has zero mean and unit variance per channel.
    """

    def __init__(self, event_shape: Sequence[int], name: str = 'act_norm'):
        parameters = dict(locals())
        super().__init__(event_shape, event_shape, is_constant_jacobian=True,
                         parameters=parameters, name=name)
        channels = self._image_event_shape[-1]
        with tf.name_scope(name):
            self.loc = tf.Variable(tf.zeros([channels]), name='loc')
            self.log_scale = tf.Variable(tf.zeros([channels]), name='log_scale')

    def initialize(self, y: tf.Tensor, epsilon: float = 1e-6) -> None:
        """Sets `loc` and `log_scale` from the per-channel moments of `y`."""
        mean, variance = tf.nn.moments(
                tf.reshape(y, [-1, self._image_event_shape[-1]]), axes=[0])
        self.loc.assign(mean)
        self.log_scale.assign(0.5 * tf.math.log(variance + epsilon))

    def _log_det(self):
        height, width, _ = self._image_event_shape
        return -float(height * width) * tf.reduce_sum(self.log_scale)

    def _forward_4d(self, x):
        return x * tf.exp(self.log_scale) + self.loc

    def _inverse_and_log_det_4d(self, y):
        return (y - self.loc) * tf.exp(-self.log_scale), self._log_det()


class InvertibleConv1x1(ImageBijector):
    """Invertible 1x1 convolution with an LU-parameterised weight matrix.

    `inverse(y)[h, w] = W @ y[h, w]` for every pixel, with
    `W = P @ L @ (U + diag(sign * exp(log_abs_diag)))`: `P` a fixed
    permutation, `L` unit lower triangular and `U` strictly upper triangular
    (both learned), `sign` fixed. `log|det W| = sum(log_abs_diag)`, so the
    inverse's log-determinant is `H * W * sum(log_abs_diag)`, a function of the
    parameters only. `W` starts as a random rotation drawn with `seed`.

    #### References

    [1]: Diederik P. Kingma, Prafulla Dhariwal. Glow: Generative Flow with
              Invertible 1x1 Convolutions. NeurIPS 2018. https://arxiv.org/abs/1807.03039
    """

    def __init__(self, event_shape: Sequence[int], seed: int = 0,
                 name: str = 'invertible_conv1x1'):
        parameters = dict(locals())
        super().__init__(event_shape, event_shape, is_constant_jacobian=True,
                         parameters=parameters, name=name)
        channels = self._image_event_shape[-1]
        rng = np.random.default_rng(seed)
        rotation, _ = np.linalg.qr(rng.standard_normal((channels, channels)))
        lower_upper, perm = tf.linalg.lu(tf.constant(rotation, tf.float32))
        diag = tf.linalg.diag_part(lower_upper)
        with tf.name_scope(name):
            self._perm = tf.constant(perm)
            self._sign = tf.sign(diag)
            self.lower = tf.Variable(
                    tf.linalg.band_part(lower_upper, -1, 0) - tf.linalg.diag(diag),
                    name='lower')
            self.upper = tf.Variable(
                    tf.linalg.band_part(lower_upper, 0, -1) - tf.linalg.diag(diag),
                    name='upper')
            self.log_abs_diag = tf.Variable(tf.math.log(tf.abs(diag)),
                                            name='log_abs_diag')

    def _lower_upper(self):
        # The masks keep gradients off the unused triangle of each variable.
        lower = tf.linalg.band_part(self.lower, -1, 0) - tf.linalg.diag(
                tf.linalg.diag_part(self.lower))
        upper = tf.linalg.band_part(self.upper, 0, -1) - tf.linalg.diag(
                tf.linalg.diag_part(self.upper))
        return lower + upper + tf.linalg.diag(self._sign *
                                              tf.exp(self.log_abs_diag))

    def weight(self) -> tf.Tensor:
        """The matrix `W` applied to every pixel by `inverse`, `[C, C]`."""
        return tf.linalg.lu_reconstruct(self._lower_upper(), self._perm)

    def _log_det(self):
        height, width, _ = self._image_event_shape
        return float(height * width) * tf.reduce_sum(self.log_abs_diag)

    @staticmethod
    def _apply(matrix, t):
        # t[n, h, w, :] <- matrix @ t[n, h, w, :], as a 1x1 convolution.
        return tf.nn.conv2d(t, tf.transpose(matrix)[tf.newaxis, tf.newaxis],
                            strides=1, padding='VALID')

    def _forward_4d(self, x):
        inverse_weight = tf.linalg.lu_matrix_inverse(self._lower_upper(),
                                                     self._perm)
        return self._apply(inverse_weight, x)

    def _inverse_and_log_det_4d(self, y):
        return self._apply(self.weight(), y), self._log_det()


class Squeeze(ImageBijector):
    """Space-to-depth reshuffle between scales of a multi-scale flow.

    `inverse` (image side to latent side) turns `[H, W, C]` into
    `[H / f, W / f, f * f * C]` (`tf.nn.space_to_depth`), `forward` undoes it.
    Volume-preserving: the log-determinant is zero.
    """

    def __init__(self, event_shape: Sequence[int], factor: int = 2,
                 name: str = 'squeeze'):
        parameters = dict(locals())
        height, width, channels = (int(d) for d in event_shape)
        if height % factor or width % factor:
            raise ValueError(f'Squeeze: height and width must be divisible by the '
                             f'factor {factor}; got event shape {list(event_shape)}.')
        self._factor = factor
        super().__init__(
                event_shape,
                (height // factor, width // factor, channels * factor * factor),
                is_constant_jacobian=True, parameters=parameters, name=name)

    def _forward_4d(self, x):
        return tf.nn.depth_to_space(x, self._factor)

    def _inverse_and_log_det_4d(self, y):
        return tf.nn.space_to_depth(y, self._factor), tf.constant(0.)


class ApplyToChannels(ImageBijector):
    """Applies `bijector` to the first `num_channels` channels only.

    The remaining channels pass through unchanged. In a multi-scale flow this
    is how the deeper levels act on the half of the channels that is not
    factored out. `bijector` may be any bijector (usually a `tfb.Chain`) that
    maps `[H, W, num_channels]` events to events of the same shape.
    """

    def __init__(self, bijector: tfb.Bijector, event_shape: Sequence[int],
                 num_channels: int, name: str = 'apply_to_channels'):
        parameters = dict(locals())
        height, width, channels = (int(d) for d in event_shape)
        if not 0 < num_channels < channels:
            raise ValueError(f'ApplyToChannels: num_channels must be in '
                             f'(0, {channels}); got {num_channels}.')
        inner = tf.TensorShape([height, width, num_channels])
        for what, shape in (('forward', bijector.forward_event_shape(inner)),
                            ('inverse', bijector.inverse_event_shape(inner))):
            if shape != inner:
                raise ValueError(
                    f'ApplyToChannels: the inner bijector must map events of '
                    f'shape {inner} to the same shape; its {what} maps them '
                    f'to {shape}.')
        self._bijector = bijector
        self._num_channels = num_channels
        super().__init__(event_shape, event_shape,
                         is_constant_jacobian=bijector.is_constant_jacobian,
                         parameters=parameters, name=name)

    @property
    def bijector(self) -> tfb.Bijector:
        return self._bijector

    def split(self, t: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        return t[..., :self._num_channels], t[..., self._num_channels:]

    def _forward_4d(self, x):
        x1, x2 = self.split(x)
        return tf.concat([self._bijector.forward(x1), x2], axis=-1)

    def _inverse_and_log_det_4d(self, y):
        y1, y2 = self.split(y)
        x1, terms = inverse_and_log_det_terms(self._bijector, y1)
        return tf.concat([x1, y2], axis=-1), terms[VOLUME] + terms[DISTRIBUTION]


def inverse_and_log_det_terms(
        bijector: tfb.Bijector, y: tf.Tensor, data_init: bool = False
) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
    """Inverts `bijector` at `y` in one pass, splitting the log-determinant.

    Walks a tree of `tfb.Chain`, `ApplyToChannels` and leaf bijectors and
    inverts each leaf once, with `ImageBijector.inverse_and_log_det` where the
    leaf has it (so a coupling network runs once, not twice as in TFP's
    `inverse` followed by `inverse_log_det_jacobian`), and TFP's generic
    methods otherwise. Each leaf's log-determinant is added to the term it
    declares in `log_det_term` (`'volume'` unless it says otherwise).

    Args:
      bijector: the flow, `forward` mapping latents to images.
      y: images (image side), `[..., H, W, C]`.
      data_init: if `True`, every `ActNorm` is first initialised from the data
        that reaches it (data-dependent initialisation); for eager use before
        training.
        Default value: `False`.

    Returns:
      x: the latent `bijector.inverse(y)`.
      terms: `{'volume': [...], 'distribution': [...]}`, the parts of
        `bijector.inverse_log_det_jacobian(y, event_ndims=3)`, one value per
        example, summing to it.
    """
    zeros = tf.zeros(tf.shape(y)[:-3], dtype=y.dtype)
    terms = {VOLUME: zeros, DISTRIBUTION: zeros}

    def walk(b, t):
        if isinstance(b, _CHAIN_TYPES):
            # Chain applies the inverses of its bijectors in list order.
            for sub in b.bijectors:
                t = walk(sub, t)
            return t
        if isinstance(b, ApplyToChannels):
            t1, t2 = b.split(t)
            return tf.concat([walk(b.bijector, t1), t2], axis=-1)
        if isinstance(b, ImageBijector):
            if data_init and isinstance(b, ActNorm):
                b.initialize(t)
            t, ildj = b.inverse_and_log_det(t)
            term = b.log_det_term
        else:
            ildj = b.inverse_log_det_jacobian(t, event_ndims=3)
            t = b.inverse(t)
            term = VOLUME
        # Constant Jacobians come back as scalars (docs/stack.md, note 3).
        terms[term] = terms[term] + ildj
        return t

    x = walk(bijector, y)
    return x, terms
