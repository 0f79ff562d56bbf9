"""In-memory data sources: a split as uint8 images and int32 labels on the host.

Every source returns an `ArraySource`. Nothing here imports TensorFlow; tfds
datasets go through `tfds_source.py`, which imports it lazily inside functions.

Sources (picked by `config.data.source`, see `load_source`):
  'embedded'  a 12k-example class-balanced Fashion-MNIST subset shipped in the
              package (no download, no network; made by
              launch/make_embedded_dataset.py, provenance in embedded/README.md).
  'idx'       the four gzip IDX files of (Fashion-)MNIST in `config.data.idx_dir`
              (Debian/Ubuntu: `apt-get install dataset-fashion-mnist`).
  'tfds'      any tfds dataset with an 'image' feature (`config.data.name`).
  'folder'    a folder of PNG/JPEG images, optionally one sub-folder per class.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
from typing import Any

import numpy as np

EMBEDDED_PATH = os.path.join(os.path.dirname(__file__), 'embedded',
                             'fashion_mnist_subset.npz')

# IDX file stems per split; the Fashion-MNIST/MNIST naming.
IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
IDX_SPLIT_ALIASES = {'train': 'train', 'test': 'test', 't10k': 'test'}

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp')
# PIL modes that carry no colour: a folder of only these is kept as 'L'.
_GRAY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L', 'F')

SOURCE_CHOICES = ('embedded', 'idx', 'tfds', 'folder')


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous: identity
class ArraySource:
  """One split held in host memory.

  Attributes:
    images: uint8 [N, H, W, C], C = 1 or 3.
    labels: int32 [N]; -1 where the label is unknown (unlabelled data).
    num_classes: number of classes (0 when unlabelled).
    name: for logs, e.g. 'fashion_mnist_subset:train'.
    ids: int64 [N] example ids (the `index` the pipeline yields, which seeds the
      per-example augmentation keys). None means arange(N). Subsets made with
      `subset` keep the ids of the source they were cut from, so an example
      keeps its id (and its augmentation stream) after a train/val carve.
  """
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  name: str
  ids: np.ndarray | None = None

  def __post_init__(self):
    images, labels = self.images, np.asarray(self.labels)
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
      raise ValueError(f'{self.name}: images must be uint8 [N, H, W, 1|3]; got '
                       f'{images.dtype} {images.shape}.')
    if labels.shape != (images.shape[0],):
      raise ValueError(f'{self.name}: labels shape {labels.shape} does not match '
                       f'{images.shape[0]} images.')
    object.__setattr__(self, 'labels', labels.astype(np.int32, copy=False))
    if self.ids is not None:
      ids = np.asarray(self.ids, dtype=np.int64)
      if ids.shape != labels.shape:
        raise ValueError(f'{self.name}: ids shape {ids.shape} != labels {labels.shape}.')
      object.__setattr__(self, 'ids', ids)

  @property
  def num_examples(self) -> int:
    return int(self.images.shape[0])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

  def example_ids(self) -> np.ndarray:
    """int64 [N] ids (arange(N) unless this source is a subset of another)."""
    if self.ids is None:
      return np.arange(self.num_examples, dtype=np.int64)
    return self.ids

  def subset(self, positions: np.ndarray, name: str | None = None) -> 'ArraySource':
    """The examples at `positions` (indices into this source), ids kept."""
    positions = np.asarray(positions, dtype=np.int64)
    return ArraySource(images=self.images[positions], labels=self.labels[positions],
                       num_classes=self.num_classes, name=name or self.name,
                       ids=self.example_ids()[positions])


# ---------------------------------------------------------------------------
# IDX files ((Fashion-)MNIST format).

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype('>i2'),
               0x0C: np.dtype('>i4'), 0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8')}


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (gzip-compressed if the name ends in .gz) to an array.

  Format: 2 zero bytes, a dtype code, the number of dims, then each dim as a
  big-endian uint32, then the data in C order.
  """
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
    raise ValueError(f'{path} is not an IDX file (magic bytes {data[:4]!r}).')
  dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
  shape = tuple(int(d) for d in np.frombuffer(data, dtype='>u4', count=ndim, offset=4))
  offset = 4 + 4 * ndim
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(data) - offset != expected:
    raise ValueError(f'{path}: header says {shape} x {dtype} = {expected} bytes, '
                     f'file holds {len(data) - offset}.')
  array = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
  return array.astype(dtype.newbyteorder('='), copy=True)  # native order, writable


