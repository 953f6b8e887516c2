"""The interface every density model of the package implements.

A model scores uint8 images `[batch, H, W, C]` with values `0..255`. Models
are continuous densities on dequantized inputs

```none
x = (k + u) / 256 - 1/2,     u in [0, 1)^D,   D = H * W * C,
log P(k) ~= log p(x) - D log 256,
bits/dim = -log P(k) / (D ln 2).
```

Training draws `u ~ U[0, 1)^D` (uniform dequantization, whose expectation
lower-bounds `log P(k)`). Scoring uses the deterministic midpoint `u = 1/2`
by default, so a score is a function of the image alone; pass `noise` to use
other draws. Every log-likelihood is in nats per image; bits/dim is derived
from it, never recomputed.
"""

import contextlib
import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfp_ood.errors import InputError
from tfp_ood.terms import BITS_PER_DIM, LOG_PROB

__all__ = ['DensityModel', 'bits_per_dim', 'check_images', 'dequantize',
           'NUM_BINS']

NUM_BINS = 256
#: What ends the name of a gradient statistic (`DensityModel.gradient_statistics`).
GRADIENT_SUFFIX = '_log_grad_norm'
#: The largest batch `tfp_ood.score(..., statistics='gradients')` runs at once.
GRADIENT_BATCH_SIZE = 64


@contextlib.contextmanager
def tf_log_without(fragment: str):
    """TensorFlow's log, for the block, without the records whose message
    holds `fragment`."""
    def keep(record: logging.LogRecord) -> bool:
        return fragment not in record.getMessage()

    logger = tf.get_logger()
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def bits_per_dim(log_prob, num_dims: int):
    """Bits per dimension from a log-likelihood in nats per image."""
    return -log_prob / (num_dims * math.log(2.0))


