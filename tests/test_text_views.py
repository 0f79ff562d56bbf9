"""Tests for contrastive_jax.text.views and text.synonyms: one compile per op
(probabilities traced), small batches, one 8-device subprocess."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from contrastive_jax import augment
from contrastive_jax.text import synonyms as syn_lib
from contrastive_jax.text import views
from contrastive_jax.text.tokenizer import MASK_ID
from tests.helpers import REPO

VOCAB, L, K = 400, 16, 4


def _ids(n, seed=0, distinct=False):
  """int32 [n, L], lengths 1..L (both ends always present), padding 0 at the end."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, L + 1, n)
  lengths[:2] = (1, L)
  if distinct:   # distinct ids in a row: a permutation can be read back
    ids = np.stack([rng.permutation(np.arange(3, VOCAB))[:L] for _ in range(n)])
  else:
    ids = rng.integers(3, VOCAB, (n, L))
  ids[np.arange(L)[None] >= lengths[:, None]] = 0
  return ids.astype(np.int32)


def _table(seed=0):
  """[VOCAB, K]: tokens 3..199 have 1..K synonyms, left-packed; others none."""
  rng = np.random.default_rng(seed)
  table = np.zeros((VOCAB, K), np.int32)
  for t in range(3, 200):
    candidates = np.delete(np.arange(3, VOCAB), t - 3)      # never the token itself
    others = rng.choice(candidates, rng.integers(1, K + 1), replace=False)
    table[t, :len(others)] = others
  return table


TABLE = _table()


def _keys(n, seed=0):
  return jax.random.split(jax.random.PRNGKey(seed), n)


# One jitted, vmapped function per op; the probability is traced (one compile each).
OPS = {
    'deletion': lambda k, x, p: views.delete_words(k, x, p),
    'span': lambda k, x, p: views.crop_span(k, x, 1.0 - p),   # p = 1 - min_fraction
    'shuffle': lambda k, x, p: views.shuffle_local(k, x, p, 3),
    'replace': lambda k, x, p: views.replace_random(k, x, p, VOCAB),
    'mask': lambda k, x, p: views.mask_tokens(k, x, p),
    'synonym': lambda k, x, p: views.substitute_synonyms(k, x, p, jnp.asarray(TABLE)),
}


@functools.cache
def _op(name):
  return jax.jit(jax.vmap(OPS[name], in_axes=(0, 0, None)))


def _run(name, ids, p, seed=0):
  return np.asarray(_op(name)(_keys(len(ids), seed), jnp.asarray(ids), jnp.float32(p)))


def _lengths(ids):
  return (ids != 0).sum(-1)


def _assert_rows_well_formed(out, ids):
  n = _lengths(out)
  assert out.shape == ids.shape and out.dtype == np.int32
  assert (n >= 1).all()                                    # at least one token kept
  for row, length in zip(out, n):                          # padding zero, at the end
    assert (row[:length] != 0).all() and (row[length:] == 0).all()


@pytest.mark.parametrize('name', sorted(OPS))
def test_each_op_invariants_and_zero_is_identity(name):
  ids = _ids(256, distinct=True)
  out = _run(name, ids, 0.5)
  _assert_rows_well_formed(out, ids)
  n, n0 = _lengths(out), _lengths(ids)
  assert not np.array_equal(out, ids)
  if name in ('deletion', 'span'):
    assert (n <= n0).all() and (n < n0).mean() > 0.5
    for row, src, k in zip(out, ids, n):
      kept = list(row[:k])
      positions = [list(src).index(t) for t in kept]
      assert positions == sorted(positions)                # order kept
      if name == 'span':                                   # contiguous, >= 50% kept
        assert positions == list(range(positions[0], positions[0] + k))
        assert k >= np.ceil(0.5 * _lengths(src[None])[0]) - 1e-9
  else:
    np.testing.assert_array_equal(n, n0)                   # substitutions keep lengths
  if name == 'shuffle':
    for row, src, k in zip(out, ids, n):
      assert sorted(row[:k]) == sorted(src[:k])            # a permutation ...
      moved = [abs(list(src).index(t) - i) for i, t in enumerate(row[:k])]
      assert max(moved) <= 3                               # ... within the window
  # p = 0 (traced, so the op really runs): the identity.
  np.testing.assert_array_equal(_run(name, ids, 0.0), ids)
  # A fixed key reproduces; another key draws differently.
  np.testing.assert_array_equal(_run(name, ids, 0.5), out)
  assert not np.array_equal(_run(name, ids, 0.5, seed=1), out)


