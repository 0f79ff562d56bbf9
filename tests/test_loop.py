"""contrastive_jax.loop.run_steps: how far the host may run ahead, and stops."""

import itertools
import os
import signal

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils

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


def test_a_zero_cadence_is_refused_with_the_keys_to_fix():
  with pytest.raises(ValueError, match='config.log_every_steps=0'):
    loop.run_steps(0, None, iter(()), mesh=None, start_step=0, total_steps=3, log_every=0,
                   checkpoint_every=5, ckpt=None, extra_fn=dict, flusher=None,
                   should_stop=lambda s: False)


def test_first_ctrl_c_stops_at_a_step_boundary_with_a_checkpoint_second_aborts():
  flag = loop.PreemptionFlag()
  before = signal.getsignal(signal.SIGINT)
  flag.install()
  try:
    os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C only sets the flag
    state, step, rec, _ = _run(100, should_stop=flag.should_stop)
    assert state == step == 1 and rec.saves == [(1, True)]
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  finally:
    flag.uninstall()
  assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_sets_the_flag_on_one_process():
  flag = loop.PreemptionFlag()
  flag.install()
  try:
    assert not flag.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert flag.should_stop(2)
  finally:
    flag.uninstall()


def test_several_processes_keep_jaxs_sigterm_notifier_and_stop_at_the_sync_step(monkeypatch):
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(multihost_utils, 'reached_preemption_sync_point', lambda s: s == 9)
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  flag = loop.PreemptionFlag()
  flag.install()
  try:
    # A Python handler would replace the notifier jax.distributed installed.
    assert {s: signal.getsignal(s) for s in before} == before
    assert [s for s in range(1, 12) if flag.should_stop(s)] == [9]
  finally:
    flag.uninstall()


def test_several_processes_without_jaxs_preemption_service_warn_and_run_on(monkeypatch):
  def disabled(step):
    raise RuntimeError('Preemption sync manager has not been initialized.')
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(multihost_utils, 'reached_preemption_sync_point', disabled)
  flag = loop.PreemptionFlag()
  with pytest.warns(UserWarning, match='jax_enable_preemption_service'):
    assert not flag.should_stop(1)
  assert not flag.should_stop(2)
