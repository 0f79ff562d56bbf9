r"""Fault campaign: what a real pretraining process survives, as a user meets it.

  python benchmarks/fault_campaign.py                 # every scenario (DEFAULT_TRIALS)
  python benchmarks/fault_campaign.py --quick         # one trial each, every variant once
  python benchmarks/fault_campaign.py --trials 1 --only kill9,sigterm
  python benchmarks/fault_campaign.py --only bad_config --trials 8 --json /tmp/fc.json

Every trial runs `python -m contrastive_jax.pretrain --config=configs/smoke.py:tiny`
(8 steps, a checkpoint every 2, keep 2, a metrics line every step: seconds per
run) as a separate process in a fresh workdir, injects a fault, then reruns
the same command where the scenario says a rerun resumes, and compares the
final parameters bitwise with one uninterrupted run of the same command:

  kill9_before_first_checkpoint  SIGKILL after a step is logged, before any checkpoint
  kill9_during_steps             SIGKILL at a random step (plus a random delay)
  kill9_async_write              SIGKILL while an asynchronous checkpoint write is in flight
  kill9_between_checkpoints      SIGKILL after a checkpoint is committed, before the next
  sigterm                        SIGTERM at a random step: exit 75, then the rerun
  divergence                     resumed from a good checkpoint at simclr.temperature=1e-38:
                                 exit 3, nothing non-finite saved, the good steps kept
  damaged_newest                 the newest step flipped / truncated / emptied / a garbage
                                 manifest (in turn): set aside with a warning, the previous used
  two_writers                    a second process on a workdir in use: exit 4 at once
  bad_config                     a nonsense value (in turn): one line, exit 2, no workdir
  disk_full                      the workdir on a tmpfs that holds one checkpoint step (needs
                                 mount, i.e. root): one line, exit 1, the earlier step intact,
                                 then the rerun on a larger tmpfs

The table (markdown, stdout): scenario, trials, survived (the scenario's
promise held and, where it resumes, the final parameters are bitwise equal to
the uninterrupted run's), data lost (trials in which a committed checkpoint
vanished, the rerun started before the newest checkpoint it had, or
metrics.jsonl lost or repeated a step), message (the first process's error
line, else the rerun's warning or resume line; `--json` keeps every trial's).
`--only` takes scenario names or prefixes (kill9). The processes share a JAX
compilation cache (in the campaign's root) so a trial costs its run, not a
compile; the uninterrupted reference compiles afresh.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

TOTAL_STEPS = 8
EVERY = 2   # checkpoint_every_steps
FLAGS = [f'--config={os.path.join(REPO, "configs", "smoke.py")}:tiny',
         '--config.summary_images=0', f'--config.total_steps={TOTAL_STEPS}',
         f'--config.checkpoint_every_steps={EVERY}', '--config.log_every_steps=1',
         '--config.keep_checkpoints=2']
BAD_CONFIGS = [
    ['--config.total_steps=-5'], ['--config.num_epochs=-1', '--config.total_steps=0'],
    ['--config.stop_at_step=-3'], ['--config.simclr.temperature=0'], ['--config.seed=-1'],
    ['--config.batchsize=64'], ['--config.method=byol2'], 'workdir_is_a_file',
]
DAMAGES = ['flip', 'truncate', 'empty', 'garbage_manifest']
# Trials per scenario without --trials; --quick: 1, or each variant once.
DEFAULT_TRIALS = {'kill9_before_first_checkpoint': 3, 'kill9_during_steps': 5,
                  'kill9_async_write': 4, 'kill9_between_checkpoints': 3, 'sigterm': 4,
                  'divergence': 2, 'damaged_newest': 2 * len(DAMAGES), 'two_writers': 2,
                  'bad_config': len(BAD_CONFIGS), 'disk_full': 2}
VARIANTS = {'damaged_newest': len(DAMAGES), 'bad_config': len(BAD_CONFIGS)}
SCENARIOS = ['kill9_before_first_checkpoint', 'kill9_during_steps', 'kill9_async_write',
             'kill9_between_checkpoints', 'sigterm', 'divergence', 'damaged_newest',
             'two_writers', 'bad_config', 'disk_full']
TMP_MARK = '.orbax-checkpoint-tmp'


# --- Processes ------------------------------------------------------------------------

@dataclasses.dataclass
class Proc:
  """A pretrain process: its exit status and stderr once it ended."""
  popen: subprocess.Popen
  log: str
  started: float
  returncode: int | None = None
  seconds: float = 0.0

  def wait(self, timeout: float = 600) -> 'Proc':
    try:
      self.returncode = self.popen.wait(timeout)
    except subprocess.TimeoutExpired:
      self.popen.kill()
      self.returncode = self.popen.wait()
    self.seconds = time.monotonic() - self.started
    return self

  @property
  def stderr(self) -> str:
    with open(self.log + '.err', errors='replace') as f:
      return f.read()


class Campaign:
  """Runs the scenarios in fresh workdirs under `root`."""

  def __init__(self, root: str, rng: random.Random, verbose: bool = True):
    self.root, self.rng, self.verbose = root, rng, verbose
    self.env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
                    XLA_FLAGS='--xla_force_host_platform_device_count=1')
    self._count = 0
    self._reference = None
    self._base = None

  def start(self, workdir: str, *overrides: str, cache: bool = True) -> Proc:
    self._count += 1
    log = os.path.join(self.root, 'logs', f'{self._count:03d}')
    os.makedirs(os.path.dirname(log), exist_ok=True)
    env = dict(self.env)
    if cache:
      env.update(JAX_COMPILATION_CACHE_DIR=os.path.join(self.root, 'jax_cache'),
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
    cmd = [sys.executable, '-m', 'contrastive_jax.pretrain', *FLAGS, f'--workdir={workdir}',
           *overrides]
    with open(log + '.out', 'w') as out, open(log + '.err', 'w') as err:
      popen = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
    return Proc(popen, log, time.monotonic())

  def run(self, workdir: str, *overrides: str, **kw) -> Proc:
    return self.start(workdir, *overrides, **kw).wait()

  # The uninterrupted run every resumed one is compared with; and a run
  # stopped at step 4 (checkpoints 2 and 4) that scenarios copy.
  def reference(self) -> dict:
    if self._reference is None:
      workdir = os.path.join(self.root, 'reference')
      proc = self.run(workdir, cache=False)
      if proc.returncode != 0:
        raise RuntimeError(f'the uninterrupted run failed (exit {proc.returncode}): '
                           f'{last_line(proc.stderr)}')
      self._reference = final_params(workdir)
    return self._reference

  def base_at_4(self) -> str:
    if self._base is None:
      workdir = os.path.join(self.root, 'base_at_4')
      proc = self.run(workdir, '--config.stop_at_step=4')
      if proc.returncode != 0 or committed(workdir) != [2, 4]:
        raise RuntimeError(f'the run stopped at step 4 failed (exit {proc.returncode}, '
                           f'checkpoints {committed(workdir)}): {last_line(proc.stderr)}')
      self._base = workdir
    return self._base

  def fresh(self, name: str, trial: int, copy_of: str | None = None) -> str:
    workdir = os.path.join(self.root, f'{name}_{trial}', 'run')
    if copy_of:
      shutil.copytree(copy_of, workdir)
    else:
      os.makedirs(os.path.dirname(workdir), exist_ok=True)
    return workdir


# --- Reading a workdir ------------------------------------------------------------------

def committed(workdir: str) -> list[int]:
  """Finalized checkpoint steps (orbax's listing: no tmp directories)."""
  path = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(path):
    return []
  return sorted(int(n) for n in os.listdir(path) if n.isdigit()
                and os.path.exists(os.path.join(path, n, 'commit_success.txt')))


def logged_steps(workdir: str) -> list[int]:
  """The training steps in metrics.jsonl, in file order (repeats kept)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  steps = []
  if os.path.exists(path):
    with open(path, errors='replace') as f:
      for line in f:
        try:
          row = json.loads(line)
        except ValueError:
          continue   # a line being written
        if 'loss' in row:
          steps.append(int(row['step']))
  return steps


def final_params(workdir: str, step: int | None = None) -> dict:
  """The parameters of `step` (default: the latest) as host arrays, by path."""
  import jax  # pylint: disable=g-import-not-at-top
  from contrastive_jax import checkpoint  # pylint: disable=g-import-not-at-top
  logging.getLogger('absl').setLevel(logging.ERROR)   # orbax: "directory is read only"
  with checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True) as c:
    state, _ = c.restore(step)
  leaves = jax.tree_util.tree_flatten_with_path(state['params'])[0]
  return {jax.tree_util.keystr(p): x for p, x in leaves}


def bitwise_equal(a: dict, b: dict) -> bool:
  import numpy as np  # pylint: disable=g-import-not-at-top
  return a.keys() == b.keys() and all(
      np.asarray(a[k]).dtype == np.asarray(b[k]).dtype
      and np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes() for k in a)


def all_finite(workdir: str, step: int) -> bool:
  import numpy as np  # pylint: disable=g-import-not-at-top
  return all(np.isfinite(x).all() for x in final_params(workdir, step).values()
             if np.issubdtype(np.asarray(x).dtype, np.floating))


_ABSL_PREFIX = re.compile(r'^[IWEF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] ')


def last_line(stderr: str) -> str:
  """The line a user reads: the error line, else the last warning, else the last line."""
  lines = [l.strip() for l in stderr.splitlines() if l.strip()]
  for prefix in ('error:', 'W'):
    picked = [l for l in lines if l.startswith(prefix) and (prefix != 'W' or _ABSL_PREFIX.match(l))]
    if picked:
      return _ABSL_PREFIX.sub('', picked[-1])
  return _ABSL_PREFIX.sub('', lines[-1]) if lines else ''


def resumed_from(stderr: str) -> int:
  match = re.findall(r'Resumed from step (\d+)', stderr)
  return int(match[-1]) if match else 0


def wait_until(proc: Proc, ready: Callable[[], bool], poll_s: float = 0.002,
               timeout: float = 600) -> bool:
  """Polls `ready()` until true (True) or the process ended first (False)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if ready():
      return True
    if proc.popen.poll() is not None:
      return ready()
    time.sleep(poll_s)
  return False


# --- Trials ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Trial:
  scenario: str
  survived: bool
  lost: list[str]
  message: str
  detail: str = ''
  seconds: float = 0.0


def _check_rerun(c: Campaign, workdir: str, rerun: Proc, had: list[int],
                 lost: list[str], problems: list[str], set_aside: tuple[int, ...] = ()) -> None:
  """The rerun finished, resumed from the newest checkpoint there was (bar
  those set aside), logged every step once and ends bitwise on the reference."""
  if rerun.returncode != 0:
    problems.append(f'rerun exit {rerun.returncode}: {last_line(rerun.stderr)}')
    return
  usable = [s for s in had if s not in set_aside]
  start = resumed_from(rerun.stderr)
  if usable and start < max(usable):
    lost.append(f'resumed from {start} though step {max(usable)} was committed')
  steps = logged_steps(workdir)
  if steps != list(range(1, TOTAL_STEPS + 1)):
    lost.append(f'metrics.jsonl steps {steps}')
  if not bitwise_equal(final_params(workdir), c.reference()):
    problems.append('final parameters differ from the uninterrupted run')


def trial_kill9(c: Campaign, name: str, trial: int) -> Trial:
  workdir = c.fresh(name, trial)
  ckpts = os.path.join(workdir, 'checkpoints')
  moment = name[len('kill9_'):]
  proc = c.start(workdir)
  if moment == 'before_first_checkpoint':
    hit = wait_until(proc, lambda: bool(logged_steps(workdir)) and not os.path.isdir(
        os.path.join(ckpts, str(EVERY))) and not _in_flight(ckpts))
  elif moment == 'during_steps':
    k = c.rng.randint(1, TOTAL_STEPS - 2)
    hit = wait_until(proc, lambda: len(logged_steps(workdir)) >= k, poll_s=0.005)
    time.sleep(c.rng.uniform(0, 0.1))
  elif moment == 'async_write':
    hit = wait_until(proc, lambda: _in_flight(ckpts), poll_s=0.0005)
  else:   # between_checkpoints: step 2 or 4 committed, the next not begun
    first = c.rng.choice([EVERY, 2 * EVERY])
    hit = wait_until(proc, lambda: first in committed(workdir) and not _in_flight(ckpts)
                     and first < max(logged_steps(workdir) or [0]) < first + EVERY)
  proc.popen.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = logged_steps(workdir)
  had = committed(workdir)
  lost, problems = [], []
  if not hit:
    problems.append(f'moment {moment} not reached (the run ended first)')
  rerun = c.run(workdir)
  _check_rerun(c, workdir, rerun, had, lost, problems)
  message = next((l for l in reversed(rerun.stderr.splitlines()) if 'Resumed from' in l
                  or ' is damaged (' in l), 'started again at step 0')
  return Trial(name, not problems and proc.returncode == -signal.SIGKILL, lost,
               _ABSL_PREFIX.sub('', message.strip()),
               f'killed after step {max(killed_at or [0])} with checkpoints {had}; '
               + '; '.join(problems), proc.seconds + rerun.seconds)


def _in_flight(ckpts: str) -> bool:
  try:
    return any(TMP_MARK in n and not n.endswith('-deleting') for n in os.listdir(ckpts))
  except FileNotFoundError:
    return False


def trial_sigterm(c: Campaign, name: str, trial: int) -> Trial:
  workdir = c.fresh(name, trial)
  proc = c.start(workdir)
  k = c.rng.randint(1, TOTAL_STEPS - 1)
  hit = wait_until(proc, lambda: len(logged_steps(workdir)) >= k, poll_s=0.005)
  proc.popen.send_signal(signal.SIGTERM)
  proc.wait()
  had = committed(workdir)
  lost, problems = [], []
  stopped_at = max(logged_steps(workdir) or [0])
  if proc.returncode == 0 and stopped_at == TOTAL_STEPS:
    problems.append('the run had finished before SIGTERM arrived')
  elif proc.returncode != 75:
    problems.append(f'exit {proc.returncode}, not 75')
  elif not had or max(had) < stopped_at:
    lost.append(f'stopped after step {stopped_at} but the newest checkpoint is {had}')
  if not hit:
    problems.append('SIGTERM sent after the run ended')
  rerun = c.run(workdir)
  _check_rerun(c, workdir, rerun, had, lost, problems)
  return Trial(name, not problems, lost, last_line(proc.stderr),
               f'SIGTERM after step {k}: exit {proc.returncode}, checkpoints {had}; '
               + '; '.join(problems), proc.seconds + rerun.seconds)


def trial_divergence(c: Campaign, name: str, trial: int) -> Trial:
  workdir = c.fresh(name, trial, copy_of=c.base_at_4())
  proc = c.run(workdir, '--config.simclr.temperature=1e-38')
  had = committed(workdir)
  lost, problems = [], []
  if proc.returncode != 3:
    problems.append(f'exit {proc.returncode}, not 3')
  if 'Traceback' in proc.stderr:
    problems.append('a traceback')
  if had != [2, 4]:
    (lost if not set(had) >= {4} else problems).append(f'checkpoints {had}, not [2, 4]')
  bad = [s for s in had if not all_finite(workdir, s)]
  if bad:
    problems.append(f'non-finite checkpoints {bad}')
  rerun = c.run(workdir)
  _check_rerun(c, workdir, rerun, had, lost, problems)
  return Trial(name, not problems, lost, last_line(proc.stderr), '; '.join(problems),
               proc.seconds + rerun.seconds)


def damage(step_dir: str, how: str) -> None:
  state = os.path.join(step_dir, 'state')
  data = [os.path.join(r, n) for r, _, ns in os.walk(state) for n in ns
          if os.sep + 'd' + os.sep in os.path.join(r, n)]
  if how == 'flip':
    target = max(data, key=os.path.getsize)
    blob = bytearray(open(target, 'rb').read())
    for i in (len(blob) // 3, len(blob) // 2, 2 * len(blob) // 3):
      blob[i] ^= 0xFF
    with open(target, 'wb') as f:
      f.write(bytes(blob))
  elif how == 'truncate':
    target = max(data, key=os.path.getsize)
    os.truncate(target, os.path.getsize(target) // 2)
  elif how == 'empty':
    shutil.rmtree(step_dir)
    os.makedirs(step_dir)
  elif how == 'garbage_manifest':
    for root, _, names in os.walk(state):
      for n in names:
        if n == 'manifest.ocdbt':
          path = os.path.join(root, n)
          with open(path, 'wb') as f:
            f.write(os.urandom(max(os.path.getsize(path), 64)))
  else:
    raise ValueError(how)


def trial_damaged(c: Campaign, name: str, trial: int) -> Trial:
  how = DAMAGES[trial % len(DAMAGES)]
  workdir = c.fresh(name, trial, copy_of=c.base_at_4())
  damage(os.path.join(workdir, 'checkpoints', '4'), how)
  rerun = c.run(workdir)
  lost, problems = [], []
  aside = os.listdir(os.path.join(workdir, 'checkpoints_damaged')) if os.path.isdir(
      os.path.join(workdir, 'checkpoints_damaged')) else []
  if not any(a.startswith('4-') for a in aside):
    problems.append(f'step 4 not set aside ({aside})')
  if ' is damaged (' not in rerun.stderr:
    problems.append('no warning')
  _check_rerun(c, workdir, rerun, [2, 4], lost, problems, set_aside=(4,))
  warning = next((l for l in rerun.stderr.splitlines() if ' is damaged (' in l), rerun.stderr)
  return Trial(name, not problems, lost, f'[{how}] ' + last_line(warning),
               '; '.join(problems), rerun.seconds)


def trial_two_writers(c: Campaign, name: str, trial: int) -> Trial:
  workdir = c.fresh(name, trial)
  first = c.start(workdir)
  lock = os.path.join(workdir, '.lock')
  wait_until(first, lambda: len(logged_steps(workdir)) >= 1, poll_s=0.01)
  second = c.run(workdir)
  overlapped = first.popen.poll() is None
  first.wait()
  lost, problems = [], []
  if not overlapped:
    problems.append('the first run ended before the second did')
  if second.returncode != 4:
    problems.append(f'second exit {second.returncode}, not 4')
  if 'Traceback' in second.stderr:
    problems.append('a traceback')
  if os.path.exists(lock) and f'pid {first.popen.pid}' not in second.stderr:
    problems.append("the message does not name the holder's PID")
  _check_rerun(c, workdir, first, [], lost, problems)
  return Trial(name, not problems, lost, last_line(second.stderr),
               f'second process exited after {second.seconds:.1f} s; ' + '; '.join(problems),
               first.seconds)


def trial_bad_config(c: Campaign, name: str, trial: int) -> Trial:
  bad = BAD_CONFIGS[trial % len(BAD_CONFIGS)]
  workdir = c.fresh(name, trial)
  if bad == 'workdir_is_a_file':
    with open(workdir, 'w') as f:
      f.write('x')
    proc, label = c.run(workdir), 'workdir is a file'
  else:
    proc, label = c.run(workdir, *bad), bad[0].replace('--config.', '')
  problems = []
  if proc.returncode != 2:
    problems.append(f'exit {proc.returncode}, not 2')
  if 'Traceback' in proc.stderr or len(proc.stderr.strip().splitlines()) > 2:
    problems.append(f'{len(proc.stderr.strip().splitlines())} stderr lines')
  if bad != 'workdir_is_a_file' and os.path.exists(workdir):
    problems.append('the workdir was created')
  return Trial(name, not problems, [], f'[{label}] {last_line(proc.stderr)}',
               '; '.join(problems), proc.seconds)


def trial_disk_full(c: Campaign, name: str, trial: int) -> Trial:
  disk = os.path.join(c.root, f'{name}_{trial}', 'disk')
  os.makedirs(disk)
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=320k', 'tmpfs', disk],
                           capture_output=True, text=True)
  if mounted.returncode:
    return Trial(name, False, [], 'skipped: cannot mount a tmpfs here '
                 f'({mounted.stderr.strip() or "mount failed"}; needs root)', 'skipped')
  try:
    from contrastive_jax import checkpoint  # pylint: disable=g-import-not-at-top
    workdir = os.path.join(disk, 'run')
    proc = c.run(workdir)
    had = committed(workdir)
    lost, problems = [], []
    if proc.returncode == 0:
      problems.append('the run finished: the disk never filled')
    elif 'No space left' not in last_line(proc.stderr):
      problems.append(f'exit {proc.returncode}: {last_line(proc.stderr)}')
    if 'Traceback' in proc.stderr or 'never retrieved' in proc.stderr:
      problems.append('tracebacks')
    if not had:
      problems.append('no checkpoint was written before the disk filled')
    for step in had:
      ok, reason = checkpoint.verify_checksums(os.path.join(workdir, 'checkpoints', str(step)))
      if ok is False:
        lost.append(f'step {step}: {reason}')
    subprocess.run(['mount', '-o', 'remount,size=16m', disk], check=True)
    rerun = c.run(workdir)
    _check_rerun(c, workdir, rerun, had, lost, problems)
    return Trial(name, not problems, lost, last_line(proc.stderr),
                 f'exit {proc.returncode}, checkpoints {had}; ' + '; '.join(problems),
                 proc.seconds + rerun.seconds)
  finally:
    subprocess.run(['umount', '-l', disk], capture_output=True)


TRIALS = {
    'kill9_before_first_checkpoint': trial_kill9, 'kill9_during_steps': trial_kill9,
    'kill9_async_write': trial_kill9, 'kill9_between_checkpoints': trial_kill9,
    'sigterm': trial_sigterm, 'divergence': trial_divergence, 'damaged_newest': trial_damaged,
    'two_writers': trial_two_writers, 'bad_config': trial_bad_config,
    'disk_full': trial_disk_full,
}


# --- Table ------------------------------------------------------------------------------

def table(results: dict[str, list[Trial]], width: int = 200) -> str:
  """Markdown: one row per scenario; its distinct messages (numbers aside)."""
  lines = ['| scenario | trials | survived with exact resume | data lost | message |',
           '|---|---|---|---|---|']
  for name, trials in results.items():
    run = [t for t in trials if t.detail != 'skipped']
    messages, kinds = [], set()
    for t in trials:
      m = t.message if len(t.message) <= width else t.message[:width - 3] + '...'
      kind = re.sub(r'[0-9a-f]{16,}|[\d.]+', '#', m)
      if kind not in kinds:
        kinds.add(kind)
        messages.append(m.replace('|', '/'))
    survived = f'{sum(t.survived for t in run)}/{len(run)}'
    lost = sum(bool(t.lost) for t in run)
    lines.append(f'| {name} | {len(run)} | {survived} | {lost} | {"<br>".join(messages)} |')
  return '\n'.join(lines)


def select(only: str | None) -> list[str]:
  if not only:
    return list(SCENARIOS)
  picked = []
  for want in only.split(','):
    names = [s for s in SCENARIOS if s == want or s.startswith(want)]
    if not names:
      raise SystemExit(f'--only {want}: no such scenario; choose from {", ".join(SCENARIOS)}')
    picked += [n for n in names if n not in picked]
  return picked


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--trials', type=int, help='trials per scenario (default: DEFAULT_TRIALS)')
  parser.add_argument('--quick', action='store_true',
                      help='one trial per scenario, every variant (damage, bad value) once')
  parser.add_argument('--only', help='comma-separated scenarios or prefixes (kill9)')
  parser.add_argument('--seed', type=int, default=0, help='the random moments')
  parser.add_argument('--root', help='where the workdirs go (default: a new temp dir)')
  parser.add_argument('--keep', action='store_true', help='keep the workdirs and logs')
  parser.add_argument('--json', help='write every trial (details included) to this file')
  args = parser.parse_args(argv)
  names = select(args.only)
  root = args.root or tempfile.mkdtemp(prefix='cj_fault_campaign_')
  os.makedirs(root, exist_ok=True)
  c = Campaign(root, random.Random(args.seed))
  results: dict[str, list[Trial]] = {}
  started = time.monotonic()
  try:
    for name in names:
      results[name] = []
      count = args.trials or (VARIANTS.get(name, 1) if args.quick else DEFAULT_TRIALS[name])
      for trial in range(count):
        t0 = time.monotonic()
        try:
          t = TRIALS[name](c, name, trial)
        except Exception as e:  # pylint: disable=broad-except
          t = Trial(name, False, [], f'campaign error: {type(e).__name__}: {e}', 'error')
        t.seconds = time.monotonic() - t0
        # The trial's own directory, as a user would read it.
        t.message = re.sub(re.escape(root) + r'/[\w.]+?_\d+/(disk/)?run', 'WORKDIR', t.message)
        results[name].append(t)
        print(f'{name} #{trial}: {"survived" if t.survived else "FAILED"}'
              f'{" (lost: " + "; ".join(t.lost) + ")" if t.lost else ""} in {t.seconds:.0f} s'
              f' - {t.message[:160]}{" [" + t.detail + "]" if t.detail.strip("; ") else ""}',
              file=sys.stderr, flush=True)
        if t.detail == 'skipped':
          break
  finally:
    if not args.keep:
      shutil.rmtree(root, ignore_errors=True)
  print(table(results))
  print(f'\n{sum(len(v) for v in results.values())} trials in '
        f'{time.monotonic() - started:.0f} s ({c._count} pretrain processes)')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({k: [dataclasses.asdict(t) for t in v] for k, v in results.items()}, f,
                indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
