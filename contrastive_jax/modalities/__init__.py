"""Input modalities (images now), one module each; see `modalities/base.py`.

  modality = modalities.build(config, input_shape=data.input_shape)
  views = modality.train_views(step, batch, num_views=2)
"""

from contrastive_jax.modalities.base import MODALITIES, Modality, build, modality_name
from contrastive_jax.modalities import image  # registers the built-in modality

__all__ = ['MODALITIES', 'Modality', 'build', 'modality_name']
