"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of
Visual Representations"): NT-Xent over the two views, negatives from every
device's batch.

With `memory_size` > 0, SimCLR v2's memory (Chen et al. 2020b, section 2:
"a memory network (with a moving average of weights for stabilization) whose
output will be buffered as negative examples", after MoCo): a momentum copy
of the network (methods/momentum.py) projects the first view of every image;
those keys fill a FIFO queue of `memory_size`, and every anchor's NT-Xent
denominator holds the global batch's 2N - 1 other views plus the queue. The
positive stays the online network's other view. The paper reports about one
point of linear evaluation from it; its code never shipped it, so the
defaults are MoCo's (m = 0.999, constant). `memory_size` = 0 is SimCLR as
before, with no extra state.
"""

from __future__ import annotations

import ml_collections

from contrastive_jax import losses
from contrastive_jax.methods import momentum
from contrastive_jax.methods.base import METHODS


class SimCLR(momentum.MomentumMethod):
  name = 'simclr'

  @staticmethod
  def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        temperature=0.1,        # 0.1 ImageNet, 0.5 CIFAR (paper appendix B.9)
        loss_block_size=0,      # > 0: blockwise NT-Xent, O(n x block) logits per device
        memory_size=0,          # > 0: SimCLR v2's memory of momentum keys, a multiple of
                                # config.batch_size (0 = none: plain SimCLR)
        momentum=0.999,         # memory only: the momentum network's m (MoCo's)
        momentum_schedule='constant',   # 'constant' | 'cosine' (m -> 1 over the run)
    ))

  def queue_size(self) -> int:
    return int(self.cfg.get('memory_size', 0))

  def validate(self) -> None:
    if not self.cfg.temperature > 0:
      raise ValueError(f'config.simclr.temperature={self.cfg.temperature} must be > 0.')
    if self.cfg.loss_block_size < 0:
      raise ValueError(f'config.simclr.loss_block_size={self.cfg.loss_block_size} must be '
                       '>= 0 (0 = the whole logits matrix at once).')
    size = self.queue_size()
    if size < 0:
      raise ValueError(f'config.simclr.memory_size={size} must be >= 0 (0 = no memory).')
    if size:
      momentum.validate_queue_size(size, 'config.simclr.memory_size', self.config.batch_size)
      momentum.validate_momentum(self.cfg, self.name)
      if self.cfg.loss_block_size:
        raise ValueError(f'config.simclr.loss_block_size={self.cfg.loss_block_size} is not '
                         'supported with config.simclr.memory_size > 0; set it to 0.')

  def init_extra(self, params, batch_stats, *, global_batch_size):
    if not self.queue_size():
      return {}
    return super().init_extra(params, batch_stats, global_batch_size=global_batch_size)

  def targets(self, ctx):
    if not self.queue_size():
      return {}
    z = momentum.apply_network(ctx, ctx.extra, view=0, num_views=self.num_views)['z']
    return {'key': momentum.l2_normalize(z)}

  def queue_keys(self, targets):
    return targets['key']

  def update_extra(self, ctx):
    if not self.queue_size():
      return ctx.extra
    return super().update_extra(ctx)

  def loss(self, outputs, labels, targets, extra, *, axis_name):
    del labels, targets
    z = outputs['z']
    if self.queue_size():
      return losses.nt_xent_memory(z[:, 0], z[:, 1], extra['queue']['keys'],
                                   temperature=self.cfg.temperature, axis_name=axis_name)
    return losses.nt_xent(z[:, 0], z[:, 1], temperature=self.cfg.temperature,
                          axis_name=axis_name, block_size=self.cfg.loss_block_size)


METHODS.register(SimCLR)