def _find_idx_file(idx_dir: str, stem: str) -> str:
  for candidate in (stem + '.gz', stem):
    path = os.path.join(idx_dir, candidate)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(
      f'config.data.idx_dir={idx_dir!r} has no {stem}.gz. Install Fashion-MNIST '
      'with `apt-get install dataset-fashion-mnist` (files land in '
      '/usr/share/datasets/fashion-mnist), or point --config.data.idx_dir at a '
      'folder holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, '
      't10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz, or use '
      '--config.data.source=embedded (a 12k-example subset shipped in the package).')


def load_idx(idx_dir: str, split: str) -> ArraySource:
  """Loads split 'train' or 'test' ('t10k') from gzip IDX files in `idx_dir`."""
  if split not in IDX_SPLIT_ALIASES:
    raise ValueError(f'IDX source has splits {sorted(IDX_SPLIT_ALIASES)}; got {split!r} '
                     '(check config.data.train_split / config.data.test_split).')
  image_stem, label_stem = IDX_FILES[IDX_SPLIT_ALIASES[split]]
  images = read_idx(_find_idx_file(idx_dir, image_stem))
  labels = read_idx(_find_idx_file(idx_dir, label_stem))
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f'{idx_dir}/{image_stem}: expected uint8 [N, H, W] images, got '
                     f'{images.dtype} {images.shape}.')
  if labels.shape != images.shape[:1]:
    raise ValueError(f'{idx_dir}: {labels.shape[0]} labels for {images.shape[0]} images.')
  name = os.path.basename(os.path.normpath(idx_dir)) or 'idx'
  return ArraySource(images=images, labels=labels.astype(np.int32),
                     num_classes=int(labels.max()) + 1 if labels.size else 0,
                     name=f'{name}:{split}')


# ---------------------------------------------------------------------------
# Embedded subset shipped in the package.

@functools.lru_cache(maxsize=1)
def _embedded_arrays(path: str) -> dict[str, np.ndarray]:
  with np.load(path) as npz:
    arrays = {key: npz[key] for key in npz.files}
  for array in arrays.values():
    array.setflags(write=False)  # shared by every caller through the cache
  return arrays


def load_embedded(split: str) -> ArraySource:
  """The shipped Fashion-MNIST subset: 'train' 10k (1000/class), 'test' 2k (200/class)."""
  if split not in ('train', 'test'):
    raise ValueError(f"The embedded source has splits 'train' and 'test'; got {split!r} "
                     '(check config.data.train_split / config.data.test_split).')
  if not os.path.exists(EMBEDDED_PATH):
    raise FileNotFoundError(
        f'{EMBEDDED_PATH} is missing (config.data.source=embedded). Recreate it with '
        '`python launch/make_embedded_dataset.py` (needs `apt-get install '
        'dataset-fashion-mnist`), or reinstall the package.')
  arrays = _embedded_arrays(EMBEDDED_PATH)
  return ArraySource(images=arrays[f'{split}_images'], labels=arrays[f'{split}_labels'],
                     num_classes=10, name=f'fashion_mnist_subset:{split}')


# ---------------------------------------------------------------------------
# Folder of images.

def _is_image(name: str) -> bool:
  return not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(directory: str) -> list[str]:
  paths = []
  for root, dirs, files in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    paths.extend(os.path.join(root, f) for f in sorted(files) if _is_image(f))
  return paths


