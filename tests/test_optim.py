"""LARS against a NumPy implementation of SimCLR's update; schedules; masks."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from contrastive_jax import config_defaults, optim


def _params(rng):
  return {
      'encoder': {
          'conv_init': {'kernel': rng.normal(size=(3, 3, 2, 4))},
          'bn_init': {'scale': rng.normal(size=(4,)), 'bias': rng.normal(size=(4,))},
          'dense': {'kernel': rng.normal(size=(4, 5)), 'bias': rng.normal(size=(5,))},
          'zero': {'kernel': np.zeros((2, 2))},  # |w| = 0 -> trust ratio 1
      },
      'probe': {'kernel': rng.normal(size=(5, 3)), 'bias': rng.normal(size=(3,))},
  }


def lars_reference(params, grads_seq, lr_seq, wd, eta, m, mask):
  """SimCLR's LARS in float64: g += wd*w; trust = eta*|w|/|g|; v = m*v + lr*trust*g; w -= v."""
  w = {k: np.asarray(v, np.float64) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  for grads, lr in zip(grads_seq, lr_seq):
    for k in w:
      g = np.asarray(grads[k], np.float64)
      trust = 1.0
      if mask[k]:
        g = g + wd * w[k]
        wn, gn = np.linalg.norm(w[k]), np.linalg.norm(g)
        trust = eta * wn / gn if wn > 0 and gn > 0 else 1.0
      v[k] = m * v[k] + lr * trust * g
      w[k] = w[k] - v[k]
  return w


def _flat(tree):
  return {'/'.join(str(getattr(p, 'key', p)) for p in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_decay_mask_by_path():
  mask = _flat(optim.decay_mask(_params(np.random.default_rng(0))))
  assert mask == {
      'encoder/bn_init/bias': False, 'encoder/bn_init/scale': False,
      'encoder/conv_init/kernel': True, 'encoder/dense/bias': False,
      'encoder/dense/kernel': True, 'encoder/zero/kernel': True,
      'probe/bias': False, 'probe/kernel': False}


def test_lars_matches_numpy_reference():
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _params(rng))
  cfg = config_defaults.optim_defaults()
  cfg.weight_decay, cfg.lr_scaling, cfg.warmup_epochs = 1e-4, 'none', 0
  cfg.learning_rate, cfg.schedule = 0.5, 'constant'
  tx, _ = optim.build_optimizer(cfg, batch_size=256, total_steps=10, warmup_steps=0)
  state = tx.init(params)
  grads_seq = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32),
                            params) for _ in range(4)]
  for g in grads_seq:
    updates, state = tx.update(g, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  mask = _flat(optim.decay_mask(params))
  ref = lars_reference(_flat(_params(np.random.default_rng(1))),
                       [_flat(g) for g in grads_seq], [0.5] * 4, 1e-4, 1e-3, 0.9, mask)
  got = _flat(params)
  for key in ref:
    np.testing.assert_allclose(np.asarray(got[key]), ref[key], rtol=1e-5, atol=1e-6,
                               err_msg=key)
  # The excluded leaves really moved by plain momentum SGD (lr * g scale).
  assert not np.allclose(np.asarray(got['probe/bias']),
                         _flat(_params(np.random.default_rng(1)))['probe/bias'])


def test_learning_rate_scaling_rules():
  assert optim.scaled_learning_rate(0.3, 4096, 'linear') == pytest.approx(4.8)
  assert optim.scaled_learning_rate(0.075, 4096, 'sqrt') == pytest.approx(4.8)
  assert optim.scaled_learning_rate(0.1, 1024, 'none') == pytest.approx(0.1)
  with pytest.raises(ValueError, match='config.optim.lr_scaling'):
    optim.scaled_learning_rate(0.1, 256, 'cubic')


def test_warmup_then_cosine_to_zero():
  sched = optim.learning_rate_schedule(2.0, total_steps=100, warmup_steps=10)
  np.testing.assert_allclose(float(sched(0)), 0.0, atol=1e-7)
  np.testing.assert_allclose(float(sched(5)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(sched(10)), 2.0, rtol=1e-6)
  np.testing.assert_allclose(float(sched(55)), 1.0, rtol=1e-5)  # half way through the cosine
  np.testing.assert_allclose(float(sched(100)), 0.0, atol=1e-6)
  cfg = ml_collections.ConfigDict({'warmup_fraction': 0.05, 'warmup_epochs': 10})
  assert optim.warmup_steps_from(cfg, total_steps=1000, steps_per_epoch=10) == 50
  cfg.warmup_fraction = 0.0
  assert optim.warmup_steps_from(cfg, total_steps=1000, steps_per_epoch=10) == 100


@pytest.mark.parametrize('name', ['sgd', 'adamw'])
def test_other_optimizers_step_and_skip_decay_on_excluded(name):
  cfg = config_defaults.optim_defaults()
  cfg.name, cfg.weight_decay, cfg.lr_scaling, cfg.schedule = name, 0.5, 'none', 'constant'
  cfg.learning_rate, cfg.nesterov = 0.1, name == 'sgd'
  params = {'conv': {'kernel': jnp.ones((2, 2))}, 'bn': {'bias': jnp.ones((2,))},
            'classifier': {'dense': {'kernel': jnp.ones((2, 3))}}}
  tx, _ = optim.build_optimizer(cfg, batch_size=256, total_steps=10, warmup_steps=0)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  # With zero gradient only weight decay moves a parameter: the kernels (the
  # classifier's too: only LARS leaves the head alone), not the bias.
  assert float(jnp.abs(updates['conv']['kernel']).sum()) > 0
  assert float(jnp.abs(updates['classifier']['dense']['kernel']).sum()) > 0
  assert float(jnp.abs(updates['bn']['bias']).sum()) == 0


def test_unknown_optimizer_names_the_key():
  cfg = config_defaults.optim_defaults()
  cfg.name = 'adagrad'
  with pytest.raises(ValueError, match='config.optim.name'):
    optim.build_optimizer(cfg, batch_size=256, total_steps=10, warmup_steps=0)
