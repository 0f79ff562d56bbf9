"""The word-level vocabulary, frequent-word subsampling and the noise distribution.

Tokenisation: lower-cased runs of letters (`[^\\W\\d_]+`, any length), the same
rule as gensim's `simple_preprocess` without its 2..15 length limits, so 'a'
and long compounds stay. The vocabulary keeps the words seen at least
`min_count` times, most frequent first (ties by the word), so index order is
frequency order: evaluation restricted to the N most frequent words takes the
first N rows.

Subsampling and the noise distribution follow Mikolov et al. 2013, "Distributed
Representations of Words and Phrases and their Compositionality", as the C
word2vec and gensim implement them.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Iterable

import numpy as np

TOKEN_RE = re.compile(r'[^\W\d_]+')


def tokenize(text: str) -> list[str]:
  """Lower-cased letter runs of `text`."""
  return TOKEN_RE.findall(text.lower())


@dataclasses.dataclass(frozen=True)
class Vocab:
  words: tuple[str, ...]        # most frequent first
  counts: np.ndarray            # int64 [V], occurrences in the corpus
  raw_words: int                # tokens in the corpus, out-of-vocabulary ones included

  @property
  def size(self) -> int:
    return len(self.words)

  @property
  def index(self) -> dict[str, int]:
    return {w: i for i, w in enumerate(self.words)}


def build_vocab(counter: collections.Counter, min_count: int) -> Vocab:
  """The words counted at least `min_count` times, most frequent first."""
  kept = sorted(((c, w) for w, c in counter.items() if c >= min_count),
                key=lambda cw: (-cw[0], cw[1]))
  if not kept:
    raise ValueError(f'No word occurs config.min_count={min_count} times in the corpus '
                     f'({len(counter)} distinct words); lower config.min_count or give a '
                     'larger corpus.')
  return Vocab(words=tuple(w for _, w in kept),
               counts=np.asarray([c for c, _ in kept], np.int64),
               raw_words=int(sum(counter.values())))


def count_words(texts: Iterable[str]) -> collections.Counter:
  counter: collections.Counter = collections.Counter()
  for text in texts:
    counter.update(tokenize(text))
  return counter


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
  """P(keep) of each word under subsampling with threshold `sample`.

  With t = sample x (in-vocabulary tokens) and count c: min(1, (sqrt(c / t) + 1) t / c),
  the formula of the C word2vec and gensim (the paper's 1 - sqrt(t / f) with the
  smoothing they ship). sample <= 0 keeps every word.
  """
  counts = np.asarray(counts, np.float64)
  if sample <= 0:
    return np.ones_like(counts)
  threshold = sample * counts.sum()
  return np.minimum(1.0, (np.sqrt(counts / threshold) + 1.0) * threshold / counts)


def noise_distribution(counts: np.ndarray, exponent: float) -> np.ndarray:
  """P(word) for negative samples: count ** exponent, normalised (0.75 in the paper)."""
  weights = np.asarray(counts, np.float64) ** exponent
  return weights / weights.sum()
