"""Text views for contrastive pretraining as pure JAX functions of (key, ids).

Every op takes a PRNG key and one example's token ids int32 [L] (padding 0 at
the end; its length is its number of nonzero ids) and returns ids [L] with the
same convention. Batches use `jax.vmap`, so every example gets its own draw;
all ops are jittable (shapes and config values static, draws traced) and
vectorised: elementwise selects, one sort per reordering op, one gather from
the synonym table. Every op keeps at least one token of a non-empty row and
is the identity when its probability is 0 (decided at trace time for a
Python number, so an op that is off compiles nothing).

The ops, in the order `text_view` applies them:
  - synonym substitution: each token that has a synonym is replaced, with
    probability `synonym`, by one of its synonyms drawn uniformly from the
    table int32 [V, K] (`text.synonyms`; EDA, Wei & Zou 2019);
  - random replacement: each token becomes a uniform random real token id in
    [3, vocab_size) with probability `replace` (BERT's random-token
    corruption, Devlin et al. 2019);
  - masking: each token becomes MASK_ID with probability `mask` (token
    cutoff, ConSERT, Yan et al. 2021);
  - local shuffle: each token's sort key is its position plus, with
    probability `shuffle`, a uniform noise in [0, shuffle_window + 1); the
    tokens are re-ordered by their keys, so none moves more than
    shuffle_window places (Lample et al. 2018 perturb every token: shuffle=1,
    window 3). Chosen over adjacent pair swaps because it has no
    overlapping-pair conflicts and one parameter bounds the disorder;
  - span crop: a contiguous span of ceil(f x length) tokens, f ~ U[
    span_min_fraction, 1], at a uniform offset, moved to the start (CLEAR, Wu
    et al. 2020; DeCLUTR, Giorgi et al. 2021); span_min_fraction = 1 is off;
  - word deletion: each token is dropped with probability `deletion`, the
    survivors closing up to the left; when every token would go, one drawn
    uniformly stays (EDA's random deletion; CLEAR's word deletion).
The SimCSE dropout view (Gao et al. 2021) lives in the encoder, not here.

Keys come from the example, not the device: the key of (step, example index,
view) is `augment.example_keys`' fold_in(fold_in(fold_in(PRNGKey(seed), step),
index), view), so the same seed gives the same views on any number of
devices or hosts.

Fine-tuning's light augmentation (`finetune_batch`) runs the same ops with the
`finetune_*` keys (word deletion only, by default), from view 0's keys.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from contrastive_jax import augment
from contrastive_jax.text.tokenizer import FIRST_TOKEN_ID, MASK_ID, PAD_ID

Array = jax.Array

PROB_KEYS = ('synonym', 'replace', 'mask', 'shuffle', 'deletion')
FRACTION_KEYS = ('span_min_fraction',)
OP_KEYS = PROB_KEYS + FRACTION_KEYS
FINETUNE_PREFIX = 'finetune_'


def text_augment_defaults() -> ml_collections.ConfigDict:
  """config.text_augment: the views' probabilities (pretraining, then fine-tuning)."""
  return ml_collections.ConfigDict(dict(
      synonym=0.2,             # P(token -> a WordNet synonym), tokens with synonyms only
      replace=0.05,            # P(token -> uniform random token)
      mask=0.1,                # P(token -> [MASK])
      shuffle=0.2,             # P(token's position gets noise in [0, shuffle_window + 1))
      shuffle_window=3,        # no token moves further than this
      span_min_fraction=0.8,   # contiguous span keeps U[this, 1] of the tokens; 1 = off
      deletion=0.1,            # P(token dropped); at least one token stays
      # Fine-tuning and distillation (finetune_batch): the same ops, lighter.
      finetune_synonym=0.0,
      finetune_replace=0.0,
      finetune_mask=0.0,
      finetune_shuffle=0.0,
      finetune_span_min_fraction=1.0,
      finetune_deletion=0.1,
  ))


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming config.text_augment.<key> and its valid range."""
  for prefix in ('', FINETUNE_PREFIX):
    for name in OP_KEYS:
      key = prefix + name
      if key not in cfg:
        raise ValueError(f'config.text_augment.{key} is missing; start from '
                         'text.views.text_augment_defaults().')
      value = cfg[key]
      if name in PROB_KEYS:
        ok, valid = _is_number(value) and 0.0 <= value <= 1.0, 'a probability in [0, 1]'
      else:
        ok, valid = _is_number(value) and 0.0 < value <= 1.0, 'a fraction in (0, 1] (1 = off)'
      if not ok:
        raise ValueError(f'config.text_augment.{key}={value!r}; use {valid}.')
  window = cfg.get('shuffle_window')
  if not (isinstance(window, int) and not isinstance(window, bool) and window >= 1):
    raise ValueError(f'config.text_augment.shuffle_window={window!r}; use an integer >= 1 '
                     '(turn the shuffle off with config.text_augment.shuffle=0).')


def _off(p, off_value: float = 0.0) -> bool:
  """A Python number equal to the op's off value: nothing to compile."""
  return _is_number(p) and p == off_value


