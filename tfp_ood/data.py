"""Datasets by their TFDS names, with an offline path and synthetic inputs.

`load(name, split)` returns a `tf.data.Dataset` of
`{'image': uint8 [H, W, C], 'label': int64}` (label `-1` where the dataset
has none) and accepts TFDS split strings with slicing (`'train[:5000]'`,
`'test[7000:]'`, `'train[:10%]'`, `'train+test'`).

Where the images come from:

- **local arrays** `<data_dir>/<name>_<split>.npz` (`/` in the name becomes
  `_`, e.g. `downsampled_imagenet_32x32_train.npz`), each holding `images`
  (uint8 `[N, H, W, C]`) and optionally `labels` (`[N]`), when a data directory
  is given (the `data_dir` argument, or the environment variable
  `TFP_OOD_DATA_DIR`) and the file exists;
- otherwise **TFDS**, from data already prepared in `tfds_data_dir`, or
  downloaded when `download=True`.

With neither, `load` fails at once with `DataNotFoundError`, naming the file it
looked for and the TFDS name; it never waits on download retries unless asked
to download.

Images whose native size differs from the registry's (CelebA, 218x178) are
centre-cropped to a square and resized with area averaging, as in the paper's
32x32 CelebA.
"""

import dataclasses
import os
import zipfile
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfp_ood.errors import InputError, TfpOodError

__all__ = [
    'DATASETS', 'DATA_DIR_ENV', 'DataNotFoundError', 'DatasetSpec', 'check_labels',
    'constant_images',
    'grayscale', 'images_array', 'load', 'load_arrays', 'local_path', 'perturb',
    'read_npz', 'resize_images', 'tint', 'to_grayscale', 'uniform_noise_images', 'without_autotune',
]

