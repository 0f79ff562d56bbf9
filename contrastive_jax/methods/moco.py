"""MoCo v2 (Chen, Fan, Girshick & He 2020, "Improved Baselines with Momentum
Contrastive Learning"; MoCo: He et al. 2019): the query is the online
network's projection of the first view, its key the momentum network's
projection of the second; InfoNCE of each query against its key and a FIFO
queue of earlier keys (facebookresearch/moco, moco/builder.py). After the
loss the step's keys, gathered from every device, replace the queue's oldest.

Defaults are the paper's: T = 0.2, m = 0.999 (constant), queue 65,536 (a
multiple of the global batch; validated). The MLP head is config.model's
projection head (2 layers; MoCo v2's has no BatchNorm, this one does: it is
the same head SimCLR trains). BatchNorm is global over the mesh, as SimCLR's,
so MoCo's shuffling BN is not needed. As in the official code the loss is
one-directional: the online network's second view and the momentum network's
first go unused.
"""

from __future__ import annotations

import ml_collections

from contrastive_jax import losses
from contrastive_jax.methods import momentum
from contrastive_jax.methods.base import METHODS


class MoCo(momentum.MomentumMethod):
  name = 'moco'

  @staticmethod
  def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        temperature=0.2,              # MoCo v2 (v1: 0.07)
        queue_size=65536,             # K, a multiple of config.batch_size
        momentum=0.999,
        momentum_schedule='constant',
    ))

  def queue_size(self) -> int:
    return int(self.cfg.queue_size)

  def validate(self) -> None:
    super().validate()
    if not self.cfg.temperature > 0:
      raise ValueError(f'config.moco.temperature={self.cfg.temperature} must be > 0.')
    momentum.validate_queue_size(self.cfg.queue_size, 'config.moco.queue_size',
                                 self.config.batch_size)

  def targets(self, ctx):
    z = momentum.apply_network(ctx, ctx.extra, view=1, num_views=self.num_views)['z']
    return {'key': momentum.l2_normalize(z)}

  def queue_keys(self, targets):
    return targets['key']

  def loss(self, outputs, labels, targets, extra, *, axis_name):
    del labels
    return losses.info_nce_queue(outputs['z'][:, 0], targets['key'], extra['queue']['keys'],
                                 temperature=self.cfg.temperature, axis_name=axis_name)


METHODS.register(MoCo)
