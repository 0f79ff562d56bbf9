"""A recurrent sentence encoder (GRU or LSTM), registered as `config.model.name = 'rnn'`.

Input: token ids int32 [N, L], 0 = padding (always at the end of a row), 1 = UNK,
2 = MASK, real tokens >= 3; a row's length is its number of nonzero ids. Output:
h [N, hidden_dim * (2 if bidirectional else 1)], pooled over each row's valid steps
only, so appending padding never changes h.

Cells: the GRU of Cho et al. 2014 ("Learning phrase representations using RNN
encoder-decoder", in the PyTorch / flax form where the reset gate multiplies
W_hn h + b_hn) and the LSTM of Hochreiter & Schmidhuber 1997 (gates i, f, g, o
without peepholes, as flax's OptimizedLSTMCell). Dropout (`dropout`, train mode
only, the 'dropout' rng) applies to the embeddings and between layers; two passes
of the same sentence then differ only by dropout, which is SimCSE's positive pair
(Gao et al. 2021).

Parameters (float32; compute in config.model.dtype), under the encoder's scope:
  embed/embedding                        [vocab_size, embed_dim]
  layer{k}/forward/cell/...              k = 1..num_layers; flax's own cell layout:
  layer{k}/backward/cell/...             (backward only when bidirectional)
    gru:  ir, iz, in {kernel [In, H], bias [H]}; hr, hz {kernel [H, H]};
          hn {kernel [H, H], bias [H]}
    lstm: ii, if, ig, io {kernel [In, H]}; hi, hf, hg, ho {kernel [H, H], bias [H]}
  In = embed_dim for layer 1, H * directions above it.

Two implementations of the same parameters and the same h (`impl`, a speed choice
only; checkpoints move between them):
  'flax'   the obvious way: nn.RNN over nn.GRUCell / nn.OptimizedLSTMCell with
           seq_lengths, nn.Bidirectional for two directions; every step does its
           input and hidden matmuls.
  'fused'  reads the same parameters as [In, G*H] / [H, G*H] gate-fused matrices;
           the input projection of all steps and both directions is one matmul
           before the scan, and the scan body only does h @ W_hh (both directions
           in one batched matmul). Padded steps keep the state; the backward
           direction reads each row's valid tokens in reverse by index arithmetic,
           so padding stays at the end.
`unroll` goes to the scan of either. On CPU 'flax' is the faster (the hoisted
projection's [L, N, D*G*H] tensor costs more memory traffic than the per-step
input matmuls save; benchmarks/NOTES.md), so it is the default; 'fused' is the
layout accelerators usually favour.

Freeze groups (config.fine_tune_after_block): 0 = the embedding (and its dropout),
k = recurrent layer k (and the dropout after it). FREEZE_ALL (99) freezes the
encoder and the projection head; values from num_layers up to 98 freeze the whole
encoder and train the kept projection layers.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from contrastive_jax.models import encoders

NAME = 'rnn'
CELLS = ('gru', 'lstm')
POOLINGS = ('mean', 'max', 'last')
IMPLS = ('fused', 'flax')
NUM_GATES = {'gru': 3, 'lstm': 4}
GATE_NAMES = {'gru': ('r', 'z', 'n'), 'lstm': ('i', 'f', 'g', 'o')}
# classifier.FREEZE_ALL (not imported: classifier imports this package).
FREEZE_ALL = 99
RESERVED_IDS = 3  # 0 = padding, 1 = UNK, 2 = MASK
ARCH_KEYS = ('cell', 'vocab_size', 'embed_dim', 'hidden_dim', 'num_layers', 'bidirectional',
             'pooling')


def rnn_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      cell='gru',                  # 'gru' (Cho et al. 2014) | 'lstm' (Hochreiter & Schmidhuber 1997)
      vocab_size=0,                # 0 = the run's tokenizer fills it in at set-up
      embed_dim=128,
      hidden_dim=256,              # per direction
      num_layers=1,
      bidirectional=True,          # h width = hidden_dim * 2
      dropout=0.1,                 # embeddings and between layers, train mode only (SimCSE views)
      pooling='mean',              # over valid steps: 'mean' | 'max' | 'last'
      impl='flax',                 # speed only: 'flax' | 'fused' (same parameters, same h;
                                   # 'flax' is the faster on CPU, benchmarks/rnn_encoder.py)
      unroll=1,                    # speed only: jax.lax.scan's unroll
  ))


def _validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming config.model.rnn.<key> and its valid values."""
  for key, valid in (('cell', CELLS), ('pooling', POOLINGS), ('impl', IMPLS),
                     ('bidirectional', (True, False))):
    if cfg[key] not in valid or (key == 'bidirectional' and not isinstance(cfg[key], bool)):
      raise ValueError(f'config.model.{NAME}.{key}={cfg[key]!r} is not valid; choose one of '
                       f'{valid}.')
  for key, low, high in (('vocab_size', 0, None), ('embed_dim', 1, None), ('hidden_dim', 1, None),
                         ('num_layers', 1, FREEZE_ALL - 1), ('unroll', 1, None)):
    value = cfg[key]
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low or (
        high is not None and value > high):
      bound = f'an integer >= {low}' + (f' and <= {high}' if high is not None else '')
      raise ValueError(f'config.model.{NAME}.{key}={value!r} is not valid; choose {bound}'
                       + (' (0 = filled in from the tokenizer)' if key == 'vocab_size' else '')
                       + '.')
  if not 0.0 <= float(cfg.dropout) < 1.0:
    raise ValueError(f'config.model.{NAME}.dropout={cfg.dropout!r} is not valid; choose a '
                     'rate in [0, 1).')


