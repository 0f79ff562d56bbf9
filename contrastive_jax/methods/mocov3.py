"""MoCo v3 (Chen, Xie & He 2021, "An Empirical Study of Training
Self-Supervised Vision Transformers"): no queue. The online network's
predictor output of each view is contrasted with the momentum network's
projections of the other view over the whole global batch (keys gathered
from every device), symmetrised, scaled by 2T as facebookresearch/moco-v3's
`ctr_loss` (moco/builder.py).

Defaults are the official ResNet-50 recipe's: T = 1.0 (0.2 for ViTs), m from
0.99 to 1 on a cosine over training (`--moco-m-cos`). The predictor is
2 layers: Dense(predictor_hidden_dim) -> BN -> ReLU -> Dense(proj_dim) -> BN
without scale or shift, no biases (moco-v3's `_build_mlp`).
"""

from __future__ import annotations

import ml_collections

from contrastive_jax import losses
from contrastive_jax.methods import momentum
from contrastive_jax.methods.base import METHODS


class MoCoV3(momentum.MomentumMethod):
  name = 'mocov3'

  @staticmethod
  def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        temperature=1.0,              # ResNets (ViTs: 0.2)
        momentum=0.99,
        momentum_schedule='cosine',
        predictor_hidden_dim=0,       # 0 = the projection head's hidden width (paper: 4096)
    ))

  def validate(self) -> None:
    super().validate()
    if not self.cfg.temperature > 0:
      raise ValueError(f'config.mocov3.temperature={self.cfg.temperature} must be > 0.')
    if self.cfg.predictor_hidden_dim < 0:
      raise ValueError(f'config.mocov3.predictor_hidden_dim={self.cfg.predictor_hidden_dim} '
                       'must be >= 0 (0 = the projection head\'s hidden width).')

  def predictor(self, model_cfg):
    return momentum.build_predictor(model_cfg, self.cfg.predictor_hidden_dim, last_bn=True,
                                    use_bias=False)

  def targets(self, ctx):
    return {'z': momentum.apply_network(ctx, ctx.extra, num_views=self.num_views)['z']}

  def loss(self, outputs, labels, targets, extra, *, axis_name):
    del labels, extra
    return losses.moco_v3_info_nce(outputs['p'], targets['z'], temperature=self.cfg.temperature,
                                   axis_name=axis_name)


METHODS.register(MoCoV3)
