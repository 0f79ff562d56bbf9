"""A full disk (or another failed write) while a checkpoint is being saved:
one errors.CheckpointWriteError naming the directory, the space a step needs
and the step a rerun resumes from; the half-written step removed, the earlier
checkpoints intact, and a rerun after freeing space resumes. The real failure
comes from a small tmpfs (skipped where this process cannot mount one); the
message and exit paths are also tested with injected failures.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys

import numpy as np
import pytest

from contrastive_jax import checkpoint, errors, loop, metrics_io
from tests.helpers import REPO

TINY = os.path.join(REPO, 'configs', 'smoke.py') + ':tiny'


@contextlib.contextmanager
def _tmpfs(path, size):
  """A tmpfs of `size` (mount's units: 256k, 8m) at `path`; yields a resize function."""
  os.makedirs(path)
  proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', path],
                        capture_output=True, text=True)
  if proc.returncode:
    pytest.skip(f'cannot mount a tmpfs here: {proc.stderr.strip()}')

  def resize(new_size):
    subprocess.run(['mount', '-o', f'remount,size={new_size}', path], check=True)
  try:
    yield resize
  finally:
    subprocess.run(['umount', '-l', path], capture_output=True)


def _state(value):
  """128 KiB of arrays that do not compress."""
  w = np.random.default_rng(int(value)).standard_normal((64, 512)).astype(np.float32)
  return {'w': w, 'b': np.full(8, value, np.float32)}


# In process, without run_binary's hook: the writes still running when the save
# failed report to orbax's closed event loop (see the last test).
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_a_full_disk_raises_one_write_error_and_keeps_the_earlier_step(tmp_path):
  directory = str(tmp_path / 'disk' / 'checkpoints')
  with _tmpfs(str(tmp_path / 'disk'), '256k') as resize:   # one 128 KiB step fits, not two
    ckpt = checkpoint.Checkpointer(directory)
    ckpt.save(1, _state(1.0), {'data': {'step': 1}})
    ckpt.wait()
    with pytest.raises(errors.CheckpointWriteError) as raised:
      ckpt.save(2, _state(2.0), {'data': {'step': 2}})
      ckpt.wait()
    e = raised.value
    assert e.errno == errno.ENOSPC and e.disk_full and e.filename == directory
    message = str(e)
    assert message.startswith(f'No space left on device while writing checkpoint step 2 to '
                              f'{directory}: a checkpoint step needs about '), message
    assert '(the size of step 1 on disk)' in message and 'are free there' in message
    assert 'resumes from step 1, which is intact' in message and '\n' not in message
    ckpt.close()   # the failure is not raised a second time
    assert checkpoint.checkpoint_steps(directory) == [1]
    assert os.listdir(directory) == ['1']   # the half-written step is gone
    assert checkpoint.verify_checksums(os.path.join(directory, '1')) == (True, '')

    resize('8m')   # space freed: the same directory takes the next step
    with checkpoint.Checkpointer(directory) as ckpt:
      state, extra = ckpt.restore(1)
      np.testing.assert_array_equal(state['w'], _state(1.0)['w'])
      assert extra == {'data': {'step': 1}}
      ckpt.save(2, _state(2.0), {'data': {'step': 2}})
    assert checkpoint.checkpoint_steps(directory) == [1, 2]


# In process, without run_binary's hook: the writes still running when the save
# failed report to orbax's closed event loop (see the last test).
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_a_first_checkpoint_that_does_not_fit_names_the_state_size(tmp_path):
  directory = str(tmp_path / 'disk' / 'checkpoints')
  with _tmpfs(str(tmp_path / 'disk'), '64k'):
    ckpt = checkpoint.Checkpointer(directory)
    with pytest.raises(errors.CheckpointWriteError) as raised:
      ckpt.save(1, _state(1.0))
      ckpt.wait()
    ckpt.close()
    message = str(raised.value)
    assert "needs about 128.0 KiB (the size of the state's arrays)" in message, message
    assert 'no checkpoint was written before it, so the run starts again at step 0' in message
    assert os.listdir(directory) == []


def _failing_wait(ckpt, exception):
  """From now on the manager's wait raises `exception`, as orbax re-raises a
  failed save at every wait."""
  real = ckpt._manager.wait_until_finished

  def wait():
    real()
    raise exception
  ckpt._manager.wait_until_finished = wait


def test_a_tensorstore_write_error_is_translated_with_its_errno(tmp_path):
  directory = str(tmp_path / 'checkpoints')
  ckpt = checkpoint.Checkpointer(directory)
  ckpt.save(1, _state(1.0))
  ckpt.wait()
  ckpt.save(2, _state(2.0))
  # As tensorstore reports it from orbax's background thread.
  _failing_wait(ckpt, ValueError(
      'DATA_LOSS: Error writing "params.w/0" in OCDBT database at local file '
      f'"{directory}/2.orbax-checkpoint-tmp/state": Failed to write 4096 bytes to file 5: '
      "Input/output error [os_error_code='5']"))
  with pytest.raises(errors.CheckpointWriteError) as raised:
    ckpt.wait()
  assert raised.value.errno == errno.EIO
  message = str(raised.value)
  assert message.startswith(f'Writing checkpoint step 2 to {directory} failed: '
                            'Input/output error (DATA_LOSS'), message
  assert message.endswith('resumes from step 1, which is intact.')
  ckpt.close()
  assert checkpoint.checkpoint_steps(directory)[0] == 1