# --- Parameters: flax's cell layout, declared so the fused path can read it ------------

class _Dense(nn.Module):
  """The kernel (and bias) nn.Dense would create, returned instead of applied."""
  features: int
  use_bias: bool
  kernel_init: Any

  @nn.compact
  def __call__(self, in_features: int) -> tuple[jax.Array, Optional[jax.Array]]:
    kernel = self.param('kernel', self.kernel_init, (in_features, self.features), jnp.float32)
    bias = (self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
            if self.use_bias else None)
    return kernel, bias


class _CellParams(nn.Module):
  """The parameters of nn.GRUCell / nn.OptimizedLSTMCell (same names, shapes and
  initialisers), gate-fused: (W_ih [In, G*H], input-side bias [G*H],
  W_hh [H, G*H], b_hn [H] for the GRU else None)."""
  cell: str
  features: int

  @nn.compact
  def __call__(self, in_features: int):
    h = self.features
    lecun, orth = nn.initializers.lecun_normal(), nn.initializers.orthogonal()
    gates = GATE_NAMES[self.cell]
    if self.cell == 'gru':
      inp = [_Dense(h, True, lecun, name=f'i{g}')(in_features) for g in gates]
      hid = [_Dense(h, g == 'n', orth, name=f'h{g}')(h) for g in gates]
      b_x = jnp.concatenate([b for _, b in inp])
      return (jnp.concatenate([k for k, _ in inp], -1), b_x,
              jnp.concatenate([k for k, _ in hid], -1), hid[2][1])
    inp = [_Dense(h, False, lecun, name=f'i{g}')(in_features) for g in gates]
    hid = [_Dense(h, True, orth, name=f'h{g}')(h) for g in gates]
    # The LSTM's hidden-side biases add straight to the gates: fold them into the
    # input projection.
    return (jnp.concatenate([k for k, _ in inp], -1), jnp.concatenate([b for _, b in hid]),
            jnp.concatenate([k for k, _ in hid], -1), None)


class _Direction(nn.Module):
  """Scope 'forward' / 'backward' holding 'cell', as nn.RNN(cell) lays it out."""
  cell: str
  features: int

  @nn.compact
  def __call__(self, in_features: int):
    return _CellParams(self.cell, self.features, name='cell')(in_features)


# --- The fused recurrence ----------------------------------------------------------------

