"""A fitted, calibrated detector: fitting it, saving it as JSON, reading it
back (checked against the models it was fitted on) and exporting it as a
SavedModel."""

import collections.abc
import dataclasses
import hashlib
import json
import math
import os
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfp_ood import export
from tfp_ood.config import DETECTOR_NAMES, complete_model_config, is_flow_family
from tfp_ood.detectors.base import (Detector, DetectorScores, Images, Terms, as_array, is_lazy,
                                    read_json)
from tfp_ood.detectors.calibration import Calibration, calibrate, minimum_validation_images
from tfp_ood.detectors.registry import ONE_PASS, check_design, named
from tfp_ood.errors import InputError
from tfp_ood.models.base import DensityModel

__all__ = ['FIT_FORMAT', 'FittedDetector', 'fit_detector', 'load_detector', 'model_identity']


FIT_FORMAT = 'tfp_ood.fitted_detector/1'


@dataclasses.dataclass
class FittedDetector:
    """A fitted, calibrated detector: what `tfp-ood detect` runs.

    Attributes:
      name: its name in `DETECTOR_NAMES`.
      detector: the `Detector`, fitted.
      calibration: its `Calibration`.
      model_dirs: the SavedModels of its models (foreground, then background).
      provenance: what it was fitted and calibrated on.
      design: the design of a `density_of_states_selected`, else `None`.
    """

    name: str
    detector: Detector
    calibration: Calibration
    model_dirs: Sequence[str]
    provenance: Dict
    design: Optional[Dict] = None

    def detect(self, images: Images,
               strategy: Optional[tf.distribute.Strategy] = None,
               terms: Optional[Sequence[Terms]] = None) -> DetectorScores:
        """Scores with `is_ood` (0/1) among the components (see `Detector.score`)."""
        scores = self.detector.score(images, strategy=strategy, terms=terms)
        scores.components = dict(scores.components,
                                 is_ood=self.calibration.decide(scores.ood_score))
        return scores

    def export(self, path: str, overwrite: bool = False) -> str:
        """Writes the detector as a SavedModel that plain TensorFlow runs
        (`tfp_ood.export.export_detector`): images in, `ood_score`, `is_ood`
        and the components out."""
        models = [export.restore(d) for d in self.model_dirs]  # Python models, not adapters.
        detector = named(self.name, models[0], models[1] if len(models) > 1 else None,
                         self.design)
        detector.set_state(self.detector.get_state())
        return export.export_detector(detector, self.name, self.calibration.threshold,
                                      self.calibration.true_positive_rate, self.model_dirs,
                                      path, self.provenance, overwrite)

    def save(self, path: str) -> str:
        """Writes the fit as JSON (model paths relative to the file's folder)."""
        folder = os.path.dirname(os.path.abspath(path))
        record = {
            'format': FIT_FORMAT, 'detector': self.name,
            'models': [os.path.relpath(os.path.abspath(d), folder) for d in self.model_dirs],
            'state': self.detector.get_state(),
            'threshold': self.calibration.threshold,
            'true_positive_rate': self.calibration.true_positive_rate,
            'validation_scores': [float(v) for v in self.calibration.validation_scores],
            'provenance': dict(self.provenance),
            # What identifies each model, checked when the fit is read.
            'model_identities': [model_identity(d) for d in self.model_dirs],
        }
        if self.design is not None:
            record['design'] = self.design
        with open(path + '.tmp', 'w') as f:
            json.dump(record, f)
        os.replace(path + '.tmp', path)
        return path


def fit_detector(name: str, model_dirs: Sequence[str], fit_images: Images,
                 validation_images: Images, true_positive_rate: float = 0.95,
                 provenance: Optional[Dict] = None,
                 design: Optional[Dict] = None, progress: bool = False) -> FittedDetector:
    """Builds detector `name` over the SavedModels `model_dirs` (foreground, and a
    background for `likelihood_ratio`; `design` for `density_of_states_selected`),
    fits it on `fit_images` and sets its threshold on the held-out
    in-distribution `validation_images` (progress bars while the models score
    them, if `progress`)."""
    if isinstance(model_dirs, (str, bytes, os.PathLike)) or not isinstance(
            model_dirs, collections.abc.Sequence):
        raise TypeError(f'fit_detector: model_dirs must be a list of SavedModel folders, e.g. '
                        f"['saved_models/glow_cifar10']; got {model_dirs!r:.80}.")
    if not 1 <= len(model_dirs) <= 2:
        raise InputError(f'fit_detector: model_dirs must name one SavedModel (two for '
                         f'likelihood_ratio: foreground, background); got {len(model_dirs)}.')
    if not 0. < true_positive_rate <= 1.:
        raise InputError(f'true_positive_rate must be in (0, 1]; got {true_positive_rate}.')
    models = [load_model(d, (name,)) for d in model_dirs]
    shape = models[0].image_shape
    fit_images = as_array(fit_images, shape, f'{name} fit images')
    validation_images = as_array(validation_images, shape, f'{name} validation images')
    _check_validation(fit_images, validation_images, true_positive_rate)
    design = check_design(design) if design is not None else None
    detector = named(name, models[0], models[1] if len(models) > 1 else None, design)
    detector.fit(fit_images, progress=progress)
    calibration = calibrate(detector.score(validation_images, progress=progress),
                            true_positive_rate)
    return FittedDetector(name, detector, calibration, list(model_dirs), dict(provenance or {}),
                          design)