def test_substitutions_draw_only_what_they_may():
  ids = _ids(512)
  changed = lambda out: out != ids
  out = _run('mask', ids, 0.3)
  assert (out[changed(out)] == MASK_ID).all()
  out = _run('replace', ids, 0.3)
  new = out[changed(out)]
  assert new.min() >= 3 and new.max() < VOCAB and len(np.unique(new)) > 0.9 * (VOCAB - 3)
  out = _run('synonym', ids, 1.0)
  for old, new in zip(ids[changed(out)], out[changed(out)]):
    assert new in TABLE[old][TABLE[old] > 0]               # only a listed synonym
  has_synonym = (TABLE[ids, 0] > 0) & (ids != 0)
  np.testing.assert_array_equal(changed(out), has_synonym)  # p = 1: every such token
  # Uniform among the synonyms: one token with K of them, many draws.
  token = next(t for t in range(3, 200) if (TABLE[t] > 0).sum() == K)
  many = _run('synonym', np.full((4000, 1), token, np.int32), 1.0)[:, 0]
  counts = np.array([(many == s).sum() for s in TABLE[token]])
  np.testing.assert_allclose(counts / 4000, 1 / K, atol=0.03)


@pytest.mark.parametrize('name,p', [('deletion', 0.3), ('mask', 0.2), ('replace', 0.1),
                                    ('synonym', 0.4)])
def test_rates_match_the_probability(name, p):
  ids = np.random.default_rng(1).integers(3, 200, (2000, L)).astype(np.int32)  # full rows
  out = _run(name, ids, p)
  if name == 'deletion':
    rate = 1 - _lengths(out).sum() / ids.size              # P(all 16 dropped) ~ 4e-9
  else:
    rate = (out != ids).mean()
    if name == 'replace':
      rate /= 1 - 1 / (VOCAB - 3)                          # a draw may give the same id
  # 32000 Bernoulli draws: 4 standard deviations is < 0.011.
  assert abs(rate - p) < 0.011, rate


def test_deletion_keeps_one_token_when_all_would_go():
  ids = _ids(512)
  out = _run('deletion', ids, 1.0)
  np.testing.assert_array_equal(_lengths(out), 1)
  kept = out[:, 0]
  assert all(t in row for t, row in zip(kept, ids))
  # The kept one is drawn uniformly: on full rows of distinct ids every position occurs.
  full = np.tile(np.arange(3, 3 + L, dtype=np.int32), (2000, 1))
  positions = _run('deletion', full, 1.0)[:, 0] - 3
  counts = np.bincount(positions, minlength=L)
  assert counts.min() > 2000 / L * 0.6 and counts.max() < 2000 / L * 1.4


def _only(**on):
  """Defaults with every op off except `on`."""
  cfg = views.text_augment_defaults()
  cfg.update(dict(synonym=0.0, replace=0.0, mask=0.0, shuffle=0.0, deletion=0.0,
                  span_min_fraction=1.0))
  cfg.update(on)
  return cfg


def test_text_view_all_off_is_identity_and_compiles_nothing():
  ids = _ids(8)
  cfg = _only()
  out = views.pretrain_views(0, 3, jnp.arange(8), ids, cfg, 2, None, 0)
  np.testing.assert_array_equal(out, np.stack([ids, ids]))
  jaxpr = jax.make_jaxpr(lambda x: views.text_view(jax.random.PRNGKey(0), x, cfg))(ids[0])
  assert not any(e.primitive.name in ('sort', 'gather') for e in jaxpr.eqns)


@pytest.fixture(scope='module')
def default_views():
  cfg = views.text_augment_defaults()
  fn = jax.jit(lambda s, i, x: views.pretrain_views(7, s, i, x, cfg, 2, jnp.asarray(TABLE),
                                                    VOCAB))
  ids = _ids(64)
  ids[32:] = ids[1]                                       # one text at 33 indices
  idx = np.arange(1000, 1064)
  device = jax.devices()[0]
  out = fn(5, jax.device_put(idx, device), jax.device_put(ids, device))
  assert out.sharding.device_set == {device}
  return dict(fn=fn, ids=ids, idx=idx, out=np.asarray(out),
              again=np.asarray(fn(5, idx, ids)), next_step=np.asarray(fn(6, idx, ids)))


