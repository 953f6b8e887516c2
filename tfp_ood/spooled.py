"""Image sets of any size from an `.npz` file or a TFDS dataset, in the memory
of a batch.

Neither can be read at random without holding it whole (an `.npz` member is
usually deflated; a TFDS split is a sequence of records), so each is read
once, in order, into a *spool*: a file of raw uint8 pixels at the model's
shape, in a temporary folder that is removed with it. `SpooledImages` reads
that file back by row, where it is indexed, which is what training (random
batches), the detectors (chunks) and the scorer need.

A TFDS dataset is read in a `tf.data` pipeline: records with their images
still encoded, decoded in parallel, channels and size brought to the
model's (`tfp_ood.data.fit_to_shape`), batched and prefetched. Sizes are
checked (from the dataset's features, or from a first pass that decodes
without keeping anything) before a pixel is written. An `.npz` member is
decompressed a chunk at a time. Set `TMPDIR` to put spools elsewhere than
the system's temporary folder.
"""

import os
import shutil
import tempfile
import weakref
import zipfile
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfp_ood.errors import InputError
from tfp_ood.inputs import ImageSet, LazyImages, _check_sizes, _note, _target

__all__ = ['Spool', 'SpooledImages', 'spool_npz', 'spool_tfds']

#: Bytes of source pixels read (and written) at a time.
CHUNK_BYTES = 8 << 20
_READ_BYTES = 1 << 28  # The most one pread asks for.


def _remove(file, folder: str) -> None:
    file.close()
    shutil.rmtree(folder, ignore_errors=True)


class Spool:
    """uint8 images `[N, H, W, C]` in a file of their raw bytes: appended once,
    in order, then read by row from any thread. The file's folder is removed
    when the spool is garbage collected (or the process ends).

    Args:
      image_shape: `(H, W, C)` of every image.
      name: what the images are (for the folder's name).
    """

    def __init__(self, image_shape: Sequence[int], name: str = 'images'):
        self.image_shape = tuple(int(d) for d in image_shape)
        self.row_bytes = int(np.prod(self.image_shape))
        safe = ''.join(c if c.isalnum() else '_' for c in name)[:40]
        self.folder = tempfile.mkdtemp(prefix=f'tfp_ood_spool_{safe}_')
        self.path = os.path.join(self.folder, 'images.uint8')
        self._file = open(self.path, 'w+b')
        self.count = 0
        self._finalizer = weakref.finalize(self, _remove, self._file, self.folder)

    def append(self, images: np.ndarray) -> None:
        """Writes `images` (uint8 `[n, H, W, C]`) after those already written."""
        images = np.ascontiguousarray(images, np.uint8)
        if images.shape[1:] != self.image_shape:
            raise ValueError(f'images of {images.shape[1:]} in a spool of {self.image_shape}')
        self._file.write(images.data)
        self.count += len(images)

    def finish(self) -> None:
        """Makes every appended image readable."""
        self._file.flush()

    def _pread(self, size: int, offset: int) -> bytes:
        parts = []
        while size:
            part = os.pread(self._file.fileno(), min(size, _READ_BYTES), offset)
            if not part:
                raise InputError(f'{self.path} ended early (removed or truncated since?).')
            parts.append(part)
            size, offset = size - len(part), offset + len(part)
        return b''.join(parts)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """The images at `indices` (in that order), each consecutive run of
        them read in one call."""
        indices = np.asarray(indices, np.int64)
        out = np.empty((len(indices),) + self.image_shape, np.uint8)
        if not len(indices):
            return out
        order = np.argsort(indices, kind='stable')
        ordered = indices[order]
        rows = out.reshape(len(indices), -1)
        for run in np.split(np.arange(len(ordered)), np.flatnonzero(np.diff(ordered) != 1) + 1):
            data = self._pread(len(run) * self.row_bytes, int(ordered[run[0]]) * self.row_bytes)
            rows[order[run]] = np.frombuffer(data, np.uint8).reshape(len(run), -1)
        return out


class SpooledImages(LazyImages):
    """The images of a `Spool` as a `LazyImages` (read where indexed)."""

    def __init__(self, spool: Spool, indices: Optional[Sequence[int]] = None):
        super().__init__(np.arange(spool.count) if indices is None else indices,
                         spool.image_shape)
        self.spool = spool

    def _read_many(self, indices: np.ndarray) -> np.ndarray:
        return self.spool.read(indices)


