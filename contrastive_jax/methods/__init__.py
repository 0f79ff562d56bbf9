"""Pretraining methods, one module each, found by `config.method`.

  from contrastive_jax import methods
  method = methods.build(config)        # config.method -> its class, config.<method> keys

Adding a method is one module (see `methods/base.py` for the contract) that
registers its class in `METHODS`, plus a config that selects it; importing the
module before the binary runs is enough (the built-in ones are imported here).
"""

from contrastive_jax.methods.base import METHODS, Method, StepContext, build, method_config
from contrastive_jax.methods import simclr, supcon  # registers the built-in methods
from contrastive_jax.methods import byol, moco, mocov3  # momentum methods (methods/momentum.py)

__all__ = ['METHODS', 'Method', 'StepContext', 'build', 'method_config']