def _image_digests(images: np.ndarray) -> List[bytes]:
    """What identifies each image: its pixels, or a folder's file (`FolderImages`,
    not decoded again for this); a `tfp_ood.inputs.LazyImages` says."""
    if is_lazy(images):
        return images.identities()
    from tfp_ood.inputs import pixel_digests
    return pixel_digests(images)


def _check_validation(fit_images: np.ndarray, validation_images: np.ndarray,
                      true_positive_rate: float) -> None:
    """Refuses validation images that cannot set a threshold (all among the fit
    images; fewer than one expected beyond it) and warns where the threshold
    would be unreliable (some among the fit images; fewer than
    `minimum_validation_images`)."""
    n = len(validation_images)
    fitted = set(_image_digests(fit_images))
    shared = sum(d in fitted for d in _image_digests(validation_images))
    if shared == n:
        raise InputError(f'fit_detector: every one of the {n} validation images is also a fit '
                         f'image; the threshold must be set on held-out images (on fitted '
                         f'ones, held-out images are flagged more often than '
                         f'{1 - true_positive_rate:.0%}). Pass another split.')
    if shared:
        warnings.warn(f'{shared} of the {n} validation images are also fit images; the '
                      f'threshold is set partly on images the detector has seen, so held-out '
                      f'images may be flagged more often than {1 - true_positive_rate:.0%}.',
                      UserWarning, stacklevel=3)
    if true_positive_rate < 1. and n * (1. - true_positive_rate) < 1.:
        raise InputError(f'fit_detector: {n} validation images cannot set a threshold that '
                         f'flags {1 - true_positive_rate:.1%} of them (at least '
                         f'{minimum_validation_images(true_positive_rate, 1)} are needed; '
                         f'{minimum_validation_images(true_positive_rate)} for a threshold '
                         f'whose flagged rate is within a few points).')
    if n < minimum_validation_images(true_positive_rate):
        warnings.warn(f'only {n} validation images: fewer than '
                      f'{minimum_validation_images(true_positive_rate)} for a threshold at '
                      f'{true_positive_rate:.0%}, so the rate at which in-distribution images '
                      f'are flagged is uncertain (see the threshold\'s bootstrap interval).',
                      UserWarning, stacklevel=3)


def load_model(path: str, detectors: Sequence[str] = ()) -> DensityModel:
    """A flow rebuilt from its weights (for every per-level term); a VAE that
    every one of `detectors` reads at its posterior mean only (`ONE_PASS`)
    rebuilt with one importance sample; other models as their SavedModel."""
    family = export.read_metadata(path)['model'].get('family')
    if detectors and set(detectors) <= set(ONE_PASS) and family == 'vae':
        return export.restore(path, num_importance_samples=1)
    return export.restore(path) if is_flow_family(family) else export.load(path)


def model_identity(model_dir: str) -> Dict:
    """What identifies an exported model: its configuration and the SHA-256 of
    its variables' values (read from the SavedModel's checkpoint, by name), so
    a fit can tell the model it was fitted on from another of the same shape,
    or from the same folder re-exported with other weights. Exporting the same
    weights again keeps the identity."""
    reader = tf.train.load_checkpoint(os.path.join(model_dir, 'variables', 'variables'))
    digest = hashlib.sha256()
    for name in sorted(reader.get_variable_to_shape_map()):
        if name.startswith(('_CHECKPOINTABLE_OBJECT_GRAPH', 'save_counter')):
            continue  # Bookkeeping, not weights.
        value = np.ascontiguousarray(reader.get_tensor(name))
        digest.update(f'{name}:{value.dtype}:{value.shape}'.encode())
        digest.update(value.tobytes())
    return {'config': export.read_metadata(model_dir)['model'],
            'variables_sha256': digest.hexdigest()}


