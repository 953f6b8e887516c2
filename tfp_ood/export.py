"""SavedModel export that anyone can load with plain TensorFlow.

The exported SavedModel has:

- `serving_default` and `log_prob` signatures: one argument named `images`,
  uint8 `[None, H, W, C]`, returning a dict of `[batch]` float32 tensors:
  `log_prob` (nats per image), `bits_per_dim`, and for flows `log_pz` (the
  distribution term) and `log_det` (the volume term), for VAEs `elbo`.
  The signature is enforced: images of another shape are an
  `InvalidArgumentError` naming the expected shape, and a batch of 0 images
  returns empty outputs;
- a `sample` signature for models that can sample: `num_images` (int32
  scalar) and `temperature` (float32 scalar) to uint8 images `images`;
- the asset `assets/tfp_ood.json`: the model configuration, the image shape,
  the outputs, and the training provenance (dataset and split, steps, wall
  time, final bits/dim).

Loading needs TensorFlow only, not tfp_ood or TFP:

```python
import tensorflow as tf
model = tf.saved_model.load('saved_models/glow_cifar10')
scores = model.signatures['serving_default'](images=tf.constant(images_uint8))
scores['bits_per_dim']
```

`tfp_ood.export.load(path)` wraps a SavedModel as a `DensityModel`, so the
shared evaluator and the command line score it like any other model.
`tfp_ood.export.restore(path)` goes further: it rebuilds the tfp_ood model
from the configuration asset and reads the SavedModel's variables into it, for
work that needs the model itself (gradients, Hessians, the 1x1 convolutions of
a flow, fine-tuning).
"""

import json
import os
import shutil
from typing import Any, Dict, Mapping, Optional, Sequence

import tensorflow as tf

from tfp_ood import models, outputs
from tfp_ood.config import MODELS, is_flow_family
from tfp_ood.errors import InputError
from tfp_ood.models.base import DensityModel
from tfp_ood.terms import BITS_PER_DIM, DEQUANT_CONST, LOG_PROB

__all__ = ['METADATA_FILE', 'SavedModelAdapter', 'export', 'export_detector', 'exported_terms',
           'load', 'read_metadata', 'read_variables', 'restore']

METADATA_FILE = 'tfp_ood.json'
FORMAT = 'tfp_ood.saved_model/1'
# Per-image terms that are the same number for every image of every model are
# left out of the exported outputs.
_CONSTANT_TERMS = (DEQUANT_CONST,)


def exported_terms(model: DensityModel):
    """The model's terms that the SavedModel returns besides `log_prob` and
    `bits_per_dim`: `log_pz` and `log_det` for flows, `elbo` for VAEs."""
    return tuple(k for k in model.term_names if k not in _CONSTANT_TERMS)


def _enforced(fn, image_shape):
    """`fn(images) -> {name: [batch] tensor}` with its signature enforced: images
    of another shape are an `InvalidArgumentError` that names the expected
    shape (not a failure deep in the graph), and a batch of 0 images gives
    empty outputs (the computation runs on one blank image, sliced away)."""
    image_shape = tuple(image_shape)

    def enforced(images):
        images = tf.ensure_shape(images, (None,) + image_shape)
        num_images = tf.shape(images)[0]
        blank = tf.zeros((1,) + image_shape, tf.uint8)
        outputs = fn(tf.cond(num_images > 0, lambda: images, lambda: blank))
        return {name: value[:num_images] for name, value in outputs.items()}

    return enforced


class _ExportModule(tf.Module):
    """What is saved: the model's variables and three traced functions."""

    def __init__(self, model: DensityModel, metadata_path: str):
        super().__init__(name='tfp_ood_export')
        for name, value in model.saved_objects().items():
            setattr(self, name, value)
        self._held_model = lambda: model
        self.metadata = tf.saved_model.Asset(metadata_path)
        images = tf.TensorSpec((None,) + model.image_shape, tf.uint8, name='images')
        self.log_prob = tf.function(_enforced(self._log_prob, model.image_shape),
                                    input_signature=[images])
        if model.can_sample:
            self.sample = tf.function(self._sample, input_signature=[
                tf.TensorSpec([], tf.int32, name='num_images'),
                tf.TensorSpec([], tf.float32, name='temperature')])

    def _model(self) -> DensityModel:
        return self._held_model()

    def _log_prob(self, images):
        model = self._model()
        terms = model.log_prob_terms(images)
        outputs = {LOG_PROB: terms[LOG_PROB],
                   BITS_PER_DIM: model.bits_per_dim(terms[LOG_PROB])}
        outputs.update({k: terms[k] for k in exported_terms(model)})
        return outputs

    def _sample(self, num_images, temperature):
        return {'images': self._model().sample(num_images, temperature=temperature)}


