"""What every detector shares: the `Detector` interface and its scores.

A detector's score is defined once, in TensorFlow ops (`Detector.graph_score`):
`score` runs that function on the evaluator's per-image terms, and an exported
detector (`tfp_ood.export.export_detector`) runs the very same function inside
its SavedModel. A statistic that no TensorFlow op computes (a JPEG 2000 or
JPEG XL length) is named by `Detector.python_statistics` and computed in
Python before the score, as one more column of the model's terms; a detector
that reads one cannot be exported.
"""

import abc
import dataclasses
import json
import math
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from tfp_ood.errors import InputError
from tfp_ood.evaluate import as_image_dataset, score as evaluate_score
from tfp_ood.metrics import ood_metrics
from tfp_ood.models.base import DensityModel, check_images, tf_log_without

__all__ = ['Detector', 'DetectorScores', 'NotFittedError', 'detector_metrics']

Images = Union[np.ndarray, tf.Tensor, tf.data.Dataset]

#: Images a detector decodes at a time from a set that is decoded only where it
#: is indexed (a folder's `tfp_ood.inputs.FolderImages`): fitting, scoring and
#: calibrating hold a chunk of them in memory, never the whole set.
CHUNK_IMAGES = 2048


# Each fit and score of a detector traces its own graph once, for its own fit;
# TensorFlow counts the traces of one method across instances and warns that
# the function "triggered tf.function retracing", which says nothing here, so
# those calls leave it out of the log (`tf_log_without`).
RETRACING = 'triggered tf.function retracing'


def is_lazy(images) -> bool:
    """Whether `images` decode only where indexed (`images[i:j]`), as a
    folder's `tfp_ood.inputs.FolderImages` do, rather than being in memory."""
    return bool(getattr(images, 'decodes_when_indexed', False))


