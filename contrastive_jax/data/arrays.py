"""Splits held in host memory, and the generic helpers that work on them.

`ArraySource` is what every in-memory source's loader returns (uint8 images,
int32 labels, example ids); the helpers here cut it into class-balanced label
subsets and a train/val carve, whatever source it came from. This module
imports nothing from the package, so the source modules, `sources` and
`pipeline` can all build on it without an import cycle.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous: identity
class ArraySource:
  """One split held in host memory.

  Attributes:
    images: the raw inputs, under the batch key `input_key`: uint8 images
      [N, H, W, C], C = 1 or 3 ('image'), or int32 token ids [N, L], 0-padded
      at the end ('tokens', the text modality).
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
  input_key: str = 'image'
  class_names: tuple[str, ...] = ()   # when known, for reports

  def __post_init__(self):
    images, labels = self.images, np.asarray(self.labels)
    if self.input_key == 'image' and (images.ndim != 4 or images.dtype != np.uint8
                                      or images.shape[-1] not in (1, 3)):
      raise ValueError(f'{self.name}: images must be uint8 [N, H, W, 1|3]; got '
                       f'{images.dtype} {images.shape}.')
    if self.input_key == 'tokens' and (images.ndim != 2 or images.dtype != np.int32):
      raise ValueError(f'{self.name}: token ids must be int32 [N, L]; got '
                       f'{images.dtype} {images.shape}.')
    if labels.shape != (images.shape[0],):
      raise ValueError(f'{self.name}: labels shape {labels.shape} does not match '
                       f'{images.shape[0]} examples.')
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
  def inputs(self) -> np.ndarray:
    """The raw inputs (images or token ids), as the batch's `input_key` field."""
    return self.images

  @property
  def input_shape(self) -> tuple[int, ...]:
    """The raw example shape the run's modality sees (= image_shape for images)."""
    return tuple(int(d) for d in self.images.shape[1:])

  @property
  def image_shape(self) -> tuple[int, ...]:
    return self.input_shape

  def example_ids(self) -> np.ndarray:
    """int64 [N] ids (arange(N) unless this source is a subset of another)."""
    if self.ids is None:
      return np.arange(self.num_examples, dtype=np.int64)
    return self.ids

  def subset(self, positions: np.ndarray, name: str | None = None) -> 'ArraySource':
    """The examples at `positions` (indices into this source), ids kept."""
    positions = np.asarray(positions, dtype=np.int64)
    return dataclasses.replace(self, images=self.images[positions],
                               labels=self.labels[positions], name=name or self.name,
                               ids=self.example_ids()[positions])


# ---------------------------------------------------------------------------
# Config helpers shared by sources that resize.

def host_image_size(data_cfg: Any) -> int:
  """Side the host resizes varying-size images to (config.data.host_image_size,
  else config.data.image_size): the central square's side, or the letterboxed
  picture's longer side (tfds_source, config.data.random_crop_from)."""
  return int(data_cfg.get('host_image_size', 0) or data_cfg.image_size)


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
                        seed: int, max_class_fraction: float = 1.0) -> np.ndarray:
  """`total` positions split evenly over classes; remainder to random classes."""
  classes = sorted(by_class)
  base, remainder = divmod(total, len(classes))
  extra = set(np.random.default_rng([seed, 1 << 30]).permutation(classes)[:remainder].tolist())
  # A class with too few examples gives all it has, or max_class_fraction of
  # them (only for unbalanced data).
  counts = {c: min(int(len(by_class[c]) * max_class_fraction), base + (c in extra))
            for c in classes}
  picked = [np.random.default_rng([seed, c]).permutation(by_class[c])[:counts[c]]
            for c in classes]
  return np.sort(np.concatenate(picked)).astype(np.int64)


def split_train_val(source: ArraySource, val_examples: int, seed: int = 0,
                    max_class_fraction: float = 1.0
                    ) -> tuple[ArraySource, ArraySource | None]:
  """Carves `val_examples` (class-balanced, deterministic in `seed`) out of `source`.

  A class too small for its share gives at most max_class_fraction of its
  examples (val is then smaller than val_examples; config.data.
  val_max_class_fraction, 0.5 for the very unequal WordNet classes). Returns
  (train, val); val is None when val_examples == 0. Both keep the
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
    val_pos = _balanced_positions(by_class, val_examples, seed, max_class_fraction)
  else:
    val_pos = np.sort(np.random.default_rng([seed, 1 << 31]).permutation(n)[:val_examples])
  keep = np.ones(n, dtype=bool)
  keep[val_pos] = False
  base = source.name.rsplit(':', 1)[0]
  return (source.subset(np.flatnonzero(keep), name=f'{base}:train-minus-val'),
          source.subset(val_pos, name=f'{base}:val'))
