"""Input modalities (images, text), one module each; see `modalities/base.py`.

  modality = modalities.build(config, input_shape=data.input_shape)
  views = modality.train_views(step, batch, num_views=2)
"""

from contrastive_jax.modalities.base import (MODALITIES, Modality, attach_run_files, build,
                                             modality_name, setup_run)
from contrastive_jax.modalities import image  # registers the built-in modalities
from contrastive_jax.modalities import text

__all__ = ['MODALITIES', 'Modality', 'attach_run_files', 'build', 'modality_name', 'setup_run']