def chunks(images, multiple: int = 1):
    """`(start, stop)` of consecutive chunks of about `CHUNK_IMAGES` images,
    each a multiple of `multiple` long (a last, shorter remainder joins the
    chunk before it)."""
    size, n = max(1, CHUNK_IMAGES // multiple) * multiple, len(images)
    bounds = list(range(0, n, size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < multiple:
        del bounds[-2]
    return list(zip(bounds[:-1], bounds[1:]))


Terms = Dict[str, np.ndarray]
LN2 = math.log(2.0)


class NotFittedError(InputError):
    """A detector that learns from in-distribution images was used before `fit`."""


@dataclasses.dataclass
class DetectorScores:
    """What a detector says about a set of images.

    Attributes:
      detector: the detector's name.
      ood_score: `[N]` (`[N // M]` for batches of `M` images): higher = more
        out-of-distribution, the package's one convention.
      components: `{name: [N]}`, the per-image numbers the score was made from
        (log-likelihoods in nats per image, lengths in bits, ...).
    """

    detector: str
    ood_score: np.ndarray
    components: Dict[str, np.ndarray]

    @property
    def num_nonfinite(self) -> int:
        return int(np.sum(~np.isfinite(self.ood_score)))


def detector_metrics(in_scores: DetectorScores, out_scores: DetectorScores
                     ) -> Dict[str, float]:
    """AUROC, AUPR-in, AUPR-out and FPR at 95% TPR of separating two score sets
    (`tfp_ood.metrics.ood_metrics`); a non-finite OOD score (an image whose
    likelihood under- or overflowed) ranks as the most out-of-distribution and
    is counted in `num_nonfinite_in` / `num_nonfinite_out`."""
    if in_scores.detector != out_scores.detector:
        raise InputError(f'The two score sets come from different detectors: '
                         f'{in_scores.detector!r} and {out_scores.detector!r}.')
    return ood_metrics(in_scores.ood_score, out_scores.ood_score, nonfinite='most_ood')


def f64(tensor) -> tf.Tensor:
    return tf.cast(tensor, tf.float64)


def num_dims(model: DensityModel) -> int:
    return int(np.prod(model.image_shape))


def check_same_shape(models: Sequence[DensityModel], what: str) -> None:
    shapes = {tuple(m.image_shape) for m in models}
    if len(shapes) != 1:
        raise InputError(f'{what}: the models score images of different shapes {sorted(shapes)}.')


def as_array(images: Images, image_shape, what: str) -> np.ndarray:
    """uint8 `[N, H, W, C]` NumPy images from an array, a list or a dataset (of
    the kinds `tfp_ood.score` reads)."""
    if is_lazy(images):  # Decoded chunk by chunk where it is read.
        if tuple(images.shape[1:]) != tuple(image_shape):
            raise InputError(f'{what}: images of shape {list(images.shape[1:])}; the model '
                             f'takes {list(image_shape)}.')
        return images
    if isinstance(images, tf.data.Dataset):
        batches = [b for b, _ in as_image_dataset(images, image_shape, what).batch(1024)
                   .as_numpy_iterator()]
        if not batches:
            raise InputError(f'{what}: the dataset is empty; no images.')
        images = np.concatenate(batches)
    return check_images(images, image_shape, what).numpy()


def read_json(path: str, what: str):
    """The JSON in `path`; a missing file or one that is not JSON is one line naming `what`."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f'No {what} at {path}.') from None
    except ValueError as e:
        raise InputError(f'{path} is not a {what} (not JSON: {e}).') from None


def evaluator_terms(model: DensityModel, images: Images, what: str,
                    strategy: Optional[tf.distribute.Strategy] = None,
                    statistics: Union[bool, str] = False, progress: bool = False) -> Terms:
    """The shared evaluator's per-image terms of `images` under `model`."""
    return evaluate_score(model, images, name=what, progress=progress, strategy=strategy,
                          statistics=statistics).scores


class Detector(abc.ABC):
    """An OOD detector: `fit` (where it needs it), then `score`.

    A detector names the density models it needs in `models`; `score(images)`
    runs the shared evaluator once per model and passes the per-image terms to
    `score_terms`, which runs `graph_score`. Code that scores the same images
    under several detectors can evaluate each model once and call
    `score_terms` directly.

    A subclass defines `graph_score` (its score, in TensorFlow ops) and, if it
    learns from in-distribution images, `fit_terms`, `get_state`, `set_state`
    and `is_fitted`.
    """

    name: str = 'detector'
    models: Sequence[DensityModel] = ()
    needs_fit: bool = False
    # Whether the score reads the models' statistics along their computation
    # (`DensityModel.statistics`), not only their terms; 'gradients' if also
    # their gradient norms (`DensityModel.gradient_statistics`).
    needs_statistics: Union[bool, str] = False
    # Whether the score reads the images themselves (not only the models' terms).
    reads_images: bool = False

    @property
    def python_statistics(self) -> Dict[str, Tuple[str, Optional[int]]]:
        """The statistics the score reads that no TensorFlow op computes:
        `{column: (codec, level)}` of `tfp_ood.detectors.codecs`."""
        return {}

    @property
    def is_fitted(self) -> bool:
        return not self.needs_fit

    def check_fitted(self, what: str = 'scoring') -> None:
        if not self.is_fitted:
            raise NotFittedError(f'{type(self).__name__}: call fit(train_images) before '
                                 f'{what}.')

    def fit(self, images: Images, progress: bool = False) -> 'Detector':
        """Fits what the detector learns from in-distribution images (a progress
        bar while the models score them, if `progress`); returns `self`."""
        if not self.needs_fit:
            return self
        if not isinstance(images, tf.data.Dataset):
            images = as_array(images, self.models[0].image_shape, f'{self.name} fit images')
        if is_lazy(images):
            limit = getattr(self, 'max_fit_images', None)
            if not (self.reads_images or self.python_statistics):
                return self.fit_terms(self._chunked_terms(images, progress), None)
            # The detector keeps at most `limit` images' statistics: only those decode.
            images = np.asarray(images[:limit] if limit else images)
        terms = [evaluator_terms(m, images, f'{self.name} fit images ({m.name})',
                                 statistics=self.needs_statistics, progress=progress)
                 for m in self.models]
        return self.fit_terms(terms, images)

    def _chunked_terms(self, images, progress: bool) -> Sequence[Terms]:
        """Each model's terms of lazily decoded `images`, a chunk at a time."""
        parts = [[evaluator_terms(m, np.asarray(images[start:stop]),
                                  f'{self.name} fit images ({m.name})',
                                  statistics=self.needs_statistics, progress=progress)
                  for m in self.models] for start, stop in chunks(images)]
        return [{k: np.concatenate([p[i][k] for p in parts]) for k in parts[0][i]}
                for i in range(len(self.models))]

    def fit_terms(self, terms: Sequence[Terms], images: Images) -> 'Detector':
        """`fit` from the evaluator's terms of the fit images (see `score_terms`)."""
        del terms, images
        return self

    def score(self, images: Images,
              strategy: Optional[tf.distribute.Strategy] = None,
              terms: Optional[Sequence[Terms]] = None,
              progress: bool = False) -> DetectorScores:
        """Per-image (or per-batch) OOD scores of `images` (the likelihoods
        computed under `strategy`, as `tfp_ood.score` does, if given; with a
        progress bar if `progress`).

        `terms`: the evaluator's scores of these very images under each of
        `models`, when they were computed already (`tfp_ood.score(model,
        images).scores`); the models are then not run again.
        """
        if not isinstance(images, tf.data.Dataset):
            images = as_array(images, self.models[0].image_shape, 'images')
        if is_lazy(images):
            return self._score_in_chunks(images, strategy, terms, progress)
        if terms is None:
            self.check_fitted()
            terms = [evaluator_terms(m, images, f'images ({m.name})', strategy,
                                     self.needs_statistics, progress) for m in self.models]
        elif len(terms) != len(self.models):
            raise InputError(f'{self.name}: terms of {len(terms)} models given; the detector '
                             f'has {len(self.models)}.')
        elif not isinstance(images, tf.data.Dataset):
            for model_terms in terms:
                lengths = {len(np.atleast_1d(v)) for v in model_terms.values()}
                if lengths != {len(images)}:
                    raise InputError(f'{self.name}: the terms given are of {sorted(lengths)} '
                                     f'images; {len(images)} images to score.')
        return self.score_terms(terms, images)

    def _score_in_chunks(self, images, strategy, terms, progress: bool) -> DetectorScores:
        """`score` of lazily decoded `images`, a chunk at a time (whole batches
        of a batch score's `M` images each)."""
        from tqdm.auto import tqdm
        parts = []
        # One trace for every chunk (the fit cannot change in between).
        self._traced_score = tf.function(self.graph_score, autograph=False,
                                         reduce_retracing=True)
        try:
            with tqdm(total=len(images), desc=f'{self.name}: scoring', unit='img',
                      disable=not progress, leave=False) as bar:
                for start, stop in chunks(images, getattr(self, 'batch_size', 1)):
                    part_terms = None if terms is None else [
                        {k: np.asarray(v)[start:stop] for k, v in t.items()} for t in terms]
                    parts.append(self.score(np.asarray(images[start:stop]), strategy,
                                            part_terms))
                    bar.update(stop - start)
        finally:
            self._traced_score = None
        return DetectorScores(self.name, np.concatenate([p.ood_score for p in parts]),
                              {k: np.concatenate([p.components[k] for p in parts])
                               for k in parts[0].components})

    def score_terms(self, terms: Sequence[Terms], images: Images) -> DetectorScores:
        """The scores from the evaluator's per-image terms of each of `models`
        (`tfp_ood.score(model, images).scores`, in the order of `models`):
        `graph_score`, traced once for these inputs."""
        self.check_fitted()
        tensors, images = self.graph_inputs(terms, images)
        traced = self._traced_score or tf.function(self.graph_score, autograph=False)
        with tf_log_without(RETRACING):
            ood_score, components = traced(tensors, images)
        merged = {k: np.asarray(v) for k, v in terms[0].items()}
        merged.update({k: v.numpy() for k, v in tensors[0].items() if k not in terms[0]})
        merged.update({k: v.numpy() for k, v in components.items()})
        return DetectorScores(self.name, ood_score.numpy(), merged)

    def graph_inputs(self, terms: Sequence[Terms], images: Images):
        """`graph_score`'s inputs: the terms as tensors, the first model's with
        the `python_statistics` added, and the uint8 images (a placeholder
        when the score does not read them)."""
        tensors = [{k: tf.convert_to_tensor(v) for k, v in t.items()} for t in terms]
        if not (self.reads_images or self.python_statistics):
            return tensors, tf.zeros([0], tf.uint8)
        images = as_array(images, self.models[0].image_shape, f'{self.name} images')
        if self.python_statistics:
            from tfp_ood.detectors import codecs
            for column, (codec, level) in self.python_statistics.items():
                tensors[0][column] = tf.constant(
                    codecs.compressed_bits(images, codec, level, self.compressor))
        return tensors, tf.constant(images)

    # The `codecs.Compressor` whose cache the Python-only statistics share (None: none).
    compressor = None
    # `graph_score` traced once while `score` runs over the chunks of a lazy set.
    _traced_score = None

    def python_column(self, terms: Dict[str, tf.Tensor], column: str) -> tf.Tensor:
        """A Python-only statistic among the first model's terms (`graph_inputs`
        puts it there), float64."""
        if column not in terms:
            codec = self.python_statistics[column][0]
            raise InputError(f'{self.name}: {column} (the {codec} length) has no TensorFlow '
                             f'op; it is computed in Python by score(), so this detector '
                             f'cannot run as a graph or be exported.')
        return f64(terms[column])

    @abc.abstractmethod
    def graph_score(self, terms: Sequence[Dict[str, tf.Tensor]], images: tf.Tensor):
        """The score, in TensorFlow ops: `(ood_score, components)` as float64
        tensors, from each model's per-image terms (with `bits_per_dim`, and
        the first model's with `python_statistics`) and the uint8 images.
        `score_terms` traces it on NumPy inputs; an exported detector runs it
        in its SavedModel."""

    def get_state(self) -> Dict:
        """What `fit` learned, as JSON-able data (`set_state` puts it back)."""
        return {}

    def set_state(self, state: Dict) -> 'Detector':
        del state
        return self