DATA_DIR_ENV = 'TFP_OOD_DATA_DIR'
SOURCES = ('auto', 'local', 'tfds', 'samples')


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset of the registry.

    Attributes:
      name: the TFDS name.
      image_shape: `(H, W, C)` of the images `load` returns.
      splits: the split names.
      label_key: the TFDS feature holding the class label, or `None`.
      resize: whether native images are cropped and resized to `image_shape`.
    """

    name: str
    image_shape: Tuple[int, int, int]
    splits: Tuple[str, ...]
    label_key: Optional[str] = 'label'
    resize: bool = False


DATASETS: Dict[str, DatasetSpec] = {
    spec.name: spec for spec in (
        DatasetSpec('cifar10', (32, 32, 3), ('train', 'test')),
        DatasetSpec('svhn_cropped', (32, 32, 3), ('train', 'test', 'extra')),
        DatasetSpec('mnist', (28, 28, 1), ('train', 'test')),
        DatasetSpec('fashion_mnist', (28, 28, 1), ('train', 'test')),
        DatasetSpec('cifar100', (32, 32, 3), ('train', 'test')),
        DatasetSpec('celeb_a', (32, 32, 3), ('train', 'validation', 'test'),
                    label_key=None, resize=True),
        DatasetSpec('downsampled_imagenet/32x32', (32, 32, 3),
                    ('train', 'validation'), label_key=None, resize=True),
    )
}


class DataNotFoundError(TfpOodError, FileNotFoundError):
    """Neither a local array nor a prepared TFDS copy of a dataset exists."""


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise InputError(f'Unknown dataset {name!r}; expected one of '
                         f'{sorted(DATASETS)}.')
    return DATASETS[name]


def _data_dir(data_dir: Optional[str]) -> Optional[str]:
    return data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None


def local_path(name: str, split_name: str, data_dir: str) -> str:
    """Path of the local array of split `split_name` (no slicing) of `name`."""
    return os.path.join(data_dir, f'{name.replace("/", "_")}_{split_name}.npz')


def _parse_split(spec: DatasetSpec, split: str):
    """Parses a TFDS split string into `[(split_name, instruction)]`."""
    import tensorflow_datasets as tfds  # Imported lazily: slow to import.
    if not isinstance(split, str) or not split:
        raise InputError(f'split must be a non-empty string such as "test" or '
                         f'"train[:5000]"; got {split!r}.')
    parts = []
    for part in split.split('+'):
        part = part.strip()
        try:
            instruction = tfds.core.ReadInstruction.from_spec(part)
        except (ValueError, AssertionError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f'Cannot parse split {split!r} of {spec.name!r} ({reason}); '
                             f'expected e.g. test, train[:5000], test[7000:] or '
                             f'train+test.') from None
        if instruction.split_name not in spec.splits:
            raise InputError(f'Unknown split {instruction.split_name!r} of '
                             f'{spec.name!r}; expected one of {spec.splits} '
                             f'(with optional slicing, e.g. "test[:1000]").')
        parts.append(instruction)
    return parts


def _slice_bounds(instruction, num_examples: int, split: str) -> Tuple[int, int]:
    """Absolute `[from, to)` of a parsed TFDS slice of a split of `num_examples`."""
    from_, to = instruction.from_, instruction.to
    if instruction.unit == '%':
        from_ = 0 if from_ is None else int(round(from_ * num_examples / 100))
        to = num_examples if to is None else int(round(to * num_examples / 100))
    elif instruction.unit == 'abs':
        from_ = 0 if from_ is None else from_
        to = num_examples if to is None else to
    else:
        raise InputError(f'Split {split!r}: unit {instruction.unit!r} is not '
                         f'supported for local arrays (use absolute or %).')
    if abs(from_) > num_examples or abs(to) > num_examples:
        raise InputError(f'Split {split!r} asks for [{from_}:{to}] of a split '
                         f'with {num_examples} examples.')
    from_ = from_ + num_examples if from_ < 0 else from_
    to = to + num_examples if to < 0 else to
    return from_, to


def _fit_shape(images: tf.Tensor, spec: DatasetSpec) -> tf.Tensor:
    """Centre-crops to a square and area-resizes a uint8 batch or image."""
    height, width = images.shape[-3], images.shape[-2]
    if (height, width) == spec.image_shape[:2] or not spec.resize:
        return images
    if height is None or width is None:
        shape = tf.shape(images)
        height, width = shape[-3], shape[-2]
    size = tf.minimum(height, width)
    top, left = (height - size) // 2, (width - size) // 2
    images = images[..., top:top + size, left:left + size, :]
    images = tf.image.resize(tf.cast(images, tf.float32), spec.image_shape[:2],
                             method='area')
    images = tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)
    return tf.ensure_shape(images, images.shape[:-3].concatenate(spec.image_shape))


def read_npz(path: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The `images` and `labels` (or `None`) arrays of an `.npz` file.

    Raises:
      DataNotFoundError: there is no file at `path`.
      InputError: the file is empty, truncated or not an `.npz` archive, has no
        `images` array, holds Python objects, or has labels that are not
        integers or of another length than its images.
    """
    if not os.path.isfile(path):
        raise DataNotFoundError(f'No file at {path}.')
    try:
        with np.load(path) as f:
            if 'images' not in f:
                raise InputError(f'{path}: expected an array named "images" '
                                 f'(and "labels"); found {sorted(f.files)}.')
            images = f['images']
            labels = f['labels'] if 'labels' in f else None
    except (EOFError, OSError, zipfile.BadZipFile) as e:
        raise InputError(f'{path} is not a readable .npz file ({type(e).__name__}: '
                         f'{e}).') from None
    except ValueError as e:  # NumPy: an array of Python objects, which it does not unpickle.
        raise InputError(f'{path}: an array of Python objects cannot be read (it would be '
                         f'unpickled); save "images" as a uint8 array ({e}).') from None
    check_labels(path, labels, len(images))
    return images, labels


def check_labels(path: str, labels: Optional[np.ndarray], num_images: int) -> None:
    """Refuses an `.npz` file's labels (if any) that are not integers, one per image."""
    if labels is not None and len(labels) != num_images:
        raise InputError(f'{path}: {num_images} images but {len(labels)} labels.')
    if labels is not None and labels.dtype.kind not in 'biu':
        raise InputError(f'{path}: "labels" must be integers; got {labels.dtype} (e.g. '
                         f'{labels.flat[0]!r}).' if labels.size else
                         f'{path}: "labels" must be integers; got {labels.dtype}.')


def _read_npz(path: str, spec: DatasetSpec) -> Tuple[np.ndarray, np.ndarray]:
    images, labels = read_npz(path)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise InputError(f'{path}: "images" must be uint8 [N, H, W, C]; got '
                         f'{images.dtype} {list(images.shape)}.')
    if images.shape[-1] != spec.image_shape[-1] or (
            images.shape[1:3] != spec.image_shape[:2] and not spec.resize):
        raise InputError(f'{path}: {spec.name!r} images must be '
                         f'{list(spec.image_shape)}; the file holds '
                         f'{list(images.shape[1:])}.')
    if labels is None:
        labels = np.full(len(images), -1, np.int64)
    return images, labels.astype(np.int64)


