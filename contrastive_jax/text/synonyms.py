"""The synonym table of the synonym-substitution view (`views.substitute_synonyms`).

EDA's synonym replacement (Wei & Zou 2019) draws from WordNet synonyms; on
device that needs a fixed-shape table: row t lists the token ids that may
replace token t, int32 [V, K], left-packed, 0 = no more synonyms. With a
word-level tokenizer every vocabulary word is one id, so a word's synonyms
are exactly the single-token words of the vocabulary that share a synset
with it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from contrastive_jax.text.tokenizer import FIRST_TOKEN_ID


def synonym_table(vocab: Sequence[str], synonyms: Mapping[str, Sequence[str]],
                  max_synonyms: int = 8) -> np.ndarray:
  """int32 [len(vocab), max_synonyms]: row i holds the ids of token i's synonyms.

  vocab: tokens by id (`Tokenizer.vocab()`); synonyms: lower-cased word ->
  other words (`data.wordnet.synonyms`). A token is looked up lower-cased;
  only synonyms that are themselves tokens of the vocabulary count, and never
  the token itself or a special token. When more than max_synonyms remain,
  the lowest ids are kept (a word-level vocabulary is ordered by frequency:
  the most common words). Rows are sorted by id, so the table is a function
  of (vocab, synonyms) alone. The special tokens' rows are zero.

  With a WordPiece vocabulary only whole-word tokens have entries; a piece
  that starts a longer word ('dog' of 'dog ##ma') is then substituted too,
  so prefer a word-level tokenizer for this view.
  """
  if max_synonyms < 1:
    raise ValueError(f'max_synonyms={max_synonyms}; use max_synonyms >= 1 (or turn the '
                     'synonym view off with config.text_augment.synonym=0).')
  index = {w: i for i, w in enumerate(vocab) if i >= FIRST_TOKEN_ID}
  table = np.zeros((len(vocab), max_synonyms), np.int32)
  for i in range(FIRST_TOKEN_ID, len(vocab)):
    ids = sorted({index[s] for s in synonyms.get(vocab[i].lower(), ()) if s in index} - {i})
    ids = ids[:max_synonyms]
    table[i, :len(ids)] = ids
  return table


def wordnet_synonym_table(vocab: Sequence[str], root: str = '',
                          max_synonyms: int = 8) -> np.ndarray:
  """synonym_table with WordNet 3.0's single-word synonyms (any part of
  speech; `data.wordnet.synonyms`). root: the WordNet folder ('' = default)."""
  from contrastive_jax.data import wordnet  # pylint: disable=g-import-not-at-top
  return synonym_table(vocab, wordnet.synonyms(root), max_synonyms)
