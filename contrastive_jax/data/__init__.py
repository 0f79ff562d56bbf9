"""Host-side input: data sources (`registry` and one module per source) and the
batch stream (`pipeline`).

Importing this package registers the built-in sources, in this order:
'embedded', 'idx', 'tfds', 'folder' (images), then 'wordnet_glosses',
'embedded_text', 'text_file', 'tfds_text' (text). Nothing here imports TensorFlow at import
time; `tfds_source` does so lazily, inside its functions, when a config asks
for a tfds dataset.
"""

# Imported for their registration (registry.register at module level).
from contrastive_jax.data import embedded  # pylint: disable=unused-import
from contrastive_jax.data import idx  # pylint: disable=unused-import
from contrastive_jax.data import tfds_source  # pylint: disable=unused-import
from contrastive_jax.data import folder  # pylint: disable=unused-import
# Text sources (modality 'text'): token ids from strings, tokenized on the host.
from contrastive_jax.data import wordnet_source  # pylint: disable=unused-import
from contrastive_jax.data import text_files  # pylint: disable=unused-import
from contrastive_jax.data import tfds_text  # pylint: disable=unused-import