def _missing(spec: DatasetSpec, split: str, data_dir: Optional[str],
             tfds_data_dir: Optional[str], reason: str) -> DataNotFoundError:
    if data_dir is None:
        local = (f'no data directory was given (argument data_dir or '
                 f'${DATA_DIR_ENV}), so no local array was looked for')
    else:
        names = sorted({local_path(spec.name, p.split('[')[0].strip(), data_dir)
                        for p in split.split('+')})
        local = f'looked for the local array {", ".join(names)}: not found'
    where = tfds_data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
    return DataNotFoundError(
        f'No copy of {spec.name!r} split {split!r}: {local}; and TFDS dataset '
        f'{spec.name!r} is not prepared in {where} ({reason}). Give a data '
        f'directory holding {spec.name.replace("/", "_")}_<split>.npz, or load '
        f'with download=True on a machine with internet access.')


def load_arrays(name: str, split: str, data_dir: Optional[str] = None
                ) -> Tuple[np.ndarray, np.ndarray]:
    """Loads a split from local arrays as NumPy `(images, labels)`.

    Args:
      name: a registry name (`DATASETS`).
      split: a TFDS split string, e.g. `'test[7000:]'`.
      data_dir: directory of `<name>_<split>.npz` files.
        Default value: `$TFP_OOD_DATA_DIR`.

    Raises:
      ValueError: unknown name or split, a malformed split or file.
      DataNotFoundError: a file is missing.
    """
    spec = _spec(name)
    instructions = _parse_split(spec, split)
    data_dir = _data_dir(data_dir)
    if data_dir is None:
        raise _missing(spec, split, None, None, 'not looked for: local arrays only')
    images, labels = [], []
    for instruction in instructions:
        path = local_path(name, instruction.split_name, data_dir)
        if not os.path.exists(path):
            raise DataNotFoundError(
                f'No local array for {name!r} split {split!r}: looked for '
                f'{path}. (TFDS name: {name!r}.)')
        part_images, part_labels = _read_npz(path, spec)
        start, stop = _slice_bounds(instruction, len(part_images), split)
        images.append(part_images[start:stop])
        labels.append(part_labels[start:stop])
    images, labels = np.concatenate(images), np.concatenate(labels)
    if len(images) == 0:
        raise InputError(f'Split {split!r} of {name!r} selects no images.')
    return images, labels


def _load_tfds(spec: DatasetSpec, split: str, tfds_data_dir: Optional[str],
               download: bool, data_dir: Optional[str]) -> tf.data.Dataset:
    import tensorflow_datasets as tfds  # Imported lazily: slow to import.
    try:
        ds = tfds.load(spec.name, split=split, data_dir=tfds_data_dir,
                       download=download, shuffle_files=False)
    except AssertionError as e:  # TFDS: "could not find data in ...".
        raise _missing(spec, split, data_dir, tfds_data_dir, str(e).split('.')[0]) from None

    def to_example(example):
        image = _fit_shape(example['image'], spec)
        image = tf.ensure_shape(image, spec.image_shape)
        label = (tf.cast(example[spec.label_key], tf.int64) if spec.label_key
                 else tf.constant(-1, tf.int64))
        return {'image': image, 'label': label}

    return ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)


