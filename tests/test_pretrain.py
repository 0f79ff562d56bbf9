"""End to end: the pretrain binary as a user runs it, on tiny data.

Each run is a real process (`python -m contrastive_jax.pretrain`), so device
counts, multi-process JAX and signals are the real thing. The tiny config
(configs/smoke.py:tiny) takes ~20-30 s per process on 2 CPU cores, mostly
compilation, so runs are shared between tests through module fixtures.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from contrastive_jax import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'configs', 'smoke.py') + ':tiny'
STEPS = 6


def _env(num_devices: int, **extra: str) -> dict[str, str]:
  env = dict(os.environ)
  env.update(XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices}',
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')
  env.update(extra)
  return env


def _args(workdir: str, *overrides: str) -> list[str]:
  return [sys.executable, '-m', 'contrastive_jax.pretrain', f'--config={TINY}',
          f'--workdir={workdir}', '--config.log_every_steps=1', *overrides]


def run_pretrain(workdir: str, num_devices: int = 8, *overrides: str) -> str:
  proc = subprocess.run(_args(workdir, *overrides), env=_env(num_devices), cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return proc.stdout


def metrics(workdir: str) -> dict[int, dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return {r['step']: r for r in rows if 'loss' in r}


def losses(workdir: str) -> np.ndarray:
  m = metrics(workdir)
  return np.array([m[s]['loss'] for s in range(1, STEPS + 1)])


def final_params(workdir: str) -> dict:
  from contrastive_jax import export  # imported late: jax starts with 8 devices here
  import jax
  p = export.load_pretrained(workdir).variables
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(p)[0]}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Workdirs of complete runs on 1 and 8 devices (6 steps each)."""
  root = tmp_path_factory.mktemp('pretrain')
  out = {}
  for devices in (1, 8):
    out[devices] = str(root / f'full_{devices}')
    out[f'stdout_{devices}'] = run_pretrain(out[devices], devices)
  return out


def test_smoke_run_writes_metrics_checkpoints_and_summaries(runs):
  workdir = runs[8]
  rows = metrics(workdir)
  assert sorted(rows) == list(range(1, STEPS + 1))
  for key in ('loss', 'contrast_acc', 'contrast_entropy', 'probe_acc', 'learning_rate',
              'images_per_sec', 'param_norm', 'grad_norm'):
    assert all(np.isfinite(r[key]) for r in rows.values()), key
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['total_steps'] == STEPS
  events = os.listdir(os.path.join(workdir, 'tensorboard'))
  assert any(name.startswith('events.out.tfevents') for name in events)
  with open(os.path.join(workdir, 'pretrain_results.json')) as f:
    result = json.load(f)
  assert 0.0 <= result['test_probe_acc'] <= 1.0 and result['test_examples'] == 2000
  assert 'online linear probe: test' in runs['stdout_8']
  assert f'step {STEPS}/{STEPS}' in runs['stdout_8']


def test_loss_goes_down(tmp_path):
  """30 steps on the embedded data: the contrastive loss falls clearly."""
  workdir = str(tmp_path / 'longer')
  run_pretrain(workdir, 8, '--config.total_steps=30', '--config.batch_size=64',
               '--config.summary_images=0')
  m = metrics(workdir)
  first = np.mean([m[s]['loss'] for s in range(1, 6)])
  last = np.mean([m[s]['loss'] for s in range(26, 31)])
  assert last < first - 0.2, (first, last)


def test_one_device_equals_eight_devices(runs):
  np.testing.assert_allclose(losses(runs[8]), losses(runs[1]), rtol=2e-5)
  p1, p8 = final_params(runs[1]), final_params(runs[8])
  for key in p1:
    np.testing.assert_allclose(p8[key], p1[key], rtol=1e-3, atol=1e-5, err_msg=key)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_of_four_devices_equal_one_device(runs, tmp_path):
  workdir = str(tmp_path / 'two_procs')
  port = _free_port()
  procs = [subprocess.Popen(
      _args(workdir, '--config.multihost=yes'), cwd=REPO, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      env=_env(4, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(i))) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-5000:]
  np.testing.assert_allclose(losses(workdir), losses(runs[1]), rtol=2e-5)
  assert 'online linear probe' in outputs[0] and 'online linear probe' not in outputs[1]


def test_exact_resume_and_restore_on_other_device_count(runs, tmp_path):
  half = str(tmp_path / 'half')
  run_pretrain(half, 8, '--config.stop_at_step=3')
  assert sorted(os.listdir(os.path.join(half, 'checkpoints'))) == ['3']
  assert not os.path.exists(os.path.join(half, 'pretrain_results.json'))
  other = str(tmp_path / 'half_on_one_device')
  shutil.copytree(half, other)

  # Same device count: the same command continues and matches the one-go run.
  run_pretrain(half, 8)
  np.testing.assert_array_equal(losses(half), losses(runs[8]))
  p_full, p_resumed = final_params(runs[8]), final_params(half)
  for key in p_full:
    np.testing.assert_array_equal(p_resumed[key], p_full[key], err_msg=key)

  # Saved on 8 devices, resumed on 1: matches the 1-device run to float tolerance.
  run_pretrain(other, 1)
  np.testing.assert_allclose(losses(other), losses(runs[1]), rtol=2e-5)


def test_sigterm_writes_a_checkpoint_and_the_run_resumes(tmp_path):
  workdir = str(tmp_path / 'preempted')
  proc = subprocess.Popen(
      _args(workdir, '--config.total_steps=100000', '--config.checkpoint_every_steps=100000',
            '--config.summary_images=0'),
      env=_env(1), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics_file = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics_file) and len(open(metrics_file).readlines()) >= 3:
      break
    time.sleep(0.5)
  assert proc.poll() is None, proc.communicate()[0][-5000:]
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == errors.EXIT_PREEMPTED, out[-5000:]   # "stopped, resumable"
  steps = [int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))]
  assert len(steps) == 1 and steps[0] >= 3, steps
  # Re-running the same command resumes after the preemption checkpoint.
  run_pretrain(workdir, 1, f'--config.total_steps={steps[0] + 2}',
               '--config.checkpoint_every_steps=100000', '--config.summary_images=0')
  assert max(metrics(workdir)) == steps[0] + 2


def test_rerunning_a_finished_run_changes_nothing_but_evaluates_again(runs, tmp_path):
  workdir = str(tmp_path / 'finished')
  shutil.copytree(runs[1], workdir)
  from contrastive_jax import metrics_io  # pylint: disable=g-import-not-at-top
  before = metrics_io.read_metrics(workdir)
  out = run_pretrain(workdir, 1)
  assert 'online linear probe: test' in out
  assert metrics_io.read_metrics(workdir) == before  # no second probe line, no lost line
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']


def test_a_rerun_with_a_config_that_does_not_fit_keeps_the_runs_config(runs, tmp_path):
  workdir = str(tmp_path / 'rerun')
  shutil.copytree(runs[1], workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    before = f.read()
  proc = subprocess.run(_args(workdir, '--config.model.resnet.base_width=16'), env=_env(1), cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert 'does not fit the state this run builds' in proc.stderr, proc.stderr[-3000:]
  with open(os.path.join(workdir, 'config.json')) as f:
    assert f.read() == before  # the checkpoints can still be rebuilt from it


def test_invalid_config_value_fails_before_compiling(tmp_path):
  proc = subprocess.run(_args(str(tmp_path / 'bad'), '--config.model.resnet.stem=resnet_d'),
                        env=_env(1), cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "config.model.resnet.stem='resnet_d' is not valid" in proc.stderr
  assert "'imagenet', 'cifar'" in proc.stderr

