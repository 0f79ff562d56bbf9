"""Checkpointer: exact round trips, retention, resharding 8 <-> 1 devices, read-only."""

import os
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from contrastive_jax import checkpoint as ckpt_lib


def _mesh(n):
  return jax.make_mesh((n,), ('data',), devices=jax.devices()[:n])


def _state():
  params = {
      'encoder': {'conv': {'kernel': jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4) / 7},
                  'bn': {'scale': jnp.full((4,), 1.5)}},
      'head': {'kernel': jnp.linspace(-1, 1, 8 * 4, dtype=jnp.float32).reshape(8, 4)},
  }
  opt_state = optax.lars(0.1).init(params)
  # Non-zero momentum so the optimizer state is not trivially all-zeros.
  opt_state = jax.tree.map(lambda x: x + 0.25, opt_state)
  return {
      'params': params,
      'batch_stats': {'encoder': {'bn': {'mean': jnp.array([0.1, -0.2, 0.3, 4.0])}}},
      'opt_state': opt_state,
      'step': jnp.array(7, jnp.int32),
      'rng': jax.random.key_data(jax.random.PRNGKey(42)),
  }


def _place(tree, mesh):
  """[8, ...] leaves sharded over 'data', everything else replicated."""
  def put(x):
    spec = P('data') if x.ndim >= 1 and x.shape[0] == 8 else P()
    return jax.device_put(x, NamedSharding(mesh, spec))
  return jax.tree.map(put, tree)


def _assert_equal_trees(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _tree_snapshot(directory):
  out = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs + files:
      path = os.path.join(root, name)
      st = os.stat(path)
      out[path] = (st.st_mtime_ns, st.st_size)
  return out


def test_round_trip_exact_with_optax_state_and_extra(tmp_path):
  mesh = _mesh(8)
  state = _place(_state(), mesh)
  extra = {'data': {'step': 7, 'epoch': np.int64(0)}, 'lr': np.float32(0.5),
           'shape': (3, 4), 'name': 'run'}
  ck = ckpt_lib.Checkpointer(tmp_path / 'checkpoints', max_to_keep=3)
  assert ck.latest_step() is None
  assert ck.save(7, state, extra)
  ck.wait()
  assert ck.latest_step() == 7 and ck.all_steps() == [7]

  restored, restored_extra = ck.restore(target=ckpt_lib.to_abstract(state))
  ck.close()
  _assert_equal_trees(restored, state)
  # The optax NamedTuples come back as NamedTuples (the target's structure).
  assert type(restored['opt_state']) is type(state['opt_state'])
  assert isinstance(restored['opt_state'][-1], optax.TraceState)
  assert restored_extra == {'data': {'step': 7, 'epoch': 0}, 'lr': 0.5,
                            'shape': [3, 4], 'name': 'run'}


def test_typed_prng_key_round_trip(tmp_path):
  key = jax.random.key(3)
  state = {'key': key, 'w': jnp.ones((2, 3))}
  with ckpt_lib.Checkpointer(tmp_path, async_save=False) as ck:
    ck.save(1, state)
    target = ckpt_lib.to_abstract(state, NamedSharding(_mesh(1), P()))
    restored, extra = ck.restore(1, target)
  assert extra == {}
  np.testing.assert_array_equal(jax.random.key_data(restored['key']), jax.random.key_data(key))
  np.testing.assert_array_equal(restored['w'], np.ones((2, 3)))


def test_max_to_keep_and_latest_step(tmp_path):
  directory = tmp_path / 'checkpoints'
  ck = ckpt_lib.Checkpointer(directory, max_to_keep=2)
  x = {'x': jnp.zeros((2,))}
  for step in (10, 20, 30, 40):
    assert ck.save(step, {'x': x['x'] + step}, {'step': step})
  ck.wait()
  assert ck.all_steps() == [30, 40]
  assert ck.latest_step() == 40
  ck.close()
  assert ckpt_lib.checkpoint_steps(directory) == [30, 40]
  assert sorted(os.listdir(directory)) == ['30', '40']

  # A fresh checkpointer sees the same steps; default restore = latest.
  ck = ckpt_lib.Checkpointer(directory, max_to_keep=2)
  target = ckpt_lib.to_abstract(x, NamedSharding(_mesh(1), P()))
  state, extra = ck.restore(target=target)
  np.testing.assert_array_equal(state['x'], [40.0, 40.0])
  assert extra == {'step': 40}
  state, extra = ck.restore(30, target)
  np.testing.assert_array_equal(state['x'], [30.0, 30.0])
  ck.close()


def test_save_interval_force_and_existing_step(tmp_path):
  ck = ckpt_lib.Checkpointer(tmp_path, save_interval_steps=10, async_save=False)
  x = {'x': jnp.ones(())}
  assert ck.save(10, x)
  assert not ck.should_save(15)
  assert not ck.save(15, x)            # off the interval
  assert ck.save(15, x, force=True)    # end of training / SIGTERM
  assert not ck.save(15, x, force=True)  # never overwrites an existing step
  assert ck.save(20, x)
  assert ck.all_steps() == [10, 15, 20]
  ck.close()


@pytest.mark.parametrize('save_devices,restore_devices', [(8, 1), (1, 8)])
def test_restore_onto_different_device_count(tmp_path, save_devices, restore_devices):
  state = _state()
  saved = _place(state, _mesh(save_devices))
  assert saved['params']['head']['kernel'].sharding.spec == P('data')
  with ckpt_lib.Checkpointer(tmp_path) as ck:
    ck.save(3, saved, {'pos': 3})
    ck.wait()

  restore_mesh = _mesh(restore_devices)
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      _place(state, restore_mesh))
  with ckpt_lib.Checkpointer(tmp_path) as ck:
    restored, extra = ck.restore(3, target)
  assert extra == {'pos': 3}
  _assert_equal_trees(restored, state)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
    assert got.sharding == want.sharding
    assert len(got.sharding.device_set) == restore_devices
  head = restored['params']['head']['kernel']
  assert head.sharding.spec == P('data')
  assert len(head.addressable_shards) == restore_devices


