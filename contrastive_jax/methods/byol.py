"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent"): no negatives. The
online network's predictor output of each view regresses the target
(momentum) network's projection of the other view,

  loss = mean over images of (2 - 2 cos(p_1, z'_2)) + (2 - 2 cos(p_2, z'_1))

as deepmind-research/byol (byol_experiment.py, `regression_loss` summed over
both directions). The target network is an EMA of the online one, m from
`momentum` (0.996 for ImageNet; 0.99 suits short runs) to 1 on a cosine over
training (methods/momentum.py). The predictor is an MLP on z:
Dense(predictor_hidden_dim) -> BN -> ReLU -> Dense(proj_dim), with biases
(BYOL's `networks.MLP`).
"""

from __future__ import annotations

import ml_collections

from contrastive_jax import losses
from contrastive_jax.methods import momentum
from contrastive_jax.methods.base import METHODS


class BYOL(momentum.MomentumMethod):
  name = 'byol'

  @staticmethod
  def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        momentum=0.996,               # tau_base (paper: 0.996 at batch 4096, 1000 epochs)
        momentum_schedule='cosine',   # tau: tau_base -> 1 on a cosine over training
        predictor_hidden_dim=0,       # 0 = the projection head's hidden width (paper: 4096)
    ))

  def validate(self) -> None:
    super().validate()
    if self.cfg.predictor_hidden_dim < 0:
      raise ValueError(f'config.byol.predictor_hidden_dim={self.cfg.predictor_hidden_dim} '
                       'must be >= 0 (0 = the projection head\'s hidden width).')

  def predictor(self, model_cfg):
    return momentum.build_predictor(model_cfg, self.cfg.predictor_hidden_dim, last_bn=False,
                                    use_bias=True)

  def targets(self, ctx):
    return {'z': momentum.apply_network(ctx, ctx.extra, num_views=self.num_views)['z']}

  def loss(self, outputs, labels, targets, extra, *, axis_name):
    del labels, extra
    return losses.byol_regression(outputs['p'], targets['z'], axis_name=axis_name)


METHODS.register(BYOL)
