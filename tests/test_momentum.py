"""Momentum and memory methods (methods/momentum.py, byol.py, moco.py, mocov3.py,
simclr.py with memory_size > 0).

- the momentum schedule and the EMA update against NumPy formulas over several
  steps; the queue's FIFO order and wrap-around; the queue size's validation;
- each loss against an independent float64 NumPy implementation: value and
  gradient w.r.t. the online projections (central differences of the
  reference), no gradient to the momentum branch or the queue, and 1 device
  = 8 devices inside shard_map;
- each method end to end on configs/smoke.py:tiny (in-process pretrain runs):
  a run checkpointed at every step holds the EMA and queue the formulas give,
  a run stopped at step 2 and resumed ends bit-identical to the one-go run
  (queue and EMA included), and 1 device = 8 devices (queue and EMA included);
  one method as 2 processes x 4 devices (slow).

The in-process runs share a persistent compilation cache (a temporary
directory, this module only), so the second and third run of a config load
the step that the first compiled.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache
from jax.sharding import PartitionSpec as P

from contrastive_jax import checkpoint, config_defaults, export, losses, methods, parallel
from contrastive_jax import pretrain
from contrastive_jax.methods import momentum
from tests.helpers import REPO, load_config, set_keys


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _lse(x):
  m = np.max(x)
  return m + np.log(np.sum(np.exp(x - m)))


def _numeric_grad(f, x, eps=1e-6):
  """Central differences of a float64 function of an array."""
  x = np.array(x, np.float64)
  g = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    d = np.zeros_like(x)
    d[i] = eps
    g[i] = (f(x + d) - f(x - d)) / (2 * eps)
  return g


# ---- Momentum schedule and EMA --------------------------------------------------------

def _m_reference(k, total, base, schedule):
  if schedule == 'constant':
    return base
  return 1.0 - (1.0 - base) * (np.cos(np.pi * min(k, total) / total) + 1.0) / 2.0


@pytest.mark.parametrize('schedule', ['constant', 'cosine'])
def test_momentum_schedule_matches_formula(schedule):
  total = 10
  got = [float(momentum.momentum_at(k, total, 0.99, schedule)) for k in range(total + 3)]
  want = [_m_reference(k, total, 0.99, schedule) for k in range(total + 3)]
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
  if schedule == 'cosine':
    assert got[0] == pytest.approx(0.99) and got[total] == 1.0 and got[-1] == 1.0


@pytest.mark.parametrize('schedule,base', [('constant', 0.9), ('cosine', 0.7)])
def test_ema_over_several_steps_matches_numpy(schedule, base):
  rng = np.random.default_rng(0)
  total = 6
  shapes = {'dense': {'kernel': (3, 4), 'bias': (4,)}, 'bn': {'scale': (4,)}}
  online = [jax.tree.map(lambda s: rng.normal(size=s), shapes,
                         is_leaf=lambda s: isinstance(s, tuple)) for _ in range(total + 1)]
  stats = [{'bn': {'mean': rng.normal(size=4)}} for _ in range(total + 1)]
  f32 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), t)

  net = momentum.init_network(f32(online[0]), f32(stats[0]))
  ref_p, ref_s = online[0], stats[0]
  update = jax.jit(momentum.update_network)
  for k in range(total):
    m = momentum.momentum_at(k, total, base, schedule)
    net = update(net, f32(online[k + 1]), f32(stats[k + 1]), m)
    mk = _m_reference(k, total, base, schedule)
    ref_p = jax.tree.map(lambda t, o: mk * t + (1 - mk) * o, ref_p, online[k + 1])
    ref_s = jax.tree.map(lambda t, o: mk * t + (1 - mk) * o, ref_s, stats[k + 1])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, atol=2e-6),
                 net['params'], ref_p)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, atol=2e-6),
                 net['batch_stats'], ref_s)


# ---- Queue ------------------------------------------------------------------------------

def test_queue_is_fifo_and_wraps_around():
  q = momentum.init_queue(6, 3, seed=0)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(q['keys']), axis=-1), 1.0, rtol=1e-6)
  assert int(q['ptr']) == 0
  batches = [np.full((2, 3), float(b + 1), np.float32) for b in range(5)]
  enqueue = jax.jit(momentum.enqueue)
  expected = np.asarray(q['keys']).copy()
  for b, keys in enumerate(batches):
    q = enqueue(q, jnp.asarray(keys))
    start = (2 * b) % 6
    expected[start:start + 2] = keys
    np.testing.assert_array_equal(np.asarray(q['keys']), expected)
    assert int(q['ptr']) == (2 * (b + 1)) % 6
  # After 5 batches of 2 in a queue of 6: the oldest survivor is batch 3's.
  np.testing.assert_array_equal(np.asarray(q['keys'])[:, 0], [4, 4, 5, 5, 3, 3])

  # A batch that does not divide the size wraps across the end, in order.
  q = {'keys': jnp.zeros((5, 1)), 'ptr': jnp.asarray(3, jnp.int32)}
  q = momentum.enqueue(q, jnp.arange(1.0, 5.0)[:, None])
  np.testing.assert_array_equal(np.asarray(q['keys'])[:, 0], [3, 4, 0, 1, 2])
  assert int(q['ptr']) == 2


@pytest.mark.parametrize('method,key', [('simclr', 'memory_size'), ('moco', 'queue_size')])
def test_queue_size_must_be_a_multiple_of_the_global_batch(method, key):
  config = load_config('smoke', 'tiny')   # batch 32
  config.method = method
  config[method][key] = 48
  with pytest.raises(ValueError, match=rf'config\.{method}\.{key}=48 .*multiple of the global '
                                       r'batch size config\.batch_size=32'):
    config_defaults.validate(config)
  config[method][key] = 64
  config_defaults.validate(config)


def test_momentum_keys_are_validated():
  config = load_config('smoke', 'tiny')
  config.method = 'byol'
  config.byol.momentum_schedule = 'linear'
  with pytest.raises(ValueError, match='config.byol.momentum_schedule'):
    config_defaults.validate(config)
  config.byol.momentum_schedule = 'cosine'
  config.byol.momentum = 1.5
  with pytest.raises(ValueError, match=r'config\.byol\.momentum=1\.5'):
    config_defaults.validate(config)


def test_simclr_without_memory_is_plain_simclr():
  config = load_config('smoke', 'tiny')
  method = methods.build(config)
  assert method.init_extra({'w': jnp.ones(2)}, {}, global_batch_size=32) == {}
  assert method.targets(None) == {}


# ---- Losses against float64 NumPy ------------------------------------------------------

def nt_xent_memory_reference(z1, z2, memory, t):
  z = _normalize(np.concatenate([z1, z2]))
  mem = _normalize(memory)
  n = z1.shape[0]
  sim, sim_mem = z @ z.T / t, z @ mem.T / t
  total = 0.0
  for i in range(2 * n):
    others = [sim[i, k] for k in range(2 * n) if k != i] + list(sim_mem[i])
    total += _lse(np.array(others)) - sim[i, (i + n) % (2 * n)]
  return total / (2 * n)


def info_nce_queue_reference(q, k, queue, t):
  q, k, queue = _normalize(q), _normalize(k), _normalize(queue)
  total = 0.0
  for i in range(q.shape[0]):
    logits = np.concatenate([[q[i] @ k[i]], queue @ q[i]]) / t
    total += _lse(logits) - logits[0]
  return total / q.shape[0]


def moco_v3_reference(q, k, t):
  q, k = _normalize(q), _normalize(k)
  n = q.shape[0]
  total = 0.0
  for a, b in ((0, 1), (1, 0)):
    logits = q[:, a] @ k[:, b].T / t
    total += np.mean([_lse(logits[i]) - logits[i, i] for i in range(n)])
  return 2 * t * total


def byol_reference(p, z):
  p, z = _normalize(p), _normalize(z)
  per = np.sum((p[:, 0] - z[:, 1]) ** 2, -1) + np.sum((p[:, 1] - z[:, 0]) ** 2, -1)
  return np.mean(per)


def _check(loss_fn, ref_fn, online, targets, rtol=1e-5):
  """loss_fn(online, *targets) (JAX, float32) against ref_fn (NumPy, float64):
  value, gradient w.r.t. the online projections, zero gradient to the targets."""
  f32 = [jnp.asarray(x, jnp.float32) for x in (online, *targets)]
  value, grads = jax.jit(jax.value_and_grad(lambda *a: loss_fn(*a)[0], tuple(range(len(f32)))))(
      *f32)
  np.testing.assert_allclose(float(value), ref_fn(online, *targets), rtol=rtol)
  numeric = _numeric_grad(lambda x: ref_fn(x, *targets), online)
  np.testing.assert_allclose(np.asarray(grads[0]), numeric, rtol=2e-4, atol=2e-6)
  assert np.abs(numeric).max() > 1e-3   # the check is not vacuous
  for g in grads[1:]:
    np.testing.assert_array_equal(np.asarray(g), 0.0)   # no gradient to keys / queue


@pytest.mark.parametrize('n,m,d,t', [(4, 8, 3, 0.2), (6, 12, 5, 0.5)])
def test_nt_xent_memory_matches_float64_reference(n, m, d, t):
  rng = np.random.default_rng(n + m)
  z = rng.normal(size=(n, 2, d))
  memory = rng.normal(size=(m, d))
  fn = lambda z_, mem: losses.nt_xent_memory(z_[:, 0], z_[:, 1], mem, temperature=t)
  ref = lambda z_, mem: nt_xent_memory_reference(z_[:, 0], z_[:, 1], mem, t)
  _check(fn, ref, z, [memory])
  # An empty memory is NT-Xent.
  z32 = jnp.asarray(z, jnp.float32)
  empty, _ = losses.nt_xent_memory(z32[:, 0], z32[:, 1], jnp.zeros((0, d)), temperature=t)
  plain, _ = losses.nt_xent(z32[:, 0], z32[:, 1], temperature=t)
  np.testing.assert_allclose(float(empty), float(plain), rtol=1e-6)


@pytest.mark.parametrize('n,k,d,t', [(4, 8, 3, 0.2), (5, 10, 6, 0.07)])
def test_info_nce_queue_matches_float64_reference(n, k, d, t):
  rng = np.random.default_rng(n * k)
  q, key, queue = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(k, d))
  _check(lambda q_, k_, Q: losses.info_nce_queue(q_, k_, Q, temperature=t),
         lambda q_, k_, Q: info_nce_queue_reference(q_, k_, Q, t), q, [key, queue])


@pytest.mark.parametrize('n,d,t', [(4, 3, 1.0), (6, 5, 0.2)])
def test_moco_v3_info_nce_matches_float64_reference(n, d, t):
  rng = np.random.default_rng(n + d)
  q, k = rng.normal(size=(n, 2, d)), rng.normal(size=(n, 2, d))
  _check(lambda q_, k_: losses.moco_v3_info_nce(q_, k_, temperature=t),
         lambda q_, k_: moco_v3_reference(q_, k_, t), q, [k])


@pytest.mark.parametrize('n,d', [(4, 3), (7, 8)])
def test_byol_regression_matches_float64_reference(n, d):
  rng = np.random.default_rng(n * d)
  p, z = rng.normal(size=(n, 2, d)), rng.normal(size=(n, 2, d))
  _check(lambda p_, z_: losses.byol_regression(p_, z_), byol_reference, p, [z])
  same = jnp.asarray(np.stack([z[:, 1], z[:, 0]], 1), jnp.float32)
  loss, metrics = losses.byol_regression(same, jnp.asarray(z, jnp.float32))
  assert abs(float(loss)) < 1e-5 and float(metrics['cosine']) == pytest.approx(1.0, abs=1e-6)


# ---- Losses: 1 device = 8 devices -------------------------------------------------------

_LOSSES = {
    # name: (fn(online, targets..., axis_name), online shape, [(target shape, sharded)])
    'nt_xent_memory': (lambda z, mem, axis_name=None: losses.nt_xent_memory(
        z[:, 0], z[:, 1], mem, temperature=0.2, axis_name=axis_name), (16, 2, 8),
        [((24, 8), False)]),
    'info_nce_queue': (lambda q, k, Q, axis_name=None: losses.info_nce_queue(
        q, k, Q, temperature=0.2, axis_name=axis_name), (16, 8),
        [((16, 8), True), ((32, 8), False)]),
    'moco_v3_info_nce': (lambda q, k, axis_name=None: losses.moco_v3_info_nce(
        q, k, temperature=1.0, axis_name=axis_name), (16, 2, 8), [((16, 2, 8), True)]),
    'byol_regression': (lambda p, z, axis_name=None: losses.byol_regression(
        p, z, axis_name=axis_name), (16, 2, 8), [((16, 2, 8), True)]),
}


@pytest.mark.parametrize('name', sorted(_LOSSES))
def test_loss_on_8_devices_equals_1_device(name):
  fn, shape, target_specs = _LOSSES[name]
  rng = np.random.default_rng(7)
  online = jnp.asarray(rng.normal(size=shape), jnp.float32)
  targets = [jnp.asarray(rng.normal(size=s), jnp.float32) for s, _ in target_specs]
  mesh = parallel.make_mesh()
  assert mesh.devices.size == 8
  specs = (P('data'),) + tuple(P('data') if sharded else P() for _, sharded in target_specs)
  sharded = jax.jit(jax.shard_map(lambda *a: fn(*a, axis_name='data'), mesh=mesh,
                                  in_specs=specs, out_specs=P()))
  (loss1, metrics1), g1 = jax.jit(jax.value_and_grad(lambda x: fn(x, *targets), has_aux=True))(
      online)
  (loss8, metrics8), g8 = jax.jit(jax.value_and_grad(lambda x: sharded(x, *targets),
                                                     has_aux=True))(online)
  np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), rtol=1e-5, atol=1e-7)
  for key in metrics1:
    np.testing.assert_allclose(float(metrics8[key]), float(metrics1[key]), rtol=1e-5)


# ---- End to end: tiny pretrain runs -------------------------------------------------------

# name: (config.method, overrides of configs/smoke.py:tiny). Small queues (2 batches of
# 32) so the runs wrap around; m far from 1 so the EMA moves visibly in 4 steps.
# Learning rate 0.02 (x sqrt(32)), not the tiny config's 0.075: at 0.075 with no
# warmup in 4 steps, one step from the same state agrees on 1 and 8 devices to
# ~1e-6, but the memory methods' step amplifies a 1e-6 state difference ~1000x
# (a tiny network at full rate from step 0), so trajectories could not be compared.
RUNS = {
    'simclr_memory': ('simclr', {'simclr.memory_size': 64, 'simclr.momentum': 0.9}),
    'moco': ('moco', {'moco.queue_size': 64, 'moco.momentum': 0.9}),
    'byol': ('byol', {'byol.momentum': 0.8}),        # cosine, with the online probe
    'mocov3': ('mocov3', {'mocov3.momentum': 0.8}),  # cosine
}
STEPS = 4


def _overrides(name):
  method, keys = RUNS[name]
  return dict({'method': method, 'total_steps': STEPS, 'checkpoint_every_steps': 1,
               'keep_checkpoints': STEPS + 1, 'log_every_steps': 1, 'summary_images': 0,
               'probe': name == 'byol', 'optim.learning_rate': 0.02}, **keys)


def _config(name, **extra):
  return set_keys(load_config('smoke', 'tiny'), dict(_overrides(name), **extra))


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  by_step = {r['step']: r['loss'] for r in rows if 'loss' in r}
  return np.array([by_step[s] for s in range(1, STEPS + 1)])


def _state(workdir, step=None):
  with checkpoint.Checkpointer(f'{workdir}/checkpoints', read_only=True) as c:
    state, _ = c.restore(step)
  return jax.tree.map(np.asarray, state)


@pytest.fixture(scope='module')
def compile_cache(tmp_path_factory):
  """A persistent compilation cache for this module's runs (restored after)."""
  keys = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
          'jax_persistent_cache_min_entry_size_bytes')
  before = {k: getattr(jax.config, k) for k in keys}
  jax.config.update(keys[0], str(tmp_path_factory.mktemp('jax_cache')))
  jax.config.update(keys[1], 0)
  jax.config.update(keys[2], 0)
  compilation_cache.reset_cache()
  yield
  for k, v in before.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


