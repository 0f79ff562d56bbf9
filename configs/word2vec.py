"""word2vec on every WordNet 3.0 gloss (about 1.46M words), gensim's defaults.

  python -m contrastive_jax.word2vec --config=configs/word2vec.py --workdir=/tmp/w2v
  python -m contrastive_jax.word2vec --config=configs/word2vec.py:cbow --workdir=/tmp/w2v_cbow
  python -m contrastive_jax.word2vec --config=configs/word2vec.py --workdir=/tmp/w2v_text \
      --config.corpus.source=text --config.corpus.path=/path/to/corpus.txt

Skip-gram, 100 dimensions, window 5, 5 negatives, min_count 5, sample 1e-3, 5
epochs, learning rate 0.025 -> 0.0001 (gensim.models.Word2Vec's defaults).
Each step reads 16,384 words and applies them as 16 updates of 1,024 words
in turn (config.substeps). The figures against gensim on the same corpus:
benchmarks/word2vec.py, benchmarks/NOTES.md. ':tiny' is for tests (a few
hundred words, seconds).
"""

from contrastive_jax.word2vec import defaults


def get_config(arg: str | None = None):
  config = defaults.word2vec_defaults()
  config.batch_size = 16384       # words per step, in 16 sequential substeps of 1,024 words
  config.substeps = 16            # (row_update_cap 128 per substep; benchmarks/NOTES.md)
  if arg == 'cbow':
    config.sg = 0
  elif arg == 'tiny':
    config.corpus.source = 'text'   # the test writes its corpus and sets corpus.path
    config.batch_size = 1024
    config.substeps = 2
    config.num_epochs = 3
    config.vector_size = 16
    config.min_count = 1
    config.log_every_steps = 10
    config.checkpoint_every_steps = 20
    config.eval.intrinsic = False
    config.eval.probes = ('the',)
  elif arg:
    raise ValueError(f"configs/word2vec.py:{arg}; choose '', 'cbow' or 'tiny'.")
  return config
