"""contrastive_jax: SimCLR v1/v2 and supervised contrastive learning in JAX/Flax.

Importing the package never imports TensorFlow: only `contrastive_jax.data`'s
tfds/tf.data sources do, lazily, when a config asks for them.
"""

__version__ = '0.1.0'


def load_encoder(workdir: str, step: int | None = None):
  """Loads a trained encoder from a workdir; see `contrastive_jax.export`."""
  from contrastive_jax import export  # pylint: disable=g-import-not-at-top
  return export.load_encoder(workdir, step=step)


def load_word_vectors(workdir: str):
  """(words, vectors float32 [V, D]) of a word2vec run; see `contrastive_jax.word2vec`."""
  from contrastive_jax.word2vec import vectors  # pylint: disable=g-import-not-at-top
  return vectors.load_word_vectors(workdir)