def reverse_within_length(x: jax.Array, lengths: jax.Array) -> jax.Array:
  """x [N, L, ...] with each row's first lengths[n] steps reversed, padding kept
  at the end (its own inverse on the valid steps)."""
  steps = x.shape[1]
  idx = (lengths[:, None] - 1 - jnp.arange(steps)[None, :]) % steps
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def fused_recurrence(x: jax.Array, lengths: jax.Array, cell: str,
                     params: Sequence[tuple[jax.Array, jax.Array, jax.Array, Any]],
                     unroll: int = 1, dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
  """One recurrent layer, 1 or 2 directions: x [N, L, In] -> (outputs
  [N, L, D*H], last [N, D*H]); `params` is one (W_ih, b_x, W_hh, b_hn) per
  direction, forward first.

  All steps' input projections (of every direction) are one matmul; the scan
  body does one batched h @ W_hh for both directions and the gate arithmetic in
  float32. A step at or past a row's length keeps the state, so `last` is the
  forward state at the last valid token and the backward state at position 0.
  """
  n, steps, _ = x.shape
  dirs = len(params)
  hidden = params[0][2].shape[0]
  gh_width = NUM_GATES[cell] * hidden
  w_ih = jnp.concatenate([p[0] for p in params], -1).astype(dtype)
  b_x = jnp.concatenate([p[1] for p in params], -1)
  proj = jnp.dot(x.astype(dtype), w_ih, preferred_element_type=jnp.float32) + b_x
  proj = proj.reshape(n, steps, dirs, gh_width)
  if dirs == 2:
    proj = jnp.stack([proj[:, :, 0], reverse_within_length(proj[:, :, 1], lengths)], axis=2)
  xs = jnp.transpose(proj, (1, 2, 0, 3))                               # [L, D, N, G*H]
  valid = jnp.arange(steps)[:, None] < lengths[None, :]                 # [L, N]
  w_hh = jnp.stack([p[2] for p in params]).astype(dtype)               # [D, H, G*H]
  b_hn = jnp.stack([p[3] for p in params])[:, None] if cell == 'gru' else None

  def step(carry, inputs):
    x_t, valid_t = inputs
    h = carry if cell == 'gru' else carry[1]
    gh = jnp.einsum('dnh,dhg->dng', h.astype(dtype), w_hh,
                    preferred_element_type=jnp.float32)
    keep = valid_t[None, :, None]
    if cell == 'gru':
      xr, xz, xn = jnp.split(x_t, 3, axis=-1)
      hr, hz, hn = jnp.split(gh, 3, axis=-1)
      r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
      cand = jnp.tanh(xn + r * (hn + b_hn))
      h_new = jnp.where(keep, (1.0 - z) * cand + z * h, h)
      return h_new, h_new
    c = carry[0]
    gi, gf, gg, go = jnp.split(x_t + gh, 4, axis=-1)
    c_new = jax.nn.sigmoid(gf) * c + jax.nn.sigmoid(gi) * jnp.tanh(gg)
    h_new = jax.nn.sigmoid(go) * jnp.tanh(c_new)
    c_new, h_new = jnp.where(keep, c_new, c), jnp.where(keep, h_new, h)
    return (c_new, h_new), h_new

  zeros = jnp.zeros((dirs, n, hidden), jnp.float32)
  carry0 = zeros if cell == 'gru' else (zeros, zeros)
  final, ys = jax.lax.scan(step, carry0, (xs, valid), unroll=unroll)  # ys [L, D, N, H]
  ys = jnp.transpose(ys, (2, 0, 1, 3))                                   # [N, L, D, H]
  outs = [ys[:, :, 0]]
  if dirs == 2:
    outs.append(reverse_within_length(ys[:, :, 1], lengths))
  last = final if cell == 'gru' else final[1]                           # [D, N, H]
  return (jnp.concatenate(outs, -1).astype(dtype),
          jnp.transpose(last, (1, 0, 2)).reshape(n, dirs * hidden))


# --- Modules ---------------------------------------------------------------------------------

class RecurrentLayer(nn.Module):
  """One GRU / LSTM layer: (x [N, L, In], lengths [N]) -> (outputs [N, L, D*H],
  last [N, D*H]); outputs at padded steps are unspecified (callers mask them)."""
  cell: str
  hidden_dim: int
  bidirectional: bool
  impl: str = 'fused'
  unroll: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    names = ('forward', 'backward') if self.bidirectional else ('forward',)
    if self.impl == 'fused':
      params = [_Direction(self.cell, self.hidden_dim, name=d)(x.shape[-1]) for d in names]
      return fused_recurrence(x, lengths, self.cell, params, self.unroll, self.dtype)
    return self._flax(x, lengths, names)

  def _flax(self, x, lengths, names):
    def rnn(name):
      cell_cls = nn.GRUCell if self.cell == 'gru' else nn.OptimizedLSTMCell
      return nn.RNN(cell_cls(self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32,
                             parent=None), unroll=self.unroll, name=name)
    x = x.astype(self.dtype)
    if self.bidirectional:
      carries, y = nn.Bidirectional(rnn(names[0]), rnn(names[1]), return_carry=True)(
          x, seq_lengths=lengths)
    else:
      carry, y = rnn(names[0])(x, seq_lengths=lengths, return_carry=True)
      carries = (carry,)
    last = [c if self.cell == 'gru' else c[1] for c in carries]
    # flax picks step lengths - 1; an empty row keeps the zero state, as 'fused' does.
    last = jnp.where(lengths[:, None] > 0, jnp.concatenate(last, -1), 0.0)
    return y.astype(self.dtype), last.astype(jnp.float32)


class RNNEncoder(nn.Module):
  """Token ids [N, L] -> h [N, D*hidden_dim] (see the module docstring)."""
  vocab_size: int
  embed_dim: int = 128
  hidden_dim: int = 256
  num_layers: int = 1
  cell: str = 'gru'
  bidirectional: bool = True
  dropout: float = 0.0
  pooling: str = 'mean'
  impl: str = 'fused'
  unroll: int = 1
  dtype: Any = jnp.float32

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    outputs, mask, last = self.sequence(x, train)
    return pool(outputs, mask, last, self.pooling).astype(self.dtype)

  @nn.compact
  def sequence(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The last layer before pooling: (outputs [N, L, D*H] (unspecified at padded
    steps), mask [N, L] of valid steps, last [N, D*H] float32)."""
    ids = x.astype(jnp.int32)
    mask = ids != 0
    lengths = mask.sum(-1).astype(jnp.int32)
    y = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype, param_dtype=jnp.float32,
                 name='embed')(ids)
    y = nn.Dropout(self.dropout, name='embed_dropout')(y, deterministic=not train)
    last = None
    for k in range(1, self.num_layers + 1):
      if k > 1:
        y = nn.Dropout(self.dropout, name=f'dropout{k - 1}')(y, deterministic=not train)
      y, last = RecurrentLayer(self.cell, self.hidden_dim, self.bidirectional, self.impl,
                               self.unroll, self.dtype, name=f'layer{k}')(y, lengths)
    return y, mask, last


def pool(outputs: jax.Array, mask: jax.Array, last: jax.Array, pooling: str) -> jax.Array:
  """[N, L, D] outputs -> [N, D] float32 over each row's valid steps (an empty row
  gives zeros)."""
  outputs = outputs.astype(jnp.float32)
  valid = mask[..., None]
  count = mask.sum(-1, keepdims=True)
  if pooling == 'mean':
    return jnp.where(valid, outputs, 0.0).sum(1) / jnp.maximum(count, 1)
  if pooling == 'max':
    return jnp.where(count > 0, jnp.where(valid, outputs, -jnp.inf).max(1), 0.0)
  if pooling == 'last':
    return last.astype(jnp.float32)
  raise ValueError(f'config.model.{NAME}.pooling={pooling!r} is not valid; choose one of '
                   f'{POOLINGS}.')


# --- Pretrained word vectors -------------------------------------------------------------------

def embedding_from_vectors(params: Any, vocab: Sequence[str], words: Sequence[str],
                           vectors: np.ndarray) -> tuple[Any, float]:
  """Copies word vectors into the embedding rows of the tokens they cover.

  `params`: a ContrastiveModel's / Classifier's params (the table at
  ['encoder']['embed']['embedding']) or the RNN encoder's own (['embed']
  ['embedding']). `vocab[i]` is token id i's string; `words[j]` has the vector
  `vectors[j]`. A token matches a word when both are equal after lowercasing
  (the first such word wins); the reserved ids 0 (padding), 1 (UNK) and
  2 (MASK) are never overwritten, and unmatched rows keep their values.
  Returns (new params, coverage = matched / real tokens); `params` is unchanged.
  """
  path = ('encoder', 'embed', 'embedding') if 'encoder' in params else ('embed', 'embedding')
  try:
    table = params[path[0]][path[1]] if len(path) == 2 else params[path[0]][path[1]][path[2]]
  except (KeyError, TypeError) as e:
    raise ValueError("No RNN embedding table in params: expected ['encoder']['embed']"
                     "['embedding'] (a model's params) or ['embed']['embedding'] (the "
                     "encoder's); pass variables['params'] of a config.model.name='rnn' "
                     'model.') from e
  vectors = np.asarray(vectors)
  if vectors.ndim != 2 or vectors.shape[0] != len(words):
    raise ValueError(f'vectors has shape {vectors.shape}; it needs one row per word '
                     f'({len(words)} words).')
  rows, dim = table.shape
  if vectors.shape[1] != dim:
    raise ValueError(f'The word vectors are {vectors.shape[1]}-dimensional but the embedding '
                     f'is {dim}: set config.model.{NAME}.embed_dim={vectors.shape[1]}.')
  if len(vocab) != rows:
    raise ValueError(f'The vocabulary has {len(vocab)} tokens but the embedding has {rows} '
                     f'rows: config.model.{NAME}.vocab_size must be the tokenizer\'s size.')
  index: dict[str, int] = {}
  for j, word in enumerate(words):
    index.setdefault(word.lower(), j)
  token_ids, word_ids = [], []
  for i in range(RESERVED_IDS, rows):
    j = index.get(vocab[i].lower())
    if j is not None:
      token_ids.append(i)
      word_ids.append(j)
  new_table = np.array(table)
  new_table[token_ids] = vectors[word_ids].astype(new_table.dtype)
  coverage = len(token_ids) / max(rows - RESERVED_IDS, 1)
  new_table = jnp.asarray(new_table)
  if len(path) == 2:
    new = dict(params, embed=dict(params['embed'], embedding=new_table))
  else:
    enc = params['encoder']
    new = dict(params, encoder=dict(enc, embed=dict(enc['embed'], embedding=new_table)))
  return new, coverage


# --- Registration ----------------------------------------------------------------------------------

def _build(model_cfg: ml_collections.ConfigDict, conv_cls: Any) -> RNNEncoder:
  del conv_cls  # no convolutions
  cfg = encoders.section(model_cfg)
  _validate(cfg)
  if not cfg.vocab_size:
    raise ValueError(f'config.model.{NAME}.vocab_size=0: the vocabulary size is filled in '
                     "from the run's tokenizer at set-up; build the model after set-up, or set "
                     f'--config.model.{NAME}.vocab_size to the tokenizer\'s vocabulary size.')
  return RNNEncoder(
      vocab_size=int(cfg.vocab_size), embed_dim=int(cfg.embed_dim),
      hidden_dim=int(cfg.hidden_dim), num_layers=int(cfg.num_layers), cell=cfg.cell,
      bidirectional=bool(cfg.bidirectional), dropout=float(cfg.dropout), pooling=cfg.pooling,
      impl=cfg.impl, unroll=int(cfg.unroll), dtype=encoders.compute_dtype(model_cfg))


_GROUP = re.compile(r'(?:layer|dropout)(\d+)$')


def _freeze_level(name: str) -> int | None:
  """0 for the embedding (and its dropout), k for layer k (and the dropout after it)."""
  if name in ('embed', 'embed_dropout'):
    return 0
  match = _GROUP.match(name)
  return int(match.group(1)) if match else None


def _width(model_cfg: ml_collections.ConfigDict) -> int:
  cfg = encoders.section(model_cfg)
  return int(cfg.hidden_dim) * (2 if cfg.bidirectional else 1)


encoders.ENCODERS.register(encoders.EncoderSpec(
    name=NAME, defaults=rnn_defaults, build=_build, freeze_level=_freeze_level,
    freeze_all=FREEZE_ALL, arch_keys=ARCH_KEYS, validate=_validate, width=_width))
