"""Image bijectors: the building blocks of Glow and CV-Glow.

Direction follows TFP: `forward` maps a latent to an image (sampling) and
`inverse` maps an image to a latent (scoring). Every bijector here acts on
events of shape `[H, W, C]` (`forward_min_event_ndims = 3`) with any number of
leading batch dimensions, including an unknown batch size inside a
`tf.function` (TFP's `tfb.Glow` needs a static one; see docs/stack.md, note 2).

**The one-pass protocol.** Besides the standard `tfb.Bijector` methods, every
bijector of the package has

```python
x, terms = bijector.inverse_and_log_det_terms(y)   # terms: LogDetTerms
```

which returns the inverse and its log-determinant in one pass (TFP's
`inverse` + `inverse_log_det_jacobian` would run a coupling network twice,
docs/stack.md, note 10), split by the likelihood term each piece belongs to:
`terms.volume` for the flow's own layers, `terms.distribution` for the learned
conditional priors of a multi-scale split (each leaf declares its side in
`log_det_term`). The package's `Chain`, `Invert` and `ApplyToChannels` compose
the protocol, as distrax composes `forward_and_log_det`; a chain holds
`ImageBijector`s only, so nothing falls back to TFP's two-pass methods.
"""

from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_ood.errors import InputError

tfb = tfp.bijectors

__all__ = [
        'ActNorm',
        'ApplyToChannels',
        'Chain',
        'DISTRIBUTION',
        'ImageBijector',
        'Invert',
        'InvertibleConv1x1',
        'LevelTerms',
        'LogDetTerms',
        'Squeeze',
        'VOLUME',
        'inverse_and_log_det_terms',
]

VOLUME = 'volume'
DISTRIBUTION = 'distribution'


class LevelTerms(NamedTuple):
    """One level of a multi-scale flow's share of the log-likelihood, per example.

    Attributes:
      volume: the log-determinant of the level's own steps (ActNorm, 1x1
        convolutions, couplings).
      prior_log_det: the log-determinant of the level's split prior (part of
        the distribution term); 0 for the last level, which has none.
      latent_log_prob: the standard normal log-density of the latent the
        level factors out (all of the last level's latent).
      step_volumes: each flow step's log-determinant (ActNorm, 1x1
        convolution and coupling), in scoring order; they sum to `volume`.
      step_mean_squares: the mean square of the activations after each step.
      latent_mean_square: the mean square of the latent the level factors out.
    """

    volume: tf.Tensor
    prior_log_det: tf.Tensor
    latent_log_prob: tf.Tensor
    step_volumes: Tuple[tf.Tensor, ...] = ()
    step_mean_squares: Tuple[tf.Tensor, ...] = ()
    latent_mean_square: Optional[tf.Tensor] = None

    def map(self, fn) -> 'LevelTerms':
        """`fn` applied to every tensor (each step's too); `None` stays `None`."""
        return LevelTerms(*(tuple(fn(t) for t in v) if isinstance(v, tuple)
                            else None if v is None else fn(v) for v in self))


class LogDetTerms(NamedTuple):
    """An inverse log-determinant split by the likelihood term it belongs to.

    Attributes:
      volume: the part from the flow's own layers (the paper's volume term).
      distribution: the part from learned conditional priors of multi-scale
        splits (part of the paper's distribution term).
      levels: the per-level breakdown, outermost level first, where the flow
        has levels (`tfp_ood.bijectors.glow.Level`); empty otherwise.

    Inside a composition an entry may be a scalar (a constant Jacobian);
    `ImageBijector.inverse_and_log_det_terms` returns one value per example.
    """

    volume: tf.Tensor
    distribution: tf.Tensor
    levels: Tuple[LevelTerms, ...] = ()

    @property
    def total(self) -> tf.Tensor:
        """The whole inverse log-determinant, `volume + distribution`."""
        return self.volume + self.distribution

    def plus(self, other: 'LogDetTerms') -> 'LogDetTerms':
        """The terms of two bijectors applied one after the other."""
        return LogDetTerms(self.volume + other.volume, self.distribution + other.distribution,
                           self.levels + other.levels)

    @classmethod
    def zero(cls) -> 'LogDetTerms':
        return cls(tf.constant(0.), tf.constant(0.))


def _check_event_shape(x: tf.Tensor, expected: Tuple[int, int, int],
                       owner: str) -> None:
    if x.shape.rank is None:
        raise InputError(f'{owner}: input rank must be known statically; '
                         f'got a tensor of unknown rank.')
    if x.shape.rank < 3:
        raise InputError(f'{owner}: expected an input of shape '
                         f'[..., {", ".join(map(str, expected))}]; got rank '
                         f'{x.shape.rank} with shape {x.shape}.')
    seen = tuple(x.shape[-3:])
    for s, e in zip(seen, expected):
        if s is not None and s != e:
            raise InputError(f'{owner}: expected events of shape {list(expected)} '
                             f'(H, W, C); got {list(seen)} in an input of shape '
                             f'{x.shape}.')


