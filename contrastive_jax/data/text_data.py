"""Text splits and how a text source becomes an in-memory `ArraySource`.

A text source is registered with `register_text_source(name, read, doc)`,
where `read(data_cfg, split) -> TextSplit` gives the raw strings and labels.
Its registry `Source.load` tokenizes them with the run's tokenizer
(config.data.tokenizer: a tokenizer.json file or a workdir holding one) into
int32 ids [N, config.data.max_length], 0-padded at the end, under the batch key
'tokens'; `read_texts` gives the strings themselves, which is what a run
trains its tokenizer on (modalities/text.py).

Documented behaviour on bad input, the same for every text source:
  - lines / examples that are empty after stripping whitespace are left out
    (their count is logged), so an example never has zero tokens;
  - bytes that are not UTF-8 are decoded with U+FFFD in their place;
  - texts longer than max_length tokens keep their first max_length tokens
    (how many were cut is logged);
  - a label column that is missing, or a test label that train never had, is
    a ValueError naming the column / the labels.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging

from contrastive_jax.data import registry
from contrastive_jax.data.arrays import ArraySource

TOKENIZER_FILE = 'tokenizer.json'
INPUT_KEY = 'tokens'


@dataclasses.dataclass(frozen=True)
class TextSplit:
  """One split's raw text: strings, int32 labels (-1 = unknown), class names."""
  texts: tuple[str, ...]
  labels: np.ndarray
  class_names: tuple[str, ...]
  name: str
  ids: np.ndarray | None = None   # stable example ids (seed the per-example views)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


_READERS: dict[str, Callable[[Any, str], TextSplit]] = {}


def clean(texts: Sequence[str], labels: np.ndarray, name: str
          ) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
  """Strips texts and leaves out empty ones; returns (texts, labels, kept positions)."""
  stripped = [' '.join(str(t).split()) for t in texts]
  keep = np.asarray([bool(t) for t in stripped], bool)
  dropped = int((~keep).sum())
  if dropped:
    logging.info('%s: left out %d empty text(s) of %d.', name, dropped, len(stripped))
  if not keep.any():
    raise ValueError(f'{name}: every text is empty; is this the right file or column?')
  pos = np.flatnonzero(keep)
  return (tuple(stripped[i] for i in pos), np.asarray(labels, np.int32)[pos], pos)


def stratified_split(labels: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(train positions, test positions): `fraction` of each class (rounded, at
  least one while the class has two) goes to test, deterministically in `seed`;
  unlabelled data (-1) is split uniformly."""
  labels = np.asarray(labels)
  if fraction <= 0:
    return np.arange(len(labels)), np.zeros(0, np.int64)
  test = []
  for c in np.unique(labels):
    pos = np.flatnonzero(labels == c)
    k = int(round(fraction * len(pos)))
    k = min(max(k, 1 if len(pos) > 1 else 0), len(pos) - 1) if len(pos) > 1 else 0
    test.append(np.random.default_rng([seed, int(c) + 1]).permutation(pos)[:k])
  test_pos = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
  keep = np.ones(len(labels), bool)
  keep[test_pos] = False
  return np.flatnonzero(keep), test_pos


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str, mtime: float):
  del mtime  # part of the cache key: a rewritten file is read again
  from contrastive_jax.text.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  return Tokenizer.load(path)


def tokenizer_path(data_cfg: Any) -> str:
  """The tokenizer file config.data.tokenizer names (a file, or a workdir
  holding tokenizer.json); a clear error when it names neither."""
  path = str(data_cfg.get('tokenizer', '') or '')
  if not path:
    raise ValueError(
        'config.data.tokenizer is empty, so there is no tokenizer to read the text with. '
        'The pretrain binary trains one and records it; elsewhere pass '
        '--config.data.tokenizer=WORKDIR (a run that has one) or a tokenizer.json file.')
  if os.path.isdir(path):
    path = os.path.join(path, TOKENIZER_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config.data.tokenizer: {path} does not exist; give a '
                            'tokenizer.json file or a workdir that holds one.')
  return path


def load_tokenizer(data_cfg: Any):
  """The run's tokenizer (cached per file)."""
  path = tokenizer_path(data_cfg)
  return _tokenizer(path, os.path.getmtime(path))


def tokenize(split: TextSplit, data_cfg: Any) -> ArraySource:
  """The split as int32 ids [N, max_length] (see the module docstring)."""
  tok = load_tokenizer(data_cfg)
  max_length = int(data_cfg.max_length)
  # One token more than kept: a nonzero last column marks a text that is cut.
  full = tok.encode(list(split.texts), max_length=max_length + 1)
  ids = full[:, :max_length]
  cut = int((full[:, -1] != 0).sum())
  if cut:
    logging.info('%s: %d of %d texts are longer than config.data.max_length=%d tokens and '
                 'keep their first %d.', split.name, cut, len(split.texts), max_length,
                 max_length)
  return ArraySource(images=np.asarray(ids, np.int32), labels=split.labels,
                     num_classes=split.num_classes, name=split.name, ids=split.ids,
                     input_key=INPUT_KEY, class_names=split.class_names)


def register_text_source(name: str, read: Callable[[Any, str], TextSplit], doc: str,
                         **kwargs: Any) -> registry.Source:
  """Registers a text source: `read` gives strings, `load` their token ids."""
  _READERS[name] = read
  return registry.register(registry.Source(
      name=name, load=lambda data_cfg, split: tokenize(read(data_cfg, split), data_cfg),
      modality='text', doc=doc, **kwargs))


def read_texts(data_cfg: Any, split: str) -> TextSplit:
  """The raw strings of `split` of config.data's text source."""
  try:
    read = _READERS[data_cfg.source]
  except KeyError:
    raise ValueError(f'config.data.source={data_cfg.source!r} is not a text source; '
                     f'text sources: {registry.names("text")}.') from None
  return read(data_cfg, split)


def unregister_text_source(name: str) -> None:
  _READERS.pop(name, None)
  registry.unregister(name)
