"""Images: uint8 [N, H, W, C] from the data sources, SimCLR's augmentation on
device (`contrastive_jax.augment`), centre crop + resize for evaluation.

Keys read: config.seed, config.augment (the augmentation), config.data.image_size
(the network's input side; 0 = the images' own side).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from contrastive_jax import augment
from contrastive_jax.modalities.base import MODALITIES, Batch, Modality


class Image(Modality):
  name = 'image'
  input_key = 'image'

  def __init__(self, config: ml_collections.ConfigDict,
               input_shape: Optional[tuple[int, ...]] = None):
    super().__init__(config, input_shape)
    self.image_size = int(config.data.get('image_size', 0) or 0)

  @property
  def out_size(self) -> int:
    """The network's input side."""
    if self.image_size:
      return self.image_size
    if self.input_shape is None or self.input_shape[0] is None:
      raise ValueError('The input side is unknown: set config.data.image_size, or build '
                       'the modality with the data\'s input_shape.')
    return self.input_shape[0]

  @property
  def channels(self) -> int:
    return self.input_shape[-1] if self.input_shape is not None else 3

  def dummy_input(self, n: int = 2) -> jax.Array:
    return jnp.zeros((n, self.out_size, self.out_size, self.channels))

  def train_views(self, step: Any, batch: Batch, num_views: int) -> jax.Array:
    """[num_views, N, h, w, c]; crops of letterboxed images stay inside batch['extent']."""
    return augment.pretrain_views(self.config.seed, step, batch['index'], batch['image'],
                                  self.config.augment, self.out_size, num_views=num_views,
                                  extents=batch.get('extent'))

  def train_inputs(self, step: Any, batch: Batch) -> jax.Array:
    """Crop + flip [N, h, w, c] (config.augment's crop and flip keys)."""
    return augment.finetune_batch(self.config.seed, step, batch['index'], batch['image'],
                                  self.config.augment, self.out_size,
                                  extents=batch.get('extent'))

  def eval_inputs(self, raw: jax.Array) -> jax.Array:
    return augment.eval_preprocess(raw, self.image_size or raw.shape[1])

  def prepare(self, raw: Any) -> jax.Array:
    """[N, H, W, C] or one [H, W, C] image, uint8 (eval preprocessing) or floats in
    [0, 1] (used as they are); [N, H, W] is taken as grayscale when the network
    has one channel."""
    x = np.asarray(raw)
    if x.ndim == 3 and x.shape[-1] not in (1, 3, 4) and self.channels == 1:
      x = x[..., None]          # [N, H, W] grayscale
    if x.ndim == 3:
      x = x[None]               # one image
    if x.ndim != 4:
      raise ValueError(f'Expected images [N, H, W, C] (or one [H, W, C] image); got shape '
                       f'{x.shape}.')
    if self.input_shape is not None and x.shape[-1] != self.channels:
      raise ValueError(f'The encoder takes {self.channels}-channel images; got {x.shape[-1]} '
                       f'channels (shape {x.shape}).')
    if x.dtype == np.uint8:
      return self.eval_inputs(jnp.asarray(x))
    return jnp.asarray(x, jnp.float32)

  def adapt(self, x: jax.Array) -> jax.Array:
    """Float images [N, h, w, c] resized (bicubic) to this network's input side."""
    size = self.out_size
    if x.shape[1:3] == (size, size):
      return x
    return jnp.clip(jax.image.resize(x, x.shape[:1] + (size, size) + x.shape[3:], 'bicubic'),
                    0.0, 1.0)

  def describe(self) -> str:
    return f'images {self.out_size}x{self.out_size}x{self.channels}'


MODALITIES.register(Image)
