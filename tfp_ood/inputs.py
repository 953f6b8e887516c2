"""Images from where a user keeps them, read the same way by every verb.

- `dataset`: a dataset of the registry (`tfp_ood.data.DATASETS`, read from
  local arrays or TFDS), or **any** other TFDS image dataset (its image
  feature, and its class label if it has one);
- `npz`: a file with a uint8 `images` array `[N, H, W, C]` (and optional
  `labels`);
- `images_dir`: a folder of image files, searched recursively (PNG, JPEG,
  BMP, WebP, GIF's first frame, TIFF: what Pillow decodes).

Every image is brought to the model's `(H, W, C)` the same way: channels are
converted where the model asks for others (grayscale copied to RGB, RGB to
grayscale by its BT.601 luma, alpha dropped, palette images expanded, 16-bit
values scaled to 8 bits); a different size is an error unless `resize`
(area averaging, `tfp_ood.data.resize_images`). What was converted is
counted in `ImageSet.notes`, so a command can say it. A file of a folder that
cannot be decoded is skipped and listed in `ImageSet.skipped` (a command
writes them to `skipped.txt`), unless every file fails. Without a target
shape (`tfp-ood train` on a folder), the most common shape in the folder is
the model's.

Nothing is read into memory whole where a set can be large: a folder's images
are decoded where they are indexed (`FolderImages`); an `.npz` file and a TFDS
dataset outside the registry are read once, in order, into a file of raw
pixels at the model's shape in a temporary folder (`tfp_ood.spooled`), and
read back by row (`SpooledImages`). Both are `LazyImages`, which the
detectors, the scorer and the trainer read a chunk or a batch at a time.
"""

import collections
import copy
import dataclasses
import hashlib
import os
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfp_ood.errors import InputError

__all__ = ['FolderImages', 'FolderStream', 'IMAGE_SUFFIXES', 'ImageSet', 'LazyImages',
           'load_dataset', 'read_folder', 'read_npz_set']

#: The file endings a folder's images are found by (case-insensitive).
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.gif', '.tif', '.tiff')
Shape = Tuple[int, int, int]


@dataclasses.dataclass
class ImageSet:
    """A set of uint8 images `[N, H, W, C]` and where they came from.

    Attributes:
      name: the set's name (for tables and file names).
      images: uint8 `[N, H, W, C]` (`None` for what a `FolderStream` read).
      labels: int64 `[N]`, or `None`.
      files: each image's file, relative to the folder (folders only).
      skipped: `(file, reason)` of each file that could not be decoded.
      notes: what was done to how many images, e.g.
        `{'RGBA -> RGB (alpha dropped)': 3, 'resized': 10}`.
    """

    name: str
    images: np.ndarray
    labels: Optional[np.ndarray] = None
    files: Optional[List[str]] = None
    skipped: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    notes: Dict[str, int] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images if self.images is not None else self.files)

    def take(self, indices, name: str) -> 'ImageSet':
        """The images at `indices`, as a set called `name`."""
        indices = np.asarray(indices, np.int64)
        images = (self.images.take(indices) if isinstance(self.images, LazyImages)
                  else self.images[indices])
        return ImageSet(name, images,
                        None if self.labels is None else self.labels[indices],
                        None if self.files is None else [self.files[i] for i in indices],
                        list(self.skipped), dict(self.notes))

    def split(self, fraction: float, seed: int = 0) -> Tuple['ImageSet', 'ImageSet']:
        """`(rest, held_out)`: a `fraction` of the images held out, drawn by
        `seed` (the same images for the same set and seed), each part in the
        set's order."""
        if not 0. < fraction < 1.:
            raise InputError(f'The validation fraction must be in (0, 1); got {fraction}.')
        n = len(self)
        held = int(round(fraction * n))
        if held < 1 or held > n - 1:
            raise InputError(f'A validation fraction of {fraction} of {n} images leaves '
                             f'{held} held out and {n - held} to learn from; both need at '
                             f'least one image.')
        chosen = np.zeros(n, bool)
        chosen[np.random.default_rng(seed).permutation(n)[:held]] = True
        return (self.take(np.flatnonzero(~chosen), self.name),
                self.take(np.flatnonzero(chosen), f'{self.name} (held out)'))

    def describe(self, skipped_to: str = 'skipped.txt') -> List[str]:
        """Lines saying what was converted and skipped (none if nothing was);
        `skipped_to`: where the skipped files are listed."""
        lines = [f'{self.name}: {count} image{"s" if count != 1 else ""} {what}'
                 for what, count in sorted(self.notes.items())]
        if self.skipped:
            lines.append(f'{self.name}: {len(self.skipped)} file'
                         f'{"s" if len(self.skipped) != 1 else ""} could not be decoded and '
                         f'{"were" if len(self.skipped) != 1 else "was"} skipped '
                         f'(listed in {skipped_to})')
        return lines

    def write_skipped(self, path: str) -> None:
        """`skipped.txt`: one `file<TAB>reason` line per skipped file."""
        with open(path, 'w') as f:
            for name, reason in self.skipped:
                f.write(f'{name}\t{reason}\n')


