"""The text modality end to end, as real processes on the embedded gloss subset:
pretrain -> finetune -> eval, 1 = 8 devices, exact resume, load_encoder on strings."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'configs', 'text_wordnet.py') + ':tiny'
FINETUNE = os.path.join(REPO, 'configs', 'text_finetune.py') + ':tiny'
STEPS = 6


def _env(num_devices: int) -> dict[str, str]:
  env = dict(os.environ)
  env.update(XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices}',
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')
  return env


def _run(module: str, config: str, workdir: str, *overrides: str, devices: int = 1) -> str:
  proc = subprocess.run([sys.executable, '-m', f'contrastive_jax.{module}', f'--config={config}',
                         f'--workdir={workdir}', *overrides], env=_env(devices), cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return proc.stdout


def _losses(workdir: str) -> np.ndarray:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  by_step = {r['step']: r['loss'] for r in rows if 'loss' in r}
  return np.array([by_step[s] for s in range(1, STEPS + 1)])


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('text')
  out = {}
  for devices in (1, 8):
    out[devices] = str(root / f'pretrain_{devices}')
    # With the WordNet synonym view (off in :tiny so the quickstart needs no install).
    out[f'stdout_{devices}'] = _run('pretrain', TINY, out[devices], '--config.log_every_steps=1',
                                    '--config.text_augment.synonym=0.2', devices=devices)
  return out


def test_text_pretraining_is_the_same_on_one_and_eight_devices(runs):
  one, eight = _losses(runs[1]), _losses(runs[8])
  assert np.isfinite(one).all() and one[0] > 0
  np.testing.assert_allclose(eight, one, rtol=2e-5)
  assert 'sentences/s' in runs['stdout_1'] and 'online linear probe' in runs['stdout_1']
  with open(os.path.join(runs[1], 'tokenizer.json'), 'rb') as a, \
       open(os.path.join(runs[8], 'tokenizer.json'), 'rb') as b:
    assert a.read() == b.read()


@pytest.mark.slow  # the image runs test two processes in CI (tests/test_pretrain.py)
def test_two_processes_of_four_devices_equal_one_device(runs, tmp_path):
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
  workdir = str(tmp_path / 'two_procs')
  procs = []
  for i in range(2):
    env = dict(_env(4), JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen(
        [sys.executable, '-m', 'contrastive_jax.pretrain', f'--config={TINY}',
         f'--workdir={workdir}', '--config.log_every_steps=1', '--config.multihost=yes',
         '--config.text_augment.synonym=0.2'], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-5000:]
  np.testing.assert_allclose(_losses(workdir), _losses(runs[1]), rtol=2e-5)


def test_text_pretraining_resumes_exactly(runs, tmp_path):
  workdir = str(tmp_path / 'resumed')
  flags = ('--config.log_every_steps=1', '--config.text_augment.synonym=0.2')
  _run('pretrain', TINY, workdir, *flags, '--config.stop_at_step=3')
  _run('pretrain', TINY, workdir, *flags)
  np.testing.assert_allclose(_losses(workdir), _losses(runs[1]), rtol=1e-6)


def test_finetune_one_percent_then_eval_then_strings_through_load_encoder(runs, tmp_path):
  ft = str(tmp_path / 'ft')
  out = _run('finetune', FINETUNE, ft, f'--config.init_from={runs[1]}',
             '--config.label_fraction=0.01', '--config.total_steps=40',
             '--config.optim.learning_rate=0.01')
  results = json.load(open(os.path.join(ft, 'finetune_results.json')))
  assert results['label_examples'] == 37           # 1% of 3924 - 260 val, 26 classes
  assert 'balanced' in out and 'test_balanced_acc' in results
  assert results['test_top1'] > 1.5 / 26, results   # above chance (26 classes)
  # The fine-tune reads text with the pretraining run's tokenizer.
  assert open(os.path.join(ft, 'tokenizer.json')).read() == open(
      os.path.join(runs[1], 'tokenizer.json')).read()
  ev = str(tmp_path / 'eval')
  out = _run('eval', os.path.join(REPO, 'configs', 'eval.py'), ev,
             f'--config.init_from={runs[1]}', '--config.modes=linear,knn')
  assert 'linear_top1' in out
  evaluated = json.load(open(os.path.join(ev, 'eval', 'results.json')))
  assert evaluated['linear_top1'] > 2 / 26, evaluated
  from contrastive_jax import export  # pylint: disable=g-import-not-at-top
  encode = export.load_encoder(runs[1])
  h = np.asarray(encode(['a domesticated carnivorous mammal', 'a sweet baked food',
                         'a domesticated carnivorous mammal'])['h'])
  assert h.shape == (3, 16) and np.isfinite(h).all()
  np.testing.assert_allclose(h[0], h[2], rtol=1e-6)
  assert not np.allclose(h[0], h[1])
  with pytest.raises(ValueError, match='Expected strings, or int token ids'):
    encode(np.zeros((2, 3, 4)))


@pytest.mark.slow
def test_distill_a_text_student(runs, tmp_path):
  ft = str(tmp_path / 'teacher')
  _run('finetune', FINETUNE, ft, f'--config.init_from={runs[1]}', '--config.total_steps=4')
  student = str(tmp_path / 'student')
  out = _run('distill', os.path.join(REPO, 'configs', 'distill.py'), student,
             f'--config.teacher={ft}', '--config.data.source=embedded_text',
             '--config.data.val_examples=260', '--config.data.max_length=16',
             '--config.total_steps=4', '--config.batch_size=32')
  assert 'student top-1' in out
  assert open(os.path.join(student, 'tokenizer.json')).read() == open(
      os.path.join(runs[1], 'tokenizer.json')).read()
