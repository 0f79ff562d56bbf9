"""The 'rnn' encoder plug-in (contrastive_jax/models/rnn.py): padding never changes
h, the fused and flax implementations are one model, the GRU / LSTM equations
match a float64 NumPy reference, dropout is the train-mode-only SimCSE view, and
the registry contract (build, freezing, width, validation) holds.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from contrastive_jax import models
from contrastive_jax.models import classifier as classifier_lib
from contrastive_jax.models import rnn

VOCAB, EMBED, HIDDEN = 40, 8, 6
# Rows of lengths 3, 1, 6 (full), 4; padding (0) always at the end.
IDS = np.array([[5, 9, 3, 0, 0, 0],
                [7, 0, 0, 0, 0, 0],
                [4, 12, 30, 8, 8, 39],
                [1, 2, 17, 21, 0, 0]], np.int32)


def _model_cfg(**rnn_keys) -> ml_collections.ConfigDict:
  cfg = models.model_defaults()
  cfg.name = 'rnn'
  cfg.rnn.update(dict(vocab_size=VOCAB, embed_dim=EMBED, hidden_dim=HIDDEN, dropout=0.0))
  cfg.rnn.update(rnn_keys)
  cfg.proj_dim = 5
  return cfg


def _encoder(**rnn_keys):
  return models.build_encoder(_model_cfg(**rnn_keys), conv_cls=None)


def _init(encoder, seed=0):
  return jax.jit(lambda key: encoder.init(key, IDS, train=False))(jax.random.PRNGKey(seed))


@functools.lru_cache(maxsize=None)
def _params(cell, bidirectional, num_layers, seed):
  """Random values (not an initialisation) in the encoder's parameter tree, so
  every bias counts; one tree per setting, shared by the tests."""
  shapes = jax.eval_shape(lambda: _encoder(cell=cell, bidirectional=bidirectional,
                                           num_layers=num_layers).init(
                                               jax.random.PRNGKey(0), IDS, train=False))
  leaves, tree = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [0.5 * jax.random.normal(k, a.shape)
                                   for k, a in zip(keys, leaves)])


@functools.lru_cache(maxsize=None)
def _h_fn(settings):
  encoder = _encoder(**dict(settings))

  @jax.jit
  def h_all(variables, ids):
    outputs, mask, last = encoder.apply(variables, ids, False, method=rnn.RNNEncoder.sequence)
    return {p: rnn.pool(outputs, mask, last, p) for p in rnn.POOLINGS}
  return h_all


def _h(variables, ids, **rnn_keys):
  """{pooling: h} for the encoder of these keys (one jitted function per setting)."""
  return _h_fn(tuple(sorted(_model_cfg(**rnn_keys).rnn.items())))(variables, ids)


CELL_DIRS = [(cell, bi) for cell in rnn.CELLS for bi in (True, False)]


# --- Padding --------------------------------------------------------------------------------

@pytest.mark.parametrize('cell,bidirectional', CELL_DIRS)
def test_padding_never_changes_h(cell, bidirectional):
  keys = dict(cell=cell, bidirectional=bidirectional, num_layers=2)
  variables = _params(cell, bidirectional, 2, seed=1)
  # Longer rows: appended padding, and the padding id's embedding (what sits at
  # padded steps) set to something else; row 2 had no padding before.
  padded = np.pad(IDS, ((0, 0), (0, 3)))
  moved = jax.tree.map(lambda a: a, variables)
  moved['params']['embed']['embedding'] = moved['params']['embed']['embedding'].at[0].set(9.0)
  # The flax impl's padding handling is nn.RNN's own: one setting checks it.
  impls = rnn.IMPLS if (cell, bidirectional) == ('gru', True) else ('fused',)
  for impl in impls:
    h = _h(variables, IDS, impl=impl, **keys)
    for name, h_other in (('padded', _h(variables, padded, impl=impl, **keys)),
                          ('padding embedding', _h(moved, IDS, impl=impl, **keys)),
                          ('both', _h(moved, padded, impl=impl, **keys))):
      for pooling in rnn.POOLINGS:
        assert h[pooling].shape == (4, HIDDEN * (2 if bidirectional else 1))
        np.testing.assert_allclose(h_other[pooling], h[pooling], atol=1e-6,
                                   err_msg=f'{impl} {pooling} {name}')


def test_an_empty_row_gives_finite_zeros():
  variables = _params('gru', True, 1, seed=2)
  for impl in rnn.IMPLS:
    for pooling, h in _h(variables, np.zeros((2, 4), np.int32), impl=impl).items():
      np.testing.assert_array_equal(h, 0.0, err_msg=f'{impl} {pooling}')


# --- fused == flax --------------------------------------------------------------------------

@pytest.mark.parametrize('cell,bidirectional', CELL_DIRS)
def test_fused_and_flax_are_one_model(cell, bidirectional):
  keys = dict(cell=cell, bidirectional=bidirectional, num_layers=2)
  fused, flax_impl = _encoder(impl='fused', **keys), _encoder(impl='flax', **keys)
  # Same parameter tree (names, shapes, dtypes) and, from the same seed, the same values.
  shapes = [jax.eval_shape(lambda e=e: e.init(jax.random.PRNGKey(0), IDS, train=False))
            for e in (fused, flax_impl)]
  assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])
  assert jax.tree.leaves(shapes[0]) == jax.tree.leaves(shapes[1])
  if (cell, bidirectional) == ('gru', True):
    for a, b in zip(jax.tree.leaves(_init(fused)), jax.tree.leaves(_init(flax_impl))):
      np.testing.assert_array_equal(a, b)
  variables = _params(cell, bidirectional, 2, seed=1)
  h_fused = _h(variables, IDS, impl='fused', **keys)
  h_flax = _h(variables, IDS, impl='flax', **keys)
  for pooling in rnn.POOLINGS:
    np.testing.assert_allclose(h_fused[pooling], h_flax[pooling], atol=1e-5, err_msg=pooling)
  if (cell, bidirectional) == ('gru', True):  # gradients too (one layer keeps it short)

    def loss(params, enc):
      return jnp.sum(enc.apply({'params': params}, IDS, train=False) ** 2)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    params = _params(cell, bidirectional, 1, seed=1)['params']
    for a, b in zip(jax.tree.leaves(grad(params, fused.clone(num_layers=1))),
                    jax.tree.leaves(grad(params, flax_impl.clone(num_layers=1)))):
      np.testing.assert_allclose(a, b, atol=1e-5)


def _expected_tree(cell, bidirectional, num_layers):
  h, gates = HIDDEN, rnn.GATE_NAMES[cell]
  tree = {'embed': {'embedding': (VOCAB, EMBED)}}
  for k in range(1, num_layers + 1):
    width = EMBED if k == 1 else h * (2 if bidirectional else 1)
    if cell == 'gru':
      c = {f'i{g}': {'kernel': (width, h), 'bias': (h,)} for g in gates}
      c.update({'hr': {'kernel': (h, h)}, 'hz': {'kernel': (h, h)},
                'hn': {'kernel': (h, h), 'bias': (h,)}})
    else:
      c = {f'i{g}': {'kernel': (width, h)} for g in gates}
      c.update({f'h{g}': {'kernel': (h, h), 'bias': (h,)} for g in gates})
    dirs = ('forward', 'backward') if bidirectional else ('forward',)
    tree[f'layer{k}'] = {d: {'cell': c} for d in dirs}
  return tree


@pytest.mark.parametrize('cell,bidirectional', CELL_DIRS)
def test_parameter_tree(cell, bidirectional):
  shapes = jax.eval_shape(lambda: _init(_encoder(cell=cell, bidirectional=bidirectional,
                                                 num_layers=2)))
  assert jax.tree.map(lambda a: a.shape, shapes['params']) == _expected_tree(
      cell, bidirectional, 2)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(shapes))


# --- A float64 NumPy reference ----------------------------------------------------------------

def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _reference_direction(cell, p, x):
  """One direction over one row's valid steps x [T, In], float64: the GRU of
  Cho et al. 2014 as PyTorch / flax write it, or the LSTM (i, f, g, o)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  h = np.zeros(HIDDEN)
  c = np.zeros(HIDDEN)
  outs = []
  for x_t in x:
    if cell == 'gru':
      r = _sigmoid(x_t @ p['ir']['kernel'] + p['ir']['bias'] + h @ p['hr']['kernel'])
      z = _sigmoid(x_t @ p['iz']['kernel'] + p['iz']['bias'] + h @ p['hz']['kernel'])
      n = np.tanh(x_t @ p['in']['kernel'] + p['in']['bias']
                  + r * (h @ p['hn']['kernel'] + p['hn']['bias']))
      h = (1 - z) * n + z * h
    else:
      gate = {g: x_t @ p[f'i{g}']['kernel'] + h @ p[f'h{g}']['kernel'] + p[f'h{g}']['bias']
              for g in 'ifgo'}
      c = _sigmoid(gate['f']) * c + _sigmoid(gate['i']) * np.tanh(gate['g'])
      h = _sigmoid(gate['o']) * np.tanh(c)
    outs.append(h)
  return np.stack(outs)