def _note(notes: Dict[str, int], what: str, count: int = 1) -> None:
    notes[what] = notes.get(what, 0) + count


# Pillow's image modes, as a command says them.
_MODE_NAMES = {'1': '1-bit', 'LA': 'grayscale with alpha (alpha dropped)', 'P': 'palette',
               'PA': 'palette with alpha', 'RGBA': 'RGBA', 'CMYK': 'CMYK', 'YCbCr': 'YCbCr'}


def _decoded(path: str, notes: Dict[str, int]) -> np.ndarray:
    """The image in `path` as uint8 `[H, W, 1 or 3]`, its mode converted (counted)."""
    from PIL import Image
    with Image.open(path) as image:
        image.load()  # Decodes now: a truncated file fails here.
        mode = image.mode
        if mode in ('L', 'RGB'):
            pixels = np.asarray(image)
        elif mode in ('1', 'LA'):
            _note(notes, f'{_MODE_NAMES[mode]} -> grayscale')
            pixels = np.asarray(image.convert('L'))
        elif mode.startswith('I') or mode == 'F':  # 16- or 32-bit grayscale.
            values = np.asarray(image, np.float64)
            top = 65535. if mode.startswith('I;16') or values.max(initial=0) > 255 else 255.
            _note(notes, f'{mode} -> 8-bit grayscale')
            pixels = np.clip(np.round(values * 255. / top), 0, 255).astype(np.uint8)
        else:  # RGBA, P (palette), PA, CMYK, YCbCr, ...
            alpha = ' (alpha dropped)' if 'A' in mode or 'transparency' in image.info else ''
            _note(notes, f'{_MODE_NAMES.get(mode, mode)} -> RGB{alpha}')
            pixels = np.asarray(image.convert('RGB'))
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    if pixels.dtype != np.uint8:
        pixels = pixels.astype(np.uint8)
    return pixels


def _channels(image: np.ndarray, channels: int, notes: Dict[str, int]) -> np.ndarray:
    """`image` `[H, W, C]` with `channels` channels (1 or 3), counted if converted."""
    if image.shape[-1] in (2, 4):  # Grayscale or RGB with alpha.
        _note(notes, f'{"grayscale" if image.shape[-1] == 2 else "RGB"} with alpha: alpha '
              f'dropped')
        image = image[..., :-1]
    if image.shape[-1] == channels:
        return image
    from tfp_ood import data
    if channels == 3:
        _note(notes, 'grayscale -> RGB')
        return np.repeat(image, 3, axis=-1)
    _note(notes, 'RGB -> grayscale')
    return data.resize_images(image[None], image.shape[:2] + (1,))[0]


