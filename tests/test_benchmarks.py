"""The benchmark scripts run (--quick, tiny sizes) and print the expected tables.

Each script runs as a subprocess, as a user would run it, with TensorFlow,
tensorflow_datasets and tensorboardX made unimportable: the GPU machine the
benchmarks are meant for has none of them, so the training path must not
need them. The numbers are not checked, only that they are there and finite.
"""

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest


REPO = pathlib.Path(__file__).resolve().parents[1]

# Runs a script with `import tensorflow` (and friends) failing, as on the GPU machine.
_NO_TF = (
    "import runpy, sys\n"
    "for m in ('tensorflow', 'tensorflow_datasets', 'tensorboardX'): sys.modules[m] = None\n"
    "script = sys.argv[1]; sys.argv = sys.argv[1:]\n"
    "runpy.run_path(script, run_name='__main__')\n"
)


def _run(script: str, args: list[str], env_update: dict[str, str],
         without_tf: bool = True) -> str:
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # conftest's 8 devices: each script picks its own
  env.update(env_update, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  launcher = ['-c', _NO_TF] if without_tf else []
  proc = subprocess.run([sys.executable, *launcher, str(REPO / 'benchmarks' / script)]
                        + args, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, f'{script} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}'
  return proc.stdout


def _table_rows(stdout: str) -> list[list[str]]:
  """Markdown table body rows (header and separator dropped), split into cells."""
  rows = [line.strip().strip('|').split('|') for line in stdout.splitlines()
          if line.startswith('|') and not line.startswith('|---')]
  return [[c.strip() for c in r] for r in rows[1:]]


def _bench_module(name: str):
  """benchmarks/<name>.py imported in-process (registered in sys.modules, as
  its dataclasses need)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(name, REPO / 'benchmarks' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def test_throughput_quick(tmp_path):
  out = tmp_path / 'tp.jsonl'
  stdout = _run('throughput.py', ['--quick', '--conv', 'auto', '--naive-augment', 'none',
                                  '--augment-ablation', '--out', str(out),
                                  '--profile-augment', str(tmp_path / 'trace'),
                                  '--set', 'augment.jitter_strength=0.5',
                                  '--set', 'augment.matmul_precision=default'], {})
  rows = _table_rows(stdout)
  names = [r[0] for r in rows]
  assert [n.split(' ')[0] for n in names] == (
      ['project', 'naive', 'augment'] + ['aug:'] * 6 + ['matmul']), names
  assert (names[3] == 'aug: crop+flip, matmul_precision=highest'
          and names[7] == 'aug: + jitter + grayscale + blur')
  for r in rows[:9]:  # step ms, images/s, GFLOP/image, GFLOP/s
    for cell in (r[1], r[3], r[4], r[5]):
      assert math.isfinite(float(cell)) and float(cell) >= 0, r
    assert r[6].endswith('%') and math.isfinite(float(r[6][:-1])), r
  assert re.search(r'augmentation share of the project step: [0-9.]+%', stdout)
  assert re.search(r'ratio project/naive \(images/s\): [0-9.]+ \(medians of steps taken in turn; '
                   r'per pair median [0-9.]+, min-max [0-9.]+-[0-9.]+\)', stdout)

  result = json.loads(out.read_text().splitlines()[-1])
  for name in ('project', 'naive', 'augment'):
    t = result[name]
    assert t['steps'] == 2
    for key in ('step_s', 'images_per_s', 'flops_per_image', 'mfu', 'compile_s'):
      assert _finite(t[key]) and t[key] > 0, (name, key, t[key])
  assert result['project']['flops_per_image'] > result['augment']['flops_per_image']
  assert _finite(result['augment_share']) and _finite(result['ratio_project_over_naive'])
  # The two steps took turns, one ratio per pair of steps.
  assert result['timing'] == 'interleaved' and len(result['pair_ratios']) == 2
  assert all(_finite(x) and x > 0 for x in result['pair_ratios'])
  # What the kernel did per step (Linux: getrusage), for both steps.
  for name in ('project', 'naive'):
    assert _finite(result[name]['page_faults']) and result[name]['page_faults'] >= 0
    assert _finite(result[name]['system_s']) and result[name]['system_s'] >= 0
  assert re.search(r'kernel work per step \(whole process, median\): project [0-9,]+ minor '
                   r'page faults, [0-9.]+ s system CPU; naive [0-9,]+ minor page faults', stdout)
  # The project step alone compiled with the binaries' XLA:CPU setting.
  from contrastive_jax.kernels import xla_cpu  # pylint: disable=g-import-not-at-top
  assert result['project_compiler_options'] == xla_cpu.compiler_options('cpu')
  assert result['conv'].startswith('auto: ')
  assert _finite(result['matmul']['best_flops_per_s']) and result['matmul']['bursts'] == 2
  assert _finite(result['loss_after']['project']) and _finite(result['loss_after']['naive'])
  assert result['global_batch'] == 4 and result['env']['num_devices'] == 1
  # --set reached the config; --profile-augment traced the augmentation's kernels.
  assert result['args']['set'] == ['augment.jitter_strength=0.5',
                                   'augment.matmul_precision=default']
  profile = result['augment_profile']
  assert profile['calls'] == 5 and profile['total_us'] > 0 and profile['kernels']
  assert abs(sum(k['share'] for k in profile['kernels']) - 1.0) < 1e-6 or len(
      profile['kernels']) == 25
  assert 'device time by kernel' in stdout
  assert (tmp_path / 'trace' / 'augment_hlo.txt').read_text().startswith('HloModule')


def test_time_interleaved_records_page_faults_of_each_call():
  timing = _bench_module('timing')
  import numpy as np  # pylint: disable=g-import-not-at-top
  kept = []

  def fresh_64mb():  # first touch of 64 MiB: 16,384 4-KiB pages, or 32 huge ones
    kept.append(np.ones(1 << 24, np.float32))  # (numpy asks Linux for huge pages)
    return kept[-1][:1]

  def reuse():
    kept[-1][:] = 2.0  # pages already touched
    return kept[-1][:1]

  usage = [[], []]
  times = timing.time_interleaved([fresh_64mb, reuse], steps=3, warmup=0, usage=usage)
  assert [len(t) for t in times] == [3, 3] and [len(u) for u in usage] == [3, 3]
  assert all(faults >= 32 and sys_s >= 0 for faults, sys_s in usage[0]), usage
  assert max(f for f, _ in usage[1]) < min(f for f, _ in usage[0]), usage
  medians = timing.usage_medians(usage[0])
  assert medians['page_faults'] == sorted(f for f, _ in usage[0])[1]
  assert timing.usage_medians([]) == {}


def test_throughput_config_overrides():
  throughput = _bench_module('throughput')
  assert throughput.parse_overrides(['augment.blur_prob=0.5', 'model.dtype=bfloat16',
                                     'data.name=a=b']) == {
      'augment.blur_prob': 0.5, 'model.dtype': 'bfloat16', 'data.name': 'a=b'}
  with pytest.raises(ValueError, match='KEY=VALUE'):
    throughput.parse_overrides(['augment.blur_prob'])
  args = throughput.parse_args(['--quick', '--set', 'augment.matmul_precision=default'])
  assert throughput.pretrain_config(args, 4).augment.matmul_precision == 'default'
  args = throughput.parse_args(['--quick', '--set', 'augment.matmul_precision=tf32'])
  with pytest.raises(ValueError, match='matmul_precision'):
    throughput.pretrain_config(args, 4)


def test_bfloat16_matmul_peak_is_the_faster_of_both_outputs():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  timing = _bench_module('timing')
  burst, forms, flops = timing.matmul_burst(jnp.bfloat16, 64, calls=2)
  for _ in range(3):
    burst()
  assert flops == 2.0 * 64 ** 3 and sorted(forms) == ['bfloat16 out', 'float32 out']
  assert [len(ts) for ts in forms.values()] == [3, 3]
  # Each burst's peak is its fastest form (on a CPU with AVX512-BF16, XLA:CPU ran
  # bf16 -> f32 at ~2x bf16 -> bf16).
  seconds = timing.fastest_per_burst(forms)
  assert seconds == [min(forms['bfloat16 out'][i], forms['float32 out'][i]) for i in range(3)]
  _, forms32, _ = timing.matmul_burst(jnp.float32, 64, calls=2)
  assert list(forms32) == ['float32 out']


@pytest.mark.slow  # CI time; the float32 / sequential paths stay in the default run
def test_throughput_quick_bfloat16(tmp_path):
  out = tmp_path / 'tp.jsonl'
  stdout = _run('throughput.py', ['--quick', '--dtype', 'bfloat16', '--naive', 'no',
                                  '--out', str(out)], {})
  m = json.loads(out.read_text().splitlines()[-1])['matmul']
  forms = m['best_flops_per_s_by_form']
  assert sorted(forms) == ['bfloat16 out', 'float32 out']
  assert m['best_flops_per_s'] == pytest.approx(max(forms.values()))
  assert re.search(r'\| matmul bfloat16 256\^2, (bfloat16|float32) out \(best of bfloat16 out '
                   r'[0-9.]+, float32 out [0-9.]+\)', stdout), stdout


def test_throughput_quick_with_pytorch_and_lightly(tmp_path):
  pytest.importorskip('torch')
  pytest.importorskip('lightly')
  out = tmp_path / 'tp.jsonl'
  stdout = _run('throughput.py', ['--quick', '--naive', 'no', '--torch', 'both',
                                  '--out', str(out)], {})
  rows = {r[0]: r for r in _table_rows(stdout)}
  for label in ('PyTorch + lightly (eager, NCHW)', 'PyTorch + lightly (eager, channels_last)'):
    r = rows[label]
    assert float(r[1]) > 0 and float(r[3]) > 0, r  # step ms, images/s
    assert r[6] == 'nan%' and r[7] == '- (eager)', r  # --quick: a different net, no MFU
    assert re.search(rf'ratio project / {re.escape(label)}, images/s: [0-9.]+ \(per pair '
                     r'median [0-9.]+, min-max [0-9.]+-[0-9.]+\); its host augmentation '
                     r'[0-9.]+% of its step', stdout), stdout
  result = json.loads(out.read_text().splitlines()[-1])
  assert result['torch'] == ['torch_nchw', 'torch_channels_last']
  for name in result['torch']:
    t = result[name]
    assert t['steps'] == 2 and _finite(t['step_s']) and t['step_s'] > 0
    assert 0 < t['augment_s'] < t['step_s'] and 0 < t['augment_share'] < 1
    assert _finite(t['loss_after']) and t['loss_after'] > 0
    assert _finite(t['page_faults']) and _finite(t['system_s'])
    assert _finite(result[f'ratio_project_over_{name}'])
    assert len(result[f'pair_ratios_{name}']) == 2
  assert result['env']['torch'] and result['env']['lightly'] and result['env']['torch_threads'] > 0


def test_pytorch_reference_is_the_same_network():
  """The torch step's encoder has exactly the project's parameters (counts and
  the feature width), for the CIFAR-stem ResNet-18 and the ImageNet ResNet-50."""
  torch = pytest.importorskip('torch')
  pytest.importorskip('lightly')
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from contrastive_jax.models import build_encoder, count_params  # pylint: disable=g-import-not-at-top
  throughput = _bench_module('throughput')
  torch_reference = _bench_module('torch_reference')
  for model, size in (('resnet18', 32), ('resnet50', 224)):
    encoder = build_encoder(throughput.model_config(model, size, 'float32'))
    x = jnp.zeros((1, size, size, 3))
    variables = jax.eval_shape(lambda e=encoder, x=x: e.init(jax.random.PRNGKey(0), x,
                                                             train=False))
    h = jax.eval_shape(lambda v, e=encoder, x=x: e.apply(v, x, train=False), variables)
    net = torch_reference.build_backbone(model, cifar_stem=size <= 64, channels=3).eval()
    with torch.no_grad():
      h_torch = net(torch.zeros(1, 3, size, size))
    assert torch_reference.encoder_parameter_count(model, size <= 64, 3) == count_params(
        variables['params']), model
    assert tuple(h_torch.shape) == h.shape, model


def test_pytorch_reference_says_how_to_install(monkeypatch):
  torch_reference = _bench_module('torch_reference')
  monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(SystemExit, match='pip install torch torchvision lightly'):
    torch_reference.versions()


def test_ntxent_scale_quick(tmp_path):
  out = tmp_path / 'nt.jsonl'
  stdout = _run('ntxent_scale.py', ['--quick', '--out', str(out)], {})
  rows = _table_rows(stdout)
  assert [(r[0], r[1].split(' ')[0]) for r in rows] == [
      ('256', 'dense'), ('256', 'blockwise'), ('1024', 'dense'), ('1024', 'blockwise')]
  for r in rows:
    assert math.isfinite(float(r[7])), r  # quick sizes are always timed
  result = json.loads(out.read_text().splitlines()[-1])
  assert result['env']['num_devices'] == 8
  for row in result['rows']:
    assert row['effective'] == row['mode']  # block 128 < 2B: the blockwise path runs
    assert _finite(row['time_s']) and _finite(row['loss'])
    assert _finite(row['mem']['temp']) and row['mem']['peak'] > 0
  dense = {r['batch']: r for r in result['rows'] if r['mode'] == 'dense'}
  # Per-device temp memory grows with the batch (logits are [2n, 2B]).
  assert dense[1024]['mem']['temp'] > dense[256]['mem']['temp']


def test_quality_quick_fixed_steps(tmp_path):
  out = tmp_path / 'q'
  stdout = _run('quality.py', ['--quick', '--steps', '3', '--skip-baselines', '--out', str(out),
                               '--set', 'simclr.temperature=0.5'], {})
  rows = _table_rows(stdout)
  assert [r[0] for r in rows] == ['SimCLR 3steps'] and rows[0][1] == '3', rows
  result = json.loads((out / 'quality.json').read_text())
  row = result['rows'][0]
  # The table prints what the JSON holds, to the test set's 0.01 points.
  assert rows[0][3] == f"{100 * row['linear_top1']:.2f}%", (rows[0], row)
  assert row['steps'] == 3 and row['step'] == 3
  for key in ('linear_top1', 'linear_val_top1', 'knn_k20_top1', 'knn_k200_top1'):
    assert 0.0 <= row[key] <= 1.0, (key, row[key])
  config = json.loads((out / 'simclr_3steps' / 'config.json').read_text())
  assert config['simclr']['temperature'] == 0.5  # --set reaches the pretraining run
  # The figure names its code: this checkout's commit (+dirty when edited).
  head = subprocess.run(['git', '-C', str(REPO), 'rev-parse', '--short', 'HEAD'],
                        capture_output=True, text=True, check=False).stdout.strip()
  assert result['meta']['commit'].split('+')[0] == (head or 'unknown'), result['meta']


def test_provenance_outside_a_git_checkout(tmp_path):
  assert _bench_module('provenance').git_commit(str(tmp_path)) == 'unknown'


def test_quality_budget_steps_sized_above_the_calibrated_rate():
  quality = _bench_module('quality')
  # 20 minutes, 60 s of fixed cost, 1.7 steps/s: 1140 s x 1.7 = 1938 steps,
  # scheduled 5% longer (the deadline cuts an overlong schedule's tail).
  assert abs(quality.budget_steps(20, 1.7, 60.0) - 1938 * quality.RATE_MARGIN) <= 1
  assert quality.RATE_MARGIN > 1.0
  assert quality.budget_steps(0.5, 1.0, 60.0) == 2  # budget under the fixed cost


# A stand-in binary: stops cleanly on SIGTERM, as the training loop does.
_SLOW_BINARY = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (print('stopped'), sys.exit(0)))\n"
    "print('started', flush=True)\n"
    "time.sleep(60)\n"
)


def test_quality_deadline_stops_the_run(tmp_path, monkeypatch):
  quality = _bench_module('quality')
  (tmp_path / 'slow_binary.py').write_text(_SLOW_BINARY)
  monkeypatch.setenv('PYTHONPATH', str(tmp_path))
  log = tmp_path / 'slow.log'
  wall = quality._run(['slow_binary'], str(log), deadline_s=3.0)
  assert 3.0 <= wall < 30.0
  assert log.read_text().split() == ['started', 'stopped']
  # Without a deadline it runs to the end; a binary killed by a signal is an error.
  (tmp_path / 'quick_binary.py').write_text("print('done')\n")
  assert quality._run(['quick_binary'], str(log)) < 30.0
  assert log.read_text() == 'done\n'
  (tmp_path / 'killed_binary.py').write_text('import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n')
  with pytest.raises(RuntimeError, match='exit status -9'):
    quality._run(['killed_binary'], str(log))
  # The deadline's SIGTERM after the training loop (no handler left) ends the
  # binary with -SIGTERM: the run's checkpoint is there, not an error. The same
  # exit without the deadline's signal is one.
  (tmp_path / 'unhandled_binary.py').write_text('import time; time.sleep(60)\n')
  assert 1.0 <= quality._run(['unhandled_binary'], str(log), deadline_s=1.0) < 30.0
  (tmp_path / 'self_term_binary.py').write_text(
      'import os, signal; os.kill(os.getpid(), signal.SIGTERM)\n')
  with pytest.raises(RuntimeError, match='exit status -15'):
    quality._run(['self_term_binary'], str(log))


@pytest.mark.slow  # CI time; the float32 / sequential paths stay in the default run
def test_semi_supervised_quick_parallel(tmp_path):
  out = tmp_path / 'ssl'
  stdout = _run('semi_supervised.py', ['--quick', '--jobs', '2', '--lrs', '0.1,0.2',
                                       '--out', str(out)], {})
  rows = _table_rows(stdout)
  assert rows[0][0] == '10%', rows  # the summary: one row per fraction
  report = json.loads((out / 'semi_supervised.json').read_text())
  runs = report['runs']
  assert sorted((r['arm'], r['lr']) for r in runs) == [
      ('pretrained', 0.1), ('pretrained', 0.2), ('scratch', 0.1), ('scratch', 0.2)]
  assert len({r['label_examples'] for r in runs}) == 1
  for r in runs:
    assert 0.0 <= r['test_top1'] <= 1.0 and r['steps'] == 4
  assert set(report['best']['0.1']) == {'pretrained', 'scratch'}


def test_host_input_quick(tmp_path):
  """The one benchmark of the host's tf.data work (so TensorFlow is allowed)."""
  pytest.importorskip('tensorflow')
  out = tmp_path / 'host.jsonl'
  stdout = _run('host_input.py', ['--quick', '--out', str(out)], {}, without_tf=False)
  rows = _table_rows(stdout)
  assert [(r[0], r[1]) for r in rows] == [('center_square', '32'), ('letterbox', '32')]
  assert all(float(r[2]) > 0 for r in rows)
  record = json.loads(out.read_text().splitlines()[-1])
  assert record['kind'] == 'host_input' and len(record['rows']) == 2
  assert all(_finite(r['images_per_s']) for r in record['rows'])


@pytest.mark.slow  # 40 s of compiling: CI stays near 20 minutes
def test_text_step_quick(tmp_path):
  out = tmp_path / 'text.jsonl'
  stdout = _run('text_step.py', ['--quick', '--out', str(out)], {})
  rows = {r[0]: r for r in _table_rows(stdout)}
  assert list(rows) == ['naive', 'ours bi plain', 'ours bi bucketed', 'ours uni plain',
                        'ours uni bucketed'], rows
  for r in rows.values():  # step ms, sentences/s, GFLOP/step, GFLOP/s
    for cell in (r[3], r[4], r[6], r[7]):
      assert math.isfinite(float(cell)) and float(cell) > 0, r
    assert r[5].endswith('x') and r[8].endswith('%') and r[9].endswith('%'), r
  assert rows['naive'][2] == '16 (100%)'  # the tiny config's max_length, un-bucketed
  # The shortest bucketed width: one length quantum (the configs' 4 tokens).
  assert rows['ours bi bucketed'][2].startswith('4 (')
  for what in ('same architecture (bi-GRU)', "the config's architecture (uni-GRU)"):
    for kind in ('bucketed', 'plain'):
      assert re.search(rf'ratio ours/naive \(sentences/s\), {re.escape(what)}, {kind}: '
                       r'[0-9.]+ \(per pair median [0-9.]+, min-max [0-9.]+-[0-9.]+\)',
                       stdout), stdout
  record = json.loads(out.read_text().splitlines()[-1])
  assert record['kind'] == 'text_step' and record['source'] == 'embedded_text'
  assert abs(sum(record['epoch_width_share'].values()) - 1.0) < 1e-9
  for row in record['rows']:
    for key in ('step_s', 'sentences_per_s', 'step_flops', 'mfu_peak', 'mfu_matmul',
                'ratio_over_naive'):
      assert _finite(row[key]) and row[key] > 0, (row['arm'], key, row[key])
    assert len(row['round_s']) == 2 and len(row['pair_ratios']) == 2
  assert _finite(record['matmul']['best_flops_per_s'])
