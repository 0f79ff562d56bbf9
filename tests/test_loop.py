"""contrastive_jax.loop.run_steps: how far the host may run ahead, and stops."""

import itertools

import jax
import numpy as np

from contrastive_jax import loop


class _Metric:
  """Stands in for a step's device metrics; records when the loop waits on it."""

  def __init__(self, step, waited):
    self.step, self._waited = step, waited

  def block_until_ready(self):
    self._waited.add(self.step)
    return self

  def __float__(self):
    return float(self.step)


class _Recorder:
  """A checkpointer and a metrics flusher that only remember their calls."""

  def __init__(self):
    self.saves, self.flushed, self._pending = [], [], None

  def save(self, step, state, extra, force=False):
    self.saves.append((step, force))

  def wait(self):
    pass

  def set(self, step, metrics):
    self._pending = (step, metrics)

  def flush(self):
    if self._pending:
      self.flushed.append(self._pending[0])
      self._pending = None


def _run(total_steps, should_stop=lambda step: False):
  waited, unfinished_at_dispatch = set(), []

  def step_fn(state, batch):
    del batch
    # Steps dispatched before this one that the loop has not waited for.
    unfinished_at_dispatch.append(len(set(range(1, state + 1)) - waited))
    return state + 1, {'loss': _Metric(state + 1, waited)}

  rec = _Recorder()
  batches = itertools.repeat({'x': np.zeros((8, 1), np.float32)})
  state, step = loop.run_steps(
      0, step_fn, batches, mesh=jax.make_mesh((8,), ('data',)), start_step=0,
      total_steps=total_steps, log_every=4, checkpoint_every=5, ckpt=rec,
      extra_fn=dict, flusher=rec, should_stop=should_stop)
  return state, step, rec, unfinished_at_dispatch


def test_the_host_never_runs_more_than_two_steps_ahead():
  state, step, rec, unfinished = _run(12)
  assert state == step == 12
  assert max(unfinished) == loop.MAX_STEPS_IN_FLIGHT == 2
  assert unfinished[:3] == [0, 1, 2]   # the window fills, then stays full
  assert rec.saves == [(5, False), (10, False), (12, True)]
  assert rec.flushed == [4, 8, 12]


def test_a_stop_checkpoints_the_step_reached():
  state, step, rec, _ = _run(100, should_stop=lambda s: s == 7)
  assert state == step == 7
  assert rec.saves == [(5, False), (7, True)]
