"""The shared evaluator: any model and dataset to per-image scores.

`score(model, data)` batches the images through a prefetching `tf.data`
pipeline into the model's one traced function, `model.score_batch` (a
`tf.function` with input signature uint8 `[None, H, W, C]`; it runs on a GPU
when TensorFlow sees one, on the CPU otherwise), and returns a `ScoreResult`
of per-image NumPy arrays: `log_prob` (nats), `bits_per_dim`, and the model's
terms (for flows `log_pz`, `log_det`, `dequant_const`).
"""

import dataclasses
import json
import os
import sys
import zipfile
from typing import Dict, Optional, Tuple, Union

import numpy as np
import tensorflow as tf
from absl import logging
from tqdm.auto import tqdm

from tfp_ood import data as data_lib
from tfp_ood.errors import InputError
from tfp_ood.models.base import GRADIENT_BATCH_SIZE, DensityModel, check_images
from tfp_ood.terms import BITS_PER_DIM, LOG_PROB

__all__ = ['ScoreResult', 'score']


@dataclasses.dataclass
class ScoreResult:
    """Per-image scores of one dataset under one model.

    Attributes:
      name: what was scored, e.g. `'svhn_cropped/test'`.
      scores: per-image arrays `[N]`: `'log_prob'` (nats per image),
        `'bits_per_dim'`, and the model's terms.
      labels: `[N]` class labels (`-1` where unknown), aligned with `scores`.
      image_shape: `(H, W, C)`.
      model: a name for the model, for plots and tables.
    """

    name: str
    scores: Dict[str, np.ndarray]
    labels: np.ndarray
    image_shape: Tuple[int, int, int]
    model: str = ''

    @property
    def log_prob(self) -> np.ndarray:
        return self.scores[LOG_PROB]

    @property
    def bits_per_dim(self) -> np.ndarray:
        return self.scores[BITS_PER_DIM]

    @property
    def num_images(self) -> int:
        return len(self.log_prob)

    @property
    def num_nonfinite(self) -> int:
        """Images whose log-likelihood is NaN or infinite."""
        return int(np.sum(~np.isfinite(self.log_prob)))

    def summary(self) -> Dict[str, float]:
        """Mean and standard deviation of bits/dim and nats over finite scores."""
        finite = np.isfinite(self.log_prob)
        # float64: a trained flow can give random images log-likelihoods near -1e27,
        # whose squares overflow float32.
        bpd = self.bits_per_dim[finite].astype(np.float64)
        nats = self.log_prob[finite].astype(np.float64)
        return {
            'num_images': self.num_images,
            'num_nonfinite': self.num_nonfinite,
            'bpd_mean': float(np.mean(bpd)) if bpd.size else float('nan'),
            'bpd_std': float(np.std(bpd)) if bpd.size else float('nan'),
            'log_prob_mean': float(np.mean(nats)) if nats.size else float('nan'),
            'log_prob_std': float(np.std(nats)) if nats.size else float('nan'),
        }

    def save(self, path: str) -> None:
        """Writes the scores as `.npz` (arrays plus a JSON `meta` entry), atomically."""
        meta = json.dumps({'name': self.name, 'model': self.model,
                           'image_shape': list(self.image_shape)})
        if len(self.labels) != self.num_images:
            raise InputError(f'{self.name}: {self.num_images} scores but {len(self.labels)} '
                             f'labels.')
        partial = f'{path}.partial'  # Moved into place once complete.
        with open(partial, 'wb') as f:  # np.savez would append '.npz'.
            np.savez(f, labels=self.labels, meta=np.array(meta),
                     **{f'score_{k}': v for k, v in self.scores.items()})
        os.replace(partial, path)

    @classmethod
    def load(cls, path: str) -> 'ScoreResult':
        """Reads a `save`d file.

        Raises:
          FileNotFoundError: no file at `path`.
          ValueError: the file is empty, truncated, or not a saved `ScoreResult`.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f'No score file at {path}.')
        try:
            with np.load(path) as f:
                meta = json.loads(str(f['meta']))
                scores = {k[len('score_'):]: f[k] for k in f.files if k.startswith('score_')}
                labels = f['labels']
        except (EOFError, OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
            raise InputError(f'{path} is not a score file of tfp_ood ({type(e).__name__}: '
                             f'{e}).') from None
        return cls(name=meta['name'], scores=scores, labels=labels,
                   image_shape=tuple(meta['image_shape']), model=meta['model'])


def _no_labels(image):
    return tf.fill(tf.shape(image)[:-3], tf.constant(-1, tf.int64))


#: Images a `tfp_ood.inputs.LazyImages` is read by when it is scored.
LAZY_CHUNK = 256


def _lazy_dataset(images, image_shape, name: str) -> tf.data.Dataset:
    """`(image, -1)` of a `LazyImages`, read `LAZY_CHUNK` images at a time."""
    check_images(images[:1], image_shape, what=name)  # Shape and type, from one image.

    def chunks():
        for start in range(0, len(images), LAZY_CHUNK):
            yield images[start:start + LAZY_CHUNK]

    ds = tf.data.Dataset.from_generator(chunks, output_signature=tf.TensorSpec(
        (None,) + tuple(int(d) for d in image_shape), tf.uint8))
    ds = ds.prefetch(1).unbatch().apply(tf.data.experimental.assert_cardinality(len(images)))
    return ds.map(lambda image: (image, _no_labels(image)))


def as_image_dataset(data, image_shape, name: str = 'data') -> tf.data.Dataset:
    """Validates `data` and returns an unbatched dataset of `(image, label)`.

    `data`: a uint8 array, tensor or nested list `[N, H, W, C]`, a
    `tfp_ood.inputs.LazyImages` (read a chunk at a time), or a
    `tf.data.Dataset` of `{'image', 'label'}` dicts, of `(image, label)` or
    `(image,)` tuples or of plain images, batched or not (label -1 where
    there is none).
    """
    if getattr(data, 'decodes_when_indexed', False):  # `tfp_ood.inputs.LazyImages`.
        return _lazy_dataset(data, image_shape, name)
    if not isinstance(data, tf.data.Dataset):
        images = check_images(data, image_shape, what=name)
        return tf.data.Dataset.from_tensor_slices((images, _no_labels(images)))
    spec = data.element_spec
    label_spec = (spec.get('label') if isinstance(spec, dict) else
                  spec[1] if isinstance(spec, tuple) and len(spec) > 1 else None)
    if label_spec is not None and not (label_spec.dtype.is_integer or label_spec.dtype.is_bool
                                       or label_spec.dtype.is_floating):
        raise InputError(f'{name}: labels must be integers; the dataset holds '
                         f'{label_spec.dtype.name} labels.')
    if isinstance(spec, dict):
        if 'image' not in spec:
            raise InputError(f'{name}: dataset elements are dicts without an "image" '
                             f'key; keys: {sorted(spec)}.')
        image_spec = spec['image']
        if 'label' in spec:
            ds = data.map(lambda e: (e['image'], tf.cast(e['label'], tf.int64)))
        else:
            ds = data.map(lambda e: (e['image'], _no_labels(e['image'])))
    elif isinstance(spec, tuple):
        image_spec = spec[0]
        if len(spec) > 1:
            ds = data.map(lambda *e: (e[0], tf.cast(e[1], tf.int64)))
        else:
            ds = data.map(lambda *e: (e[0], _no_labels(e[0])))
    else:
        image_spec = spec
        ds = data.map(lambda image: (image, _no_labels(image)))
    expected = list(image_shape)
    if image_spec.dtype != tf.uint8:
        raise InputError(f'{name}: expected uint8 images with values 0..255; the '
                         f'dataset holds {image_spec.dtype.name}. Convert explicitly '
                         f'before scoring.')
    shape = image_spec.shape
    if shape.rank == 4:  # Already batched.
        ds = ds.unbatch()
        shape = shape[1:]
    if shape.rank != 3 or any(s is not None and s != e for s, e in zip(shape, expected)):
        raise InputError(f'{name}: expected images of shape {expected} (H, W, C); the '
                         f'dataset holds images of shape {shape}.')
    if not shape.is_fully_defined():  # Checked per image as the dataset is read.
        ds = ds.map(lambda image, label: (tf.ensure_shape(image, expected), label))
    return ds


def _distributed(score_batch, strategy: tf.distribute.Strategy):
    """`score_batch` run on every replica's share of a distributed batch, the
    per-image results gathered back in the batch's order."""

    @tf.function
    def run(images):
        # A plain callable: strategy.run hands a tf.function the PerReplica values whole.
        per_replica = strategy.run(lambda shard: score_batch(shard), args=(images,))
        # In one order on every worker: collectives pair up in the order they
        # are issued, and a model's dict of scores need not list its keys in
        # the same order in two processes (a SavedModel's outputs do not).
        return {k: strategy.gather(per_replica[k], axis=0) for k in sorted(per_replica)}

    return run