def dequantize(images: tf.Tensor, noise: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Maps uint8 images to `(k + u) / 256 - 1/2`, `u = noise` or `1/2`."""
    x = tf.cast(images, tf.float32)
    x = x + (0.5 if noise is None else noise)
    return x / NUM_BINS - 0.5


def check_images(images, image_shape: Sequence[int], what: str = 'images'):
    """Validates a batch of images for a model of `image_shape`.

    Accepts a NumPy array, a `tf.Tensor` or a nested list or tuple
    `[batch, H, W, C]` of uint8, or of another integer type with values in
    `0..255` (cast to uint8).

    Returns:
      The images as a uint8 `tf.Tensor`.

    Raises:
      ValueError: wrong rank or shape, a float dtype, or values outside
        `0..255`; the message says what was expected and what was seen.
    """
    expected = '[batch, ' + ', '.join(str(d) for d in image_shape) + ']'
    if not isinstance(images, (np.ndarray, tf.Tensor, tf.Variable)):
        if images is None or isinstance(images, (str, bytes, dict)) or not hasattr(
                images, '__len__'):
            raise InputError(f'{what}: expected uint8 images {expected} as a NumPy array, a '
                             f'tf.Tensor, a nested list or a tf.data.Dataset; got '
                             f'{type(images).__name__}.')
        try:
            images = np.asarray(images)  # Lists and tuples of images.
        except ValueError:
            images = None
        if images is None or images.dtype == object:
            raise InputError(f'{what}: the images are of different shapes; expected '
                             f'{expected}.')
    dtype = tf.as_dtype(images.dtype)
    shape = tuple(images.shape)
    if len(shape) != 4:
        raise InputError(f'{what}: expected a rank-4 batch of images {expected} '
                         f'(add a batch axis for a single image); got rank '
                         f'{len(shape)} with shape {list(shape)}.')
    seen = tuple(shape[1:])
    if any(s is not None and s != e for s, e in zip(seen, image_shape)):
        raise InputError(f'{what}: expected images of shape {expected} '
                         f'(H, W, C); got {list(shape)}. Resize or convert '
                         f'the images first.')
    if dtype == tf.uint8:
        return tf.convert_to_tensor(images)
    if not dtype.is_integer:
        raise InputError(
            f'{what}: expected uint8 images with integer values 0..255; got '
            f'dtype {dtype.name}. Floats are ambiguous (0..1 or 0..255?): '
            f'convert explicitly, e.g. np.round(x * 255).astype(np.uint8).')
    values = np.asarray(images)
    if values.size:
        low, high = values.min(), values.max()
        if low < 0 or high > 255:
            raise InputError(f'{what}: expected values in 0..255; got values '
                             f'from {low} to {high} (dtype {dtype.name}).')
    return tf.convert_to_tensor(values.astype(np.uint8))


class DensityModel(tf.Module):
    """Base class of the package's density models on uint8 images.

    Subclasses implement `log_prob_terms(images, noise=None)`, returning a
    dict of per-image tensors with at least `'log_prob'` (nats), and list
    their keys in `term_names`. `score_batch` is the one traced function the
    evaluator (and export) runs: a `tf.function` with the input signature
    `[None, H, W, C]` uint8.
    """

    #: Keys of `log_prob_terms`, besides `'log_prob'`.
    term_names: Tuple[str, ...] = ()
    #: Whether the model draws images with `sample(num_images, temperature, seed)`.
    can_sample: bool = False
    #: The temperatures at which training summaries draw samples.
    sample_temperatures: Tuple[float, ...] = (0.7, 1.0)
    #: Whether `sample` takes any temperature (else only `sample_temperatures`).
    any_temperature: bool = True
    #: Whether the model is a normalizing flow: `log_prob_terms` has the
    #: distribution and volume terms (`'log_pz'`, `'log_det'`) and per-level
    #: terms, and `precision` says where its coupling networks compute.
    is_flow: bool = False
    #: Where the model's networks compute (`tfp_ood.config.PRECISIONS`).
    precision: str = 'float32'
    #: Whether `gradient_statistics` vectorises its per-image gradients over the
    #: batch (`tf.vectorized_map`); models whose layers update state while they
    #: run (weight normalisation's first call) take one image at a time.
    vectorized_gradients: bool = False

    def __init__(self, image_shape: Sequence[int], name: Optional[str] = None):
        super().__init__(name=name)
        self._image_shape = tuple(int(d) for d in image_shape)
        if len(self._image_shape) != 3:
            raise InputError(f'image_shape must be (H, W, C); got '
                             f'{image_shape}.')
        self.score_batch = tf.function(
            self._score_batch, autograph=False,
            input_signature=[tf.TensorSpec((None,) + self._image_shape,
                                           tf.uint8, name='images')])

    @property
    def xla_score_batch(self):
        """`score_batch` compiled with XLA (`jit_compile=True`), built on first use.

        On the idle 2-core development CPU XLA scored the `small`, `cpu` and
        `paper` Glows at 0.90x, 0.89x and 0.62x the speed of the plain graph
        and slowed training too (`benchmarks/run.py`); it won (1.6x for the
        `small` Glow's scoring) only with another job on the cores. Hence
        opt-in (`tfp_ood.evaluate.score(..., jit_compile=True)`); measure it on
        your hardware.
        """
        if getattr(self, '_xla_score_batch', None) is None:
            self._xla_score_batch = tf.function(
                self._score_batch, jit_compile=True, autograph=False,
                input_signature=[tf.TensorSpec((None,) + self._image_shape, tf.uint8,
                                               name='images')])
        return self._xla_score_batch

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return self._image_shape

    @property
    def num_dims(self) -> int:
        """`D = H * W * C`."""
        return int(np.prod(self._image_shape))

    def log_prob_terms(self, images, noise=None) -> Dict[str, tf.Tensor]:
        raise NotImplementedError

    @property
    def statistic_names(self) -> Tuple[str, ...]:
        """The per-image statistics along the model's computation that
        `statistics` reports besides its terms (none by default)."""
        return ()

    def statistics(self, images, gradients: bool = False) -> Dict[str, tf.Tensor]:
        """`log_prob_terms(images)` and every statistic of `statistic_names`,
        `[batch]` float32 each: what detectors built on the model's
        computation (`tfp_ood.detectors.DensityOfStates`) read; with
        `gradients`, also `gradient_statistics(images)` (several times the
        cost of a pass through the model)."""
        out = self._forward_statistics(images)
        if gradients:
            out.update(self.gradient_statistics(images))
        return out

    def _forward_statistics(self, images) -> Dict[str, tf.Tensor]:
        """`log_prob_terms(images)` and every statistic of `statistic_names`."""
        return dict(self.log_prob_terms(images))

    @property
    def statistics_batch(self):
        """`statistics` with `bits_per_dim`, traced like `score_batch` (built on
        first use); `tfp_ood.score(..., statistics=True)` runs it."""
        if getattr(self, '_statistics_batch', None) is None:
            self._statistics_batch = self._traced_statistics(gradients=False)
        return self._statistics_batch

    @property
    def gradient_statistics_batch(self):
        """`statistics(images, gradients=True)` with `bits_per_dim`, traced like
        `score_batch` (built on first use); `tfp_ood.score(...,
        statistics='gradients')` runs it."""
        if getattr(self, '_gradient_statistics_batch', None) is None:
            self._gradient_statistics_batch = self._traced_statistics(gradients=True)
        return self._gradient_statistics_batch

    def _traced_statistics(self, gradients: bool):
        def statistics_batch(images):
            out = self.statistics(images, gradients=gradients)
            out[BITS_PER_DIM] = self.bits_per_dim(out[LOG_PROB])
            return out
        return tf.function(statistics_batch, autograph=False, input_signature=[
            tf.TensorSpec((None,) + self._image_shape, tf.uint8, name='images')])

    def parameter_groups(self) -> Dict[str, List[tf.Variable]]:
        """The trainable variables, in the groups whose gradient norms
        `gradient_statistics` reports (every variable in exactly one).

        By default one group per layer, in the order of `trainable_variables`,
        named by position (`param_group0`, `param_group1`, ...): Keras names
        layers by how many were built before them in the process, so their
        names would not survive a restore. Flows name theirs by structure.
        """
        groups: Dict[str, List[tf.Variable]] = {}
        layers: Dict[str, str] = {}
        for v in self.trainable_variables:
            layer = v.name.rsplit('/', 1)[0] if '/' in v.name else v.name
            group = layers.setdefault(layer, f'param_group{len(layers)}')
            groups.setdefault(group, []).append(v)
        return groups

    @property
    def gradient_statistic_names(self) -> Tuple[str, ...]:
        """`<group>_log_grad_norm` for each of `parameter_groups`: what
        `gradient_statistics` reports."""
        return tuple(f'{group}{GRADIENT_SUFFIX}' for group in self.parameter_groups())

    def gradient_statistics(self, images) -> Dict[str, tf.Tensor]:
        """Per image, the log of the L2 norm of the gradient of its
        log-likelihood (`log_prob`, midpoint dequantization) with respect to
        each group of parameters (`parameter_groups`), `[batch]` float32 each:
        `0.5 * log sum_{theta in group} (d log p(x) / d theta)^2`.

        Layer-wise gradient norms as OOD statistics are from Dauncey et al.,
        "Approximations to the Fisher Information Metric of Deep Generative
        Models for Out-Of-Distribution Detection" (2024). Where
        `vectorized_gradients` (flows), the per-image gradients are vectorised
        over the batch (`tf.vectorized_map`), and memory grows with the batch
        times the number of parameters (`tfp_ood.score(...,
        statistics='gradients')` scores in batches of at most
        `GRADIENT_BATCH_SIZE`); other models take one image after the other.
        """
        images = check_images(images, self._image_shape)
        groups = self.parameter_groups()
        variables = [v for vs in groups.values() for v in vs]
        if not variables:
            raise InputError(f'{type(self).__name__} has no trainable variables: no gradient '
                             f'statistics.')

        def squared_norms(image):
            with tf.GradientTape() as tape:
                log_prob = self.log_prob_terms(image[None])[LOG_PROB][0]
            grads = tape.gradient(log_prob, variables,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return [tf.reduce_sum(tf.square(g)) for g in grads]

        if self.vectorized_gradients:
            # pfor warns, once per convolution, that it loops over the filter's
            # gradient; the result is the same.
            with tf_log_without('uses a while_loop'):
                squares = tf.vectorized_map(squared_norms, images)
        else:  # One image after the other.
            squares = tf.unstack(tf.map_fn(
                lambda image: tf.stack(squared_norms(image)), images,
                fn_output_signature=tf.TensorSpec([len(variables)], tf.float32)), axis=1)
        out, start = {}, 0
        for group, members in groups.items():
            out[f'{group}{GRADIENT_SUFFIX}'] = 0.5 * tf.math.log(
                tf.add_n(squares[start:start + len(members)]))
            start += len(members)
        return out

    def _trackable_children(self, save_type='checkpoint', **kwargs):
        """The objects a checkpoint or SavedModel holds of the model: its variables
        and layers, never its traced functions.

        `tf.Module` would add to a SavedModel every `tf.function` among its
        attributes, tracing each first: `score_batch`, and `statistics_batch`
        and `xla_score_batch`, which the listing itself builds (they are
        properties). A tfp_ood export serves its own signatures
        (`tfp_ood.export`) and nothing loads those copies; tracing and writing
        them made an export of the cpu Glow 1.35x and its load 1.72x as long
        (`benchmarks/export.py`).
        """
        if save_type != 'savedmodel':
            return super()._trackable_children(save_type, **kwargs)
        functions = (tf.types.experimental.PolymorphicFunction,
                     tf.types.experimental.ConcreteFunction)
        return {name: child for name, child in self._checkpoint_dependencies
                if not isinstance(child, functions)}

    def get_config(self) -> Dict:
        """JSON-able configuration with a `'family'` key; see `models.from_config`."""
        raise NotImplementedError(f'{type(self).__name__} has no get_config().')

    def initialize(self, images, seed: int = 0) -> None:
        """Data-dependent initialisation before training; nothing by default."""
        del images, seed

    def saved_objects(self) -> Dict[str, Any]:
        """What a SavedModel's object graph holds of the model (`tfp_ood.export`
        writes and `restore` reads it): the model itself, as a training
        checkpoint does. Models whose layers cannot be saved as objects hold
        their variables only."""
        return {'model': self}

    def log_prob(self, images, noise=None) -> tf.Tensor:
        """Discrete log-likelihood `log P(k)` in nats per image, `[batch]`."""
        return self.log_prob_terms(images, noise)[LOG_PROB]

    def training_log_prob(self, images, noise=None) -> tf.Tensor:
        """The per-image objective `fit` maximises (nats): the log-likelihood by
        default, with dropout where the model has it, or a bound such as the ELBO."""
        return self.log_prob(images, noise)

    def bits_per_dim(self, log_prob):
        return bits_per_dim(log_prob, self.num_dims)

    def _score_batch(self, images):
        terms = dict(self.log_prob_terms(images))
        terms[BITS_PER_DIM] = self.bits_per_dim(terms[LOG_PROB])
        return terms
