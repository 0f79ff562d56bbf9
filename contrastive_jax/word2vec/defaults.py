"""The word2vec binary's config keys, their defaults and their validation.

The algorithm's keys carry gensim's names and defaults (gensim.models.Word2Vec),
so a run and its gensim counterpart read alike; the shared keys (seed,
batch_size, num_epochs, logging, checkpoints, stop_at_step) mean what they mean
in every binary (config_defaults.py), with batch_size counted in corpus words
per step.
"""

from __future__ import annotations

import ml_collections

from contrastive_jax import config_defaults
from contrastive_jax.word2vec import corpus, sgns

CHOICES = {
    'multihost': ('auto', 'yes', 'no'),
    'nan_policy': ('stop', 'skip_step'),
    'sg': (0, 1),
    'update_kernel': sgns.KERNELS,
    'corpus.source': corpus.SOURCES,
}


def word2vec_defaults() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Keys every binary shares.
  config.seed = 0
  config.batch_size = 16384        # corpus words (ids) read per step; its examples
                                   # (pairs) are about batch_size x keep rate x (window + 1)
  config.num_epochs = 5            # gensim's `epochs`
  config.total_steps = 0           # > 0 overrides num_epochs
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 2
  config.stop_at_step = 0
  config.multihost = 'auto'
  config.nan_policy = 'stop'

  # The algorithm (Mikolov et al. 2013), with gensim's names and defaults.
  config.sg = 1                    # 1 skip-gram, 0 CBOW (mean of the context)
  config.vector_size = 100
  config.window = 5                # the largest window; each word draws 1..window
  config.negative = 5              # noise words per example
  config.ns_exponent = 0.75        # noise distribution: count ** ns_exponent
  config.min_count = 5
  config.sample = 1e-3             # subsampling threshold (0 = off)
  config.alpha = 0.025             # learning rate, linearly down to min_alpha
  config.min_alpha = 0.0001
  # Large batches: a row hit n > row_update_cap times in one step takes
  # row_update_cap / n of each update (0 = the plain sum; see sgns.row_scale).
  config.row_update_cap = 128.0
  # A step's words as this many sub-chunks of batch_size / substeps, whose
  # updates apply one after the other in the one jitted step: the SGD of a
  # smaller batch (closer to word2vec's sequential updates) at the dispatch
  # cost of the large one (pairs.py, sgns.make_update).
  config.substeps = 1
  # How a step runs, never what it computes: 'auto' = on the CPU with one
  # device the fused FFI kernel (kernels/sgns_update.py), else XLA ops; 'xla'
  # / 'cpu' force one. kernel_threads: the kernel's threads (0 = every core
  # this process may use).
  config.update_kernel = 'auto'
  config.kernel_threads = 0

  config.corpus = ml_collections.ConfigDict(dict(
      source='wordnet',            # 'wordnet' | 'text' | 'tfds' (see word2vec/corpus.py)
      path='',                     # source='text': a text file or a folder of them
      wordnet_dir='',              # source='wordnet': '' = /usr/share/wordnet
      tfds_name='',                # source='tfds': e.g. 'imdb_reviews'
      tfds_split='train',
      tfds_key='text',             # the string feature holding the text
      tfds_dir='',
      stream=False,                # True: encode to WORKDIR/corpus_ids.int32, memory-mapped
      max_sentence_length=10000,   # longer sentences are cut (gensim: 10,000)
  ))
  config.eval = ml_collections.ConfigDict(dict(
      intrinsic=True,              # WS353, SimLex-999, analogies at the end (needs gensim's data)
      restrict_vocab=30000,        # analogies over this many most frequent words
      probes=('king', 'water', 'dog', 'red', 'music', 'run'),   # neighbours in the log
  ))
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid key."""
  config_defaults.validate(config, choices=CHOICES)
  checks = (
      ('vector_size', config.vector_size > 0, '> 0'),
      ('window', config.window >= 1, '>= 1'),
      ('negative', config.negative >= 1, '>= 1 (this implementation has no hierarchical softmax)'),
      ('min_count', config.min_count >= 1, '>= 1'),
      ('sample', config.sample >= 0, '>= 0 (0 = no subsampling)'),
      ('alpha', config.alpha > 0, '> 0'),
      ('min_alpha', 0 <= config.min_alpha <= config.alpha, 'in [0, config.alpha]'),
      ('corpus.max_sentence_length', config.corpus.max_sentence_length >= 1, '>= 1'),
      ('eval.restrict_vocab', config.eval.restrict_vocab >= 1, '>= 1'),
      ('kernel_threads', config.kernel_threads >= 0, '>= 0 (0 = every core)'),
      ('substeps', 1 <= config.substeps <= config.batch_size, 'in [1, config.batch_size]'),
  )
  for key, ok, what in checks:
    if not ok:
      value = config
      for part in key.split('.'):
        value = value[part]
      raise ValueError(f'config.{key}={value!r} must be {what}.')
  if config.corpus.source == 'text' and not config.corpus.path:
    raise ValueError("config.corpus.source='text' needs config.corpus.path (a text file or a "
                     'folder of text files).')
  if config.corpus.source == 'tfds' and not config.corpus.tfds_name:
    raise ValueError("config.corpus.source='tfds' needs config.corpus.tfds_name (e.g. "
                     "'imdb_reviews').")