class ImageBijector(tfb.Bijector):
    """Base class for bijectors on `[..., H, W, C]` events.

    Leaves implement two methods on rank-4 tensors `[N, H, W, C]`:

    - `_forward_4d(x) -> y`
    - `_inverse_and_log_det_4d(y) -> (x, ildj)`, `ildj` of shape `[N]`, or a
        scalar when the Jacobian is constant;

    and declare in `log_det_term` which likelihood term their log-determinant
    belongs to. Compositions implement `_inverse_and_log_det_terms_4d(y,
    data_init) -> (x, LogDetTerms)` instead. The base class handles arbitrary
    batch shapes, shape checks and the TFP plumbing. `y` is the image side
    (`image_event_shape`), `x` the latent side (`latent_event_shape`); they
    differ only for `Squeeze`.
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
            raise InputError(f'{name}: event shape must be [H, W, C]; got '
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
        """Leaves: `(x, ildj)`, `ildj` of shape `[N]` or a scalar."""
        raise NotImplementedError

    def _initialize(self, y) -> None:
        """Data-dependent initialisation from image-side data `y` (leaves that have one)."""
        del y

    def _inverse_and_log_det_terms_4d(self, y, data_init: bool):
        """`(x, LogDetTerms)` on `[N, H, W, C]`; entries may be scalars.

        Leaves put their log-determinant on the side they declare in
        `log_det_term`; compositions override this to combine their parts.
        """
        if data_init:
            self._initialize(y)
        x, ildj = self._inverse_and_log_det_4d(y)
        zero = tf.constant(0.)
        if self.log_det_term == DISTRIBUTION:
            return x, LogDetTerms(zero, ildj)
        return x, LogDetTerms(ildj, zero)

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
    def inverse_and_log_det_terms(self, y: tf.Tensor, data_init: bool = False
                                  ) -> Tuple[tf.Tensor, LogDetTerms]:
        """The inverse and its log-determinant, split into terms, in one pass.

        Args:
          y: image-side tensor `[..., H, W, C]`.
          data_init: if `True`, every `ActNorm` is first initialised from the
            data that reaches it (data-dependent initialisation); for eager use
            before training.
            Default value: `False`.

        Returns:
          x: the latent-side tensor `inverse(y)`.
          terms: a `LogDetTerms` whose entries have one value per example,
            shape `[...]`, and sum to `inverse_log_det_jacobian(y, 3)`.
        """
        _check_event_shape(y, self._image_event_shape, self.name)
        y4, batch_shape = self._to_4d(y, self._image_event_shape)
        x4, terms = self._inverse_and_log_det_terms_4d(y4, data_init)
        # Constant Jacobians come back as scalars (docs/stack.md, note 3).
        per_example = tf.zeros(tf.shape(y4)[:1], y4.dtype)

        def per_batch(t):
            return self._from_4d_log_det(per_example + t, batch_shape)

        levels = tuple(level.map(per_batch) for level in terms.levels)
        return (self._from_4d(x4, batch_shape, self._latent_event_shape),
                LogDetTerms(per_batch(terms.volume), per_batch(terms.distribution), levels))

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
        x4, terms = self._inverse_and_log_det_terms_4d(y4, data_init=False)
        return (self._from_4d(x4, batch_shape, self._latent_event_shape),
                self._from_4d_log_det(terms.total, batch_shape))

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

    def _initialize(self, y) -> None:
        self.initialize(y)

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
            # Constant masks of the two strict triangles and of the diagonal.
            self._strictly_lower = tf.constant(np.tril(np.ones((channels, channels)), -1),
                                               tf.float32)
            self._strictly_upper = tf.constant(np.triu(np.ones((channels, channels)), 1),
                                               tf.float32)
            self._eye = tf.eye(channels)
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
        # Products with constant masks, not `band_part` and `diag_part`: the
        # same numbers, and the per-image gradients `tf.vectorized_map` takes
        # (`DensityModel.gradient_statistics`) cannot be saved in a SavedModel
        # through the gradient of `diag_part`.
        diag = self._sign * tf.exp(self.log_abs_diag)
        return (self.lower * self._strictly_lower + self.upper * self._strictly_upper
                + self._eye * diag)

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
            raise InputError(f'Squeeze: height and width must be divisible by the '
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
    factored out. `bijector` is an `ImageBijector` (usually a `Chain`) that
    maps `[H, W, num_channels]` events to events of the same shape.
    """

    def __init__(self, bijector: ImageBijector, event_shape: Sequence[int],
                 num_channels: int, name: str = 'apply_to_channels'):
        parameters = dict(locals())
        height, width, channels = (int(d) for d in event_shape)
        if not 0 < num_channels < channels:
            raise InputError(f'ApplyToChannels: num_channels must be in '
                             f'(0, {channels}); got {num_channels}.')
        _check_image_bijector(bijector, 'ApplyToChannels')
        inner = (height, width, num_channels)
        for what, shape in (('image', bijector.image_event_shape),
                            ('latent', bijector.latent_event_shape)):
            if tuple(shape) != inner:
                raise InputError(
                    f'ApplyToChannels: the inner bijector must map events of '
                    f'shape {list(inner)} to the same shape; its {what} events '
                    f'are {list(shape)}.')
        self._bijector = bijector
        self._num_channels = num_channels
        super().__init__(event_shape, event_shape,
                         is_constant_jacobian=bijector.is_constant_jacobian,
                         parameters=parameters, name=name)

    @property
    def bijector(self) -> ImageBijector:
        return self._bijector

    def split(self, t: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        return t[..., :self._num_channels], t[..., self._num_channels:]

    def _forward_4d(self, x):
        x1, x2 = self.split(x)
        return tf.concat([self._bijector.forward(x1), x2], axis=-1)

    def _inverse_and_log_det_terms_4d(self, y, data_init):
        y1, y2 = self.split(y)
        x1, terms = self._bijector._inverse_and_log_det_terms_4d(y1, data_init)
        return tf.concat([x1, y2], axis=-1), terms


def _check_image_bijector(bijector, owner: str) -> None:
    if not isinstance(bijector, ImageBijector):
        raise TypeError(f'{owner} composes the package\'s image bijectors (ImageBijector), '
                        f'which split their log-determinants into terms in one pass; got '
                        f'{type(bijector).__name__}.')


class Chain(ImageBijector):
    """The composition of image bijectors, listed in scoring order.

    `inverse` applies `bijectors[0]`'s inverse first (the image side), as
    `tfb.Chain` does; `forward` applies them in reverse order. Each one's
    latent event shape must be the next one's image event shape. The
    log-determinant terms of the parts add up.

    Args:
      bijectors: `ImageBijector`s, image side first.
      name: name of the chain.
    """

    def __init__(self, bijectors: Sequence[ImageBijector], name: str = 'chain'):
        parameters = dict(locals())
        bijectors = list(bijectors)
        if not bijectors:
            raise InputError('Chain: needs at least one bijector.')
        for b in bijectors:
            _check_image_bijector(b, 'Chain')
        for a, b in zip(bijectors, bijectors[1:]):
            if tuple(a.latent_event_shape) != tuple(b.image_event_shape):
                raise InputError(f'Chain: {a.name} maps to latent events of shape '
                                 f'{list(a.latent_event_shape)}, but {b.name} takes '
                                 f'{list(b.image_event_shape)}.')
        super().__init__(bijectors[0].image_event_shape, bijectors[-1].latent_event_shape,
                         is_constant_jacobian=all(b.is_constant_jacobian for b in bijectors),
                         parameters=parameters, name=name)
        # The attribute name of TFP's chains, which the shipped checkpoints and
        # SavedModels were written with: the variables keep their paths.
        self._bijectors_trackable = bijectors

    @property
    def bijectors(self) -> Tuple[ImageBijector, ...]:
        return tuple(self._bijectors_trackable)

    def _forward_4d(self, x):
        for b in reversed(self.bijectors):
            x = b.forward(x)
        return x

    def _inverse_and_log_det_terms_4d(self, y, data_init):
        terms = LogDetTerms.zero()
        for b in self.bijectors:
            y, part = b._inverse_and_log_det_terms_4d(y, data_init)
            terms = terms.plus(part)
        return y, terms


class Invert(ImageBijector):
    """The inverse of a parameter-free, constant-Jacobian image bijector (e.g.
    `Invert(Squeeze(...))`, the un-squeeze that ends a level of Glow).

    Its inverse is the wrapped bijector's forward, whose log-determinant is
    minus the wrapped inverse's (a constant).
    """

    def __init__(self, bijector: ImageBijector, name: str = 'invert'):
        parameters = dict(locals())
        _check_image_bijector(bijector, 'Invert')
        if not bijector.is_constant_jacobian or bijector.trainable_variables:
            raise InputError(f'Invert: supports parameter-free bijectors with a constant '
                             f'Jacobian; {bijector.name} is not one.')
        super().__init__(bijector.latent_event_shape, bijector.image_event_shape,
                         is_constant_jacobian=True, parameters=parameters, name=name)
        self._bijector = bijector  # The attribute name of tfb.Invert, as in Chain.

    @property
    def bijector(self) -> ImageBijector:
        return self._bijector

    def _forward_4d(self, x):
        return self._bijector.inverse(x)

    def _inverse_and_log_det_4d(self, y):
        x = self._bijector.forward(y)
        _, ildj = self._bijector.inverse_and_log_det(x)
        return x, -ildj


def inverse_and_log_det_terms(bijector: ImageBijector, y: tf.Tensor, data_init: bool = False
                              ) -> Tuple[tf.Tensor, LogDetTerms]:
    """`bijector.inverse_and_log_det_terms(y, data_init)`, for any image bijector.

    Raises:
      TypeError: `bijector` is not an `ImageBijector` of the package (TFP's own
        bijectors have no split of their log-determinant).
    """
    _check_image_bijector(bijector, 'inverse_and_log_det_terms')
    return bijector.inverse_and_log_det_terms(y, data_init=data_init)