def test_async_save_does_not_need_the_arrays_after_it_returns(tmp_path):
  """The train step donates its state; the async save must have its own copy."""
  mesh = _mesh(8)
  state = _place(_state(), mesh)
  expected = jax.tree.map(np.asarray, state)
  target = ckpt_lib.to_abstract(state)
  with ckpt_lib.Checkpointer(tmp_path) as ck:
    assert ck.save(1, state, {'a': 1})
    for leaf in jax.tree.leaves(state):
      leaf.delete()
    ck.wait()
    restored, _ = ck.restore(1, target)
  _assert_equal_trees(restored, expected)


def test_restore_without_target_gives_host_numpy(tmp_path):
  state = _place(_state(), _mesh(8))
  with ckpt_lib.Checkpointer(tmp_path, async_save=False) as ck:
    ck.save(5, state, {'k': 'v'})
  reader = ckpt_lib.Checkpointer(tmp_path, read_only=True)
  restored, extra = reader.restore()
  reader.close()
  assert extra == {'k': 'v'}
  assert isinstance(restored['params']['head']['kernel'], np.ndarray)
  np.testing.assert_array_equal(restored['params']['head']['kernel'],
                                np.asarray(state['params']['head']['kernel']))
  assert int(restored['step']) == 7


def test_errors(tmp_path):
  empty = ckpt_lib.Checkpointer(tmp_path / 'empty')
  with pytest.raises(FileNotFoundError, match='No checkpoint found'):
    empty.restore()
  empty.close()

  ck = ckpt_lib.Checkpointer(tmp_path / 'ck', async_save=False)
  x = {'x': jnp.ones((2,))}
  ck.save(1, x)
  with pytest.raises(FileNotFoundError, match=r'available steps: \[1\]'):
    ck.restore(2, ckpt_lib.to_abstract(x))
  with pytest.raises(ValueError, match='has no sharding'):
    ck.restore(1, {'x': jax.ShapeDtypeStruct((2,), jnp.float32)})
  # A state that does not fit (another model / config): one error that says what to do.
  for other in ({'x': jnp.ones((3,))}, {'x': jnp.ones((2,)), 'y': jnp.ones((2,))}):
    with pytest.raises(ValueError, match=r'does not fit the state this run builds.*config\.json'):
      ck.restore(1, ckpt_lib.to_abstract(other))
  with pytest.raises(TypeError, match='JSON'):
    ck.save(2, x, {'bad': object()})
  with pytest.raises(ValueError, match='max_to_keep'):
    ckpt_lib.Checkpointer(tmp_path / 'other', max_to_keep=0)
  ck.close()