@pytest.mark.parametrize('cell', rnn.CELLS)
def test_one_layer_matches_a_float64_numpy_reference(cell):
  keys = dict(cell=cell, bidirectional=True, num_layers=1)
  variables = _params(cell, True, 1, seed=2)
  params = variables['params']
  table = np.asarray(params['embed']['embedding'], np.float64)
  expected = {p: [] for p in rnn.POOLINGS}
  for row in IDS:
    x = table[row[row != 0]]
    fwd = _reference_direction(cell, params['layer1']['forward']['cell'], x)
    bwd = _reference_direction(cell, params['layer1']['backward']['cell'], x[::-1])[::-1]
    out = np.concatenate([fwd, bwd], -1)
    expected['mean'].append(out.mean(0))
    expected['max'].append(out.max(0))
    expected['last'].append(np.concatenate([fwd[-1], bwd[0]]))
  for impl, unroll in (('fused', 1), ('fused', 3), ('flax', 1)):
    h = _h(variables, IDS, impl=impl, unroll=unroll, **keys)
    for pooling in rnn.POOLINGS:
      np.testing.assert_allclose(h[pooling], np.stack(expected[pooling]), atol=1e-5,
                                 err_msg=f'{impl} unroll={unroll} {pooling}')


# --- Dropout (SimCSE views) -------------------------------------------------------------------

