"""The naive text step: the baseline that text_step.py times the project's text step against.

A SimCSE-style GRU step written the obvious way with stock Flax and optax, none
of contrastive_jax's step code:

  - views: two independent word-deletion draws per sentence (each valid token
    dropped with probability `deletion`, at least one kept, the kept tokens
    moved to the front so the padding stays at the end) and dropout on the
    embeddings (the encoder's own dropout, SimCSE's view);
  - encoder: nn.Embed -> nn.Dropout -> nn.Bidirectional(nn.RNN(nn.GRUCell),
    nn.RNN(nn.GRUCell)) with seq_lengths (or one nn.RNN when unidirectional)
    -> the mean of the outputs over each row's valid steps;
  - projection head: Dense(width of h) -> ReLU -> Dense(proj_dim);
  - NT-Xent over the two views on the full [2N, 2N] logits (naive_step's, the
    image baseline's loss);
  - optax.adam; one jax.jit of the whole step on one device, fixed [N, L]
    int32 batches (0 = padding at the end of a row), no bucketing.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from naive_step import naive_nt_xent  # the sibling benchmark module (text_step.py's path)


class NaiveGRUSimCSE(nn.Module):
  """Token ids [N, L] -> float32 projections [N, proj_dim]."""
  vocab_size: int
  embed_dim: int = 128
  hidden_dim: int = 256
  bidirectional: bool = True
  dropout: float = 0.1
  proj_dim: int = 128

  @nn.compact
  def __call__(self, ids, train: bool):
    mask = ids != 0
    lengths = mask.sum(-1)
    x = nn.Embed(self.vocab_size, self.embed_dim)(ids)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    if self.bidirectional:
      y = nn.Bidirectional(nn.RNN(nn.GRUCell(self.hidden_dim)),
                           nn.RNN(nn.GRUCell(self.hidden_dim)))(x, seq_lengths=lengths)
    else:
      y = nn.RNN(nn.GRUCell(self.hidden_dim))(x, seq_lengths=lengths)
    h = jnp.where(mask[..., None], y, 0.0).sum(1) / jnp.maximum(lengths, 1)[:, None]
    z = nn.relu(nn.Dense(h.shape[-1])(h))
    return nn.Dense(self.proj_dim)(z)


def delete_words(key, ids, p: float):
  """Each valid token dropped with probability p (at least one kept); the kept
  tokens move to the front, zeros fill the end."""
  valid = ids != 0
  keep = valid & (jax.random.uniform(key, ids.shape) >= p)
  keep = keep.at[:, 0].set(keep[:, 0] | (keep.sum(-1) == 0))  # never an empty row
  order = jnp.argsort(~keep, axis=-1, stable=True)           # kept tokens first
  return jnp.take_along_axis(jnp.where(keep, ids, 0), order, axis=-1)


def make_naive_text_step(vocab_size: int, max_length: int, *, embed_dim: int = 128,
                         hidden_dim: int = 256, bidirectional: bool = True,
                         proj_dim: int = 128, dropout: float = 0.1, deletion: float = 0.1,
                         temperature: float = 0.1, learning_rate: float = 1e-3,
                         seed: int = 0) -> tuple[Callable[..., Any], Any]:
  """(jitted step, initial state): step(state, ids int32 [N, L]) -> (state, loss),
  donating its state."""
  model = NaiveGRUSimCSE(vocab_size, embed_dim, hidden_dim, bidirectional, dropout, proj_dim)
  tx = optax.adam(learning_rate)
  params = jax.jit(lambda: model.init(jax.random.PRNGKey(seed),
                                      jnp.ones((2, max_length), jnp.int32),
                                      train=False))()['params']
  state = (jnp.zeros((), jnp.int32), params, tx.init(params))

  def step(state, ids):
    step_, params, opt_state = state
    k1, k2, k_drop = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), step_), 3)
    x = jnp.concatenate([delete_words(k1, ids, deletion), delete_words(k2, ids, deletion)], 0)

    def loss_fn(params):
      z = model.apply({'params': params}, x, train=True, rngs={'dropout': k_drop})
      z1, z2 = jnp.split(z, 2)
      return naive_nt_xent(z1, z2, temperature)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (step_ + 1, optax.apply_updates(params, updates), opt_state), loss

  return jax.jit(step, donate_argnums=0), state