def _target(shapes: Sequence[Shape], shape: Optional[Sequence[int]]) -> Tuple[Shape, str]:
    """The target shape (`shape`, or the most common of `shapes`) and what it is."""
    if shape is not None:
        return tuple(int(d) for d in shape), 'the size the model takes'
    counts = collections.Counter(shapes)
    return (max(counts, key=lambda s: (counts[s], s)),
            'the most common size (or pass --image-shape)')


def _check_sizes(what: str, sizes: Dict[str, Tuple[int, int]], shape: Shape, size_is: str,
                 resize: bool) -> List[str]:
    """The names whose `(H, W)` is not the shape's; an error listing a few of
    them unless `resize`."""
    other = [n for n, size in sizes.items() if tuple(size) != tuple(shape[:2])]
    if other and not resize:
        listed = ', '.join(f'{n} ({sizes[n][0]}x{sizes[n][1]})' for n in other[:3])
        raise InputError(f'{what}: {len(other)} of {len(sizes)} images are not '
                         f'{shape[0]}x{shape[1]}, {size_is}: {listed}'
                         f'{", ..." if len(other) > 3 else ""}; pass --resize to resize them.')
    return other


def _image_files(folder: str) -> List[str]:
    """Every image file below `folder`, relative to it, in sorted order."""
    found = []
    for root, _, files in os.walk(folder, followlinks=False):
        found.extend(os.path.relpath(os.path.join(root, f), folder) for f in files
                     if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith('.'))
    return sorted(found)


_GRAY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F')
# How a file is decoded: by Pillow, or by TensorFlow's PNG or JPEG decoder (in a
# tf.data pipeline, without Python's lock).
_PILLOW, _PNG, _JPEG = 0, 1, 2
_NATIVE = {'PNG': _PNG, 'JPEG': _JPEG}


