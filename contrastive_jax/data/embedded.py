"""Source 'embedded': a class-balanced Fashion-MNIST subset shipped in the package.

10k train (1000 per class) and 2k test (200 per class) 28x28 grayscale images
in `embedded/fashion_mnist_subset.npz`, so the smoke configs and the tests run
with no download and no network. launch/make_embedded_dataset.py makes the file;
embedded/README.md gives its provenance.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from contrastive_jax.data import registry
from contrastive_jax.data.arrays import ArraySource

EMBEDDED_PATH = os.path.join(os.path.dirname(__file__), 'embedded',
                             'fashion_mnist_subset.npz')


@functools.lru_cache(maxsize=2)   # the image and the text subset
def embedded_arrays(path: str) -> dict[str, np.ndarray]:
  """The arrays of a shipped .npz, read once and kept read-only."""
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
  arrays = embedded_arrays(EMBEDDED_PATH)
  return ArraySource(images=arrays[f'{split}_images'], labels=arrays[f'{split}_labels'],
                     num_classes=10, name=f'fashion_mnist_subset:{split}')


def _load(data_cfg: Any, split: str) -> ArraySource:
  del data_cfg  # the file is fixed
  return load_embedded(split)


SOURCE = registry.register(registry.Source(
    name='embedded', load=_load,
    doc='a 12k-example class-balanced Fashion-MNIST subset shipped in the package'))