def test_read_only_never_writes(tmp_path):
  directory = tmp_path / 'checkpoints'
  # A missing directory is not created by a reader.
  reader = ckpt_lib.Checkpointer(directory, read_only=True)
  assert reader.latest_step() is None
  assert not directory.exists()

  state = _place(_state(), _mesh(8))
  writer = ckpt_lib.Checkpointer(directory, max_to_keep=5)
  writer.save(1, state, {'pos': 1})
  writer.save(2, state, {'pos': 2})
  writer.wait()
  before = _tree_snapshot(directory)

  # The reader picks up steps written after it was created.
  assert reader.all_steps() == [1, 2]
  restored, extra = reader.restore(target=ckpt_lib.to_abstract(state))
  assert extra == {'pos': 2}
  _assert_equal_trees(restored, state)
  reader.item_metadata()
  with pytest.raises(RuntimeError, match='read_only'):
    reader.save(3, state)
  reader.close()
  reader2 = ckpt_lib.Checkpointer(directory, read_only=True, max_to_keep=1)
  assert reader2.all_steps() == [1, 2]  # max_to_keep deletes nothing for a reader
  reader2.close()
  assert _tree_snapshot(directory) == before
  writer.close()


def test_unfinished_save_is_ignored_and_cleaned_up(tmp_path):
  leftover = tmp_path / '7.orbax-checkpoint-tmp-1234'
  (leftover / 'state').mkdir(parents=True)
  assert ckpt_lib.checkpoint_steps(tmp_path) == []
  reader = ckpt_lib.Checkpointer(tmp_path, read_only=True)
  assert reader.latest_step() is None
  reader.close()
  assert leftover.exists()  # a reader deletes nothing
  with ckpt_lib.Checkpointer(tmp_path) as writer:
    assert writer.latest_step() is None
    writer.save(7, {'x': jnp.ones((2,))})
  assert not leftover.exists()
  assert ckpt_lib.checkpoint_steps(tmp_path) == [7]


def test_wait_for_new_checkpoint(tmp_path):
  directory = tmp_path / 'checkpoints'
  t0 = time.monotonic()
  assert ckpt_lib.wait_for_new_checkpoint(directory, None, timeout_s=0.2, poll_s=0.05) is None
  assert time.monotonic() - t0 < 5
  assert not directory.exists()

  writer = ckpt_lib.Checkpointer(directory, async_save=False)
  x = {'x': jnp.ones((2,))}
  writer.save(1, x)
  writer.save(2, x)
  # Newest step past last_step; an evaluator that fell behind skips ahead.
  assert ckpt_lib.wait_for_new_checkpoint(directory, None, timeout_s=0) == 2
  assert ckpt_lib.wait_for_new_checkpoint(directory, 1, timeout_s=0) == 2
  assert ckpt_lib.wait_for_new_checkpoint(directory, 2, timeout_s=0.1, poll_s=0.05) is None

  # A step committed while waiting is found.
  thread = threading.Thread(target=lambda: (time.sleep(0.3), writer.save(5, x)))
  thread.start()
  assert ckpt_lib.wait_for_new_checkpoint(directory, 2, timeout_s=30, poll_s=0.05) == 5
  thread.join()
  writer.close()