def test_pretrain_views_defaults(default_views):
  out, ids = default_views['out'], default_views['ids']
  assert out.shape == (2, 64, L) and out.dtype == np.int32
  for v in range(2):
    _assert_rows_well_formed(out[v], ids)
  assert (_lengths(out) <= _lengths(ids)[None]).all()
  np.testing.assert_array_equal(default_views['again'], out)  # fixed keys reproduce
  assert not np.array_equal(default_views['next_step'], out)
  assert not np.array_equal(out[0], out[1])                    # two views differ
  same = out[:, [1] + list(range(32, 64))]                     # one text, 33 indices
  for v in range(2):
    assert len({tuple(r) for r in same[v]}) > 25               # per-example draws


def test_pretrain_views_keys_are_example_keys(default_views):
  cfg = views.text_augment_defaults()
  ids, idx, out = default_views['ids'], default_views['idx'], default_views['out']
  keys = augment.example_keys(7, 5, idx[:3], 1)
  one = jax.jit(jax.vmap(lambda k, x: views.text_view(k, x, cfg, jnp.asarray(TABLE), VOCAB)))
  np.testing.assert_array_equal(one(keys, ids[:3]), out[1, :3])
  # A subset of the batch gets the same views: nothing depends on the batch.
  sub = np.asarray(default_views['fn'](5, idx[10:18], ids[10:18]))
  np.testing.assert_array_equal(sub, out[:, 10:18])


def test_finetune_batch_uses_finetune_keys_and_view_0_keys():
  ids = _ids(64)
  cfg = views.text_augment_defaults()
  out = np.asarray(jax.jit(lambda x: views.finetune_batch(3, 2, jnp.arange(64), x, cfg))(ids))
  _assert_rows_well_formed(out, ids)
  for row, src, k in zip(out, ids, _lengths(out)):                        # deletion only
    it = iter(src)
    assert all(t in it for t in row[:k])                                  # a subsequence
  assert (_lengths(out) < _lengths(ids)).any()
  keys = augment.example_keys(3, 2, jnp.arange(4), 0)
  one = jax.jit(jax.vmap(lambda k, x: views.text_view(k, x, cfg, finetune=True)))
  np.testing.assert_array_equal(one(keys, ids[:4]), out[:4])
  cfg.finetune_deletion = 0.0
  np.testing.assert_array_equal(views.finetune_batch(3, 2, jnp.arange(64), ids, cfg), ids)


@pytest.mark.parametrize('key,value,message', [
    ('deletion', 1.5, r'config\.text_augment\.deletion=1\.5; use a probability in \[0, 1\]'),
    ('finetune_mask', -0.1, r'config\.text_augment\.finetune_mask=-0\.1; use a probability'),
    ('span_min_fraction', 0.0, r'span_min_fraction=0\.0; use a fraction in \(0, 1\]'),
    ('synonym', 'high', r"synonym='high'; use a probability"),
    ('shuffle_window', 0, r'shuffle_window=0; use an integer >= 1'),
])
def test_validate_names_the_key_and_range(key, value, message):
  cfg = views.text_augment_defaults()
  views.validate(cfg)
  with pytest.raises(ValueError, match=message):   # a fresh dict: any type may be set
    views.validate(ml_collections.ConfigDict({**cfg.to_dict(), key: value}))
  del cfg['replace']
  with pytest.raises(ValueError, match=r'config\.text_augment\.replace is missing'):
    views.validate(cfg)


def test_missing_or_wrong_tables_say_how_to_fix():
  ids = _ids(4)
  with pytest.raises(ValueError, match=r'synonym=0\.2 needs a synonym table'):
    views.pretrain_views(0, 0, jnp.arange(4), ids, views.text_augment_defaults(), 2, None, VOCAB)
  with pytest.raises(ValueError, match=r'shape \(10, 4\).*vocab_size=400'):
    views.pretrain_views(0, 0, jnp.arange(4), ids, _only(synonym=0.5), 2, TABLE[:10], VOCAB)
  with pytest.raises(ValueError, match=r'replace=0\.1 needs vocab_size > 3'):
    views.pretrain_views(0, 0, jnp.arange(4), ids, _only(replace=0.1), 2, None, 0)
  cfg = _only()
  cfg.finetune_synonym = 0.3
  with pytest.raises(ValueError, match=r'finetune_synonym=0\.3 needs a synonym table'):
    views.finetune_batch(0, 0, jnp.arange(4), ids, cfg)


