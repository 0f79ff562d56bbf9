"""In-memory data: `load_source` loads the split of the source config.data names.

Each source is a plug-in in `registry` (one module per built-in source:
`embedded`, `idx`, `tfds_source`, `folder`), so `load_source` is a registry
lookup and the valid values of `config.data.source` are `registry.names()`.
Every loader returns an `ArraySource` (uint8 images, int32 labels, example ids);
it and the generic helpers on it (`select_label_subset`, `split_train_val`,
`host_image_size`) live in `arrays` and are re-exported here, with the loaders
of the embedded and IDX sources, since most of the package reaches them as
`sources.<name>`. Nothing here imports TensorFlow.
"""

from __future__ import annotations

from typing import Any

from contrastive_jax.data import registry
# Re-exports: the names the rest of the package and its scripts use.
from contrastive_jax.data.arrays import (  # pylint: disable=unused-import
    ArraySource, host_image_size, select_label_subset, split_train_val)
from contrastive_jax.data.embedded import EMBEDDED_PATH, load_embedded  # pylint: disable=unused-import
from contrastive_jax.data.idx import load_idx  # pylint: disable=unused-import


def load_source(data_cfg: Any, split: str) -> ArraySource:
  """Loads `split` of the dataset `data_cfg` (config.data) names, into memory.

  Dispatches to the loader `registry.get(data_cfg.source)` registered; an
  unknown source is a ValueError listing the registered ones.
  """
  return registry.get(data_cfg.source).load(data_cfg, split)