def export(model: DensityModel, path: str, provenance: Optional[Mapping[str, Any]] = None,
           overwrite: bool = False) -> str:
    """Writes `model` as a SavedModel at `path` (see the module docstring).

    Args:
      model: a `DensityModel` with `get_config()`.
      path: output directory.
      provenance: training provenance for the metadata asset (as `fit` writes
        to `provenance.json`).
      overwrite: replace an existing `path`.
        Default value: `False`.

    Returns:
      `path`.

    Raises:
      FileExistsError: `path` exists and `overwrite` is `False`.
    """
    if os.path.lexists(path):
        if not overwrite:
            raise FileExistsError(f'{path} already exists; pass overwrite=True (--overwrite) '
                                  f'to replace it.')
        _check_replaceable(path)
    metadata = {
        'format': FORMAT,
        'model': model.get_config(),
        # Where the traced functions compute (flows: float32 or bfloat16 networks).
        'precision': model.precision,
        'image_shape': list(model.image_shape),
        'outputs': [LOG_PROB, BITS_PER_DIM] + list(exported_terms(model)),
        'can_sample': model.can_sample,
        'sample_temperatures': list(model.sample_temperatures),
        'provenance': dict(provenance or {}),
    }
    with outputs.temporary_folder() as tmp:
        metadata_path = os.path.join(tmp, METADATA_FILE)
        with open(metadata_path, 'w') as f:
            json.dump(metadata, f, indent=2)
        module = _ExportModule(model, metadata_path)
        signatures = {'serving_default': module.log_prob, 'log_prob': module.log_prob}
        if metadata['can_sample']:
            signatures['sample'] = module.sample
        _save_staged(module, path, signatures)
    return path


def _save_staged(module: tf.Module, path: str, signatures) -> None:
    """`tf.saved_model.save` beside `path`, then moved into place, so that an
    interrupted export leaves the previous one intact."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with outputs.temporary_folder(parent, '.export-') as staging:
        tf.saved_model.save(module, staging, signatures=signatures)
        with outputs.publishing_now():
            if os.path.lexists(path):
                shutil.rmtree(path)
            os.rename(staging, path)


DETECTOR_FORMAT = 'tfp_ood.detector_saved_model/1'


class _DetectorModule(tf.Module):
    """What a detector export saves: its models' variables and `detect`."""

    def __init__(self, detector, threshold: float, image_shape, metadata_path: str):
        super().__init__(name='tfp_ood_detector')
        for i, model in enumerate(detector.models):
            for name, value in model.saved_objects().items():
                setattr(self, f'model{i}_{name}', value)
        self._held_detector = lambda: detector
        self._threshold = float(threshold)
        self.metadata = tf.saved_model.Asset(metadata_path)
        images = tf.TensorSpec((None,) + tuple(image_shape), tf.uint8, name='images')
        self.detect = tf.function(_enforced(self._detect, image_shape), input_signature=[images])

    def _detect(self, images):
        detector = self._held_detector()
        terms = []
        for model in detector.models:
            needs = detector.needs_statistics
            model_terms = dict(model.statistics(images, gradients=needs == 'gradients')
                               if needs else model.log_prob_terms(images))
            model_terms[BITS_PER_DIM] = model.bits_per_dim(model_terms[LOG_PROB])
            terms.append(model_terms)
        # The score's ops as written (no data-dependent Python control flow).
        graph_score = tf.autograph.experimental.do_not_convert(detector.graph_score)
        ood_score, components = graph_score(terms, images)
        outputs = {'ood_score': ood_score,
                   'is_ood': tf.logical_not(ood_score <= self._threshold)}
        outputs.update(components)
        return outputs