def _same_model_config(current, fitted) -> bool:
    """Whether two recorded model configurations describe the same model, a
    field one of them was written without taking its default."""
    if current == fitted:
        return True
    try:
        return complete_model_config(current) == complete_model_config(fitted)
    except (InputError, KeyError, TypeError, ValueError, AttributeError):
        return False  # Not a configuration the current code reads.


def _check_models(record: Dict, model_dirs: Sequence[str], path: str) -> None:
    """The models at `model_dirs` are those the fit was made on (fits written
    before `model_identities` are taken as they are)."""
    identities = record.get('model_identities')
    if identities is None:
        return
    if not isinstance(identities, list) or len(identities) != len(model_dirs) or not all(
            isinstance(i, dict) and isinstance(i.get('variables_sha256'), str)
            for i in identities):
        raise InputError(f'{path}: "model_identities" must be one object per model with its '
                         f'"variables_sha256"; got {identities!r:.80}. Re-fit it with '
                         f'tfp-ood fit-detector.')
    for model_dir, fitted in zip(model_dirs, identities):
        if not os.path.isdir(model_dir):
            raise InputError(f'{path}: the model it was fitted on is not at {model_dir}. A fit '
                             f'names its models relative to its own folder: move it together '
                             f'with them, or fit it where it will stay (tfp-ood fit-detector '
                             f'--output).')
        try:
            current = model_identity(model_dir)
        except (OSError, ValueError, tf.errors.OpError) as e:
            raise InputError(f'{path}: cannot read the model it was fitted on at {model_dir} '
                             f'({str(e).splitlines()[0]}).') from None
        if not _same_model_config(current['config'], fitted.get('config')):
            raise InputError(f'{path} was fitted on another model than the one now at '
                             f'{model_dir} (its configuration differs). Re-fit it with '
                             f'tfp-ood fit-detector.')
        if current['variables_sha256'] != fitted['variables_sha256']:
            raise InputError(f'{path} was fitted on other weights than those now at '
                             f'{model_dir} (re-trained or re-exported since?). Re-fit it '
                             f'with tfp-ood fit-detector.')


def _check_record(record: Dict, path: str) -> None:
    """Every field of a fit's JSON present, of its type and in its range."""
    def bad(field, expected):
        raise InputError(f'{path}: "{field}" must be {expected}; got '
                         f'{record.get(field)!r:.80}. Re-fit it with tfp-ood fit-detector.')

    if record.get('detector') not in DETECTOR_NAMES:
        bad('detector', f'one of {DETECTOR_NAMES}')
    models = record.get('models')
    if not isinstance(models, list) or not 1 <= len(models) <= 2 or not all(
            isinstance(m, str) and m for m in models):
        bad('models', 'a list of one or two SavedModel paths')
    if not isinstance(record.get('state'), dict):
        bad('state', 'an object')
    threshold = record.get('threshold')
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
            math.isfinite(threshold)):
        bad('threshold', 'a finite number')
    rate = record.get('true_positive_rate')
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        bad('true_positive_rate', 'a number in (0, 1]')
    scores = record.get('validation_scores')
    if not isinstance(scores, list) or not scores or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores):
        bad('validation_scores', 'a non-empty list of numbers')


def load_detector(path: str) -> FittedDetector:
    """A `FittedDetector` saved with `FittedDetector.save`, exactly as fitted."""
    if os.path.isdir(path):
        raise InputError(f'{path} is a folder; a fitted detector is its JSON file (a '
                         f'SavedModel folder is run with tf.saved_model.load).')
    record = read_json(path, 'fitted detector')
    if not isinstance(record, dict) or record.get('format') != FIT_FORMAT:
        raise InputError(f'{path} is not a fitted detector of this version (format '
                         f'{record.get("format") if isinstance(record, dict) else None!r}, '
                         f'expected {FIT_FORMAT!r}).')
    _check_record(record, path)
    folder = os.path.dirname(os.path.abspath(path))
    model_dirs = [os.path.normpath(os.path.join(folder, d)) for d in record['models']]
    _check_models(record, model_dirs, path)
    models = [load_model(d, (record['detector'],)) for d in model_dirs]
    design = record.get('design')
    try:
        detector = named(record['detector'], models[0], models[1] if len(models) > 1 else None,
                         design)
        detector.set_state(record['state'])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise InputError(f'{path}: its state does not describe a fitted {record["detector"]} '
                         f'({type(e).__name__}: {e}). Re-fit it with tfp-ood fit-detector.'
                         ) from None
    calibration = Calibration(float(record['threshold']), float(record['true_positive_rate']),
                              np.asarray(record['validation_scores'], np.float64))
    return FittedDetector(record['detector'], detector, calibration, model_dirs,
                          record.get('provenance', {}), design)
