"""Text: int32 token ids [N, L] (0-padded at the end) from the text sources,
the text views on device (`contrastive_jax.text.views`), ids as they are for
evaluation.

The tokenizer is part of the run: pretraining trains one on its training text
(config.data.tokenizer_kind / vocab_size / min_count) unless
config.data.tokenizer gives one, and keeps it as WORKDIR/tokenizer.json. A rerun in
the same workdir keeps the workdir's tokenizer, and refuses a
config.data.tokenizer that differs from it, since the checkpoints' embedding
rows belong to its ids. A fine-tune or distillation takes the tokenizer of
config.init_from, else config.teacher, else config.model_from (a from-scratch
baseline reads text as the run whose architecture it copies).
config.data.tokenizer then names the workdir's copy,
so eval and `load_encoder` read text with it.

Keys read: config.seed, config.text_augment (the views), config.data.max_length,
config.data.tokenizer*, config.model.<encoder>.vocab_size (0 = the tokenizer's).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from contrastive_jax import files
from contrastive_jax.data import text_data
from contrastive_jax.modalities.base import MODALITIES, Batch, Modality

TOKENIZER_FILE = text_data.TOKENIZER_FILE


def _tokenizer_lib():
  from contrastive_jax.text import tokenizer  # pylint: disable=g-import-not-at-top
  return tokenizer


def _train_tokenizer(config: ml_collections.ConfigDict):
  """A tokenizer trained on the training split's text (no labels are read)."""
  split = text_data.read_texts(config.data, config.data.train_split)
  logging.info('Training a %s tokenizer (vocab_size <= %d, min_count %d) on %d texts of %s.',
               config.data.tokenizer_kind, config.data.vocab_size, config.data.min_count,
               len(split.texts), split.name)
  return _tokenizer_lib().train_tokenizer(
      split.texts, kind=config.data.tokenizer_kind, vocab_size=config.data.vocab_size,
      min_count=config.data.min_count)


def _save(tok, path: str) -> None:
  """Writes the tokenizer whole or not at all (temporary file, then rename)."""
  tmp = f'{path}.tmp-{os.getpid()}'
  tok.save(tmp)
  os.replace(tmp, path)