# ----------------------------------------------------------------------------
# Synonym tables.

def test_synonym_table_only_vocabulary_tokens_sorted_and_truncated():
  vocab = ['[PAD]', '[UNK]', '[MASK]', 'big', 'large', 'dog', 'Great', 'huge', 'cat', 'hound']
  synonyms = {'big': ('enormous', 'great', 'huge', 'large'), 'large': ('big', 'huge'),
              'great': ('big', 'large'), 'dog': ('dog', 'hound', 'domestic_dog'),
              'huge': ('big',), '[unk]': ('dog',)}
  table = syn_lib.synonym_table(vocab, synonyms, max_synonyms=2)
  assert table.dtype == np.int32 and table.shape == (10, 2)
  np.testing.assert_array_equal(table[:3], 0)                 # special tokens: none
  np.testing.assert_array_equal(table[3], [4, 7])             # 'great' is 'Great' here
  np.testing.assert_array_equal(table[4], [3, 7])             # large -> big, huge
  np.testing.assert_array_equal(table[5], [9, 0])             # never the token itself
  np.testing.assert_array_equal(table[6], [3, 4])             # 'Great' looked up lower-cased
  np.testing.assert_array_equal(table[8], [0, 0])             # cat: none
  np.testing.assert_array_equal(syn_lib.synonym_table(vocab, synonyms, 2), table)
  wide = syn_lib.synonym_table(vocab, synonyms, max_synonyms=4)
  np.testing.assert_array_equal(wide[3], [4, 7, 0, 0])
  with pytest.raises(ValueError, match='max_synonyms >= 1'):
    syn_lib.synonym_table(vocab, synonyms, 0)


@pytest.mark.skipif(not os.path.exists('/usr/share/wordnet/data.noun'),
                    reason='WordNet 3.0 is not installed (apt-get install wordnet-base)')
def test_wordnet_synonym_table():
  vocab = ['[PAD]', '[UNK]', '[MASK]', 'the', 'dog', 'big', 'large', 'hound', 'car', 'auto',
           'automobile', 'machine']
  table = syn_lib.wordnet_synonym_table(vocab)
  names = lambda t: {vocab[i] for i in table[vocab.index(t)] if i}
  assert names('dog') == {'hound'} and names('hound') == {'dog'}
  assert names('car') == {'auto', 'automobile', 'machine'}
  assert names('big') == {'large'} and names('the') == set()


# ----------------------------------------------------------------------------
# Devices.

_MESH_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from contrastive_jax.text import views
assert jax.device_count() == 8, jax.devices()
ids, table, idx = (np.asarray(a) for a in json.loads(sys.stdin.read()))
cfg = views.text_augment_defaults()
fn = jax.jit(lambda s, i, x: views.pretrain_views(7, s, i, x, cfg, 2, jnp.asarray(table),
                                                  table.shape[0]))
out = {}
for name, axis_type in (('auto', AxisType.Auto), ('explicit', AxisType.Explicit)):
  mesh = jax.make_mesh((8,), ('data',), axis_types=(axis_type,))
  put = lambda a: jax.device_put(a, NamedSharding(mesh, P('data')))
  views_ = fn(jnp.int32(5), put(idx), put(ids))
  assert len(views_.sharding.device_set) == 8
  out[name] = np.asarray(views_).tolist()
print(json.dumps(out))
"""


def test_pretrain_views_same_on_1_and_8_devices(default_views):
  ids, idx = default_views['ids'], default_views['idx']
  one = default_views['out']   # computed on one device (the fixture)
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', _MESH_SCRIPT], cwd=REPO, env=env,
                        input=json.dumps([ids.tolist(), TABLE.tolist(), idx.tolist()]),
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  eight = json.loads(proc.stdout.strip().splitlines()[-1])
  np.testing.assert_array_equal(np.asarray(eight['auto']), one)
  np.testing.assert_array_equal(np.asarray(eight['explicit']), one)
