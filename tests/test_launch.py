"""launch/tpu_vm.sh against a stand-in `gcloud` that runs the worker command locally.

The stand-in copies what `scp` sends into a fake home directory and runs what
`ssh --command` sends with bash there, with `python3`, `pip` and `python`
replaced by stubs that only log their arguments. So the test sees what a
worker would do, launch after launch, without a TPU.
"""

import os
import signal
import stat
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_GCLOUD = r'''#!/usr/bin/env python3
import os, shutil, subprocess, sys
args = sys.argv[1:]
home = os.environ['FAKE_HOME']
with open(os.environ['CALLS'], 'a') as f:
  f.write(' '.join(args[:4]) + '\n')
if args[:4] == ['compute', 'tpus', 'tpu-vm', 'scp']:
  local, remote = args[-2], args[-1]
  shutil.copy(local, os.path.join(home, remote.split(':', 1)[1]))
elif args[:4] == ['compute', 'tpus', 'tpu-vm', 'ssh']:
  command = args[args.index('--command') + 1]
  env = dict(os.environ, HOME=home, PATH=os.environ['STUBS'] + ':' + os.environ['PATH'])
  sys.exit(subprocess.run(['bash', '-c', command], env=env, cwd=home).returncode)
'''

_STUBS = {
    'python3': 'if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin" && '
               ': > "$3/bin/activate"; fi; echo "python3 $*" >> "$CALLS"',
    'pip': 'echo "pip $*" >> "$CALLS"',
    'python': 'echo "python $*" >> "$CALLS"; echo "training output"; sleep "${STUB_SECONDS:-0}"',
}


def _executable(path, text):
  with open(path, 'w') as f:
    f.write(text)
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


def _fake_tools(tmp_path):
  """tmp_path/home (the worker's home), bin/gcloud (the stand-in), stubs/*."""
  (tmp_path / 'home').mkdir()
  for d in ('bin', 'stubs'):
    (tmp_path / d).mkdir()
  _executable(tmp_path / 'bin' / 'gcloud', _GCLOUD)
  for name, body in _STUBS.items():
    _executable(tmp_path / 'stubs' / name, '#!/usr/bin/env bash\n' + body + '\n')


def _launch(tmp_path, *extra, seconds=0, expect_rc=0):
  env = dict(os.environ, FAKE_HOME=str(tmp_path / 'home'), CALLS=str(tmp_path / 'calls'),
             STUBS=str(tmp_path / 'stubs'), PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}",
             STUB_SECONDS=str(seconds))
  log = tmp_path / 'home' / 'cj_logs' / 'run1.log'
  lines_before = len(log.read_text().splitlines()) if log.exists() else 0
  proc = subprocess.run(
      ['bash', os.path.join(REPO, 'launch', 'tpu_vm.sh'), 'my-tpu', 'us-central2-b',
       'pretrain', 'configs/imagenet_simclr_v1.py', 'gs://bucket/run1', *extra],
      env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == expect_rc, proc.stderr
  deadline = time.time() + 30  # the training command runs detached
  while (expect_rc == 0 and time.time() < deadline
         and not (log.exists() and len(log.read_text().splitlines()) > lines_before)):
    time.sleep(0.1)
  pidfile = tmp_path / 'home' / 'cj_logs' / 'run1.pid'
  while expect_rc == 0 and not seconds and time.time() < deadline and _alive(pidfile):
    time.sleep(0.1)  # a job that ends at once: let it end before the next launch
  return proc, (tmp_path / 'calls').read_text().splitlines()


def _alive(pidfile):
  try:
    os.kill(int(pidfile.read_text()), 0)
    return True
  except (OSError, ValueError):
    return False


def test_tpu_launch_ships_a_fresh_tree_installs_once_and_runs_detached(tmp_path):
  _fake_tools(tmp_path)

  proc, calls = _launch(tmp_path, '--config.batch_size=1024', "--config.note=a b'c")
  home = tmp_path / 'home'
  assert (home / 'contrastive_jax' / 'contrastive_jax' / 'pretrain.py').exists()
  assert not (home / 'contrastive_jax' / '.git').exists()
  assert [c for c in calls if c.startswith('python3 -m venv')]
  assert "pip install -q jax[tpu]" in calls
  assert ('python -m contrastive_jax.pretrain --config=configs/imagenet_simclr_v1.py '
          "--workdir=gs://bucket/run1 --config.batch_size=1024 --config.note=a b'c") in calls
  assert (home / 'cj_logs' / 'run1.log').read_text() == 'training output\n'
  assert 'tail -f ~/cj_logs/run1.log' in proc.stdout

  # A relaunch (resume): the source is replaced, not nested inside the old copy,
  # and JAX is not reinstalled or upgraded.
  (home / 'contrastive_jax' / 'stale.py').write_text('')
  _, calls = _launch(tmp_path)
  assert not (home / 'contrastive_jax' / 'stale.py').exists()
  assert not (home / 'contrastive_jax' / 'contrastive_jax' / 'contrastive_jax').exists()
  assert sum(c.startswith('python3 -m venv') for c in calls) == 1
  assert sum('jax[tpu]' in c for c in calls) == 1
  assert calls[-1].endswith('--workdir=gs://bucket/run1')  # no stray empty argument
  # The log is appended to, run after run.
  assert (home / 'cj_logs' / 'run1.log').read_text() == 'training output\n' * 2

  # A launch while the previous job still runs is refused and changes nothing.
  _launch(tmp_path, seconds=60)
  pid = int((home / 'cj_logs' / 'run1.pid').read_text())
  try:
    (home / 'contrastive_jax' / 'marker.py').write_text('')
    proc, _ = _launch(tmp_path, expect_rc=1)
    assert 'still running' in proc.stderr
    assert (home / 'contrastive_jax' / 'marker.py').exists()
  finally:
    os.kill(pid, signal.SIGKILL)


def test_a_failed_first_tpu_install_is_retried(tmp_path):
  _fake_tools(tmp_path)
  # The first install of jax[tpu] fails (network, quota, ...), after the venv exists.
  _executable(tmp_path / 'stubs' / 'pip', '#!/usr/bin/env bash\n' + _STUBS['pip'] +
              '\nif [ "$*" = "install -q jax[tpu]" ] && [ ! -f "$CALLS.failed" ]; then '
              ': > "$CALLS.failed"; exit 1; fi\n')
  _launch(tmp_path, expect_rc=1)
  _, calls = _launch(tmp_path)
  assert sum('jax[tpu]' in c for c in calls) == 2
