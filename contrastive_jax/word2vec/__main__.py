r"""word2vec (skip-gram / CBOW with negative sampling) in JAX.

  python -m contrastive_jax.word2vec --config=configs/word2vec.py --workdir=/tmp/w2v \
      [--config.corpus.source=text --config.corpus.path=corpus.txt --config.num_epochs=5 ...]

Running the same command again resumes from the latest checkpoint. The vectors
land in WORKDIR/vectors.bin and vectors.txt (word2vec formats);
`contrastive_jax.load_word_vectors(WORKDIR)` reads them.
"""

from contrastive_jax import loop
from contrastive_jax.word2vec import train

if __name__ == '__main__':
  loop.run_binary(train.train_and_evaluate)
