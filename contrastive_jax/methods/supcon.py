"""Supervised contrastive learning (Khosla et al. 2020): every view of the same
class is a positive. Not self-supervised: the labels define the positives."""

from __future__ import annotations

import ml_collections

from contrastive_jax import losses
from contrastive_jax.methods.base import METHODS, Method


class SupCon(Method):
  name = 'supcon'
  needs_labels = True

  @staticmethod
  def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        temperature=0.1,
        base_temperature=0.0,   # the loss is scaled by temperature / base; 0 = temperature
    ))

  def validate(self) -> None:
    if not self.cfg.temperature > 0:
      raise ValueError(f'config.supcon.temperature={self.cfg.temperature} must be > 0.')
    if self.cfg.base_temperature < 0:
      raise ValueError(f'config.supcon.base_temperature={self.cfg.base_temperature} must be '
                       '>= 0 (0 = temperature).')

  def loss(self, outputs, labels, targets, extra, *, axis_name):
    del targets, extra
    return losses.supcon(outputs['z'], labels, temperature=self.cfg.temperature,
                         base_temperature=self.cfg.base_temperature or None,
                         axis_name=axis_name)


METHODS.register(SupCon)