def _resize_center_crop(image: Any, side: int) -> Any:
  """Shorter side to `side` (bicubic), then the central side x side square."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  w, h = image.size
  scale = side / min(w, h)
  new_w, new_h = max(side, round(w * scale)), max(side, round(h * scale))
  if (new_w, new_h) != (w, h):
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
  left, top = (new_w - side) // 2, (new_h - side) // 2
  return image.crop((left, top, left + side, top + side))


def load_folder(path: str, image_size: int = 0) -> ArraySource:
  """Loads every PNG/JPEG image under `path` into memory.

  Layout: either `path/<class>/**/img` (labels = index of the class folder in
  sorted order) or images directly under `path` (labels -1, num_classes 0).
  Images are RGB unless every one is grayscale (then 'L', C=1). With
  image_size > 0 each image is resized (shorter side) and centre-cropped to
  image_size x image_size; with 0 all are resized to the first image's size.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if not path or not os.path.isdir(path):
    raise FileNotFoundError(f'config.data.folder={path!r} is not a directory.')
  entries = sorted(os.listdir(path))
  class_names = [e for e in entries
                 if not e.startswith('.') and os.path.isdir(os.path.join(path, e))
                 and _images_under(os.path.join(path, e))]
  root_images = [os.path.join(path, e) for e in entries
                 if _is_image(e) and os.path.isfile(os.path.join(path, e))]
  if class_names and root_images:
    raise ValueError(f'config.data.folder={path!r} holds both class sub-folders '
                     f'{class_names[:3]}... and loose images {root_images[:2]}...; move '
                     'the loose images into a class folder (or all images to the top).')
  if class_names:
    files, labels = [], []
    for label, class_name in enumerate(class_names):
      found = _images_under(os.path.join(path, class_name))
      files += found
      labels += [label] * len(found)
  else:
    files, labels = root_images, [-1] * len(root_images)
  if not files:
    raise FileNotFoundError(f'config.data.folder={path!r} has no images '
                            f'({", ".join(IMAGE_EXTENSIONS)}).')

  # Headers only (PIL opens lazily): one colour mode for the whole folder.
  modes = []
  for f in files:
    with Image.open(f) as im:
      modes.append(im.mode)
      if len(modes) == 1:
        first_size = im.size
  mode = 'L' if all(m in _GRAY_MODES for m in modes) else 'RGB'

  images = []
  for f in files:
    with Image.open(f) as im:
      im = im.convert(mode)
      if image_size > 0:
        im = _resize_center_crop(im, image_size)
      elif im.size != first_size:
        im = im.resize(first_size, Image.Resampling.BICUBIC)
      array = np.asarray(im, dtype=np.uint8)
    images.append(array[..., None] if array.ndim == 2 else array)
  return ArraySource(images=np.stack(images), labels=np.asarray(labels, np.int32),
                     num_classes=len(class_names),
                     name=f'folder:{os.path.basename(os.path.normpath(path))}')


# ---------------------------------------------------------------------------
# Dispatch on config.data.source.

def host_image_size(data_cfg: Any) -> int:
  """Side the host resizes varying-size images to (config.data.host_image_size,
  else config.data.image_size): the central square's side, or the letterboxed
  picture's longer side (tfds_source, config.data.random_crop_from)."""
  return int(data_cfg.get('host_image_size', 0) or data_cfg.image_size)


def load_source(data_cfg: Any, split: str) -> ArraySource:
  """Loads `split` of the dataset `data_cfg` (config.data) names, into memory.

  For 'folder', `split` picks `folder/<split>/` when such a sub-folder exists;
  otherwise the whole folder is the train split (config.data.train_split) and
  any other split is an error.
  """
  source = data_cfg.source
  if source == 'embedded':
    return load_embedded(split)
  if source == 'idx':
    return load_idx(data_cfg.idx_dir, split)
  if source == 'tfds':
    from contrastive_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
    return tfds_source.load_tfds_arrays(data_cfg.name, split, data_cfg.data_dir,
                                        image_size=host_image_size(data_cfg))
  if source == 'folder':
    folder = data_cfg.folder
    if folder and os.path.isdir(os.path.join(folder, split)):
      return load_folder(os.path.join(folder, split), host_image_size(data_cfg))
    if split != data_cfg.train_split:
      raise FileNotFoundError(
          f'config.data.folder={folder!r} has no {split!r} sub-folder; only the train '
          f'split ({data_cfg.train_split!r}) can be the whole folder. Add '
          f'{folder}/{split}/ or evaluate on a carved split (config.data.val_examples).')
    return load_folder(folder, host_image_size(data_cfg))
  raise ValueError(f'config.data.source={source!r} is not valid; choose one of '
                   f'{SOURCE_CHOICES}.')