def export_detector(detector, name: str, threshold: float, true_positive_rate: float,
                    model_dirs: Sequence[str], path: str,
                    provenance: Optional[Mapping[str, Any]] = None,
                    overwrite: bool = False) -> str:
    """Writes a fitted detector as a SavedModel (`FittedDetector.export` calls it).

    Its `serving_default(images=uint8 [None, H, W, C])` returns `ood_score`
    (float64, higher = more out-of-distribution), `is_ood` (`threshold`
    applied) and the components the score is made from, computed entirely in
    TensorFlow ops (`detector.graph_score`, the function its Python
    `score` runs: the PNG length with `tf.io.encode_png`, the density of
    states' estimator over its saved training statistics), so plain
    TensorFlow loads and runs it with neither tfp_ood nor TFP installed.
    `assets/tfp_ood.json` holds the detector, its models' configurations, the
    threshold and the provenance.

    Args:
      detector: a fitted `tfp_ood.detectors.Detector` over Python models (as
        `restore` rebuilds them, not SavedModel adapters).
      name, threshold, true_positive_rate, model_dirs, provenance: what the
        metadata records.
      path: output directory; `overwrite` replaces a previous export only.
    """
    not_in_graph = sorted({codec for codec, _ in detector.python_statistics.values()})
    if not_in_graph:
        raise InputError(f'{name} compresses with {", ".join(not_in_graph)}, which '
                         f'{"have" if len(not_in_graph) > 1 else "has"} no '
                         f'TensorFlow op; only detectors whose codec is PNG export as '
                         f'SavedModels (tfp-ood detect runs this one in Python).')
    if os.path.lexists(path):
        if not overwrite:
            raise FileExistsError(f'{path} already exists; pass overwrite=True (--overwrite) '
                                  f'to replace it.')
        _check_replaceable(path)
    image_shape = tuple(detector.models[0].image_shape)
    metadata = {
        'format': DETECTOR_FORMAT, 'detector': name,
        'models': [read_metadata(d)['model'] for d in model_dirs],
        'image_shape': list(image_shape), 'threshold': float(threshold),
        'true_positive_rate': float(true_positive_rate),
        'outputs': ['ood_score', 'is_ood'], 'provenance': dict(provenance or {}),
    }
    with outputs.temporary_folder() as tmp:
        metadata_path = os.path.join(tmp, METADATA_FILE)
        with open(metadata_path, 'w') as f:
            json.dump(metadata, f, indent=2)
        module = _DetectorModule(detector, threshold, image_shape, metadata_path)
        _save_staged(module, path, {'serving_default': module.detect})
    return path


# What a SavedModel directory of `export` holds; `overwrite` replaces nothing else.
_EXPORT_ENTRIES = {'saved_model.pb', 'variables', 'assets', 'fingerprint.pb'}


def _check_replaceable(path: str) -> None:
    """Refuses to delete `path` unless it is a previous export and nothing more."""
    if not os.path.isdir(path) or os.path.islink(path):
        raise FileExistsError(f'{path} exists and is not a SavedModel directory; refusing '
                              f'to replace it.')
    entries = set(os.listdir(path))
    if not os.path.exists(os.path.join(path, 'assets', METADATA_FILE)) or (
            entries - _EXPORT_ENTRIES):
        extra = sorted(entries - _EXPORT_ENTRIES)
        raise FileExistsError(f'{path} is not a previous export of tfp_ood (it holds '
                              f'{", ".join(extra) or "no " + METADATA_FILE}); --overwrite '
                              f'replaces only a previous export, never a folder that holds '
                              f'anything else.')