def test_dropout_only_in_train_mode_and_by_key():
  encoder = _encoder(dropout=0.3, num_layers=2)
  variables = _params('gru', True, 2, seed=1)
  ids = np.concatenate([IDS, IDS[:1]])          # rows 0 and 4: one sentence twice
  h_eval = jax.jit(lambda v: encoder.apply(v, ids, train=False))(variables)  # no rng needed
  np.testing.assert_array_equal(h_eval[0], h_eval[4])
  train = jax.jit(lambda v, key: encoder.apply(v, ids, train=True, rngs={'dropout': key}))
  key_a, key_b = jax.random.PRNGKey(10), jax.random.PRNGKey(11)
  h_a = train(variables, key_a)
  np.testing.assert_array_equal(h_a, train(variables, key_a))
  h_b = train(variables, key_b)
  assert np.abs(h_a - h_b).max() > 1e-3
  assert np.abs(h_a - h_eval).max() > 1e-3
  # Two copies of one sentence in a batch are two views: they differ by dropout alone.
  assert np.abs(h_a[0] - h_a[4]).max() > 1e-3


# --- Registry contract ----------------------------------------------------------------------

def test_build_refuses_vocab_size_zero():
  with pytest.raises(ValueError, match=r'config\.model\.rnn\.vocab_size=0.*tokenizer'):
    _encoder(vocab_size=0)


@pytest.mark.parametrize('key,value,match', [
    ('cell', 'lstmx', r"config\.model\.rnn\.cell='lstmx'.*'gru', 'lstm'"),
    ('pooling', 'first', r"config\.model\.rnn\.pooling='first'.*'mean', 'max', 'last'"),
    ('impl', 'cudnn', r"config\.model\.rnn\.impl='cudnn'.*'fused', 'flax'"),
    ('num_layers', 0, r'config\.model\.rnn\.num_layers=0.*>= 1'),
    ('hidden_dim', -4, r'config\.model\.rnn\.hidden_dim=-4'),
    ('dropout', 1.0, r'config\.model\.rnn\.dropout=1\.0.*\[0, 1\)'),
    ('unroll', 0, r'config\.model\.rnn\.unroll=0'),
])
def test_validate_names_the_key_and_its_choices(key, value, match):
  cfg = _model_cfg()
  cfg.rnn[key] = value
  with pytest.raises(ValueError, match=match):
    models.validate(cfg)


def test_defaults_width_and_arch_keys():
  cfg = models.model_defaults()
  assert cfg.rnn.to_dict() == rnn.rnn_defaults().to_dict()
  assert cfg.rnn.vocab_size == 0 and cfg.rnn.cell == 'gru' and cfg.rnn.impl == 'flax'
  spec = models.ENCODERS.get('rnn')
  assert 'impl' not in spec.arch_keys and 'unroll' not in spec.arch_keys
  assert 'dropout' not in spec.arch_keys and 'vocab_size' in spec.arch_keys
  assert models.encoder_width(_model_cfg(bidirectional=True)) == 2 * HIDDEN
  assert models.encoder_width(_model_cfg(bidirectional=False)) == HIDDEN
  assert spec.freeze_all == classifier_lib.FREEZE_ALL


def test_build_model_with_projection_head_and_bfloat16():
  cfg = _model_cfg(dropout=0.1)
  variables = _init(models.build_model(cfg, num_classes=3))
  assert variables['params']['encoder']['embed']['embedding'].shape == (VOCAB, EMBED)
  for dtype in ('float32', 'bfloat16'):
    cfg.dtype = dtype
    model = models.build_model(cfg, num_classes=3)
    out, _ = jax.jit(lambda v, m=model: m.apply(
        v, IDS, train=True, mutable=['batch_stats'],
        rngs={'dropout': jax.random.PRNGKey(1)}))(variables)
    assert out['h'].shape == (4, 2 * HIDDEN) and out['z'].shape == (4, 5)
    assert out['probe_logits'].shape == (4, 3)
    assert all(bool(jnp.isfinite(v).all()) for v in (out['h'], out['z']))


