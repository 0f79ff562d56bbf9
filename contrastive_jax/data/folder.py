"""Source 'folder': a folder of PNG/JPEG images, optionally one sub-folder per class.

For data of one's own with no dataset builder: `config.data.folder` holds either
`<class>/**/image` (labels from the sorted class folders) or loose images
(unlabelled). `folder/<split>/` is that split when it exists; otherwise the
whole folder is the train split. PIL is imported only when a folder is read.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from contrastive_jax.data import registry
from contrastive_jax.data.arrays import ArraySource, host_image_size

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp')
# PIL modes that carry no colour: a folder of only these is kept as 'L'.
_GRAY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L', 'F')


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


def _load(data_cfg: Any, split: str) -> ArraySource:
  """`split` is `folder/<split>/` when that sub-folder exists; otherwise the whole
  folder is the train split (config.data.train_split) and any other split is an
  error."""
  folder = data_cfg.folder
  if folder and os.path.isdir(os.path.join(folder, split)):
    return load_folder(os.path.join(folder, split), host_image_size(data_cfg))
  if split != data_cfg.train_split:
    raise FileNotFoundError(
        f'config.data.folder={folder!r} has no {split!r} sub-folder; only the train '
        f'split ({data_cfg.train_split!r}) can be the whole folder. Add '
        f'{folder}/{split}/ or evaluate on a carved split (config.data.val_examples).')
  return load_folder(folder, host_image_size(data_cfg))


SOURCE = registry.register(registry.Source(
    name='folder', load=_load,
    doc='a folder of PNG/JPEG images, optionally one sub-folder per class'))