def _first_line(message: str) -> str:
    return next((line.strip() for line in message.splitlines() if line.strip()), message)


def _batches(ds, name: str, image_shape):
    """The batches of `ds`; its own check of each image's shape failing
    (`tf.ensure_shape` in `as_image_dataset`) is the caller's error, named."""
    iterator = iter(ds)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except tf.errors.InvalidArgumentError as e:
            raise InputError(f'{name}: expected images of shape {list(image_shape)}; the '
                             f'dataset holds another ({_first_line(e.message)}).') from None
        yield batch


def _arrays(scores: Dict[str, tf.Tensor]) -> Dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in scores.items()}


def _score_distinct(score_batch, images: tf.Tensor) -> Dict[str, np.ndarray]:
    """`score_batch(images)` as arrays, each distinct image of the batch scored once
    (a score is a function of the image alone): a set of constant images, say,
    costs one image a batch."""
    batch = images.numpy()
    rows = np.ascontiguousarray(batch.reshape(len(batch), -1))
    _, first, inverse = np.unique(rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))),
                                  return_index=True, return_inverse=True)
    if len(first) == len(batch):
        return _arrays(score_batch(images))
    scores = score_batch(tf.constant(batch[first]))
    return {k: v.numpy()[inverse.reshape(-1)] for k, v in scores.items()}