class _Runs:
  """Runs made once per module and method: 'full' (8 devices, one go), 'resumed'
  (stopped at step 2, then the same command again), 'one_device'."""

  def __init__(self, root):
    self.root, self.done = root, {}

  def get(self, name, kind):
    key = (name, kind)
    if key not in self.done:
      workdir = str(self.root / f'{name}_{kind}')
      if kind == 'full':
        pretrain.train_and_evaluate(_config(name), workdir)
      elif kind == 'resumed':
        pretrain.train_and_evaluate(_config(name, stop_at_step=2), workdir)
        assert checkpoint.checkpoint_steps(f'{workdir}/checkpoints') == [1, 2]
        pretrain.train_and_evaluate(_config(name), workdir)
      elif kind == 'one_device':
        make_mesh = parallel.make_mesh
        parallel.make_mesh = lambda devices=None: make_mesh(jax.devices()[:1])
        try:
          pretrain.train_and_evaluate(_config(name), workdir)
        finally:
          parallel.make_mesh = make_mesh
      self.done[key] = workdir
    return self.done[key]


@pytest.fixture(scope='module')
def runs(compile_cache, tmp_path_factory):
  del compile_cache
  return _Runs(tmp_path_factory.mktemp('momentum_runs'))


def _check_ema_and_queue(workdir, name):
  """Checkpoints of steps k and k + 1: extra = m(k) * extra + (1 - m(k)) * online,
  for the parameters and the BN statistics; the queue's next N rows replaced."""
  method, keys = RUNS[name]
  cfg = load_config('smoke', 'tiny')
  set_keys(cfg, _overrides(name))
  section = cfg[method]
  states = [_state(workdir, k) for k in range(1, STEPS + 1)]
  for k in range(1, STEPS):
    before, after = states[k - 1], states[k]
    assert int(after['step']) == k + 1
    m = _m_reference(k, STEPS, section.momentum, section.momentum_schedule)
    for part in ('params', 'batch_stats'):
      want = jax.tree.map(lambda t, o: m * t.astype(np.float64) + (1 - m) * o,
                          before['extra'][part], after[part])
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                   after['extra'][part], want)
    if 'queue' in before['extra']:
      q0, q1 = before['extra']['queue'], after['extra']['queue']
      size, batch = q0['keys'].shape[0], cfg.batch_size
      assert int(q1['ptr']) == (int(q0['ptr']) + batch) % size
      new = (int(q0['ptr']) + np.arange(batch)) % size
      old = np.setdiff1d(np.arange(size), new)
      np.testing.assert_array_equal(q1['keys'][old], q0['keys'][old])
      assert not np.any(np.all(q1['keys'][new] == q0['keys'][new], -1))
      np.testing.assert_allclose(np.linalg.norm(q1['keys'][new], axis=-1), 1.0, rtol=1e-5)
  # Momentum != online after a few steps (the EMA is not a copy).
  first = jax.tree.leaves(states[-1]['extra']['params'])[0]
  assert not np.allclose(first, jax.tree.leaves(states[-1]['params'])[0])


