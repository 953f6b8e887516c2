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
"""

import collections
import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfp_ood.errors import InputError

__all__ = ['IMAGE_SUFFIXES', 'ImageSet', 'load_dataset', 'read_folder', 'read_npz_set']

#: The file endings a folder's images are found by (case-insensitive).
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.gif', '.tif', '.tiff')
Shape = Tuple[int, int, int]


@dataclasses.dataclass
class ImageSet:
    """A set of uint8 images `[N, H, W, C]` and where they came from.

    Attributes:
      name: the set's name (for tables and file names).
      images: uint8 `[N, H, W, C]`.
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
        return len(self.images)

    def take(self, indices, name: str) -> 'ImageSet':
        """The images at `indices`, as a set called `name`."""
        indices = np.asarray(indices, np.int64)
        return ImageSet(name, self.images[indices],
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


def _fit(images: List[np.ndarray], names: Sequence[str], shape: Optional[Shape],
         resize: bool, what: str, notes: Dict[str, int]) -> Tuple[np.ndarray, Shape]:
    """Stacks `images` (`[H, W, C]` each) at `shape` (default: the most common)."""
    from tfp_ood import data
    size_is = 'the size the model takes'
    if shape is None:
        counts = collections.Counter(image.shape for image in images)
        shape = max(counts, key=lambda s: (counts[s], s))
        size_is = 'the most common size (or pass --image-shape)'

    shape = tuple(int(d) for d in shape)
    images = [_channels(image, shape[-1], notes) for image in images]
    other = [(n, i.shape) for n, i in zip(names, images) if i.shape != shape]
    if other and not resize:
        listed = ', '.join(f'{n} ({h}x{w})' for n, (h, w, _) in other[:3])
        raise InputError(f'{what}: {len(other)} of {len(images)} images are not '
                         f'{shape[0]}x{shape[1]}, {size_is}: {listed}'
                         f'{", ..." if len(other) > 3 else ""}; pass --resize to resize them.')
    fitted = [data.resize_images(i[None], shape)[0] if i.shape != shape else i for i in images]
    if other:
        _note(notes, f'resized to {shape[0]}x{shape[1]}', len(other))
    return np.stack(fitted) if fitted else np.zeros((0,) + shape, np.uint8), shape


def _image_files(folder: str) -> List[str]:
    """Every image file below `folder`, relative to it, in sorted order."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        found.extend(os.path.relpath(os.path.join(root, f), folder) for f in sorted(files)
                     if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith('.'))
    return found


def read_folder(folder: str, shape: Optional[Sequence[int]] = None, resize: bool = False,
                name: Optional[str] = None, progress: bool = False) -> ImageSet:
    """The images of a folder and its subfolders, at `shape`.

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
    if not os.path.isdir(folder):
        raise InputError(f'no folder at {folder}')
    files = _image_files(folder)
    if not files:
        raise InputError(f'no image files ({", ".join(IMAGE_SUFFIXES)}) in {folder} or its '
                         f'subfolders')
    notes: Dict[str, int] = {}
    images, kept, skipped = [], [], []
    if progress:
        from tqdm.auto import tqdm
        files = tqdm(files, desc=f'reading {folder}', unit='image', leave=False)
    for relative in files:
        try:
            images.append(_decoded(os.path.join(folder, relative), notes))
            kept.append(relative)
        except (OSError, ValueError, SyntaxError) as e:  # What Pillow raises for bad files.
            skipped.append((relative, str(e).splitlines()[0] if str(e) else type(e).__name__))
    if not images:
        raise InputError(f'none of the {len(skipped)} image files in {folder} could be decoded '
                         f'(the first: {skipped[0][0]}: {skipped[0][1]})')
    name = name or os.path.basename(os.path.normpath(folder))
    stacked, _ = _fit(images, kept, shape, resize, folder, notes)
    return ImageSet(name, stacked, None, kept, skipped, notes)


def read_npz_set(path: str, shape: Optional[Sequence[int]], resize: bool = False,
                 name: Optional[str] = None) -> ImageSet:
    """The `images` (and `labels`) of an .npz file, at `shape` (`None`: as they are)."""
    from tfp_ood import data
    images, labels = data.read_npz(path)
    name = name or os.path.splitext(os.path.basename(path))[0]
    notes: Dict[str, int] = {}
    if shape is not None:
        images = _fit_array(images, shape, resize, name, notes)
    return ImageSet(name, images, labels, notes=notes)


def _fit_array(images: np.ndarray, shape: Sequence[int], resize: bool, what: str,
               notes: Dict[str, int]) -> np.ndarray:
    """uint8 `[N, H, W, C]` at `shape`: channels converted, sizes only if `resize`."""
    from tfp_ood import data
    shape = tuple(int(d) for d in shape)
    if images.shape[1:] == shape:
        return images
    if images.shape[1:3] != shape[:2] and not resize:
        raise InputError(f'{what}: images are {list(images.shape[1:])} but the model expects '
                         f'{list(shape)} (H, W, C); pass --resize to resize them')
    if images.shape[-1] != shape[-1]:
        _note(notes, f'{"grayscale -> RGB" if shape[-1] == 3 else "RGB -> grayscale"}'
              if images.shape[-1] in (1, 3) else f'{images.shape[-1]} channels -> '
              f'{shape[-1]}', len(images))
    if images.shape[1:3] != shape[:2]:
        _note(notes, f'resized to {shape[0]}x{shape[1]}', len(images))
    return data.resize_images(images, shape)


def _tfds_image_keys(name: str, tfds_data_dir: Optional[str]) -> Tuple[str, Optional[str]]:
    """The image feature and the class-label feature (or None) of a TFDS dataset."""
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
    return images[0], ('label' if 'label' in labels else labels[0] if labels else None)


def load_dataset(name: str, split: str, shape: Optional[Sequence[int]], resize: bool = False,
                 data_dir: Optional[str] = None, source: str = 'auto', download: bool = False,
                 set_name: Optional[str] = None,
                 tfds_data_dir: Optional[str] = None) -> ImageSet:
    """A split of a registry dataset (`tfp_ood.data.load`) or of any TFDS image
    dataset, at `shape` (`None`: a registry dataset's own shape, or the most
    common one)."""
    import tensorflow_datasets as tfds
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
    image_key, label_key = _tfds_image_keys(name, tfds_data_dir)
    try:
        ds = tfds.load(name, split=split, data_dir=tfds_data_dir, download=download,
                       shuffle_files=False)
    except AssertionError as e:  # TFDS: "could not find data in ...".
        raise data.DataNotFoundError(
            f'The TFDS dataset {name!r} is not prepared here ({str(e).split(".")[0]}); '
            f'prepare it with tfds build {name}, or pass --download where there is '
            f'internet.') from None
    images, labels = [], []
    for example in ds.as_numpy_iterator():
        image = example[image_key]
        images.append(image[..., None] if image.ndim == 2 else image)
        labels.append(example[label_key] if label_key else -1)
    if not images:
        raise InputError(f'{set_name}: no images.')
    names = [f'{set_name}[{i}]' for i in range(len(images))]
    stacked, _ = _fit(images, names, shape, resize, set_name, notes)
    return ImageSet(set_name, stacked, np.asarray(labels, np.int64), notes=notes)
