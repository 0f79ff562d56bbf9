"""benchmarks/fault_campaign.py: its scenario selection and table, and (slow)
one scenario against real pretrain processes."""

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


def _campaign():
  spec = importlib.util.spec_from_file_location(
      'fault_campaign', os.path.join(REPO, 'benchmarks', 'fault_campaign.py'))
  module = importlib.util.module_from_spec(spec)
  sys.modules['fault_campaign'] = module
  spec.loader.exec_module(module)
  return module


def test_only_takes_names_and_prefixes_and_the_table_counts_trials():
  fc = _campaign()
  assert fc.select('kill9') == [s for s in fc.SCENARIOS if s.startswith('kill9_')]
  assert fc.select('sigterm,kill9_async_write') == ['sigterm', 'kill9_async_write']
  assert set(fc.DEFAULT_TRIALS) == set(fc.SCENARIOS) == set(fc.TRIALS)
  with pytest.raises(SystemExit):
    fc.select('nope')
  results = {'sigterm': [fc.Trial('sigterm', True, [], 'Stopped at step 3 of 8'),
                         fc.Trial('sigterm', False, ['metrics.jsonl steps [1, 1]'],
                                  'Stopped at step 5 of 8')],
             'disk_full': [fc.Trial('disk_full', False, [], 'skipped: no mount', 'skipped')]}
  rows = fc.table(results).splitlines()
  assert rows[2] == '| sigterm | 2 | 1/2 | 1 | Stopped at step 3 of 8 |'
  assert rows[3] == '| disk_full | 0 | 0/0 | 0 | skipped: no mount |'


@pytest.mark.slow
def test_the_bad_config_scenario_runs_against_a_real_process(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'benchmarks', 'fault_campaign.py'), '--only',
       'bad_config', '--trials', '1', '--root', str(tmp_path / 'campaign')],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  row = next(l for l in proc.stdout.splitlines() if l.startswith('| bad_config'))
  assert row.startswith('| bad_config | 1 | 1/1 | 0 | [total_steps=-5] error: '), row
  assert not (tmp_path / 'campaign').exists()   # removed without --keep
