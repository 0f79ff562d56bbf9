"""Corpora: where the text comes from, and the corpus as one array of word ids.

Sources (`config.corpus.source`):
  'wordnet'  every WordNet 3.0 gloss (contrastive_jax.data.wordnet.all_glosses), one sentence each
  'text'     a text file, or every file under a folder (sorted), one sentence per line
  'tfds'     a TensorFlow Datasets text dataset: `corpus.tfds_name`, `corpus.tfds_split`,
             the string feature `corpus.tfds_key`, one sentence per example

The corpus is the in-vocabulary word ids of every sentence in order, int32,
with -1 between sentences (windows never cross it), as gensim drops
out-of-vocabulary words before it forms windows. Sentences longer than
`corpus.max_sentence_length` words are cut, as gensim cuts at 10,000.
`corpus.stream=True` reads the source twice (count, then encode) and writes the
ids to WORKDIR/corpus_ids.int32, memory-mapped, so a corpus larger than memory
trains with the vocabulary's counts as the only thing held.
"""

from __future__ import annotations

import os
from typing import Iterator

import ml_collections
import numpy as np

from contrastive_jax.word2vec import vocab as vocab_lib

SOURCES = ('wordnet', 'text', 'tfds')
IDS_FILE = 'corpus_ids.int32'


def iter_texts(corpus_cfg: ml_collections.ConfigDict) -> Iterator[str]:
  """The source's sentences, as raw text, in a fixed order."""
  if corpus_cfg.source == 'wordnet':
    from contrastive_jax.data import wordnet  # pylint: disable=g-import-not-at-top
    yield from wordnet.all_glosses(corpus_cfg.wordnet_dir)
  elif corpus_cfg.source == 'text':
    yield from _iter_text_files(corpus_cfg.path)
  elif corpus_cfg.source == 'tfds':
    yield from _iter_tfds(corpus_cfg)
  else:
    raise ValueError(f'config.corpus.source={corpus_cfg.source!r}; choose one of {SOURCES}.')


def _iter_text_files(path: str) -> Iterator[str]:
  if not path:
    raise ValueError("config.corpus.source='text' needs config.corpus.path: a text file or a "
                     'folder of text files.')
  if os.path.isdir(path):
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
    if not paths:
      raise ValueError(f'config.corpus.path={path!r} is an empty folder; give a text file or '
                       'a folder with text files.')
  elif os.path.isfile(path):
    paths = [path]
  else:
    raise FileNotFoundError(f'config.corpus.path={path!r} does not exist; give a text file or '
                            'a folder of text files.')
  for p in paths:
    with open(p, encoding='utf-8', errors='replace') as f:
      yield from f


def _iter_tfds(corpus_cfg: ml_collections.ConfigDict) -> Iterator[str]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = tfds.load(corpus_cfg.tfds_name, split=corpus_cfg.tfds_split, shuffle_files=False,
                 data_dir=corpus_cfg.tfds_dir or None)
  for example in tfds.as_numpy(ds):
    if corpus_cfg.tfds_key not in example:
      raise KeyError(f'config.corpus.tfds_key={corpus_cfg.tfds_key!r} is not a feature of '
                     f'{corpus_cfg.tfds_name}; its features: {sorted(example)}.')
    value = example[corpus_cfg.tfds_key]
    yield value.decode('utf-8', 'replace') if isinstance(value, bytes) else str(value)


def _encoded_sentences(texts, index: dict[str, int], max_len: int) -> Iterator[np.ndarray]:
  """Each sentence's in-vocabulary ids followed by -1 (long sentences cut)."""
  for text in texts:
    ids = [index[w] for w in vocab_lib.tokenize(text) if w in index]
    for start in range(0, len(ids), max_len):
      yield np.asarray(ids[start:start + max_len] + [-1], np.int32)


def build(corpus_cfg: ml_collections.ConfigDict, min_count: int, workdir: str = ''
          ) -> tuple[vocab_lib.Vocab, np.ndarray]:
  """(vocab, ids): the vocabulary and the encoded corpus (see the module docstring)."""
  if corpus_cfg.stream:
    vocab = vocab_lib.build_vocab(vocab_lib.count_words(iter_texts(corpus_cfg)), min_count)
    texts = iter_texts(corpus_cfg)
  else:
    texts = list(iter_texts(corpus_cfg))
    vocab = vocab_lib.build_vocab(vocab_lib.count_words(texts), min_count)
  sentences = _encoded_sentences(texts, vocab.index, corpus_cfg.max_sentence_length)
  if not corpus_cfg.stream:
    ids = np.concatenate(list(sentences))
  else:
    if not workdir:
      raise ValueError('config.corpus.stream=True writes the encoded corpus to the workdir; '
                       'give one.')
    path = os.path.join(workdir, IDS_FILE)
    with open(path + '.tmp', 'wb') as f:
      buffer, size = [], 0
      for s in sentences:
        buffer.append(s)
        size += len(s)
        if size >= 1 << 20:
          f.write(np.concatenate(buffer).tobytes())
          buffer, size = [], 0
      if buffer:
        f.write(np.concatenate(buffer).tobytes())
    os.replace(path + '.tmp', path)
    ids = np.memmap(path, dtype=np.int32, mode='r')
  if not (ids >= 0).any():
    raise ValueError(f'The corpus of config.corpus.source={corpus_cfg.source!r} has no word in '
                     'the vocabulary.')
  return vocab, ids
