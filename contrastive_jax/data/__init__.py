"""Host-side input: data sources (`registry` and one module per source) and the
batch stream (`pipeline`).

Importing this package registers the built-in sources, in this order:
'embedded', 'idx', 'tfds', 'folder'. Nothing here imports TensorFlow at import
time; `tfds_source` does so lazily, inside its functions, when a config asks
for a tfds dataset.
"""

# Imported for their registration (registry.register at module level).
from contrastive_jax.data import embedded  # pylint: disable=unused-import
from contrastive_jax.data import idx  # pylint: disable=unused-import
from contrastive_jax.data import tfds_source  # pylint: disable=unused-import
from contrastive_jax.data import folder  # pylint: disable=unused-import