@pytest.mark.parametrize('name', [
    pytest.param(n, marks=pytest.mark.slow) if n in ('byol', 'mocov3') else n
    for n in sorted(RUNS)])   # byol / mocov3 share their code paths with the others
def test_exact_resume_and_ema_and_queue_in_a_real_run(runs, name):
  full = runs.get(name, 'full')
  assert np.all(np.isfinite(_losses(full)))
  _check_ema_and_queue(full, name)
  resumed = runs.get(name, 'resumed')
  np.testing.assert_array_equal(_losses(resumed), _losses(full))
  jax.tree.map(np.testing.assert_array_equal, _state(resumed), _state(full))  # extra included


def _one_equals_eight(runs, name):
  full, one = runs.get(name, 'full'), runs.get(name, 'one_device')
  np.testing.assert_allclose(_losses(one), _losses(full), rtol=2e-5)
  s1, s8 = _state(one), _state(full)
  flat1 = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(s1)[0]}
  flat8 = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(s8)[0]}
  assert flat1.keys() == flat8.keys()
  for key in flat1:   # params, EMA params and BN statistics, queue and its pointer
    np.testing.assert_allclose(flat8[key], flat1[key], rtol=1e-3, atol=1e-5, err_msg=key)


def test_moco_one_device_equals_eight_devices_queue_included(runs):
  _one_equals_eight(runs, 'moco')


