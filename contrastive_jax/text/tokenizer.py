"""Tokenization for the text modality with Hugging Face `tokenizers`.

Why `tokenizers`: its Rust batch encoder is fast enough to tokenize a corpus
on the host every run, one JSON file holds the whole tokenizer (normaliser,
pre-tokeniser, model, vocabulary), and its word-level model maps every word to
exactly one id, so word2vec vectors and WordNet synonyms map onto token ids
one-to-one (`text.synonyms`). WordPiece (Schuster & Nakajima 2012; Devlin et
al. 2019) covers open vocabularies.

Ids: 0 = '[PAD]', 1 = '[UNK]', 2 = '[MASK]' in every tokenizer; real tokens
are >= 3. Rows are padded with 0 at the end, so a row's length is its number
of nonzero ids. The special tokens are vocabulary entries only, never matched
in text: a literal '[MASK]' in a sentence is the tokens '[', 'mask', ']'.

Text is normalised with NFKC (and lower-cased unless lowercase=False), then
split on whitespace and punctuation (each punctuation character is a token).
"""

from __future__ import annotations

import hashlib
import json
import os
import string
import unicodedata
from typing import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from contrastive_jax import files

PAD, UNK, MASK = '[PAD]', '[UNK]', '[MASK]'
PAD_ID, UNK_ID, MASK_ID = 0, 1, 2
SPECIAL_TOKENS = (PAD, UNK, MASK)   # index = id
FIRST_TOKEN_ID = 3                  # real tokens are >= this
KINDS = ('word', 'wordpiece')
_MODEL_TYPES = {'WordLevel': 'word', 'WordPiece': 'wordpiece'}
_PREFIX = '##'                      # WordPiece's continuation prefix


def _pipeline(tok: tokenizers.Tokenizer, kind: str, lowercase: bool) -> tokenizers.Tokenizer:
  steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
  tok.normalizer = normalizers.Sequence(steps)
  tok.pre_tokenizer = pre_tokenizers.Sequence(
      [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation('isolated')])
  if kind == 'wordpiece':
    # No cleanup: decode gives the normalised tokens joined by spaces, as the
    # word-level tokenizer (which has no decoder) does.
    tok.decoder = decoders.WordPiece(prefix=_PREFIX, cleanup=False)
  return tok


