"""Source 'folder': a folder of PNG/JPEG images of one's own, one sub-folder per class.

Layouts of FOLDER = config.data.folder:
  split  FOLDER/<train_split>/<class>/**/image and FOLDER/<test_split>/<class>/...
         (config.data.train_split / test_split: 'train' / 'test' by default); any
         other split a config names is FOLDER/<split>/. Without
         FOLDER/<test_split>/ the test split is carved from train, as below.
  flat   FOLDER/<class>/**/image with no FOLDER/<train_split>/: the test split is
         carved from the folder and train is the rest.
  loose  images directly in FOLDER (or in FOLDER/<train_split>/): unlabelled, all
         of it train (pretraining only; there is no test split to report on).

Classes. One class list for every split: train's class folders in sorted order,
so label k is train's k-th class in whichever split it appears. An evaluation
split with a class folder train lacks is an error naming those classes and both
folders. An evaluation split lacking some of train's classes is allowed: a
warning names them, and its labels keep train's numbering (its accuracy then
covers the classes it has).

Test carve (flat layout, or no FOLDER/<test_split>/): `config.data.test_examples`
images, or with 0 TEST_FRACTION of the folder (at least one per class);
class-balanced (the same number from each class, the remainder to classes
chosen by the seed, never more than half of a class); picked with the fixed
TEST_SEED from the sorted file list, so every process and every run, whatever
config.seed, carves the same images. The validation carve
(config.data.val_examples) then comes out of the rest, as for every source.

Unreadable images. Loading train also decodes the test split (kept in memory
until it is asked for, so it is decoded once), so a file PIL cannot read fails
the run before training starts, with an error naming it. With
`config.data.skip_bad_files=True` such files are left out instead, and a
warning gives their count and the first few names.

Colour and size: grayscale ('L', C=1) when every image of train and of the
loaded split is, else RGB; with config.data.host_image_size or image_size > 0
each image is resized (shorter side) and centre-cropped to that square, with 0
resized to the size of train's first image. PIL is imported only when a folder
is read.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np
from absl import logging

from contrastive_jax.data import registry
from contrastive_jax.data.arrays import ArraySource, host_image_size

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp')
# PIL modes that carry no colour: a folder of only these is kept as 'L'.
_GRAY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L', 'F')

# Size of the test carve when config.data.test_examples is 0.
TEST_FRACTION = 0.1
# The test carve's seed: fixed, apart from config.seed and pipeline.VAL_SEED.
TEST_SEED = 1
# How many names an error or warning lists before '...'.
_NAMED = 5
# Test splits decoded ahead (when train is loaded), waiting to be asked for.
_PENDING: dict[tuple, ArraySource] = {}
_MAX_PENDING = 2
# (split folder, classes it lacks) already warned about.
_WARNED: set[tuple[str, tuple[str, ...]]] = set()


def _is_image(name: str) -> bool:
  return not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(directory: str) -> list[str]:
  paths = []
  for root, dirs, files in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    paths.extend(os.path.join(root, f) for f in sorted(files) if _is_image(f))
  return paths


def _some(names: Sequence[Any]) -> str:
  shown = ', '.join(str(n) for n in names[:_NAMED])
  return shown + (f', ... ({len(names)} in all)' if len(names) > _NAMED else '')


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


# ---------------------------------------------------------------------------
# Listing: which files, which classes (no image is opened here).

def _list_directory(path: str) -> tuple[list[str], list[str], list[str | None]]:
  """(sorted class folder names, image files, each file's class name or None).

  Class folders are the sub-folders holding images; loose images directly in
  `path` have no class. Both at once is an error.
  """
  if not path or not os.path.isdir(path):
    raise FileNotFoundError(f'config.data.folder: {path!r} is not a directory.')
  entries = sorted(os.listdir(path))
  class_names = [e for e in entries
                 if not e.startswith('.') and os.path.isdir(os.path.join(path, e))
                 and _images_under(os.path.join(path, e))]
  root_images = [os.path.join(path, e) for e in entries
                 if _is_image(e) and os.path.isfile(os.path.join(path, e))]
  if class_names and root_images:
    raise ValueError(f'config.data.folder: {path!r} holds both class sub-folders '
                     f'({_some(class_names)}) and loose images ({_some(root_images)}); move '
                     'the loose images into a class folder (or all images to the top).')
  files: list[str] = []
  file_classes: list[str | None] = []
  for name in class_names:
    found = _images_under(os.path.join(path, name))
    files += found
    file_classes += [name] * len(found)
  if not class_names:
    files, file_classes = root_images, [None] * len(root_images)
  if not files:
    raise FileNotFoundError(f'config.data.folder: {path!r} has no images '
                            f'({", ".join(IMAGE_EXTENSIONS)}).')
  return class_names, files, file_classes


@dataclasses.dataclass(frozen=True, eq=False)
class _Split:
  """One split's files before decoding."""
  name: str           # the split name (config.data.train_split, ...)
  directory: str      # the folder its files come from
  files: list[str]
  labels: np.ndarray  # int32, train's numbering; -1 unlabelled
  ids: np.ndarray     # int64 example ids: positions in `directory`'s file list
  num_classes: int


def carve_positions(labels: np.ndarray, total: int, seed: int = TEST_SEED) -> np.ndarray:
  """Sorted positions of a class-balanced carve of `total` labelled examples.

  Each class gives total // num_classes (the remainder: one more from classes
  chosen by `seed`), at most half of its own examples, picked by a permutation
  seeded by (seed, class): a function of the labels and the seed alone.
  """
  labels = np.asarray(labels)
  classes = [int(c) for c in np.unique(labels) if c >= 0]
  base, remainder = divmod(int(total), len(classes))
  extra = set(np.random.default_rng([seed, 1 << 30]).permutation(classes)[:remainder].tolist())
  picked = []
  for c in classes:
    members = np.flatnonzero(labels == c)
    count = min(len(members) // 2, base + (c in extra))
    picked.append(np.random.default_rng([seed, c]).permutation(members)[:count])
  return np.sort(np.concatenate(picked)).astype(np.int64)


class _Folder:
  """The layout of config.data.folder and train's file list, read once."""

  def __init__(self, data_cfg: Any):
    self.cfg = data_cfg
    self.root = data_cfg.folder
    if not self.root or not os.path.isdir(self.root):
      raise FileNotFoundError(f'config.data.folder={self.root!r} is not a directory '
                              '(config.data.source=folder reads images from it).')
    train_dir = os.path.join(self.root, data_cfg.train_split)
    test_dir = os.path.join(self.root, data_cfg.test_split)
    self.split_layout = os.path.isdir(train_dir)
    if not self.split_layout and os.path.isdir(test_dir):
      raise ValueError(
          f'config.data.folder={self.root!r} has a {data_cfg.test_split!r} sub-folder but no '
          f'{data_cfg.train_split!r} one: put the training images in {train_dir}/<class>/ '
          f'(split layout), or the test images back into the class folders of '
          f'{self.root} (flat layout: the test split is carved from it).')
    self.train_dir = train_dir if self.split_layout else self.root
    self.test_dir = test_dir if self.split_layout and os.path.isdir(test_dir) else None
    self.class_names, self.files, file_classes = _list_directory(self.train_dir)
    index = {name: k for k, name in enumerate(self.class_names)}
    self.labels = np.asarray([index[c] if c is not None else -1 for c in file_classes],
                             np.int32)
    # The test carve, when there is no test folder (labelled data only).
    self.test_positions = np.zeros((0,), np.int64)
    if self.test_dir is None and self.class_names:
      self.test_positions = carve_positions(self.labels, self._test_size(), TEST_SEED)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def _test_size(self) -> int:
    n = len(self.files)
    requested = int(self.cfg.get('test_examples', 0) or 0)
    if requested < 0:
      raise ValueError(f'config.data.test_examples={requested} must be >= 0 (0: '
                       f'{TEST_FRACTION:g} of the folder).')
    size = requested or max(self.num_classes, round(TEST_FRACTION * n))
    if size >= n:
      raise ValueError(
          f'config.data.test_examples={requested}: the test carve ({size} images, at '
          f'least one per class) must be below the {n} images of {self.train_dir}; add '
          'images, or give a test folder (the split layout).')
    return size

  def _subset(self, name: str, positions: np.ndarray) -> _Split:
    return _Split(name, self.train_dir, [self.files[i] for i in positions],
                  self.labels[positions], positions.astype(np.int64), self.num_classes)

  def split(self, name: str) -> _Split:
    """The files and labels of split `name`."""
    cfg = self.cfg
    carved = self.test_dir is None and name == cfg.test_split
    if name == cfg.train_split:
      keep = np.ones(len(self.files), bool)
      keep[self.test_positions] = False
      return self._subset(name, np.flatnonzero(keep))
    if carved:
      if not self.class_names:
        raise FileNotFoundError(
            f'config.data.folder={self.root!r} holds unlabelled images (no class '
            f'sub-folders), so it has no {name!r} split to evaluate on: pretrain only '
            f'(config.probe=False), or put the images in one sub-folder per class.')
      return self._subset(name, self.test_positions)
    if not self.split_layout:
      raise FileNotFoundError(
          f'config.data.folder={self.root!r} has the flat layout (one sub-folder per '
          f'class), which gives the splits {cfg.train_split!r} and {cfg.test_split!r} (a '
          f'carve) only, not {name!r}; use the split layout ({self.root}/{cfg.train_split}/, '
          f'{self.root}/{name}/), or evaluate on a val carve (config.data.val_examples).')
    directory = os.path.join(self.root, name)
    if not os.path.isdir(directory):
      raise FileNotFoundError(f'config.data.folder={self.root!r} has no {name!r} sub-folder '
                              f'({directory}).')
    class_names, files, file_classes = _list_directory(directory)
    self._check_classes(name, directory, class_names)
    index = {c: k for k, c in enumerate(self.class_names)}
    labels = np.asarray([index[c] if c is not None else -1 for c in file_classes], np.int32)
    return _Split(name, directory, files, labels, np.arange(len(files), dtype=np.int64),
                  self.num_classes)

  def _check_classes(self, name: str, directory: str, class_names: list[str]) -> None:
    """An evaluation split's classes against train's: unknown ones are an error,
    missing ones a warning."""
    if self.class_names and not class_names:
      raise ValueError(
          f'config.data.folder: the {name!r} split ({directory}) holds loose images, but '
          f'train ({self.train_dir}) has class folders ({_some(self.class_names)}); put '
          f"the {name!r} images in train's class folders.")
    unknown = [c for c in class_names if c not in set(self.class_names)]
    if unknown:
      raise ValueError(
          f'config.data.folder: the {name!r} split ({directory}) has class folders that '
          f'train ({self.train_dir}) lacks: {_some(unknown)}. Every split uses train\'s '
          f'class list ({_some(self.class_names)}); rename those folders to train\'s '
          'classes, remove them, or add them to train.')
    missing = [c for c in self.class_names if c not in set(class_names)]
    if missing and (directory, tuple(missing)) not in _WARNED:
      _WARNED.add((directory, tuple(missing)))  # once per process, not per load
      logging.warning(
          "config.data.folder: the %r split (%s) has no images of %d of train's %d classes: "
          "%s. Its labels keep train's numbering; its accuracy covers the classes it has.",
          name, directory, len(missing), self.num_classes, _some(missing))


# ---------------------------------------------------------------------------
# Decoding.

def _decode(splits: list[_Split], reference_files: list[str], image_size: int,
            skip_bad_files: bool, where: str) -> list[ArraySource]:
  """The ArraySources of `splits`, decoded with one colour mode and one size.

  The mode and (with image_size 0) the size come from the headers of
  `reference_files` (train's) and of the splits' files. A file that cannot be
  read is an error naming it, or with skip_bad_files a warning with the count.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  bad: dict[str, str] = {}
  modes, first_size = [], None
  seen = set()
  for f in list(reference_files) + [f for s in splits for f in s.files]:
    if f in seen:
      continue
    seen.add(f)
    try:
      with Image.open(f) as im:
        modes.append(im.mode)
        if first_size is None:  # train's first readable image
          first_size = im.size
    except Exception as e:  # pylint: disable=broad-except  # any unreadable file
      bad[f] = f'{type(e).__name__}: {e}'
  mode = 'L' if modes and all(m in _GRAY_MODES for m in modes) else 'RGB'

  out = []
  for split in splits:
    images, keep = [], []
    for k, f in enumerate(split.files):
      if f in bad:
        continue
      try:
        with Image.open(f) as im:
          im = im.convert(mode)
          if image_size > 0:
            im = _resize_center_crop(im, image_size)
          elif first_size is not None and im.size != first_size:
            im = im.resize(first_size, Image.Resampling.BICUBIC)
          array = np.asarray(im, dtype=np.uint8)
      except Exception as e:  # pylint: disable=broad-except  # truncated, corrupt data
        bad[f] = f'{type(e).__name__}: {e}'
        continue
      images.append(array[..., None] if array.ndim == 2 else array)
      keep.append(k)
    out.append((split, images, np.asarray(keep, np.int64)))

  wanted = {f for s in splits for f in s.files}
  bad = {f: reason for f, reason in bad.items() if f in wanted}
  if bad:
    named = [f'{f} ({reason})' for f, reason in bad.items()]
    if not skip_bad_files:
      raise ValueError(
          f'config.data.folder={where!r}: {len(bad)} image file(s) cannot be read: '
          f'{_some(named)}. Remove or replace them, or set '
          '--config.data.skip_bad_files=True to leave them out (their count is logged).')
    logging.warning('config.data.folder=%r: skipped %d unreadable image file(s) '
                    '(config.data.skip_bad_files=True): %s', where, len(bad), _some(named))
  sources = []
  for split, images, keep in out:
    if not images:
      raise FileNotFoundError(f'config.data.folder={where!r}: the {split.name!r} split '
                              f'({split.directory}) has no readable images.')
    base = os.path.basename(os.path.normpath(where))
    sources.append(ArraySource(images=np.stack(images), labels=split.labels[keep],
                               num_classes=split.num_classes, name=f'folder:{base}:{split.name}',
                               ids=split.ids[keep]))
  return sources


def _cache_key(data_cfg: Any, split: _Split, reference_files: list[str]) -> tuple:
  """What a decoded split depends on: its files (with their size and mtime),
  labels and ids, the reference files, the size and skip_bad_files."""
  def stats(files):
    out = []
    for f in files:
      try:
        st = os.stat(f)
        out.append((f, st.st_size, st.st_mtime_ns))
      except OSError:
        out.append((f, -1, -1))
    return tuple(out)
  return (os.path.abspath(data_cfg.folder), split.name, host_image_size(data_cfg),
          bool(data_cfg.get('skip_bad_files', False)), stats(split.files),
          split.labels.tobytes(), split.ids.tobytes(), stats(reference_files))


def load_folder(path: str, image_size: int = 0, skip_bad_files: bool = False) -> ArraySource:
  """Every PNG/JPEG image under `path`, as one split.

  Layout: either `path/<class>/**/img` (labels = index of the class folder in
  sorted order) or images directly under `path` (labels -1, num_classes 0).
  Images are RGB unless every one is grayscale (then 'L', C=1). With
  image_size > 0 each image is resized (shorter side) and centre-cropped to
  image_size x image_size; with 0 all are resized to the first image's size.
  An unreadable file is an error naming it (skipped with skip_bad_files).
  """
  if not path or not os.path.isdir(path):
    raise FileNotFoundError(f'config.data.folder={path!r} is not a directory.')
  class_names, files, file_classes = _list_directory(path)
  index = {c: k for k, c in enumerate(class_names)}
  labels = np.asarray([index[c] if c is not None else -1 for c in file_classes], np.int32)
  split = _Split('all', path, files, labels, np.arange(len(files), dtype=np.int64),
                 len(class_names))
  (source,) = _decode([split], files, image_size, skip_bad_files, path)
  return dataclasses.replace(source, name=f'folder:{os.path.basename(os.path.normpath(path))}',
                             ids=None)


def count_images(data_cfg: Any) -> dict[str, int]:
  """Images per split of config.data ('train' after the test carve, and 'test'
  when there is one), from the file list alone (no image is opened)."""
  layout = _Folder(data_cfg)
  counts = {'train': len(layout.split(data_cfg.train_split).files)}
  try:
    counts['test'] = len(layout.split(data_cfg.test_split).files)
  except FileNotFoundError:
    pass
  return counts


def _load(data_cfg: Any, split: str) -> ArraySource:
  """Split `split` of config.data.folder (see the module docstring for the layouts).

  Loading train also decodes the test split, which waits in memory until it
  is asked for: unreadable images and mismatched classes there fail the run
  before training starts, and the test split is decoded once.
  """
  layout = _Folder(data_cfg)
  wanted = layout.split(split)
  key = _cache_key(data_cfg, wanted, layout.files)
  if key in _PENDING:
    return _PENDING.pop(key)
  splits = [wanted]
  ahead = None
  if split == data_cfg.train_split and split != data_cfg.test_split:
    try:
      ahead = layout.split(data_cfg.test_split)
    except FileNotFoundError:  # no test split (unlabelled): nothing to check ahead
      ahead = None
    if ahead is not None:
      ahead_key = _cache_key(data_cfg, ahead, layout.files)
      if ahead_key in _PENDING:
        ahead = None
      else:
        splits.append(ahead)
  decoded = _decode(splits, layout.files, host_image_size(data_cfg),
                    bool(data_cfg.get('skip_bad_files', False)), layout.root)
  if ahead is not None:
    _PENDING[ahead_key] = decoded[1]
    while len(_PENDING) > _MAX_PENDING:
      _PENDING.pop(next(iter(_PENDING)))
  return decoded[0]


SOURCE = registry.register(registry.Source(
    name='folder', load=_load,
    doc='a folder of PNG/JPEG images, one sub-folder per class (train/ and test/, or '
        'flat with a test carve)'))