def _positions(ids: Array) -> tuple[Array, Array, Array]:
  pos = jnp.arange(ids.shape[-1], dtype=jnp.int32)
  valid = ids != PAD_ID
  return pos, valid, jnp.sum(valid, dtype=jnp.int32)


def _compact(ids: Array, keep: Array, order: Optional[Array] = None) -> Array:
  """The kept tokens, in `order` (default: their positions), closed up to the
  left and padded with 0. A sort carrying the ids, not a scatter or gather:
  one XLA sort per row, batched by vmap."""
  pos = jnp.arange(ids.shape[-1], dtype=jnp.int32)
  order = pos.astype(jnp.float32) if order is None else order
  sort_key = jnp.where(keep, order, jnp.inf)
  _, out = jax.lax.sort((sort_key, ids), num_keys=1, is_stable=True)
  return jnp.where(pos < jnp.sum(keep), out, PAD_ID)


# ----------------------------------------------------------------------------
# The ops: op(key, ids, ...) is _op(uniforms from key, ids, ...).

def _synonym_rows(table: Array, ids: Array) -> Array:
  """table[ids]: [..., K]. On a mesh with Explicit axes (jax.make_mesh's
  default) a gather needs its output sharding spelt out: the rows are
  sharded as the ids, the synonym axis replicated. Done once for the batch,
  outside the per-example vmap, where the ids' sharding is known."""
  table = jnp.asarray(table, jnp.int32)
  sharding = jax.typeof(ids).sharding
  mesh = getattr(sharding, 'mesh', None)
  if mesh is not None and any(t == AxisType.Explicit for t in getattr(mesh, 'axis_types', ())):
    return table.at[ids].get(
        out_sharding=NamedSharding(mesh, PartitionSpec(*sharding.spec, None)))
  return table[ids]


def _substitute_synonyms(u_gate: Array, u_pick: Array, ids: Array, p, row: Array) -> Array:
  """row: [L, K], the synonyms of each token (_synonym_rows)."""
  count = jnp.sum(row > 0, axis=-1)
  pick = jnp.minimum((u_pick * count).astype(jnp.int32), jnp.maximum(count - 1, 0))
  synonym = jnp.sum(jnp.where(jnp.arange(row.shape[-1]) == pick[:, None], row, 0), axis=-1)
  return jnp.where((ids != PAD_ID) & (count > 0) & (u_gate < p), synonym, ids)


def substitute_synonyms(key: Array, ids: Array, p, synonyms: Array) -> Array:
  """Each token with a synonym -> a uniform one of its synonyms, with prob p.

  synonyms: int32 [V, K], row t = token t's synonym ids, left-packed, 0 = none
  (text.synonyms.synonym_table).
  """
  if _off(p):
    return ids
  u = jax.random.uniform(key, (2, ids.shape[-1]))
  return _substitute_synonyms(u[0], u[1], ids, p, _synonym_rows(synonyms, ids))


def _replace_random(u_gate: Array, u_id: Array, ids: Array, p, vocab_size: int) -> Array:
  span = vocab_size - FIRST_TOKEN_ID
  new = FIRST_TOKEN_ID + jnp.minimum((u_id * span).astype(jnp.int32), span - 1)
  return jnp.where((ids != PAD_ID) & (u_gate < p), new, ids)


def replace_random(key: Array, ids: Array, p, vocab_size: int) -> Array:
  """Each token -> a uniform random id in [3, vocab_size), with prob p."""
  if _off(p):
    return ids
  u = jax.random.uniform(key, (2, ids.shape[-1]))
  return _replace_random(u[0], u[1], ids, p, vocab_size)


def _mask_tokens(u_gate: Array, ids: Array, p) -> Array:
  return jnp.where((ids != PAD_ID) & (u_gate < p), MASK_ID, ids)