# --- Freezing ----------------------------------------------------------------------------------

def test_freeze_levels():
  spec = models.ENCODERS.get('rnn')
  assert [spec.freeze_level(n) for n in ('embed', 'embed_dropout', 'layer1', 'dropout1',
                                         'layer2', 'layer12', 'other')] == [0, 0, 1, 1, 2, 12,
                                                                            None]


@pytest.mark.parametrize('after,trained', [
    (0, {'layer1', 'layer2', 'head', 'classifier'}),
    (1, {'layer2', 'head', 'classifier'}),
    (2, {'head', 'classifier'}),
    (classifier_lib.FREEZE_ALL, {'classifier'}),
])
def test_fine_tune_after_block_freezes_by_layer(after, trained):
  cfg = _model_cfg(num_layers=2, bidirectional=False)
  model = classifier_lib.build_classifier(cfg, 3, ft_proj_selector=1, zero_init=False,
                                          fine_tune_after_block=after)
  variables = _init(model)

  @jax.jit
  @jax.grad
  def grad(params):
    logits, _ = model.apply(dict(variables, params=params), IDS, train=True,
                            mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(4) % 3).mean()

  grads = grad(variables['params'])
  labels = classifier_lib.frozen_labels(variables['params'], after, cfg)
  moved = set()
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    names = classifier_lib.param_path_names(path)
    group = names[1] if names[0] == 'encoder' else names[0]
    if np.abs(np.asarray(g)).max() > 0:
      moved.add(group)
  assert moved == trained
  flat_labels = {classifier_lib.param_path_names(p)[:2]: v for p, v in
                 jax.tree_util.tree_flatten_with_path(labels)[0]}
  for names, label in flat_labels.items():
    group = names[1] if names[0] == 'encoder' else names[0]
    assert (label == 'trained') == (group in trained), names


# --- Pretrained word vectors -----------------------------------------------------------------

def test_embedding_from_vectors_copies_exactly_the_matching_rows():
  enc_params = _params('gru', True, 1, seed=0)['params']
  variables = {'params': {'encoder': enc_params, 'head': {'dense1': {'kernel': np.ones(3)}}}}
  vocab = ['<pad>', '<unk>', '<mask>'] + [f'w{i}' for i in range(3, VOCAB)]
  vocab[5] = 'Dog'
  words = ['dog', 'w7', 'W9', 'cat', '<unk>', 'w7']
  vectors = np.arange(len(words) * EMBED, dtype=np.float64).reshape(len(words), EMBED)
  new, coverage = rnn.embedding_from_vectors(variables['params'], vocab, words, vectors)
  old_table = np.asarray(variables['params']['encoder']['embed']['embedding'])
  table = np.asarray(new['encoder']['embed']['embedding'])
  expected = old_table.copy()
  expected[5], expected[7], expected[9] = vectors[0], vectors[1], vectors[2]  # first 'w7' wins
  np.testing.assert_array_equal(table, expected.astype(np.float32))
  assert coverage == pytest.approx(3 / (VOCAB - 3))
  # The rest of the tree is untouched and the input params are unchanged.
  assert new['head'] is variables['params']['head']
  np.testing.assert_array_equal(variables['params']['encoder']['embed']['embedding'], old_table)
  # The encoder's own params work the same way.
  new_enc, cov = rnn.embedding_from_vectors(enc_params, vocab, words, vectors)
  assert cov == coverage
  np.testing.assert_array_equal(new_enc['embed']['embedding'][5], vectors[0].astype(np.float32))
  with pytest.raises(ValueError, match=r'set config\.model\.rnn\.embed_dim=3'):
    rnn.embedding_from_vectors(enc_params, vocab, words, vectors[:, :3])
  with pytest.raises(ValueError, match='vocab_size'):
    rnn.embedding_from_vectors(enc_params, vocab[:-1], words, vectors)


@pytest.mark.parametrize('after,same', [(classifier_lib.FREEZE_ALL, True), (-1, False)])
def test_frozen_layers_drop_nothing_in_train_mode(after, same):
  cfg = _model_cfg(num_layers=1, bidirectional=False, dropout=0.5)
  model = classifier_lib.build_classifier(cfg, 3, ft_proj_selector=0, zero_init=False,
                                          fine_tune_after_block=after)
  variables = _init(model)
  logits = [model.apply(variables, IDS, train=True, mutable=['batch_stats'],
                        rngs={'dropout': jax.random.PRNGKey(k)})[0] for k in (0, 1)]
  assert np.allclose(logits[0], logits[1]) == same
