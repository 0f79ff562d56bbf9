"""A run survives what would otherwise lose or corrupt it, and says plainly why
it stops: divergence, damaged checkpoints, a second writer, a kill before the
first checkpoint, nonsense config values. Binaries run as real processes
where the exit status or the console is what is tested.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from contrastive_jax import checkpoint, errors, metrics_io, pretrain
from tests.helpers import REPO, load_config

TINY = os.path.join(REPO, 'configs', 'smoke.py') + ':tiny'


def _run(workdir, *overrides, devices=1, timeout=600):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(
      [sys.executable, '-m', 'contrastive_jax.pretrain', f'--config={TINY}',
       f'--workdir={workdir}', '--config.summary_images=0', *overrides],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _config(**overrides):
  config = load_config('smoke', 'tiny')
  config.update(dict(summary_images=0, log_every_steps=1, keep_checkpoints=2))
  config.update(overrides)
  return config


def _params(workdir, step=None):
  with checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True) as c:
    state, _ = c.restore(step)
  return state['params']


def _all_finite(tree):
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree))


# --- Divergence -----------------------------------------------------------------

def test_divergence_stops_without_saving_a_non_finite_checkpoint(tmp_path):
  workdir = str(tmp_path / 'run')
  pretrain.train_and_evaluate(_config(stop_at_step=3), workdir)
  # The same run continued at a temperature that overflows the logits: NaN at step 4.
  proc = _run(workdir, '--config.simclr.temperature=1e-38', '--config.log_every_steps=1')
  assert proc.returncode == errors.EXIT_DIVERGED, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-2]
  assert 'diverged at step 4' in last and 'last good checkpoint is step 3' in last, last
  assert 'Traceback' not in proc.stderr
  assert checkpoint.checkpoint_steps(os.path.join(workdir, 'checkpoints')) == [3]
  assert _all_finite(_params(workdir, 3))


def test_skip_step_policy_drops_non_finite_batches(tmp_path):
  workdir = str(tmp_path / 'run')
  pretrain.train_and_evaluate(_config(stop_at_step=3), workdir)
  before = _params(workdir, 3)
  config = _config(nan_policy='skip_step')
  config.simclr.temperature = 1e-38
  results = pretrain.train_and_evaluate(config, workdir)
  assert results['step'] == 6
  after = _params(workdir, 6)
  jax.tree.map(np.testing.assert_array_equal, after, before)   # every step was skipped
  rows = [r for r in metrics_io.read_metrics(workdir) if r.get('step', 0) > 3 and 'loss' in r]
  assert rows and all(r['nonfinite'] == 1.0 for r in rows)


# --- Damaged checkpoints ----------------------------------------------------------

@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """A complete 6-step run and a copy stopped at step 3 (checkpoints 3 and 6 /
  3), in process."""
  root = tmp_path_factory.mktemp('reference')
  pretrain.train_and_evaluate(_config(), str(root / 'full'))
  return str(root / 'full')


def _damage(step_dir, how):
  data = sorted(os.path.join(r, n) for r, _, ns in os.walk(os.path.join(step_dir, 'state'))
                for n in ns if '/d/' in os.path.join(r, n))
  target = max(data, key=os.path.getsize)
  if how == 'flip':
    blob = bytearray(open(target, 'rb').read())
    for i in (len(blob) // 3, len(blob) // 2, 2 * len(blob) // 3):
      blob[i] ^= 0xFF
    open(target, 'wb').write(bytes(blob))
  elif how == 'truncate':
    os.truncate(target, os.path.getsize(target) // 2)
  elif how == 'empty':
    shutil.rmtree(step_dir)
    os.makedirs(step_dir)


@pytest.mark.parametrize('how', ['flip', pytest.param('truncate', marks=pytest.mark.slow),
                                 pytest.param('empty', marks=pytest.mark.slow)])
def test_a_damaged_newest_step_is_set_aside_and_the_run_resumes_from_the_previous(
    reference, tmp_path, how):
  workdir = str(tmp_path / 'run')
  pretrain.train_and_evaluate(_config(stop_at_step=3), workdir)
  pretrain.train_and_evaluate(_config(stop_at_step=5, checkpoint_every_steps=1), workdir)
  ckpts = os.path.join(workdir, 'checkpoints')
  assert checkpoint.checkpoint_steps(ckpts) == [4, 5]
  _damage(os.path.join(ckpts, '5'), how)
  results = pretrain.train_and_evaluate(_config(), workdir)   # resumes from 4, warns
  assert results['step'] == 6
  damaged = os.listdir(os.path.join(workdir, checkpoint.DAMAGED_DIR))
  assert len(damaged) == 1 and damaged[0].startswith('5-')
  jax.tree.map(np.testing.assert_array_equal, _params(workdir), _params(reference))
  steps = [r['step'] for r in metrics_io.read_metrics(workdir) if 'loss' in r]
  assert steps == sorted(set(steps)) == list(range(1, 7))


def test_checksums_catch_a_flipped_byte_and_keep_k_keeps_verified_steps(tmp_path):
  workdir = str(tmp_path / 'run')
  pretrain.train_and_evaluate(_config(checkpoint_every_steps=1, keep_checkpoints=2), workdir)
  ckpts = os.path.join(workdir, 'checkpoints')
  assert checkpoint.checkpoint_steps(ckpts) == [5, 6]
  for step in (5, 6):
    assert checkpoint.verify_checksums(os.path.join(ckpts, str(step))) == (True, '')
  _damage(os.path.join(ckpts, '6'), 'flip')
  ok, reason = checkpoint.verify_checksums(os.path.join(ckpts, '6'))
  assert ok is False and 'differs' in reason
  assert not any('.orbax-checkpoint-tmp' in n for n in os.listdir(ckpts))


# --- One writer, metrics once ---------------------------------------------------------

def test_a_second_process_on_a_locked_workdir_exits_at_once(tmp_path):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; from contrastive_jax import workdir_lock; '
       f'workdir_lock.WorkdirLock({workdir!r}).acquire(); print("held", flush=True); '
       'time.sleep(120)'], cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    proc = _run(workdir, timeout=120)
    assert proc.returncode == errors.EXIT_LOCKED, proc.stderr[-2000:]
    assert f'pid {holder.pid}' in proc.stderr and 'Traceback' not in proc.stderr
    assert not os.path.exists(os.path.join(workdir, 'checkpoints'))
  finally:
    holder.kill()
    holder.wait()
  # The holder is dead: its lock goes with it and the next run takes the workdir.
  proc = _run(workdir, '--config.total_steps=1')
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_metrics_have_each_step_once_after_a_kill_before_the_first_checkpoint(tmp_path):
  workdir = str(tmp_path / 'run')
  pretrain.train_and_evaluate(_config(), workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints'))   # as if killed before saving
  pretrain.train_and_evaluate(_config(), workdir)
  steps = [r['step'] for r in metrics_io.read_metrics(workdir) if 'loss' in r]
  assert steps == list(range(1, 7))


# --- Nonsense config values: one line, nothing created -----------------------------------

@pytest.mark.parametrize('override, message', [
    ('--config.total_steps=-5', 'config.total_steps=-5 must be >= 0'),
    ('--config.num_epochs=-1', 'config.num_epochs=-1 must be > 0'),
    ('--config.stop_at_step=-3', 'config.stop_at_step=-3 must be >= 0'),
    ('--config.simclr.temperature=0', 'config.simclr.temperature=0.0 must be > 0'),
    ('--config.seed=-1', 'config.seed=-1 must be an integer >= 0'),
    ('--config.batchsize=64', 'Did you mean "batch_size"'),
    ('--config.method=byol2', "config.method='byol2' is not valid"),
])
def test_bad_config_values_fail_in_one_line_before_the_workdir_exists(
    tmp_path, override, message):
  workdir = str(tmp_path / 'run')
  overrides = [override] + (['--config.total_steps=0'] if 'num_epochs' in override else [])
  proc = _run(workdir, *overrides, timeout=120)
  assert proc.returncode == errors.EXIT_USER_ERROR, proc.stderr[-2000:]
  assert message in proc.stderr, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2
  assert not os.path.exists(workdir)


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / 'file'
  path.write_text('x')
  proc = _run(str(path), timeout=120)
  assert proc.returncode == errors.EXIT_USER_ERROR
  assert 'is a file' in proc.stderr and 'Traceback' not in proc.stderr


def test_the_console_shows_progress_and_results_not_library_chatter(tmp_path):
  proc = _run(str(tmp_path / 'run'), '--config.log_every_steps=3')
  assert proc.returncode == 0, proc.stderr[-3000:]
  console = proc.stdout + proc.stderr
  assert 'step 6/6' in console and 'online linear probe' in console
  assert 'checkpoint_manager.py' not in console and 'Unable to initialize backend' not in console