def mask_tokens(key: Array, ids: Array, p) -> Array:
  """Each token -> MASK_ID, with prob p."""
  if _off(p):
    return ids
  return _mask_tokens(jax.random.uniform(key, ids.shape[-1:]), ids, p)


def _shuffle_local(u_gate: Array, u_noise: Array, ids: Array, p, window: int) -> Array:
  pos, valid, _ = _positions(ids)
  noise = jnp.where(u_gate < p, u_noise * (window + 1), 0.0)
  return _compact(ids, valid, pos.astype(jnp.float32) + noise)


def shuffle_local(key: Array, ids: Array, p, window: int) -> Array:
  """Noisy-sort shuffle: a token's key is its position plus, with prob p, a
  uniform noise in [0, window + 1); tokens move at most `window` places."""
  if _off(p):
    return ids
  u = jax.random.uniform(key, (2, ids.shape[-1]))
  return _shuffle_local(u[0], u[1], ids, p, window)


def _span_keep(u_fraction: Array, u_offset: Array, ids: Array, min_fraction) -> Array:
  pos, _, n = _positions(ids)
  fraction = min_fraction + (1.0 - min_fraction) * u_fraction
  k = jnp.clip(jnp.ceil(fraction * n).astype(jnp.int32), 1, n)
  start = jnp.minimum((u_offset * (n - k + 1)).astype(jnp.int32), n - k)
  return (pos >= start) & (pos < start + k)


def crop_span(key: Array, ids: Array, min_fraction) -> Array:
  """A contiguous span of ceil(f x length) tokens, f ~ U[min_fraction, 1],
  at a uniform offset, moved to the start. min_fraction = 1: the identity."""
  if _off(min_fraction, 1.0):
    return ids
  u = jax.random.uniform(key, (2,))
  return _compact(ids, _span_keep(u[0], u[1], ids, min_fraction))


def _deletion_keep(u_gate: Array, candidates: Array, p) -> Array:
  """candidates & (u >= p); when that is empty, the candidate with the
  largest u (uniform among them) stays."""
  keep = candidates & (u_gate >= p)
  rescue = jnp.argmax(jnp.where(candidates, u_gate, -1.0))
  last = ~jnp.any(keep) & (jnp.arange(u_gate.shape[-1]) == rescue) & candidates
  return keep | last


def delete_words(key: Array, ids: Array, p) -> Array:
  """Each token dropped with prob p, survivors closed up to the left; when
  every token would go, one drawn uniformly stays."""
  if _off(p):
    return ids
  u = jax.random.uniform(key, ids.shape[-1:])
  return _compact(ids, _deletion_keep(u, ids != PAD_ID, p))


# ----------------------------------------------------------------------------
# One view, batches.

def _params(cfg: ml_collections.ConfigDict, finetune: bool) -> dict:
  prefix = FINETUNE_PREFIX if finetune else ''
  out = {name: cfg[prefix + name] for name in OP_KEYS}
  out['shuffle_window'] = cfg.shuffle_window
  return out


def _check_tables(params: dict, synonyms: Optional[Array], vocab_size: int,
                  prefix: str) -> None:
  if not _off(params['synonym']):
    if synonyms is None:
      raise ValueError(f'config.text_augment.{prefix}synonym={params["synonym"]} needs a '
                       'synonym table: pass synonyms=text.synonyms.wordnet_synonym_table'
                       f'(vocab), or set config.text_augment.{prefix}synonym=0.')
    if synonyms.ndim != 2 or synonyms.shape[0] != vocab_size:
      raise ValueError(f'The synonym table has shape {tuple(synonyms.shape)}; it must be '
                       f'[vocab_size={vocab_size}, K]: build it from this tokenizer\'s vocab().')
  if not _off(params['replace']) and vocab_size <= FIRST_TOKEN_ID:
    raise ValueError(f'config.text_augment.{prefix}replace={params["replace"]} needs '
                     f'vocab_size > {FIRST_TOKEN_ID}; got vocab_size={vocab_size}.')


def _prepare(cfg: ml_collections.ConfigDict, synonyms: Optional[Array], vocab_size: int,
             finetune: bool) -> dict:
  """Validated op parameters (trace-time checks, before any vmap)."""
  validate(cfg)
  prefix = FINETUNE_PREFIX if finetune else ''
  params = _params(cfg, finetune)
  _check_tables(params, synonyms, vocab_size, prefix)
  return params


