"""What a pretraining method is: the contract between a method module and the step.

The pretraining step (`contrastive_jax.train.make_pretrain_step`) never names a
method. Per step it asks the run's method for:

  1. `num_views` augmented views of every example (the modality makes them);
  2. `targets(ctx)`: anything computed without gradient from the views before
     the loss (a momentum encoder's keys, ...); default none;
  3. `loss(outputs, labels, targets, extra, axis_name=...)`: run inside
     `jax.shard_map` on each device's rows, all-gathering over `axis_name`
     where it needs the global batch; `outputs` holds the online network's
     'z' (projections), 'h' (encoder features) and, for a method with a
     predictor, 'p', each [n, num_views, ...]; returns (scalar loss, metrics);
  4. `update_extra(ctx)`: the method's extra state after the optimizer update
     (an EMA of the parameters, a queue of keys, ...); default unchanged.

A method may also put a trainable `predictor(model_cfg)` on top of the
projection head (BYOL, MoCo v3): the model then outputs 'p' = predictor(z).

The extra state is `TrainState.extra`: a pytree the method creates in
`init_extra`, replicated over the mesh, checkpointed and restored with the
rest of the state, so a resumed run continues it exactly.

A method module defines one subclass and registers it:

  class MyMethod(Method):
    name = 'mine'
    @staticmethod
    def defaults(): return ml_collections.ConfigDict(dict(temperature=0.1))
    def loss(self, outputs, labels, targets, extra, *, axis_name): ...
  METHODS.register(MyMethod)

and the config selects it with `config.method = 'mine'`; its keys live in
`config.mine` (filled from `defaults()` when the config has no such section).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import ml_collections

from contrastive_jax.registry import Registry

Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepContext:
  """What a method sees of one step (outside the gradient).

  apply: `apply(variables, x) -> model outputs` in training mode without
    updating BatchNorm statistics (for a momentum network's forward pass);
  x: the views, example-major [N * num_views, ...], sharded over the batch;
  params / batch_stats: the online network's (after the update in
    update_extra); step: the step being taken; total_steps: the run's length.
  """
  apply: Callable[[Any, jax.Array], dict[str, jax.Array]]
  x: jax.Array
  params: Any
  batch_stats: Any
  extra: Any
  step: jax.Array
  total_steps: int
  outputs: dict[str, jax.Array] | None = None   # the online outputs (update_extra only)
  targets: Any = None                           # what targets() returned (update_extra only)


class Method:
  """Base class; see the module docstring. `cfg` is the method's config section,
  `config` the whole run config."""
  name: ClassVar[str] = ''
  num_views: ClassVar[int] = 2
  needs_labels: ClassVar[bool] = False   # labels define the positives (SupCon)

  def __init__(self, cfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict):
    self.cfg, self.config = cfg, config

  @staticmethod
  def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict()

  def validate(self) -> None:
    """Raises ValueError naming the key at fault; runs before anything compiles."""

  def init_extra(self, params: Any, batch_stats: Any, *, global_batch_size: int) -> Any:
    """The method's extra state at step 0 (arrays; replicated over the mesh)."""
    del params, batch_stats, global_batch_size
    return {}

  def predictor(self, model_cfg: ml_collections.ConfigDict) -> nn.Module | None:
    """A trainable module `(z, train) -> p` on the projection head, or None."""
    del model_cfg
    return None

  def targets(self, ctx: StepContext) -> Any:
    """Batch-major arrays [N, ...] the loss compares against, without gradient."""
    del ctx
    return {}

  def loss(self, outputs: dict[str, jax.Array], labels: jax.Array, targets: Any, extra: Any,
           *, axis_name: str | None) -> tuple[jax.Array, Metrics]:
    """outputs['z']: [n, num_views, d] projections of this device's examples."""
    raise NotImplementedError

  def update_extra(self, ctx: StepContext) -> Any:
    return ctx.extra


METHODS: Registry[type[Method]] = Registry('method', 'config.method')


def method_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The selected method's config section (its defaults when the config has none)."""
  cls = METHODS.get(config.method)
  section = config.get(cls.name)
  return section if section is not None else cls.defaults()


def build(config: ml_collections.ConfigDict) -> Method:
  """The method `config.method` names, with its config section."""
  cls = METHODS.get(config.method)
  method = cls(method_config(config), config)
  method.validate()
  return method
