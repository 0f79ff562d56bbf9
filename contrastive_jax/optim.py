"""Optimizers and learning-rate schedules from `config.optim`.

LARS follows SimCLR: weight decay and the trust ratio apply only to weight
matrices / conv kernels; BatchNorm parameters, biases and the linear probe or
classifier head get plain momentum SGD (SimCLR, Chen et al. 2020: its LARS
excludes BatchNorm, bias and supervised-head variables from both). SGD and
AdamW decay every weight matrix, the head's included (SimCLR's linear
evaluation's weight decay is the classifier's); biases and BatchNorm
parameters never. optax's masks default to "everywhere", so the masks here
are built from parameter paths.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import ml_collections
import optax

# Top-level modules whose parameters get neither weight decay nor trust-ratio
# scaling under LARS (SimCLR's LARS excludes its supervised head from both).
HEAD_MODULES = ('probe', 'classifier')


def scaled_learning_rate(base: float, batch_size: int, scaling: str) -> float:
  """SimCLR's rule: 'linear' = base x B / 256, 'sqrt' = base x sqrt(B)."""
  if scaling == 'linear':
    return base * batch_size / 256.0
  if scaling == 'sqrt':
    return base * math.sqrt(batch_size)
  if scaling == 'none':
    return base
  raise ValueError(f"config.optim.lr_scaling={scaling!r}; choose 'linear', 'sqrt' or 'none'.")


def warmup_steps_from(optim_cfg: ml_collections.ConfigDict, *, total_steps: int,
                      steps_per_epoch: int) -> int:
  if optim_cfg.warmup_fraction > 0:
    return int(round(optim_cfg.warmup_fraction * total_steps))
  return int(round(optim_cfg.warmup_epochs * steps_per_epoch))


def learning_rate_schedule(peak: float, *, total_steps: int, warmup_steps: int,
                           kind: str = 'cosine') -> optax.Schedule:
  """Linear warmup from 0 to `peak`, then cosine decay to 0 (or constant)."""
  warmup_steps = min(warmup_steps, total_steps)
  if kind == 'constant':
    after = optax.constant_schedule(peak)
  elif kind == 'cosine':
    after = optax.cosine_decay_schedule(peak, max(total_steps - warmup_steps, 1))
  else:
    raise ValueError(f"config.optim.schedule={kind!r}; choose 'cosine' or 'constant'.")
  if warmup_steps == 0:
    return after
  warmup = optax.linear_schedule(0.0, peak, warmup_steps)
  return optax.join_schedules([warmup, after], [warmup_steps])


def _path_names(path: Sequence[Any]) -> list[str]:
  return [str(getattr(k, 'key', getattr(k, 'name', k))) for k in path]


def decay_mask(params: Any, head_modules: Sequence[str] = HEAD_MODULES) -> Any:
  """True for leaves that get weight decay and LARS adaptation.

  Those are conv kernels and dense weights ('kernel', rank >= 2) outside the
  head modules; BatchNorm scales/biases and all biases are False.
  """
  def is_weight(path, leaf):
    names = _path_names(path)
    return (names[-1] == 'kernel' and getattr(leaf, 'ndim', 0) >= 2
            and not any(n in head_modules for n in names))
  return jax.tree_util.tree_map_with_path(is_weight, params)


def build_optimizer(optim_cfg: ml_collections.ConfigDict, *, batch_size: int,
                    total_steps: int, warmup_steps: int,
                    head_modules: Sequence[str] = HEAD_MODULES,
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, learning-rate schedule) for `config.optim`;
  head_modules are left alone by LARS only (see the module docstring)."""
  peak = scaled_learning_rate(optim_cfg.learning_rate, batch_size, optim_cfg.lr_scaling)
  schedule = learning_rate_schedule(peak, total_steps=total_steps,
                                    warmup_steps=warmup_steps, kind=optim_cfg.schedule)
  name = optim_cfg.name
  excluded = head_modules if name == 'lars' else ()
  mask: Callable[[Any], Any] = lambda p: decay_mask(p, excluded)
  if name == 'lars':
    tx = optax.lars(schedule, weight_decay=optim_cfg.weight_decay, weight_decay_mask=mask,
                    trust_coefficient=optim_cfg.trust_coefficient, eps=0.0,
                    trust_ratio_mask=mask, momentum=optim_cfg.momentum,
                    nesterov=optim_cfg.nesterov)
  elif name == 'sgd':
    tx = optax.chain(
        optax.add_decayed_weights(optim_cfg.weight_decay, mask),
        optax.sgd(schedule, momentum=optim_cfg.momentum or None,
                  nesterov=optim_cfg.nesterov))
  elif name == 'adamw':
    tx = optax.adamw(schedule, weight_decay=optim_cfg.weight_decay, mask=mask)
  else:
    raise ValueError(f"config.optim.name={name!r}; choose 'lars', 'sgd' or 'adamw'.")
  return tx, schedule