# ---------------------------------------------------------------------------
# Class-balanced, deterministic subsets.

def _class_positions(labels: np.ndarray) -> dict[int, np.ndarray]:
  labels = np.asarray(labels)
  return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels) if c >= 0}


def select_label_subset(labels: np.ndarray, fraction: float | None = None,
                        per_class: int | None = None, seed: int = 0) -> np.ndarray:
  """Sorted positions of a class-balanced subset of `labels` (e.g. 1% / 10% labels).

  Give exactly one of `fraction` (of the labelled examples; total rounded, at
  least one per class, split evenly with the remainder going to randomly chosen
  classes) or `per_class`. Within a class the examples are a prefix of a
  permutation seeded by (seed, class), so a smaller subset is contained in a
  larger one with the same seed. Labels < 0 are never picked.
  """
  if (fraction is None) == (per_class is None):
    raise ValueError('select_label_subset: give exactly one of fraction or per_class.')
  by_class = _class_positions(labels)
  if not by_class:
    raise ValueError('select_label_subset: no labelled examples (all labels are -1).')
  if per_class is not None:
    short = [c for c, p in by_class.items() if len(p) < per_class]
    if short:
      raise ValueError(f'select_label_subset: per_class={per_class} but classes {short[:5]} '
                       f'have fewer examples (smallest: {min(len(by_class[c]) for c in short)}).')
    return _balanced_positions(by_class, per_class * len(by_class), seed)
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'select_label_subset: fraction={fraction} must be in (0, 1].')
  labelled = sum(len(p) for p in by_class.values())
  return _balanced_positions(by_class, max(len(by_class), round(fraction * labelled)), seed)


def _balanced_positions(by_class: dict[int, np.ndarray], total: int,
                        seed: int) -> np.ndarray:
  """`total` positions split evenly over classes; remainder to random classes."""
  classes = sorted(by_class)
  base, remainder = divmod(total, len(classes))
  extra = set(np.random.default_rng([seed, 1 << 30]).permutation(classes)[:remainder].tolist())
  # A class with too few examples gives all it has (only for unbalanced data).
  counts = {c: min(len(by_class[c]), base + (c in extra)) for c in classes}
  picked = [np.random.default_rng([seed, c]).permutation(by_class[c])[:counts[c]]
            for c in classes]
  return np.sort(np.concatenate(picked)).astype(np.int64)


def split_train_val(source: ArraySource, val_examples: int,
                    seed: int = 0) -> tuple[ArraySource, ArraySource | None]:
  """Carves `val_examples` (class-balanced, deterministic in `seed`) out of `source`.

  Returns (train, val); val is None when val_examples == 0. Both keep the
  source's example ids. Unlabelled sources get a uniform random carve. The
  carve should not depend on the training seed: callers pass a fixed seed.
  """
  if val_examples <= 0:
    return source, None
  n = source.num_examples
  if val_examples >= n:
    raise ValueError(f'config.data.val_examples={val_examples} must be below the '
                     f'{n} examples of {source.name}.')
  by_class = _class_positions(source.labels)
  if by_class:
    val_pos = _balanced_positions(by_class, val_examples, seed)
  else:
    val_pos = np.sort(np.random.default_rng([seed, 1 << 31]).permutation(n)[:val_examples])
  keep = np.ones(n, dtype=bool)
  keep[val_pos] = False
  base = source.name.rsplit(':', 1)[0]
  return (source.subset(np.flatnonzero(keep), name=f'{base}:train-minus-val'),
          source.subset(val_pos, name=f'{base}:val'))