def load(name: str, split: str, data_dir: Optional[str] = None,
         source: str = 'auto', tfds_data_dir: Optional[str] = None,
         download: bool = False) -> tf.data.Dataset:
    """Loads a dataset of the registry as uint8 images and labels.

    Args:
      name: a TFDS name in `DATASETS`: `'cifar10'`, `'svhn_cropped'`,
        `'mnist'`, `'fashion_mnist'`, `'cifar100'`, `'celeb_a'`,
        `'downsampled_imagenet/32x32'`.
      split: a TFDS split string with optional slicing, e.g. `'test'`,
        `'train[:5000]'`, `'test[7000:]'`, `'train[:10%]'`.
      data_dir: directory of local arrays `<name>_<split>.npz`.
        Default value: `$TFP_OOD_DATA_DIR` if set.
      source: `'auto'` (local arrays if found, else TFDS), `'local'`,
        `'tfds'`, or `'samples'`: the 2,000-image test samples embedded in the
        package (`tfp_ood.samples`: CIFAR-10, SVHN, FashionMNIST, MNIST).
        Default value: `'auto'`.
      tfds_data_dir: TFDS data directory.
        Default value: TFDS's own default.
      download: let TFDS download and prepare the dataset (needs internet;
        offline, TFDS retries for minutes before it fails).
        Default value: `False`.

    Returns:
      A `tf.data.Dataset` of `{'image': uint8 [H, W, C], 'label': int64}`,
      in the dataset's original order.

    Raises:
      ValueError: an unknown dataset, split or source.
      DataNotFoundError: no local array and no prepared TFDS copy.
    """
    spec = _spec(name)
    if source not in SOURCES:
        raise InputError(f'source must be one of {SOURCES}; got {source!r}.')
    instructions = _parse_split(spec, split)
    if source == 'samples':
        from tfp_ood import samples  # The package's embedded data.
        if name not in samples.SAMPLES or any(i.split_name != 'test' for i in instructions):
            raise InputError(f'The embedded samples hold the "test" split of '
                             f'{sorted(samples.SAMPLES)}; got {name!r} split {split!r}.')
        data_dir, source = samples.SAMPLES_DIR, 'local'
    data_dir = _data_dir(data_dir)
    if data_dir is not None and source != 'tfds' and not os.path.isdir(data_dir):
        raise DataNotFoundError(
            f'The data directory {data_dir} does not exist (given as data_dir or '
            f'${DATA_DIR_ENV}); point it at a folder of <name>_<split>.npz arrays.')
    have_local = data_dir is not None and all(
        os.path.exists(local_path(name, i.split_name, data_dir)) for i in instructions)
    if source == 'local' or (source == 'auto' and have_local):
        images, labels = load_arrays(name, split, data_dir)
        ds = tf.data.Dataset.from_tensor_slices({'image': images, 'label': labels})
        if images.shape[1:] != spec.image_shape:
            ds = ds.map(lambda e: {'image': _fit_shape(e['image'], spec),
                                   'label': e['label']})
        return ds
    return _load_tfds(spec, split, tfds_data_dir, download, data_dir)


def images_array(dataset: tf.data.Dataset, limit: Optional[int] = None) -> np.ndarray:
    """The images of a dataset of `{'image', ...}` as one uint8 array `[N, H, W, C]`."""
    if limit is not None:
        dataset = dataset.take(limit)
    batches = [b['image'] for b in dataset.batch(1024).as_numpy_iterator()]
    if not batches:
        raise InputError('The dataset is empty: no images.')
    return np.concatenate(batches)


def _synthetic(images: np.ndarray) -> tf.data.Dataset:
    labels = np.full(len(images), -1, np.int64)
    return tf.data.Dataset.from_tensor_slices({'image': images, 'label': labels})


def constant_images(value: int, image_shape: Sequence[int], num_images: int
                    ) -> tf.data.Dataset:
    """`num_images` images with every pixel equal to `value` (0..255)."""
    if not 0 <= int(value) <= 255:
        raise InputError(f'value must be in 0..255; got {value}.')
    if num_images < 1:
        raise InputError(f'num_images must be >= 1; got {num_images}.')
    shape = (num_images,) + tuple(int(d) for d in image_shape)
    return _synthetic(np.full(shape, value, np.uint8))


def uniform_noise_images(image_shape: Sequence[int], num_images: int,
                         seed: int = 0) -> tf.data.Dataset:
    """`num_images` images with i.i.d. uniform pixel values in 0..255."""
    if num_images < 1:
        raise InputError(f'num_images must be >= 1; got {num_images}.')
    rng = np.random.default_rng(seed)
    shape = (num_images,) + tuple(int(d) for d in image_shape)
    return _synthetic(rng.integers(0, 256, size=shape, dtype=np.uint8))


