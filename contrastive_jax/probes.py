"""Evaluation probes on frozen features: linear classifier, weighted kNN, top-k.

Pure functions of arrays (no files, no logging); `contrastive_jax/eval.py` feeds
them features extracted from a checkpoint.

Linear probe (SimCLR's protocol, but on fixed features: SimCLR augments the
probe's training images with crop + flip; eval.py extracts the features once
from the eval preprocessing; configs/finetune_v1.py:linear is the augmented
protocol): a linear classifier (zero init, with bias) on
the frozen features, trained with momentum SGD (or LARS) and a cosine schedule;
the learning rate x weight decay grid is trained at once (`jax.vmap` over the
grid, one compile), chosen by top-1 on a validation split carved from train,
then retrained on train + val and reported once on test (`linear_protocol`).
Features are used as they come (SimCLR does not normalise them);
`normalize_features` offers 'l2' and 'standardize' (= BatchNorm without affine
with train statistics, which some codebases put in front of the probe), and
the protocol can treat the normalisation as one more grid axis chosen on val.

kNN (Wu et al. 2018, solo-learn): cosine similarity of L2-normalised features
against the train features as memory bank; the k nearest vote for their label
with weight exp(sim / T); chunked over test rows to bound memory.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from contrastive_jax import config_defaults, losses, optim

Params = dict[str, jax.Array]


# ---------------------------------------------------------------------------
# Features.

def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  x = jnp.asarray(x, jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def normalize_features(train: np.ndarray, others: Sequence[np.ndarray], mode: str
                       ) -> tuple[np.ndarray, list[np.ndarray]]:
  """'none' (SimCLR) | 'l2' (per row) | 'standardize' (train mean / std per dim)."""
  if mode == 'none':
    return train, list(others)
  if mode == 'l2':
    f = lambda x: np.asarray(l2_normalize(x))
    return f(train), [f(x) for x in others]
  if mode == 'standardize':
    mean = train.mean(0, keepdims=True)
    std = train.std(0, keepdims=True) + 1e-6  # constant (dead ReLU) dims stay 0
    f = lambda x: ((x - mean) / std).astype(np.float32)
    return f(train), [f(x) for x in others]
  raise ValueError(f"config.linear.feature_norm={mode!r}; choose 'none', 'l2' or "
                   "'standardize' (or a comma-separated list of them, chosen on val).")


FEATURE_NORMS = ('none', 'l2', 'standardize')


def parse_feature_norms(spec: str | Sequence[str], key: str = 'config.linear.feature_norm'
                        ) -> tuple[str, ...]:
  """'none' or 'none,standardize' (a choice made on val, like the LR) -> tuple;
  `key` names the config entry in the error."""
  norms = tuple(m.strip() for m in (spec.split(',') if isinstance(spec, str) else spec)
                if m.strip())
  bad = [m for m in norms if m not in FEATURE_NORMS]
  if not norms or bad:
    raise ValueError(f'{key}={spec!r}: give one or more of '
                     f"{FEATURE_NORMS}, comma-separated (e.g. 'none,standardize').")
  return norms


# ---------------------------------------------------------------------------
# Accuracy.

def balanced_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
  """Mean over the classes present of each class's top-1: the score for very
  unequal classes (WordNet's noun lexicographer files)."""
  labels, pred = np.asarray(labels), np.asarray(pred)
  classes = np.unique(labels[labels >= 0])
  return float(np.mean([np.mean(pred[labels == c] == c) for c in classes])) if len(classes) else 0.0


def topk_correct(scores: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """bool [..., N]: label among the k highest scores (ties: lower class index first,
  as `jax.lax.top_k`). scores [..., N, C]; k is clipped to C."""
  k = min(int(k), scores.shape[-1])
  _, idx = jax.lax.top_k(scores, k)
  return jnp.any(idx == jnp.asarray(labels)[..., None], axis=-1)


def topk_accuracy(scores: jax.Array, labels: jax.Array, ks: Sequence[int] = (1, 5)
                  ) -> dict[int, np.ndarray]:
  """{k: accuracy} (scalar, or [...] when scores has leading batch dims)."""
  # Counted on the host in float64: a float32 mean of 1s is not always 1.0.
  return {k: np.mean(np.asarray(topk_correct(scores, labels, k)), axis=-1) for k in ks}


# ---------------------------------------------------------------------------
# kNN.

@functools.partial(jax.jit, static_argnames=('num_classes', 'ks', 'chunk_size'))
def knn_scores(train_features: jax.Array, train_labels: jax.Array,
               test_features: jax.Array, *, num_classes: int, ks: tuple[int, ...],
               temperature: float, chunk_size: int = 256) -> jax.Array:
  """Weighted-vote class scores [len(ks), N_test, num_classes].

  For each test row: cosine similarities to every train row, the k largest
  (k clipped to N_train; ties: lower train index first), each voting
  exp(sim / temperature) for its label. One top-k of max(ks) serves every k.
  Test rows go through in chunks of `chunk_size` (memory: chunk x N_train).
  """
  bank = l2_normalize(train_features)
  queries = l2_normalize(test_features)
  n, d = queries.shape
  kmax = min(max(ks), bank.shape[0])
  chunk = max(1, min(chunk_size, n))
  pad = (-n) % chunk
  queries = jnp.pad(queries, ((0, pad), (0, 0))).reshape(-1, chunk, d)
  train_labels = jnp.asarray(train_labels, jnp.int32)
  rank = jnp.arange(kmax)

  def one_chunk(q: jax.Array) -> jax.Array:
    # HIGHEST: on TPU the default f32 matmul rounds through bf16, which is
    # enough to reorder near neighbours.
    sims = jnp.matmul(q, bank.T, precision=jax.lax.Precision.HIGHEST)
    top_sims, top_idx = jax.lax.top_k(sims, kmax)
    votes = jnp.exp(top_sims / temperature)                     # [chunk, kmax]
    onehot = jax.nn.one_hot(train_labels[top_idx], num_classes, dtype=jnp.float32)
    per_k = [jnp.einsum('nk,nkc->nc', votes * (rank < k), onehot,
                        precision=jax.lax.Precision.HIGHEST) for k in ks]
    return jnp.stack(per_k)                                     # [len(ks), chunk, C]

  scores = jax.lax.map(one_chunk, queries)                      # [chunks, K, chunk, C]
  scores = jnp.moveaxis(scores, 1, 0).reshape(len(ks), -1, num_classes)
  return scores[:, :n]


def knn_evaluate(train_features: Any, train_labels: Any, test_features: Any,
                 test_labels: Any, *, num_classes: int, ks: Sequence[int],
                 temperature: float, chunk_size: int = 256) -> dict[str, float]:
  """{'knn_k{k}_top1': ..., 'knn_k{k}_top5': ...} for every k in ks."""
  ks = tuple(int(k) for k in ks)
  scores = knn_scores(jnp.asarray(train_features), jnp.asarray(train_labels),
                      jnp.asarray(test_features), num_classes=num_classes, ks=ks,
                      temperature=float(temperature), chunk_size=int(chunk_size))
  acc = topk_accuracy(scores, jnp.asarray(test_labels), (1, 5))
  out = {}
  for i, k in enumerate(ks):
    out[f'knn_k{k}_top1'] = float(acc[1][i])
    out[f'knn_k{k}_top5'] = float(acc[5][i])
  return out


def knn_protocol(train: tuple[Any, Any], val: tuple[Any, Any] | None,
                 test: tuple[Any, Any], *, num_classes: int, ks: Sequence[int],
                 temperature: float, feature_norm: str | Sequence[str] = 'none',
                 chunk_size: int = 256) -> dict[str, Any]:
  """kNN evaluation with the feature normalisation chosen on val.

  With several feature_norm values ('none,standardize'): each is scored as kNN
  top-1 at ks[0] on `val` with `train` as the memory bank (standardisation
  statistics from train); the best (ties: the first) is used with train + val
  as the bank (statistics from it) for the test figures, every k. With one
  value, or no val: that value, bank = train (+ val when given).

  Returns knn_k{k}_top1 / _top5 (test), knn_feature_norm and, with a choice,
  knn_grid (val top-1 per feature_norm).
  """
  norms = parse_feature_norms(feature_norm, 'config.knn.feature_norm')
  if val is None and len(norms) > 1:
    raise ValueError(f'config.knn.feature_norm={feature_norm!r} asks for a choice on val, '
                     'but there is no validation split; set config.data.val_examples (or '
                     'config.val_fraction) > 0, or give one feature_norm.')
  kw = dict(num_classes=num_classes, ks=tuple(ks), temperature=temperature,
            chunk_size=chunk_size)
  out: dict[str, Any] = {}
  norm = norms[0]
  if len(norms) > 1:
    scores = []
    for candidate in norms:
      bank, (queries,) = normalize_features(np.asarray(train[0], np.float32),
                                            [np.asarray(val[0], np.float32)], candidate)
      acc = knn_evaluate(bank, train[1], queries, val[1], **kw)
      scores.append(acc[f'knn_k{int(ks[0])}_top1'])
    norm = norms[int(np.argmax(scores))]
    out['knn_grid'] = [dict(feature_norm=n, val_top1=float(v)) for n, v in zip(norms, scores)]
  splits = [train] + ([val] if val is not None else [])
  bank_x = np.concatenate([np.asarray(x, np.float32) for x, _ in splits])
  bank_y = np.concatenate([np.asarray(y) for _, y in splits])
  bank_x, (test_x,) = normalize_features(bank_x, [np.asarray(test[0], np.float32)], norm)
  out.update(knn_evaluate(bank_x, bank_y, test_x, test[1], **kw))
  out['knn_feature_norm'] = norm
  return out


# ---------------------------------------------------------------------------
# Linear probe.

def _unit_lr_optimizer(name: str, *, momentum: float, nesterov: bool, schedule: str,
                       total_steps: int) -> optax.GradientTransformation:
  """The probe's optimizer with peak learning rate 1 and no weight decay.

  The grid's learning rate multiplies the updates and its weight decay is added
  to the gradient outside the optimizer, so both can be traced (vmapped). Both
  are exact: momentum SGD and LARS are linear in the learning rate, and optax
  adds decoupled-from-nothing decay (g + wd * w) before its trust ratio too.
  LARS (`contrastive_jax.optim`'s mask) adapts the kernel, not the bias.
  """
  cfg = config_defaults.optim_defaults()
  cfg.update(dict(name=name, learning_rate=1.0, lr_scaling='none', weight_decay=0.0,
                  momentum=momentum, nesterov=nesterov, schedule=schedule,
                  warmup_epochs=0.0, warmup_fraction=0.0))
  tx, _ = optim.build_optimizer(cfg, batch_size=1, total_steps=total_steps,
                                warmup_steps=0, head_modules=())
  return tx


def probe_steps(num_examples: int, batch_size: int, epochs: int) -> tuple[int, int]:
  """(effective batch size, steps per epoch): batch_size <= 0 or >= N = full batch;
  otherwise N // B steps an epoch (a fresh permutation drops a different tail)."""
  b = num_examples if batch_size <= 0 or batch_size >= num_examples else batch_size
  return b, num_examples // b


@functools.partial(jax.jit, static_argnames=(
    'num_classes', 'epochs', 'batch_size', 'optimizer', 'momentum', 'nesterov', 'schedule'))
def _fit_grid(features: jax.Array, labels: jax.Array, learning_rates: jax.Array,
              weight_decays: jax.Array, key: jax.Array, *, num_classes: int, epochs: int,
              batch_size: int, optimizer: str, momentum: float, nesterov: bool,
              schedule: str) -> Params:
  n, d = features.shape
  spe = n // batch_size
  tx = _unit_lr_optimizer(optimizer, momentum=momentum, nesterov=nesterov,
                          schedule=schedule, total_steps=max(epochs * spe, 1))

  def loss_fn(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    logits = x @ params['kernel'] + params['bias']
    return losses.softmax_cross_entropy(logits, y)[0]

  def fit_one(lr: jax.Array, wd: jax.Array) -> Params:
    params = {'kernel': jnp.zeros((d, num_classes), jnp.float32),
              'bias': jnp.zeros((num_classes,), jnp.float32)}

    def step(carry, idx):
      params, opt_state = carry
      grads = jax.grad(loss_fn)(params, features[idx], labels[idx])
      # L2 on the kernel only (SimCLR: no decay on biases).
      grads = dict(grads, kernel=grads['kernel'] + wd * params['kernel'])
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, jax.tree.map(lambda u: lr * u, updates))
      return (params, opt_state), None

    def epoch(carry, e):
      if spe * batch_size == n and spe == 1:
        order = jnp.arange(n)[None]  # full batch: order does not matter
      else:
        order = jax.random.permutation(jax.random.fold_in(key, e), n)[:spe * batch_size]
        order = order.reshape(spe, batch_size)
      return jax.lax.scan(step, carry, order)[0], None

    (params, _), _ = jax.lax.scan(epoch, (params, tx.init(params)), jnp.arange(epochs))
    return params

  # Every grid point sees the same minibatches (the order does not depend on
  # the vmapped arguments), so they differ only by their hyperparameters.
  return jax.vmap(fit_one)(learning_rates, weight_decays)


def fit_linear(features: Any, labels: Any, *, num_classes: int,
               learning_rates: Sequence[float], weight_decays: Sequence[float],
               epochs: int, batch_size: int, optimizer: str, momentum: float,
               nesterov: bool = False, schedule: str = 'cosine', seed: int = 0) -> Params:
  """Trains one linear classifier per (learning_rates[g], weight_decays[g]) pair.

  Args:
    features: [N, D] float; labels: int [N] in [0, num_classes).
    learning_rates: per grid point, already scaled (e.g. base x B / 256).
    weight_decays: per grid point, same length (L2 on the kernel).
    batch_size: minibatch; <= 0 or >= N = full batch.
    optimizer: 'sgd' (momentum) | 'lars'.
  Returns:
    {'kernel': [G, D, C], 'bias': [G, C]}.
  """
  if len(learning_rates) != len(weight_decays) or not len(learning_rates):
    raise ValueError('fit_linear: learning_rates and weight_decays must be non-empty '
                     f'and of equal length; got {len(learning_rates)} and {len(weight_decays)}.')
  features = jnp.asarray(features, jnp.float32)
  n = features.shape[0]
  b, _ = probe_steps(n, batch_size, epochs)
  return _fit_grid(features, jnp.asarray(labels, jnp.int32),
                   jnp.asarray(learning_rates, jnp.float32),
                   jnp.asarray(weight_decays, jnp.float32), jax.random.PRNGKey(seed),
                   num_classes=int(num_classes), epochs=int(epochs), batch_size=int(b),
                   optimizer=optimizer, momentum=float(momentum), nesterov=bool(nesterov),
                   schedule=schedule)


@jax.jit
def linear_logits(params: Params, features: jax.Array) -> jax.Array:
  """[G, N, C] for grid params ([G, D, C] kernels), or [N, C] for one."""
  return jnp.matmul(features, params['kernel']) + params['bias'][..., None, :]


def linear_protocol(train: tuple[Any, Any], val: tuple[Any, Any] | None,
                    test: tuple[Any, Any], *, num_classes: int,
                    base_learning_rates: Sequence[float], weight_decays: Sequence[float],
                    lr_scaling: str, epochs: int, batch_size: int, optimizer: str,
                    momentum: float, nesterov: bool = False, schedule: str = 'cosine',
                    feature_norm: str | Sequence[str] = 'none', seed: int = 0
                    ) -> dict[str, Any]:
  """The linear evaluation protocol on (features, labels) pairs.

  1. Train the grid feature_norm x base_learning_rates x weight_decays on
     `train`; score each on `val` (test is not looked at). Normalisation
     statistics come from the split the probe is trained on.
  2. Take the best val top-1 (ties: the first in grid order, norm-major, then
     LR-major).
  3. Retrain with it on train + val; report top-1 / top-5 on test, once.
  With val None the grid must have one point: train on train, report on test.
  The learning rate is base x B / 256 ('linear'), base x sqrt(B) or base,
  with B the probe's effective batch size.

  Returns a dict: linear_top1, linear_top5 (test), linear_val_top1,
  linear_val_top5 (chosen point), linear_feature_norm,
  linear_base_learning_rate, linear_learning_rate, linear_weight_decay,
  linear_grid (list of dicts), linear_train_examples (of the final fit).
  """
  norms = parse_feature_norms(feature_norm)
  hyper = [(float(lr), float(wd)) for lr in base_learning_rates for wd in weight_decays]
  if not hyper:
    raise ValueError('config.linear.learning_rates and config.linear.weight_decays '
                     'must be non-empty.')
  grid = [(norm, lr, wd) for norm in norms for lr, wd in hyper]
  if val is None and len(grid) > 1:
    raise ValueError(
        f'The linear probe grid has {len(grid)} points but there is no validation split '
        'to choose on; set config.data.val_examples (or config.val_fraction) > 0, or give '
        'one config.linear.learning_rates, weight_decays and feature_norm.')
  x_train, y_train = np.asarray(train[0], np.float32), np.asarray(train[1], np.int32)
  x_test, y_test = np.asarray(test[0], np.float32), np.asarray(test[1], np.int32)
  common = dict(num_classes=num_classes, epochs=epochs, batch_size=batch_size,
                optimizer=optimizer, momentum=momentum, nesterov=nesterov,
                schedule=schedule, seed=seed)

  def scaled(base: float, n: int) -> float:
    b, _ = probe_steps(n, batch_size, epochs)
    return optim.scaled_learning_rate(base, b, lr_scaling)

  out: dict[str, Any] = {}
  if val is not None:
    x_val, y_val = np.asarray(val[0], np.float32), np.asarray(val[1], np.int32)
    top1, top5, finite = [], [], []
    for norm in norms:
      xs, (xv,) = normalize_features(x_train, [x_val], norm)
      params = fit_linear(xs, y_train, learning_rates=[scaled(lr, len(xs)) for lr, _ in hyper],
                          weight_decays=[wd for _, wd in hyper], **common)
      acc = topk_accuracy(linear_logits(params, jnp.asarray(xv)), jnp.asarray(y_val), (1, 5))
      top1 += list(np.asarray(acc[1]))
      top5 += list(np.asarray(acc[5]))
      finite += list(np.asarray(jax.vmap(lambda p: jnp.all(jnp.isfinite(p['kernel'])))(params)))
    # A diverged point (non-finite weights) can still "score" through top_k's
    # handling of NaN; it is never chosen.
    best = int(np.argmax(np.where(finite, top1, -1.0)))  # first maximum wins ties
    out['linear_grid'] = [dict(feature_norm=norm, base_learning_rate=lr, weight_decay=wd,
                               val_top1=float(t1), val_top5=float(t5), diverged=not bool(ok))
                          for (norm, lr, wd), t1, t5, ok in zip(grid, top1, top5, finite)]
    out['linear_val_top1'] = float(top1[best])
    out['linear_val_top5'] = float(top5[best])
    x_final = np.concatenate([x_train, x_val])
    y_final = np.concatenate([y_train, y_val])
  else:
    best = 0
    x_final, y_final = x_train, y_train
  norm, base_lr, wd = grid[best]
  xf, (xt,) = normalize_features(x_final, [x_test], norm)
  lr = scaled(base_lr, len(xf))
  params = fit_linear(xf, y_final, learning_rates=[lr], weight_decays=[wd], **common)
  logits = linear_logits(params, jnp.asarray(xt))[0]
  acc = topk_accuracy(logits, jnp.asarray(y_test), (1, 5))
  out.update(linear_top1=float(acc[1]), linear_top5=float(acc[5]),
             linear_balanced_acc=balanced_accuracy(np.asarray(jnp.argmax(logits, -1)), y_test),
             linear_feature_norm=norm,
             linear_base_learning_rate=base_lr, linear_learning_rate=lr,
             linear_weight_decay=wd, linear_train_examples=int(len(xf)))
  return out