def _reason(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


#: Images a folder's stream counts in one Python call (what it delivered, the
#: conversions): one call per image cost a fifth of a tiny model's throughput.
STREAM_BOOKKEEPING_BATCH = 256


class FolderStream:
    """A folder's images, decoded as they are read: a `tf.data` pipeline whose
    memory stays flat however many images there are (`dataset`), or all of
    them at once (`image_set`, what `read_folder` returns).

    The files' headers are read first (fast: no pixels), so a folder whose
    images have other sizes is refused before any work, and the model's shape
    can be the most common one. Each image is then decoded, converted to the
    shape's channels and (with `resize`) resized by the same code on either
    path: 8-bit grayscale and RGB PNGs and JPEGs by TensorFlow's decoders (in
    the pipeline they run in parallel, without Python's lock), every other
    file by Pillow. What was converted is counted in `notes`, and a file that
    cannot be decoded is listed in `skipped` (complete once the images have
    been read).

    Args:
      folder, shape, resize, name: as for `read_folder`.
    """

    def __init__(self, folder: str, shape: Optional[Sequence[int]] = None,
                 resize: bool = False, name: Optional[str] = None):
        if not os.path.isdir(folder):
            raise InputError(f'no folder at {folder}')
        candidates = _image_files(folder)
        if not candidates:
            raise InputError(f'no image files ({", ".join(IMAGE_SUFFIXES)}) in {folder} or '
                             f'its subfolders')
        self.folder, self.name = folder, name or os.path.basename(os.path.normpath(folder))
        self.notes: Dict[str, int] = {}
        self.skipped: List[Tuple[str, str]] = []
        self._lock = threading.Lock()
        self._kinds: Dict[str, int] = {}
        shapes = {f: self._header(f) for f in candidates}
        self.files = [f for f in candidates if shapes[f] is not None]
        self._shapes = [shapes[f] for f in self.files]
        self._kind = np.array([self._kinds[f] for f in self.files], np.int32)
        self._streamed: set = set()  # Indices the stream delivered.
        self._native_fn = tf.function(self._native, input_signature=[
            tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32)])
        if not self.files:
            raise InputError(f'none of the {len(candidates)} image files in {folder} could be '
                             f'decoded (the first: {self.skipped[0][0]}: {self.skipped[0][1]})')
        self.shape, size_is = _target([shapes[f] for f in self.files], shape)
        _check_sizes(folder, {f: shapes[f][:2] for f in self.files}, self.shape, size_is,
                     resize)

    def _header(self, relative: str) -> Optional[Shape]:
        """`(H, W, 1 or 3)` from the file's header, or `None` (skipped) if unreadable;
        whether TensorFlow decodes it (an 8-bit grayscale or RGB PNG or JPEG)."""
        from PIL import Image
        try:
            with Image.open(os.path.join(self.folder, relative)) as image:
                width, height = image.size
                self._kinds[relative] = (_NATIVE.get(image.format, _PILLOW)
                                         if image.mode in ('L', 'RGB') else _PILLOW)
                return height, width, 1 if image.mode in _GRAY_MODES else 3
        except (OSError, ValueError, SyntaxError) as e:  # What Pillow raises for bad files.
            self.skipped.append((relative, _reason(e)))
            return None

    def _native_notes(self, index: int) -> Dict[str, int]:
        """What fitting a file TensorFlow decodes does to it, from its header."""
        height, width, channels = self._shapes[index]
        notes: Dict[str, int] = {}
        if channels != self.shape[-1]:
            _note(notes, 'grayscale -> RGB' if channels == 1 else 'RGB -> grayscale')
        if (height, width) != self.shape[:2]:
            _note(notes, f'resized to {self.shape[0]}x{self.shape[1]}')
        return notes

    def _count(self, notes: Dict[str, int]) -> None:
        with self._lock:
            for what, n in notes.items():
                _note(self.notes, what, n)

    def _native(self, path: tf.Tensor, kind: tf.Tensor) -> tf.Tensor:
        """A PNG or JPEG decoded by TensorFlow and fitted to the shape (the
        conversions of `tfp_ood.data.resize_images`, in graph-safe ops)."""
        from tfp_ood import data
        contents = tf.io.read_file(path)
        image = tf.cond(kind == _JPEG,
                        lambda: tf.io.decode_jpeg(contents, dct_method='INTEGER_ACCURATE'),
                        lambda: tf.io.decode_png(contents))
        return data.fit_to_shape(image[None], self.shape)[0]

    def load(self, index: int, count: bool = True) -> Tuple[np.ndarray, bool]:
        """`(image at the shape, True)` for file `index`, or `(zeros, False)` if it
        cannot be decoded (then listed in `skipped`); `count`: count what was
        converted in `notes` (a file read again is not counted again)."""
        from tfp_ood import data
        index = int(index)
        relative, notes = self.files[index], {}
        if self._kind[index] != _PILLOW:
            try:
                image = self._native_fn(tf.constant(os.path.join(self.folder, relative)),
                                        tf.constant(self._kind[index], tf.int32)).numpy()
            except tf.errors.OpError as e:
                if count:
                    with self._lock:
                        self.skipped.append((relative, e.message.splitlines()[0]))
                return np.zeros(self.shape, np.uint8), False
            if count:
                self._count(self._native_notes(index))
            return image, True
        try:
            image = _channels(_decoded(os.path.join(self.folder, relative), notes),
                              self.shape[-1], notes)
        except (OSError, ValueError, SyntaxError) as e:
            if count:
                with self._lock:
                    self.skipped.append((relative, _reason(e)))
            return np.zeros(self.shape, np.uint8), False
        if image.shape != self.shape:
            image = data.resize_images(image[None], self.shape)[0]
            _note(notes, f'resized to {self.shape[0]}x{self.shape[1]}')
        if count:
            self._count(notes)
        return image, True

    def kept(self) -> List[str]:
        """The files decoded, in order (once the images have been read)."""
        failed = {f for f, _ in self.skipped}
        return [f for f in self.files if f not in failed]

    @property
    def dataset(self) -> tf.data.Dataset:
        """`(image uint8 [H, W, C], label -1)` of each file that decodes, in the
        files' order, decoded in parallel: PNGs and JPEGs (8-bit grayscale or
        RGB) by TensorFlow's decoders, the rest by Pillow."""
        paths = tf.constant([os.path.join(self.folder, f) for f in self.files])
        kinds = tf.constant(self._kind)

        def decode(index):
            def by_pillow():
                image, ok = tf.py_function(lambda i: self.load(i.numpy()), [index],
                                           [tf.uint8, tf.bool])
                return tf.ensure_shape(image, self.shape), ok
            return tf.cond(kinds[index] == _PILLOW, by_pillow,
                           lambda: (self._native(paths[index], kinds[index]), True))

        def delivered(index, image, ok):  # What the stream gave, counted (a batch a call).
            ok = tf.py_function(self._delivered, [index, ok], tf.bool)
            return image, tf.ensure_shape(ok, [None])

        return (tf.data.Dataset.range(len(self.files))
                .map(lambda i: (i, *decode(i)), num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True)
                .ignore_errors()  # A PNG or JPEG that TensorFlow cannot decode.
                .batch(STREAM_BOOKKEEPING_BATCH)
                .map(delivered)
                .unbatch()
                .filter(lambda image, ok: ok)
                .map(lambda image, ok: (image, tf.constant(-1, tf.int64))))

    def _delivered(self, indices, oks) -> np.ndarray:
        for index, ok in zip(indices.numpy().tolist(), oks.numpy().tolist()):
            self._streamed.add(index)
            if ok and self._kind[index] != _PILLOW:
                self._count(self._native_notes(index))
        return oks.numpy()

    def _undelivered(self) -> None:
        """After a stream: the PNGs and JPEGs TensorFlow could not decode, skipped."""
        listed = {f for f, _ in self.skipped}
        for index, relative in enumerate(self.files):
            if (index not in self._streamed and self._kind[index] != _PILLOW
                    and relative not in listed):
                self.skipped.append((relative, 'TensorFlow could not decode it'))

    def image_set_read(self) -> ImageSet:
        """What reading `dataset` found, as an `ImageSet` without the images
        (`images` is `None`): the files kept, those skipped, the conversions."""
        self._undelivered()
        return ImageSet(self.name, None, None, self.kept(), sorted(self.skipped),
                        dict(self.notes))

    def lazy_image_set(self, progress: bool = False) -> ImageSet:
        """An `ImageSet` whose `images` is a `FolderImages`: every file decoded
        once now (nothing kept) to find those that cannot be, then only the
        images indexed, when they are (what `tfp-ood train` holds)."""
        indices = range(len(self.files))
        if progress:
            from tqdm.auto import tqdm
            indices = tqdm(indices, desc=f'checking {self.folder}', unit='image', leave=False)
        good = np.array([self.load(i)[1] for i in indices])
        if not good.any():
            raise InputError(f'none of the {len(self.skipped)} image files in {self.folder} '
                             f'could be decoded (the first: {self.skipped[0][0]}: '
                             f'{self.skipped[0][1]})')
        return ImageSet(self.name, FolderImages(self, np.flatnonzero(good)), None,
                        self.kept(), sorted(self.skipped), dict(self.notes))

    def image_set(self, progress: bool = False) -> ImageSet:
        """Every image at once, as an `ImageSet`."""
        indices = range(len(self.files))
        if progress:
            from tqdm.auto import tqdm
            indices = tqdm(indices, desc=f'reading {self.folder}', unit='image', leave=False)
        images = [image for image, ok in map(self.load, indices) if ok]
        if not images:
            raise InputError(f'none of the {len(self.skipped)} image files in {self.folder} '
                             f'could be decoded (the first: {self.skipped[0][0]}: '
                             f'{self.skipped[0][1]})')
        return ImageSet(self.name, np.stack(images), None, self.kept(),
                        sorted(self.skipped), dict(self.notes))


