"""word2vec: skip-gram / CBOW with negative sampling (Mikolov et al. 2013) in JAX,
the framework's contrastive objective for words.

  vocab.py     tokenisation, vocabulary, subsampling, noise distribution
  corpus.py    text sources and the corpus as word ids (in memory or memory-mapped)
  pairs.py     the examples of a step, a pure function of (seed, step)
  sgns.py      the loss and the jitted update (gathered rows, scatter-add)
  vectors.py   word2vec text / binary files, load_word_vectors
  evaluate.py  WS353, SimLex-999, analogies, neighbours, averaged-vector classification
  train.py     train_and_evaluate(config, workdir)
"""

from contrastive_jax.word2vec.vectors import load_word_vectors  # noqa: F401