def test_a_failed_checksum_write_leaves_the_committed_step_restorable(tmp_path, monkeypatch):
  directory = str(tmp_path / 'checkpoints')

  def no_space(step_dir):
    raise OSError(errno.ENOSPC, 'No space left on device',
                  os.path.join(step_dir, checkpoint.CHECKSUM_FILE))
  monkeypatch.setattr(checkpoint, 'write_checksums', no_space)
  ckpt = checkpoint.Checkpointer(directory)
  ckpt.save(1, _state(1.0))
  with pytest.raises(errors.CheckpointWriteError) as raised:
    ckpt.wait()
  assert raised.value.disk_full
  assert str(raised.value).startswith('No space left on device while writing the checksums '
                                      'of checkpoint step 1 to ')
  assert 'resumes from step 1, which is intact' in str(raised.value)
  ckpt.close()
  with checkpoint.Checkpointer(directory, read_only=True) as reader:
    assert reader.latest_intact_step() == 1   # no checksums: trusted as it restores
    np.testing.assert_array_equal(reader.restore(1)[0]['w'], _state(1.0)['w'])


def test_run_binary_prints_a_write_error_in_one_line_with_exit_1(capsys):
  e = errors.CheckpointWriteError(errno.ENOSPC, 'No space left on device while writing '
                                  'checkpoint step 2 to /x/checkpoints: ...', '/x/checkpoints')
  assert loop._exit_code(e) == errors.EXIT_WRITE_FAILED == 1
  with pytest.raises(SystemExit) as exited:
    loop._fail(e, loop._exit_code(e))
  assert exited.value.code == 1
  lines = capsys.readouterr().err.strip().splitlines()
  assert lines[0] == f'error: {e.message}' and len(lines) == 2


def _run(workdir, *overrides, timeout=600):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(
      [sys.executable, '-m', 'contrastive_jax.pretrain', f'--config={TINY}',
       f'--workdir={workdir}', '--config.summary_images=0', '--config.checkpoint_every_steps=1',
       *overrides], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_pretrain_on_a_full_disk_says_so_in_one_line_and_resumes_after(tmp_path):
  workdir = str(tmp_path / 'disk' / 'run')
  with _tmpfs(str(tmp_path / 'disk'), '320k') as resize:   # step 1 fits, step 2 does not
    proc = _run(workdir)
    assert proc.returncode == 1, proc.stderr[-3000:]
    shown = [l for l in proc.stderr.splitlines() if not l.startswith('I')]
    assert shown[-2].startswith('error: No space left on device while writing checkpoint '
                                f'step 2 to {workdir}/checkpoints'), shown
    assert 'Traceback' not in proc.stderr and 'never retrieved' not in proc.stderr
    assert 'Event loop is closed' not in proc.stderr
    ckpts = os.path.join(workdir, 'checkpoints')
    assert checkpoint.checkpoint_steps(ckpts) == [1] and os.listdir(ckpts) == ['1']
    assert checkpoint.verify_checksums(os.path.join(ckpts, '1')) == (True, '')

    resize('16m')
    proc = _run(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [r['step'] for r in metrics_io.read_metrics(workdir) if 'loss' in r]
    assert steps == sorted(set(steps)) and steps[-1] == 6
    assert checkpoint.checkpoint_steps(ckpts)[-1] == 6


def test_the_quiet_console_drops_results_arriving_at_a_closed_event_loop():
  """What tensorstore does with the writes still running when a save fails:
  their results go to the event loop orbax closed ('Event loop is closed')."""
  import asyncio  # pylint: disable=g-import-not-at-top
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  seen, shown = [], []
  hook = loop._quiet_unraisable(shown.append)
  previous = sys.unraisablehook
  sys.unraisablehook = lambda u: (seen.append(type(u.exc_value)), hook(u))
  try:
    promise, future = ts.Promise.new()

    async def wait_briefly():   # as orbax's loop gives up on the writes of a failed save
      task = asyncio.ensure_future(_await(future))
      task._log_destroy_pending = False   # pylint: disable=protected-access
      await asyncio.wait([task], timeout=0.01)
    event_loop = asyncio.new_event_loop()
    event_loop.run_until_complete(wait_briefly())
    event_loop.close()
    promise.set_exception(OSError(errno.ENOSPC, 'No space left on device'))
    sys.unraisablehook(_Unraisable(KeyError('shown'), None))
  finally:
    sys.unraisablehook = previous
  assert seen == [RuntimeError, KeyError]
  assert [type(u.exc_value) for u in shown] == [KeyError]


async def _await(future):
  return await future


class _Unraisable:
  def __init__(self, exc_value, exc_traceback):
    self.exc_value, self.exc_traceback = exc_value, exc_traceback