class Text(Modality):
  name = 'text'
  input_key = text_data.INPUT_KEY
  unit = 'sentences'

  def __init__(self, config: ml_collections.ConfigDict,
               input_shape: Optional[tuple[int, ...]] = None):
    super().__init__(config, input_shape)
    given = self.input_shape[0] if self.input_shape else None
    self.max_length = int(given or config.data.max_length)

  # --- The run's files ----------------------------------------------------------
  @classmethod
  def setup_run(cls, config: ml_collections.ConfigDict, workdir: str) -> None:
    if files.is_remote(workdir):
      raise ValueError('The text modality keeps its tokenizer in the workdir, which must be '
                       f'a local or mounted path; got {workdir}.')
    path = os.path.join(workdir, TOKENIZER_FILE)
    lib = _tokenizer_lib()
    given = str(config.data.get('tokenizer', '') or '')
    given_path = text_data.tokenizer_path(config.data) if given else ''
    if os.path.exists(path):
      tok = lib.Tokenizer.load(path)
      if given_path and os.path.abspath(given_path) != os.path.abspath(path):
        other = lib.Tokenizer.load(given_path)
        if other.fingerprint != tok.fingerprint:
          raise ValueError(
              f'config.data.tokenizer={given} differs from {path}, the tokenizer this '
              "workdir's checkpoints were trained with. Drop the flag to resume with the "
              "workdir's tokenizer, or start a new workdir for the other one.")
    else:
      # A fine-tune / distillation reads text as the run it starts from does.
      parent = next((str(config.get(k)) for k in ('init_from', 'teacher', 'model_from')
                     if config.get(k) and os.path.isdir(str(config.get(k)))), '')
      if given_path:
        tok = lib.Tokenizer.load(given_path)
      elif parent:
        tok = lib.Tokenizer.load(text_data.tokenizer_path({'tokenizer': parent}))
      else:
        tok = _train_tokenizer(config)
      if jax.process_index() == 0:
        _save(tok, path)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('contrastive_jax: tokenizer written')
    config.data.tokenizer = os.path.abspath(path)
    cls._set_vocab_size(config, tok.vocab_size)

  @classmethod
  def _set_vocab_size(cls, config: ml_collections.ConfigDict, vocab_size: int) -> None:
    section = config.model.get(config.model.get('name', ''))
    if section is None or 'vocab_size' not in section:
      return
    if section.vocab_size == 0:
      section.vocab_size = int(vocab_size)
    elif section.vocab_size != vocab_size:
      raise ValueError(
          f'config.model.{config.model.name}.vocab_size={section.vocab_size} but the '
          f'tokenizer has {vocab_size} tokens; set it to 0 (= the tokenizer\'s) or to '
          f'{vocab_size}.')

  @classmethod
  def attach_run_files(cls, config: ml_collections.ConfigDict, run_dir: str) -> None:
    path = os.path.join(run_dir, TOKENIZER_FILE)
    if files.exists(path):
      config.data.tokenizer = path

  # --- Host-side pieces ----------------------------------------------------------
  @functools.cached_property
  def tokenizer(self):
    return text_data.load_tokenizer(self.config.data)

  @property
  def vocab_size(self) -> int:
    return int(self.tokenizer.vocab_size)

  def synonyms(self, key: str) -> Optional[np.ndarray]:
    """int32 [V, K] synonym ids for the synonym view whose probability is
    config.text_augment.<key> (None when it is off: WordNet is not read)."""
    if not float(self.config.text_augment.get(key, 0.0)):
      return None
    return self._synonym_table

  @functools.cached_property
  def _synonym_table(self) -> np.ndarray:
    # numpy, not jax: built on first use, which may be inside a jit trace.
    from contrastive_jax.text import synonyms  # pylint: disable=g-import-not-at-top
    table = synonyms.wordnet_synonym_table(self.tokenizer.vocab(),
                                           self.config.data.get('wordnet_dir', ''))
    logging.info('Synonym view: %d of %d tokens have WordNet synonyms in the vocabulary.',
                 int((table[:, 0] > 0).sum()), table.shape[0])
    return np.asarray(table, np.int32)

  def init_params(self, params: Any) -> Any:
    """The token embedding from word vectors (config.model.embedding_init: a
    word2vec workdir, `contrastive_jax.load_word_vectors`), row by row for the
    tokens the vectors cover; the other rows keep their random values."""
    source = str(self.config.model.get('embedding_init', '') or '')
    if not source:
      return params
    from contrastive_jax.models import rnn  # pylint: disable=g-import-not-at-top
    from contrastive_jax.word2vec.vectors import load_word_vectors  # pylint: disable=g-import-not-at-top
    words, vectors = load_word_vectors(source)
    params, coverage = rnn.embedding_from_vectors(params, self.tokenizer.vocab(), words,
                                                  vectors)
    logging.info('Token embedding from %s: %.1f%% of the vocabulary\'s words have a word '
                 'vector.', source, 100 * coverage)
    return params

  # --- The Modality contract -------------------------------------------------------
  def dummy_input(self, n: int = 2) -> jax.Array:
    return jnp.ones((n, self.max_length), jnp.int32)   # [UNK] ...: every row non-empty

  def train_views(self, step: Any, batch: Batch, num_views: int) -> jax.Array:
    from contrastive_jax.text import views  # pylint: disable=g-import-not-at-top
    return views.pretrain_views(self.config.seed, step, batch['index'], batch[self.input_key],
                                self.config.text_augment, num_views,
                                self.synonyms('synonym'), self.vocab_size)

  def train_inputs(self, step: Any, batch: Batch) -> jax.Array:
    from contrastive_jax.text import views  # pylint: disable=g-import-not-at-top
    return views.finetune_batch(self.config.seed, step, batch['index'], batch[self.input_key],
                                self.config.text_augment, self.synonyms('finetune_synonym'),
                                self.vocab_size)

  def eval_inputs(self, raw: jax.Array) -> jax.Array:
    return raw.astype(jnp.int32)

  def prepare(self, raw: Any) -> jax.Array:
    """A string, a list of strings (tokenized with the run's tokenizer), or
    int token ids [N, L]."""
    if isinstance(raw, str):
      raw = [raw]
    if isinstance(raw, (list, tuple)) and all(isinstance(t, str) for t in raw):
      if not raw:
        raise ValueError('Expected at least one string.')
      return jnp.asarray(self.tokenizer.encode(list(raw), max_length=self.max_length))
    x = np.asarray(raw)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer):
      raise ValueError(f'Expected strings, or int token ids [N, L]; got {x.dtype} {x.shape}.')
    return jnp.asarray(x, jnp.int32)

  def adapt(self, x: jax.Array) -> jax.Array:
    return x

  def describe(self) -> str:
    return f'text: up to {self.max_length} tokens'


MODALITIES.register(Text)