def score(model: DensityModel,
          data: Union[tf.data.Dataset, np.ndarray, tf.Tensor],
          name: str = 'data',
          batch_size: int = 256,
          progress: bool = True,
          model_name: Optional[str] = None,
          jit_compile: bool = False,
          strategy: Optional[tf.distribute.Strategy] = None,
          statistics: Union[bool, str] = False) -> ScoreResult:
    """Scores every image of `data` under `model`.

    Args:
      model: a `DensityModel`.
      data: a `tf.data.Dataset` of `{'image', 'label'}` dicts (as
        `tfp_ood.data.load` returns), of `(image, label)` tuples or of images,
        batched or not; or a uint8 array `[N, H, W, C]`.
      name: what is scored, for messages, plots and tables.
      batch_size: images per call of the traced function. Scores do not
        depend on it; identical images within a batch are scored once.
        Default value: `256`.
      progress: show a progress bar (stderr).
        Default value: `True`.
      model_name: name of the model for plots and tables.
        Default value: `model.name`.
      jit_compile: score with the XLA-compiled function
        (`model.xla_score_batch`); equal up to float rounding. Slower than
        the plain graph for every Glow size on the 2-core development CPU
        (`benchmarks/run.py`), so off by default; measure it on your hardware.
        A model XLA cannot compile (a VAE restored from a SavedModel, whose
        number of decoding passes XLA cannot know) is an `InputError` naming
        it.
        Default value: `False`.
      strategy: a `tf.distribute.Strategy` to score with, as training uses
        one (`MirroredStrategy` over local GPUs, `MultiWorkerMirroredStrategy`
        across machines): each global batch of `batch_size` images is split
        across the replicas and the per-image results gathered back in the
        order of `data`, so the result equals single-device scoring. Load or
        build the model inside `strategy.scope()` on GPUs.
        Default value: no distribution.
      statistics: also return the model's statistics along its computation
        (`model.statistics`, e.g. a flow's per-step log-determinants) among
        the scores; `'gradients'`: those and the log-norms of each image's
        log-likelihood gradient per group of parameters
        (`model.gradient_statistics`; batches of at most
        `tfp_ood.models.base.GRADIENT_BATCH_SIZE` images).
        Default value: `False`.

    Returns:
      A `ScoreResult` with one entry per image, in the order of `data`.

    Raises:
      ValueError: images of the wrong dtype, rank or shape for the model, or
        an empty dataset.
    """
    if batch_size < 1:
        raise InputError(f'batch_size must be >= 1; got {batch_size}.')
    if statistics not in (False, True, 'gradients'):
        raise InputError(f"score: statistics must be False, True or 'gradients'; got "
                         f"{statistics!r}.")
    if statistics == 'gradients':
        batch_size = min(batch_size, GRADIENT_BATCH_SIZE)
    ds = as_image_dataset(data, model.image_shape, name)
    num_images = int(ds.cardinality())
    ds = data_lib.without_autotune(ds.batch(batch_size).prefetch(2))
    if statistics and jit_compile:
        raise InputError('score: statistics=True runs the plain graph; drop jit_compile.')
    score_batch = (model.gradient_statistics_batch if statistics == 'gradients' else
                   model.statistics_batch if statistics else
                   model.xla_score_batch if jit_compile else model.score_batch)
    if strategy is not None:
        score_batch = _distributed(score_batch, strategy)
        ds = strategy.experimental_distribute_dataset(ds)
    chunks, labels = [], []
    # Redraw at most every second on a terminal, every 30 s into a log file.
    interval = 1.0 if sys.stderr.isatty() else 30.0
    with tqdm(total=num_images if num_images >= 0 else None, desc=f'scoring {name}',
              unit='img', disable=not progress, leave=False, mininterval=interval) as bar:
        for images, batch_labels in _batches(ds, name, model.image_shape):
            if strategy is not None:
                batch_labels = strategy.gather(batch_labels, axis=0)
            try:
                chunks.append(_score_distinct(score_batch, images) if strategy is None else
                              _arrays(score_batch(images)))
            except tf.errors.InvalidArgumentError as e:
                if not (jit_compile and ('tf2xla' in e.message
                                         or 'XLA compilation' in e.message)):
                    raise  # The model's own error: as it is.
                raise InputError(f'{name}: XLA cannot compile the scoring of '
                                 f'{model_name or model.name} ({_first_line(e.message)}); '
                                 f'score it without jit_compile.') from None
            labels.append(batch_labels.numpy())
            bar.update(len(batch_labels))
    if not chunks:
        raise InputError(f'{name}: the dataset is empty; nothing to score.')
    scores = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    result = ScoreResult(name=name, scores=scores, labels=np.concatenate(labels),
                         image_shape=model.image_shape,
                         model=model_name or model.name)
    if result.num_nonfinite:
        logging.warning('%s: %d of %d images have a non-finite log-likelihood '
                        '(kept in the scores, counted in summary()).', name,
                        result.num_nonfinite, result.num_images)
    return result