@pytest.mark.slow
@pytest.mark.parametrize('name', ['simclr_memory', 'byol', 'mocov3'])
def test_one_device_equals_eight_devices(runs, name):
  _one_equals_eight(runs, name)


def test_byol_exports_online_and_momentum_encoders(runs):
  workdir = runs.get('byol', 'full')
  state = _state(workdir)
  images = np.random.default_rng(0).integers(0, 255, (4, 28, 28, 1)).astype(np.uint8)
  online = export.load_encoder(workdir)
  target = export.load_encoder(workdir, network='momentum')
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, target._variables),
               {'params': state['extra']['params'],
                'batch_stats': state['extra']['batch_stats']})
  h_online, h_target = online(images)['h'], target(images)['h']
  assert h_online.shape == h_target.shape == (4, 16)
  assert not np.allclose(np.asarray(h_online), np.asarray(h_target))
  with pytest.raises(ValueError, match='network='):
    export.load_encoder(workdir, network='ema')
  with open(os.path.join(workdir, 'pretrain_results.json')) as f:
    assert 0.0 <= json.load(f)['test_probe_acc'] <= 1.0


# ---- 2 processes x 4 devices -------------------------------------------------------------

def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_moco_two_processes_of_four_devices_equal_one_process(runs, tmp_path):
  full = runs.get('moco', 'full')
  workdir = str(tmp_path / 'two_procs')
  flags = [f'--config.{k}={v}' for k, v in _overrides('moco').items()]
  args = [sys.executable, '-m', 'contrastive_jax.pretrain',
          f'--config={os.path.join(REPO, "configs", "smoke.py")}:tiny',
          f'--workdir={workdir}', '--config.multihost=yes', *flags]
  port = _free_port()
  procs = []
  for i in range(2):
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
               JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1',
               JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen(args, cwd=REPO, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-5000:]
  np.testing.assert_allclose(_losses(workdir), _losses(full), rtol=2e-5)
  s2, s8 = _state(workdir), _state(full)
  np.testing.assert_allclose(s2['extra']['queue']['keys'], s8['extra']['queue']['keys'],
                             rtol=1e-3, atol=1e-5)
  assert int(s2['extra']['queue']['ptr']) == int(s8['extra']['queue']['ptr'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
               s2['extra']['params'], s8['extra']['params'])