def perturb(images: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Replaces each value with probability `rate` by a uniform draw from 0..255.

    The input perturbation of the background model of the likelihood-ratio
    detector (Ren et al., 2019): each of the `H*W*C` values of every image is
    independently chosen with probability `rate` and replaced by an integer
    drawn uniformly from `0..255` (so it keeps its value with probability
    1/256 even when chosen: the expected fraction of values that change is
    `rate * 255 / 256`).

    Args:
      images: uint8 `[..., H, W, C]`.
      rate: the mutation rate `mu`, in `[0, 1]`.
      rng: the `numpy.random.Generator` that draws the positions and values.

    Returns:
      A perturbed uint8 copy of `images` (the input is not modified).

    Raises:
      ValueError: `images` is not uint8 or `rate` is outside `[0, 1]`.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise InputError(f'perturb needs uint8 images; got dtype {images.dtype}.')
    if not 0.0 <= float(rate) <= 1.0:
        raise InputError(f'The mutation rate must be in [0, 1]; got {rate}.')
    chosen = rng.random(images.shape) < rate
    values = rng.integers(0, 256, size=images.shape, dtype=np.uint8)
    return np.where(chosen, values, images)


def resize_images(images, image_shape: Sequence[int]) -> np.ndarray:
    """Fits uint8 images to `image_shape`: channels, then size.

    RGB to one channel takes the BT.601 luma, one channel to RGB copies it,
    four channels (RGBA) drop the alpha channel; the size changes by area
    averaging (antialiased), and values are rounded back to uint8.

    Args:
      images: uint8 `[N, H, W, C]` with `C` in 1, 3, 4.
      image_shape: the target `(H, W, C)`, `C` in 1, 3.

    Returns:
      uint8 `[N] + image_shape` (the input itself if it has that shape).

    Raises:
      ValueError: images that are not uint8 `[N, H, W, C]` (other dtypes are
        refused, never converted: a float image in [0, 1] is not a uint8 one).
    """
    images = np.asarray(images)
    target = tuple(int(d) for d in image_shape)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise InputError(f'resize_images needs uint8 images [N, H, W, C] with 1, 3 or 4 '
                         f'channels; got dtype {images.dtype} and shape {list(images.shape)}.')
    if len(target) != 3 or target[-1] not in (1, 3):
        raise InputError(f'image_shape must be (H, W, C) with C 1 or 3; got {image_shape}.')
    if images.shape[1:] == target:
        return images
    return fit_to_shape(images, target).numpy()


def fit_to_shape(images: tf.Tensor, image_shape: Sequence[int]) -> tf.Tensor:
    """`resize_images` in TensorFlow ops, for uint8 `[N, H, W, C]` whose size and
    channels (1, 3 or 4) may be known only when the graph runs (a decoded file
    in a `tf.data` pipeline); the same numbers eagerly and in a graph."""
    target = tuple(int(d) for d in image_shape)
    x = tf.cast(images, tf.float32)[..., :3]
    channels = tf.shape(x)[-1]
    if target[-1] == 3:
        x = tf.cond(channels == 1, lambda: tf.repeat(x, 3, axis=-1), lambda: x)
    else:
        x = tf.cond(channels == 3, lambda: tf.image.rgb_to_grayscale(x), lambda: x)
    x = tf.image.resize(x, target[:2], method='area', antialias=True)
    return tf.ensure_shape(tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8),
                           (None,) + target)


def to_grayscale(images: tf.Tensor) -> tf.Tensor:
    """Replaces each pixel by its luma (ITU-R BT.601), copied to every channel.

    Works on uint8 `[..., H, W, C]`; single-channel images are returned as
    they are.
    """
    images = tf.convert_to_tensor(images)
    if images.shape[-1] == 1:
        return images
    if images.shape[-1] != 3:
        raise InputError(f'Grayscale needs RGB images [..., H, W, 3]; got '
                         f'shape {images.shape}.')
    luma = tf.image.rgb_to_grayscale(tf.cast(images, tf.float32))
    luma = tf.cast(tf.clip_by_value(tf.round(luma), 0, 255), images.dtype)
    return tf.repeat(luma, 3, axis=-1)


def tint(images, seed: int = 0) -> np.ndarray:
    """Colours one-channel images: each pixel `v` of image `i` becomes
    `b_i + (f_i - b_i) * v / 255`, rounded, with a background colour `b_i` and a
    foreground colour `f_i` drawn uniformly from RGB 0..255 for each image
    (seeded). What is dark in the image takes the background colour, what is
    bright the foreground's: FashionMNIST's garments become coloured shapes on
    flat coloured backgrounds, so that a validation set made of them is not
    told from colour images by its equal channels alone.

    Args:
      images: uint8 `[N, H, W, 1]`.

    Returns:
      uint8 `[N, H, W, 3]`.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 1:
        raise InputError(f'tint colours uint8 [N, H, W, 1] images; got {images.dtype} '
                         f'{images.shape}.')
    rng = np.random.default_rng(seed)
    background, foreground = rng.integers(0, 256, size=(2, len(images), 1, 1, 3))
    mixed = background + (foreground - background) * (images / 255.)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def grayscale(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The dataset with every image replaced by `to_grayscale(image)`."""
    return dataset.map(lambda e: dict(e, image=to_grayscale(e['image'])),
                       num_parallel_calls=tf.data.AUTOTUNE)


def without_autotune(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` with `tf.data`'s autotuning off, for the whole pipeline (what
    `AUTOTUNE` asks for then falls back to fixed defaults), so that its
    background tuning does not take a share of two cores from the model.

    Measured (`benchmarks/autotune.py`, Intel Xeon with AMX, 2 cores, paired
    rounds): scoring under the CPU-sized Glow off / on 1.00 at 32x32 and 1.07
    at 64x64, training 1.18 at 32x32; never slower in the median.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)