def train_tokenizer(texts: Iterable[str], *, kind: str = 'word', vocab_size: int,
                    min_count: int = 1, lowercase: bool = True) -> 'Tokenizer':
  """A tokenizer trained on `texts`; the same texts give a byte-identical JSON.

  kind: 'word' (the vocab_size - 3 most frequent words seen at least min_count
  times, ties by spelling; others -> '[UNK]') or 'wordpiece' (pieces that
  spell any word of the training alphabet; min_count applies to the merged
  pairs). vocab_size counts the 3 special tokens.

  Determinism: `tokenizers`' WordPiece trainer numbers the continuation
  pieces ('##a', ...) in the order it meets them in a hash map, which changes
  from run to run, and breaks ties between equally frequent merges by those
  numbers, so the vocabulary itself would change. Every continuation piece
  of the corpus' alphabet is therefore handed to the trainer up front, in
  sorted order, and the final pieces are renumbered in sorted order
  (WordPiece encodes by longest match: the numbering is immaterial). Both
  models are then rebuilt from their vocabulary alone, without `tokenizers`'
  added-token list, so special-token strings in text stay text. `texts` is
  read twice for WordPiece (held in a list).
  """
  if kind not in KINDS:
    raise ValueError(f'kind={kind!r}; choose one of {KINDS}.')
  if vocab_size <= len(SPECIAL_TOKENS):
    raise ValueError(f'vocab_size={vocab_size} leaves no room for real tokens after the '
                     f'{len(SPECIAL_TOKENS)} special ones; use vocab_size > {len(SPECIAL_TOKENS)}.')
  if min_count < 1:
    raise ValueError(f'min_count={min_count}; use min_count >= 1.')
  if kind == 'word':
    model = models.WordLevel(unk_token=UNK)
  else:
    model = models.WordPiece(unk_token=UNK, continuing_subword_prefix=_PREFIX)
    texts = list(texts)
  raw = _pipeline(tokenizers.Tokenizer(model), kind, lowercase)
  common = dict(vocab_size=vocab_size, min_frequency=min_count, show_progress=False)
  if kind == 'word':
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), **common)
  else:
    pieces = [_PREFIX + c for c in sorted(_word_characters(texts, raw.normalizer))]
    trainer = trainers.WordPieceTrainer(
        special_tokens=list(SPECIAL_TOKENS) + pieces, continuing_subword_prefix=_PREFIX,
        **common)
  raw.train_from_iterator(iter(texts), trainer)
  trained = raw.get_vocab(with_added_tokens=True)
  ordered = sorted(trained, key=trained.get)
  if tuple(ordered[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
    raise RuntimeError(f'tokenizers put the special tokens at {ordered[:3]}; expected '
                       f'{SPECIAL_TOKENS} first.')
  rest = ordered[len(SPECIAL_TOKENS):]
  if kind == 'wordpiece':
    rest = sorted(rest)
  vocab = {t: i for i, t in enumerate(list(SPECIAL_TOKENS) + rest)}
  if kind == 'word':
    model = models.WordLevel(vocab, unk_token=UNK)
  else:
    model = models.WordPiece(vocab, unk_token=UNK, continuing_subword_prefix=_PREFIX)
  return Tokenizer(_pipeline(tokenizers.Tokenizer(model), kind, lowercase))


def _word_characters(texts: list[str], normalizer) -> set[str]:
  """The characters that can continue a word after normalisation: not
  whitespace, not punctuation (the pre-tokeniser isolates those as
  `tokenizers`' is_punc does: ASCII punctuation or a Unicode P* category)."""
  chars: set[str] = set()
  for start in range(0, len(texts), 1000):
    chars.update(normalizer.normalize_str('\n'.join(texts[start:start + 1000])))
  return {c for c in chars if not c.isspace() and c not in string.punctuation
          and not unicodedata.category(c).startswith('P')}


class Tokenizer:
  """A trained `tokenizers.Tokenizer` (`.hf`) with the modality's conventions:
  fixed special ids, int32 rows padded with 0 at the end, a fingerprint."""

  def __init__(self, hf: tokenizers.Tokenizer, source: str = '<memory>'):
    self.hf = hf
    model_type = json.loads(hf.to_str())['model']['type']
    if model_type not in _MODEL_TYPES:
      raise ValueError(f'{source}: a {model_type} tokenizer; contrastive_jax.text reads '
                       f'{tuple(_MODEL_TYPES)} models (train one with train_tokenizer).')
    self.kind = _MODEL_TYPES[model_type]
    got = tuple(hf.id_to_token(i) for i in range(len(SPECIAL_TOKENS)))
    if got != SPECIAL_TOKENS:
      raise ValueError(f'{source}: ids 0, 1, 2 are {got}, not {SPECIAL_TOKENS}; train the '
                       'tokenizer with contrastive_jax.text.tokenizer.train_tokenizer.')

  # -- files ------------------------------------------------------------------

  def to_json(self) -> str:
    return self.hf.to_str()

  @property
  def fingerprint(self) -> str:
    """sha256 of the JSON: a checkpoint stores it to check that it is read
    with the tokenizer it was trained with."""
    return hashlib.sha256(self.to_json().encode('utf-8')).hexdigest()

  def save(self, path: str | os.PathLike[str]) -> None:
    """Writes the JSON atomically (local path or a gs:// URL)."""
    files.write_text_atomic(path, self.to_json())

  @classmethod
  def load(cls, path: str | os.PathLike[str]) -> 'Tokenizer':
    """The tokenizer `save` wrote to `path`."""
    path = os.fspath(path)
    if not files.exists(path):
      raise FileNotFoundError(f'No tokenizer at {path}: write one with '
                              'train_tokenizer(...).save(path), or fix the path.')
    text = files.read_text(path)
    try:
      hf = tokenizers.Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises plain Exceptions on bad JSON
      raise ValueError(f'{path} is not a tokenizer JSON ({str(e)[:200]}); rewrite it with '
                       'train_tokenizer(...).save(path).') from e
    return cls(hf, source=path)

  # -- vocabulary ---------------------------------------------------------------

  @property
  def vocab_size(self) -> int:
    return self.hf.get_vocab_size(with_added_tokens=True)

  def vocab(self) -> list[str]:
    """Tokens by id: vocab()[i] is the token of id i."""
    v = self.hf.get_vocab(with_added_tokens=True)
    return sorted(v, key=v.get)

  # -- encoding -----------------------------------------------------------------

  def encode(self, texts: Sequence[str], max_length: int) -> np.ndarray:
    """int32 [N, max_length]: each text's ids, truncated to its first
    max_length tokens and padded with 0 at the end.

    A text with no token (empty, or only whitespace) encodes as one '[UNK]',
    so no row is empty: views and encoders may assume length >= 1.
    """
    if max_length < 1:
      raise ValueError(f'max_length={max_length}; use max_length >= 1.')
    if isinstance(texts, str):
      raise TypeError('encode takes a sequence of texts; wrap one text in a list.')
    encodings = self.hf.encode_batch(list(texts), add_special_tokens=False)
    out = np.zeros((len(encodings), max_length), np.int32)
    for row, e in zip(out, encodings):
      ids = e.ids[:max_length]
      row[:len(ids)] = ids
    out[out[:, 0] == PAD_ID, 0] = UNK_ID
    return out

  @staticmethod
  def lengths(ids) -> np.ndarray:
    """Tokens per row ([..., L] -> [...]): the nonzero ids."""
    return np.count_nonzero(np.asarray(ids) != PAD_ID, axis=-1).astype(np.int32)

  def decode(self, ids) -> list[str]:
    """Rows [N, L] (or one row [L]) -> the normalised tokens of each row joined
    by spaces (WordPiece pieces rejoined into words); padding is dropped,
    '[UNK]' and '[MASK]' are kept as such."""
    ids = np.asarray(ids)
    if ids.ndim == 1:
      ids = ids[None]
    rows = [[int(i) for i in row if i != PAD_ID] for row in ids]
    return self.hf.decode_batch(rows, skip_special_tokens=False)

  def __repr__(self) -> str:
    return f'Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, fingerprint={self.fingerprint[:12]})'
