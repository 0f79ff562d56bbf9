"""Source 'idx': the four gzip IDX files of (Fashion-)MNIST in `config.data.idx_dir`.

IDX is the (Fashion-)MNIST file format; Debian and Ubuntu ship Fashion-MNIST in
it (`apt-get install dataset-fashion-mnist`), which gives the full 70k examples
with no network access.
"""

from __future__ import annotations

import gzip
import os
from typing import Any

import numpy as np

from contrastive_jax.data import registry
from contrastive_jax.data.arrays import ArraySource

# IDX file stems per split; the Fashion-MNIST/MNIST naming.
IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
IDX_SPLIT_ALIASES = {'train': 'train', 'test': 'test', 't10k': 'test'}

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


def _load(data_cfg: Any, split: str) -> ArraySource:
  return load_idx(data_cfg.idx_dir, split)


SOURCE = registry.register(registry.Source(
    name='idx', load=_load,
    doc='the gzip IDX files of (Fashion-)MNIST in config.data.idx_dir'))