def _progress(total: int, what: str, progress: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=what, unit='image', leave=False, disable=not progress)


def _npy_header(f, path: str) -> Tuple[Tuple[int, ...], np.dtype]:
    """The shape and dtype of the `.npy` array that `f` is positioned at."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
    if read is None:
        raise InputError(f'{path}: "images" is saved in .npy format version {version}, which '
                         f'cannot be read a chunk at a time; save it with np.savez.')
    shape, fortran_order, dtype = read(f)
    if dtype.hasobject:
        raise InputError(f'{path}: an array of Python objects cannot be read (it would be '
                         f'unpickled); save "images" as a uint8 array.')
    if dtype != np.uint8 or len(shape) != 4:
        raise InputError(f'{path}: "images" must be uint8 [N, H, W, C]; got {dtype} '
                         f'{list(shape)}.')
    if fortran_order and shape[0] > 1:
        raise InputError(f'{path}: "images" is saved in Fortran order; save '
                         f'np.ascontiguousarray(images) instead.')
    return tuple(int(d) for d in shape), dtype


def spool_npz(path: str, shape: Optional[Sequence[int]], resize: bool = False,
              name: Optional[str] = None, progress: bool = False) -> ImageSet:
    """The `images` (and `labels`) of an `.npz` file at `shape` (`None`: their
    own), spooled a chunk at a time (see the module's docstring).

    Raises:
      DataNotFoundError: no file at `path`.
      InputError: not an `.npz` file, no uint8 `[N, H, W, C]` `images`, bad
        labels, or images of another size than `shape` without `resize`.
    """
    from tfp_ood import data
    from tfp_ood.inputs import _check_array_size
    if not os.path.isfile(path):
        raise data.DataNotFoundError(f'No file at {path}.')
    name = name or os.path.splitext(os.path.basename(path))[0]
    notes: Dict[str, int] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = {os.path.splitext(m)[0]: m for m in archive.namelist()}
            if 'images' not in members:
                raise InputError(f'{path}: expected an array named "images" (and "labels"); '
                                 f'found {sorted(members)}.')
            labels = None
            if 'labels' in members:
                with archive.open(members['labels']) as f:
                    labels = np.lib.format.read_array(f, allow_pickle=False)
            with archive.open(members['images']) as f:
                (count, *image_shape), _ = _npy_header(f, path)
                image_shape = tuple(image_shape)
                data.check_labels(path, labels, count)
                target = image_shape if shape is None else tuple(int(d) for d in shape)
                _check_array_size(image_shape, target, resize, name)
                spool = _spooled_rows(f, count, image_shape, target, resize, name, notes,
                                      _progress(count, f'reading {os.path.basename(path)}',
                                                progress))
    except InputError:
        raise
    except (EOFError, OSError, zipfile.BadZipFile) as e:
        raise InputError(f'{path} is not a readable .npz file ({type(e).__name__}: '
                         f'{e}).') from None
    except ValueError as e:  # NumPy: labels of Python objects, or a malformed header.
        raise InputError(f'{path}: an array of Python objects cannot be read (it would be '
                         f'unpickled) ({e}).' if 'pickle' in str(e) else
                         f'{path} is not a readable .npz file (ValueError: {e}).') from None
    return ImageSet(name, SpooledImages(spool), labels, notes=notes)


def _spooled_rows(f, count: int, image_shape: Tuple[int, ...], target: Tuple[int, ...],
                  resize: bool, name: str, notes: Dict[str, int], bar) -> Spool:
    """A `Spool` of the `count` images of `image_shape` that `f` holds from where
    it is, at `target`, read `CHUNK_BYTES` at a time."""
    from tfp_ood.inputs import _fit_array
    row_bytes = int(np.prod(image_shape))
    rows = max(1, CHUNK_BYTES // max(1, row_bytes))
    spool = Spool(target, name)
    with bar:
        for start in range(0, count, rows):
            n = min(rows, count - start)
            chunk = np.frombuffer(f.read(n * row_bytes), np.uint8)
            if chunk.size != n * row_bytes:
                raise EOFError(f'"images" ends after {start} images')
            spool.append(_fit_array(chunk.reshape((n,) + image_shape), target, resize, name,
                                    notes))
            bar.update(n)
    spool.finish()
    return spool


def _model_channels(image: tf.Tensor) -> tf.Tensor:
    """A decoded `[H, W, C]` without its alpha channel (1 or 3 channels left)."""
    return tf.cond(tf.shape(image)[-1] == 2, lambda: image[..., :1], lambda: image[..., :3])


def _channel_notes(channels: np.ndarray, target: int, notes: Dict[str, int]) -> None:
    """Counts what fitting images of `channels` (one per image) to `target` does,
    in the words `tfp_ood.inputs` uses for a folder's images."""
    for with_alpha, without in ((2, 'grayscale'), (4, 'RGB')):
        count = int((channels == with_alpha).sum())
        if count:
            _note(notes, f'{without} with alpha: alpha dropped', count)
    kept = np.where(channels == 2, 1, np.where(channels == 4, 3, channels))
    for source, to, note in ((1, 3, 'grayscale -> RGB'), (3, 1, 'RGB -> grayscale')):
        count = int((kept == source).sum())
        if target == to and count:
            _note(notes, note, count)


def spool_tfds(name: str, split: str, shape: Optional[Sequence[int]], resize: bool = False,
               set_name: Optional[str] = None, tfds_data_dir: Optional[str] = None,
               download: bool = False, progress: bool = False) -> ImageSet:
    """A split of a TFDS image dataset at `shape` (`None`: the most common
    shape of its images), spooled in a `tf.data` pipeline (see the module's
    docstring); its class labels (-1 where it has none)."""
    import tensorflow_datasets as tfds
    from tfp_ood import data
    from tfp_ood.inputs import _tfds_image_keys
    set_name = set_name or f'{name}/{split}'
    image_key, label_key, feature_shape = _tfds_image_keys(name, tfds_data_dir)
    try:
        ds = tfds.load(name, split=split, data_dir=tfds_data_dir, download=download,
                       shuffle_files=False, decoders={image_key: tfds.decode.SkipDecoding()})
    except AssertionError as e:  # TFDS: "could not find data in ...".
        raise data.DataNotFoundError(
            f'The TFDS dataset {name!r} is not prepared here ({str(e).split(".")[0]}); '
            f'prepare it with tfds build {name}, or pass --download where there is '
            f'internet.') from None

    def decoded(example):
        return tf.io.decode_image(example[image_key], expand_animations=False)

    parallel = tf.data.AUTOTUNE
    if None in feature_shape:  # A first pass for the sizes: decoded, nothing kept.
        sizes = np.concatenate([np.zeros((0, 3), np.int64)] + list(
            ds.map(lambda e: tf.shape(decoded(e), tf.int64), num_parallel_calls=parallel)
            .batch(4096).as_numpy_iterator()))
    else:
        count = int(ds.cardinality()) if ds.cardinality() >= 0 else sum(1 for _ in ds)
        sizes = np.tile(np.asarray(feature_shape, np.int64), (count, 1))
    if not len(sizes):
        raise InputError(f'{set_name}: no images.')
    kept = np.where(sizes[:, 2] == 2, 1, np.where(sizes[:, 2] == 4, 3, sizes[:, 2]))
    target, size_is = _target([(h, w, c) for (h, w, _), c in zip(sizes.tolist(), kept)], shape)
    notes: Dict[str, int] = {}
    other = _check_sizes(set_name, {f'{set_name}[{i}]': tuple(s[:2]) for i, s in
                                    enumerate(sizes.tolist())}, target, size_is, resize)
    _channel_notes(sizes[:, 2], target[-1], notes)
    if other:
        _note(notes, f'resized to {target[0]}x{target[1]}', len(other))

    def fitted(example):
        image = decoded(example)
        image = tf.cond(tf.reduce_all(tf.shape(image) == target), lambda: image,
                        lambda: data.fit_to_shape(_model_channels(image)[None], target)[0])
        label = example[label_key] if label_key else tf.constant(-1, tf.int64)
        return tf.ensure_shape(image, target), tf.cast(label, tf.int64)

    spool, labels = Spool(target, set_name), []
    with _progress(len(sizes), f'reading {set_name}', progress) as bar:
        for images, batch_labels in (ds.map(fitted, num_parallel_calls=parallel)
                                     .batch(256).prefetch(2).as_numpy_iterator()):
            spool.append(images)
            labels.append(batch_labels)
            bar.update(len(images))
    spool.finish()
    return ImageSet(set_name, SpooledImages(spool), np.concatenate(labels), notes=notes)