def pixel_digests(images) -> List[bytes]:
    """A 16-byte digest of each image's pixels (the same for the same pixels)."""
    return [hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()
            for image in images]


class LazyImages:
    """A read-only uint8 array `[N, H, W, C]` whose images are read only where
    it is indexed (by an integer, a slice or an array of indices): a set of any
    size in the memory of a batch. `np.asarray` reads every image. Subclasses
    say how a list of their images is read (`_read_many`) and what identifies
    an image without reading it where they can (`identities`).
    """

    dtype = np.dtype(np.uint8)
    ndim = 4
    decodes_when_indexed = True  # What `tfp_ood.detectors` read a chunk at a time.

    def __init__(self, indices: Sequence[int], image_shape: Sequence[int]):
        self.indices = np.asarray(indices, np.int64)
        self.shape = (len(self.indices),) + tuple(int(d) for d in image_shape)

    def __len__(self) -> int:
        return len(self.indices)

    def take(self, indices) -> 'LazyImages':
        """The images at `indices`, still not read."""
        taken = copy.copy(self)
        taken.indices = self.indices[np.asarray(indices, np.int64)]
        taken.shape = (len(taken.indices),) + self.shape[1:]
        return taken

    def _read_many(self, indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def identities(self) -> List[bytes]:
        """What identifies each image (the same bytes for the same image): a
        digest of its pixels (`pixel_digests`), read a chunk at a time."""
        digests = []
        for start in range(0, len(self), 2048):
            digests.extend(pixel_digests(self[start:start + 2048]))
        return digests

    def __getitem__(self, key) -> np.ndarray:
        chosen = self.indices[key]
        if np.ndim(chosen) == 0:
            return self._read_many(np.asarray([chosen]))[0]
        if not len(chosen):
            return np.zeros((0,) + self.shape[1:], np.uint8)
        return self._read_many(chosen)

    def __array__(self, dtype=None, copy=None):
        images = self[:]
        return images if dtype is None else images.astype(dtype)


class FolderImages(LazyImages):
    """A folder's images as a `LazyImages`: only the images indexed are
    decoded, four at a time.

    Args:
      stream: the `FolderStream` of the folder.
      indices: which of its files (all of them decode).
    """

    def __init__(self, stream: FolderStream, indices: Sequence[int]):
        super().__init__(indices, stream.shape)
        self.stream = stream

    def paths(self) -> List[str]:
        """The path of each image's file (what identifies it without decoding)."""
        return [os.path.join(self.stream.folder, self.stream.files[i]) for i in self.indices]

    def identities(self) -> List[bytes]:
        return [path.encode() for path in self.paths()]

    def _read(self, index: int) -> np.ndarray:
        image, ok = self.stream.load(index, count=False)
        if not ok:
            raise InputError(f'{self.stream.files[index]} in {self.stream.folder} decoded when '
                             f'the folder was read, and cannot be decoded now (changed '
                             f'since?).')
        return image

    def _read_many(self, indices: np.ndarray) -> np.ndarray:
        if len(indices) == 1:
            return self._read(int(indices[0]))[None]
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(4) as pool:
            return np.stack(list(pool.map(self._read, indices)))


def read_folder(folder: str, shape: Optional[Sequence[int]] = None, resize: bool = False,
                name: Optional[str] = None, progress: bool = False) -> ImageSet:
    """The images of a folder and its subfolders, at `shape`, in memory
    (`FolderStream` reads them as a stream).

    Args:
      folder: the folder.
      shape: the model's `(H, W, C)`; `None`: the most common shape of the
        folder's images (each at 1 channel if grayscale, else 3).
      resize: resize images of another size (else they are an error that
        lists a few).
      name: the set's name (default: the folder's).
      progress: show a progress bar (with the time remaining) while decoding.

    Raises:
      InputError: no folder, no image files, or none that decodes.
    """
    return FolderStream(folder, shape, resize, name).image_set(progress)


def read_npz_set(path: str, shape: Optional[Sequence[int]], resize: bool = False,
                 name: Optional[str] = None, progress: bool = False) -> ImageSet:
    """The `images` (and `labels`) of an .npz file, at `shape` (`None`: as they
    are), as `tfp_ood.spooled.SpooledImages`: read once, a chunk at a time,
    never whole in memory."""
    from tfp_ood import spooled
    return spooled.spool_npz(path, shape, resize, name, progress)


def _check_array_size(image_shape: Sequence[int], shape: Sequence[int], resize: bool,
                      what: str) -> None:
    if tuple(image_shape[:2]) != tuple(shape[:2]) and not resize:
        raise InputError(f'{what}: images are {list(image_shape)} but the model expects '
                         f'{list(shape)} (H, W, C); pass --resize to resize them')


def _fit_array(images: np.ndarray, shape: Sequence[int], resize: bool, what: str,
               notes: Dict[str, int]) -> np.ndarray:
    """uint8 `[N, H, W, C]` at `shape`: channels converted, sizes only if `resize`."""
    from tfp_ood import data
    shape = tuple(int(d) for d in shape)
    if images.shape[1:] == shape:
        return images
    _check_array_size(images.shape[1:], shape, resize, what)
    if images.shape[-1] != shape[-1]:
        _note(notes, f'{"grayscale -> RGB" if shape[-1] == 3 else "RGB -> grayscale"}'
              if images.shape[-1] in (1, 3) else f'{images.shape[-1]} channels -> '
              f'{shape[-1]}', len(images))
    if images.shape[1:3] != shape[:2]:
        _note(notes, f'resized to {shape[0]}x{shape[1]}', len(images))
    return data.resize_images(images, shape)


def _tfds_image_keys(name: str, tfds_data_dir: Optional[str]
                     ) -> Tuple[str, Optional[str], Tuple[Optional[int], ...]]:
    """The image feature, the class-label feature (or None) and the image
    feature's shape (`None` where it varies) of a TFDS dataset."""
    import tensorflow_datasets as tfds
    from tfp_ood import data
    try:
        features = tfds.builder(name, data_dir=tfds_data_dir).info.features
    except Exception as e:  # DatasetNotFoundError and its relatives: an unknown name.
        raise InputError(f'Unknown dataset {name!r}: not one of {sorted(data.DATASETS)} nor '
                         f'a TFDS dataset ({str(e).splitlines()[0][:120]}).') from None
    images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    if not images:
        raise InputError(f'The TFDS dataset {name!r} has no image feature (its features: '
                         f'{sorted(features)}).')
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    return (images[0], ('label' if 'label' in labels else labels[0] if labels else None),
            tuple(features[images[0]].shape))


def load_dataset(name: str, split: str, shape: Optional[Sequence[int]], resize: bool = False,
                 data_dir: Optional[str] = None, source: str = 'auto', download: bool = False,
                 set_name: Optional[str] = None, tfds_data_dir: Optional[str] = None,
                 progress: bool = False) -> ImageSet:
    """A split of a registry dataset (`tfp_ood.data.load`, in memory) or of any
    other TFDS image dataset (spooled: `tfp_ood.spooled.spool_tfds`), at
    `shape` (`None`: a registry dataset's own shape, or the most common one)."""
    from tfp_ood import data
    set_name = set_name or f'{name}/{split}'
    notes: Dict[str, int] = {}
    if name in data.DATASETS:
        ds = data.load(name, split, data_dir=data_dir, source=source, download=download,
                       tfds_data_dir=tfds_data_dir)
        batches = list(ds.batch(4096).as_numpy_iterator())  # One pass over the data.
        if not batches:
            raise InputError(f'{set_name}: no images.')
        images = np.concatenate([b['image'] for b in batches])
        labels = np.concatenate([b['label'] for b in batches])
        images = images if shape is None else _fit_array(images, shape, resize, set_name, notes)
        return ImageSet(set_name, images, labels, notes=notes)
    if source not in ('auto', 'tfds'):
        raise InputError(f'{name!r} is not in the registry ({sorted(data.DATASETS)}), so it '
                         f'is read from TFDS only; got --source {source}.')
    from tfp_ood import spooled
    return spooled.spool_tfds(name, split, shape, resize, set_name, tfds_data_dir, download,
                              progress)