def _view(key: Array, ids: Array, params: dict, synonym_rows: Optional[Array],
          vocab_size: int) -> Array:
  """text_view's body; synonym_rows: [L, K] = synonyms[ids] when that op is on."""
  length = ids.shape[-1]
  # All uniforms in one draw: each separate random call is its own threefry
  # kernel (as augment._draws). Rows: synonym gate, synonym pick, replace
  # gate, replace id, mask gate, shuffle gate, shuffle noise, deletion gate,
  # span fraction and offset (the last row's first two entries).
  draws = jax.random.uniform(key, (9, max(length, 2)))
  u, span_u = draws[:, :length], draws[8, :2]
  if not _off(params['synonym']):
    ids = _substitute_synonyms(u[0], u[1], ids, params['synonym'], synonym_rows)
  if not _off(params['replace']):
    ids = _replace_random(u[2], u[3], ids, params['replace'], vocab_size)
  if not _off(params['mask']):
    ids = _mask_tokens(u[4], ids, params['mask'])
  if not _off(params['shuffle']):
    ids = _shuffle_local(u[5], u[6], ids, params['shuffle'], params['shuffle_window'])
  crop, delete = not _off(params['span_min_fraction'], 1.0), not _off(params['deletion'])
  if crop or delete:
    # Crop and deletion in one compaction: deletion draws among the span's tokens.
    keep = ids != PAD_ID
    if crop:
      keep = _span_keep(span_u[0], span_u[1], ids, params['span_min_fraction'])
    if delete:
      keep = _deletion_keep(u[7], keep, params['deletion'])
    ids = _compact(ids, keep)
  return ids


def _batch(keys: Array, ids: Array, params: dict, synonyms: Optional[Array],
           vocab_size: int, views_axis: bool) -> Array:
  """Views of ids [N, L]: keys [N] -> [N, L], or with views_axis keys [V, N]
  -> [V, N, L]."""
  ids = jnp.asarray(ids, jnp.int32)
  # The synonym rows [N, L, K] are gathered once for the batch (all views
  # substitute from the original ids); None when the op is off.
  rows = None if _off(params['synonym']) else _synonym_rows(synonyms, ids)
  one = jax.vmap(lambda k, x, r: _view(k, x, params, r, vocab_size))
  if views_axis:   # one vmap over views, not a loop: the view compiles once
    one = jax.vmap(one, in_axes=(0, None, None))
  return one(keys, ids, rows)


def text_view(key: Array, ids: Array, cfg: ml_collections.ConfigDict,
              synonyms: Optional[Array] = None, vocab_size: int = 0, *,
              finetune: bool = False) -> Array:
  """One example's view: ids int32 [L] -> [L], the ops of the module
  docstring in its order, with cfg's keys (the finetune_* keys when finetune).

  synonyms: int32 [vocab_size, K] (needed when the synonym op is on);
  vocab_size: the tokenizer's (needed when the replacement op is on).
  """
  params = _prepare(cfg, synonyms, vocab_size, finetune)
  ids = jnp.asarray(ids, jnp.int32)
  rows = None if _off(params['synonym']) else _synonym_rows(synonyms, ids)
  return _view(key, ids, params, rows, vocab_size)


def pretrain_views(seed: int | Array, step: int | Array, indices: Array, ids: Array,
                   cfg: ml_collections.ConfigDict, num_views: int = 2,
                   synonyms: Optional[Array] = None, vocab_size: int = 0) -> Array:
  """int32 ids [N, L] -> [num_views, N, L]; example i's view v is
  text_view(augment.example_keys(seed, step, indices, v)[i], ids[i], ...)."""
  params = _prepare(cfg, synonyms, vocab_size, finetune=False)
  keys = jax.vmap(lambda v: augment.example_keys(seed, step, indices, v))(
      jnp.arange(num_views))  # [V, N]
  return _batch(keys, ids, params, synonyms, vocab_size, views_axis=True)


def finetune_batch(seed: int | Array, step: int | Array, indices: Array, ids: Array,
                   cfg: ml_collections.ConfigDict, synonyms: Optional[Array] = None,
                   vocab_size: int = 0) -> Array:
  """int32 ids [N, L] -> [N, L]: the finetune_* ops, from view 0's keys."""
  params = _prepare(cfg, synonyms, vocab_size, finetune=True)
  return _batch(augment.example_keys(seed, step, indices, 0), ids, params, synonyms,
                vocab_size, views_axis=False)