def read_metadata(path: str) -> Dict[str, Any]:
    """The `tfp_ood.json` asset of an exported SavedModel."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f'No SavedModel directory at {path}.')
    if not os.path.exists(os.path.join(path, 'saved_model.pb')):
        raise FileNotFoundError(f'{path} is not a SavedModel: no saved_model.pb in it.')
    metadata_path = os.path.join(path, 'assets', METADATA_FILE)
    if not os.path.exists(metadata_path):
        raise FileNotFoundError(f'{path} is a SavedModel but not a tfp_ood export: no '
                                f'assets/{METADATA_FILE}.')
    try:
        with open(metadata_path) as f:
            metadata = json.load(f)
    except ValueError as e:
        raise InputError(f'{metadata_path} is not valid JSON ({e}).') from None
    if not isinstance(metadata, dict) or metadata.get('format') != FORMAT:
        found = metadata.get('format') if isinstance(metadata, dict) else type(metadata).__name__
        raise InputError(f'{metadata_path}: unknown format {found!r}; expected {FORMAT!r}.')
    shape = metadata.get('image_shape')
    if not (isinstance(shape, list) and len(shape) == 3
            and all(isinstance(d, int) and d > 0 for d in shape)):
        raise InputError(f'{metadata_path}: image_shape must be [H, W, C] of positive '
                         f'integers; got {shape!r}.')
    for key, kind in (('model', dict), ('outputs', list), ('can_sample', bool)):
        if not isinstance(metadata.get(key), kind):
            raise InputError(f'{metadata_path}: {key!r} must be a {kind.__name__}; got '
                             f'{metadata.get(key)!r}.')
    return metadata


class SavedModelAdapter(DensityModel):
    """An exported SavedModel seen as a `DensityModel` (for the evaluator)."""

    def __init__(self, path: str):
        metadata = read_metadata(path)
        super().__init__(metadata['image_shape'], name='saved_model')
        try:
            self._loaded = tf.saved_model.load(path)
        except Exception as e:  # TF raises assorted errors on corrupt files.
            raise InputError(f'Cannot load the SavedModel at {path}: {e}') from e
        self.metadata = metadata
        self.path = path
        self.term_names = tuple(k for k in metadata['outputs']
                                if k not in (LOG_PROB, BITS_PER_DIM))
        self.can_sample = bool(metadata['can_sample'])
        family = metadata['model'].get('family')
        self.is_flow = is_flow_family(family)
        self.precision = metadata.get('precision', 'float32')
        # What the family can do; exports before sample_temperatures was
        # written take the registry's.
        spec = next((s for s in MODELS.values() if s.family == family), None)
        self.any_temperature = spec.any_temperature if spec else True
        self.kind = spec.description if spec else str(family)
        self.sample_temperatures = tuple(metadata.get('sample_temperatures') or (
            spec.sample_temperatures if spec else (0.7, 1.0)))

    def get_config(self) -> Dict[str, Any]:
        return dict(self.metadata['model'])

    def log_prob_terms(self, images, noise=None) -> Dict[str, tf.Tensor]:
        if noise is not None:
            raise InputError('A SavedModel scores with its built-in (midpoint) '
                             'dequantization; noise cannot be passed.')
        outputs = self._loaded.log_prob(images)
        return {k: v for k, v in outputs.items() if k != BITS_PER_DIM}

    def sample(self, num_images: int, temperature: float = 1.0, seed=None) -> tf.Tensor:
        del seed
        if not self.can_sample:
            raise InputError(f'The model at {self.path} cannot sample.')
        if not self.any_temperature and temperature not in self.sample_temperatures:
            raise InputError(f'The model at {self.path} is a {self.kind}, which samples at '
                             f'temperature '
                             f'{", ".join(map(str, self.sample_temperatures))} only; got '
                             f'{temperature}.')
        return self._loaded.sample(tf.constant(num_images, tf.int32),
                                   tf.constant(temperature, tf.float32))['images']


def load(path: str) -> SavedModelAdapter:
    """Loads an exported SavedModel as a `DensityModel`."""
    return SavedModelAdapter(path)


def restore(path: str, precision: Optional[str] = None,
            num_importance_samples: Optional[int] = None) -> DensityModel:
    """Rebuilds the exported tfp_ood model, with its trained weights.

    The model is constructed from the configuration in the metadata asset and
    the SavedModel's variables are read into it (the export's object graph
    holds the model under `model`, as a training checkpoint does).

    Args:
      path: the SavedModel directory.
      precision: where a flow's networks compute (`'float32'` or
        `'bfloat16'`); the variables are float32 either way.
        Default value: the precision the model was exported in.
      num_importance_samples: for a VAE, the draws its log-likelihood
        averages over instead of the exported number; its encoder's and
        decoder's statistics at the posterior mean do not depend on it, so
        one makes them a single pass of each network.

    Raises:
      FileNotFoundError, ValueError: `path` is not a tfp_ood export, or its
        variables do not match the model its configuration describes, or
        `num_importance_samples` is given for a model that is not a VAE.
    """
    metadata = read_metadata(path)
    config = metadata['model']
    if num_importance_samples is not None:
        if config.get('family') != 'vae':
            raise InputError(f'{path} holds a {config.get("family")} model; only a VAE takes '
                             f'num_importance_samples.')
        config = dict(config, num_importance_samples=int(num_importance_samples))
    return read_variables(models.from_config(
        config, precision or metadata.get('precision', 'float32')), path)


def read_variables(model: DensityModel, path: str) -> DensityModel:
    """Reads the variables of the tfp_ood export at `path` into `model` (built
    from its configuration, e.g. with other networks' precision); returns it.

    Raises:
      ValueError: the variables do not match the model.
    """
    status = tf.train.Checkpoint(**model.saved_objects()).read(
        os.path.join(path, 'variables', 'variables'))
    try:
        status.expect_partial().assert_existing_objects_matched()
    except AssertionError as e:
        raise InputError(f'The variables of {path} do not match its model configuration: '
                         f'{e}') from e
    return model
