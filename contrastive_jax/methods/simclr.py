"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of
Visual Representations"): NT-Xent over the two views, negatives from every
device's batch."""

from __future__ import annotations

import ml_collections

from contrastive_jax import losses
from contrastive_jax.methods.base import METHODS, Method


class SimCLR(Method):
  name = 'simclr'

  @staticmethod
  def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        temperature=0.1,        # 0.1 ImageNet, 0.5 CIFAR (paper appendix B.9)
        loss_block_size=0,      # > 0: blockwise NT-Xent, O(n x block) logits per device
    ))

  def validate(self) -> None:
    if not self.cfg.temperature > 0:
      raise ValueError(f'config.simclr.temperature={self.cfg.temperature} must be > 0.')
    if self.cfg.loss_block_size < 0:
      raise ValueError(f'config.simclr.loss_block_size={self.cfg.loss_block_size} must be '
                       '>= 0 (0 = the whole logits matrix at once).')

  def loss(self, outputs, labels, targets, extra, *, axis_name):
    del labels, targets, extra
    z = outputs['z']
    return losses.nt_xent(z[:, 0], z[:, 1], temperature=self.cfg.temperature,
                          axis_name=axis_name, block_size=self.cfg.loss_block_size)


METHODS.register(SimCLR)
