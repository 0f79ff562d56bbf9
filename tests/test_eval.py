"""The eval binary end to end on a tiny pretraining run; plots; config handling.

One tiny pretraining run (configs/smoke.py:tiny, 6 steps, checkpoints at 3 and
6) is shared by the module. Evaluations use a 300/100-example slice of the
embedded Fashion-MNIST subset written as IDX files and given through the
config.data overrides, so they take seconds.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from contrastive_jax import checkpoint, eval as eval_lib, export, modalities, parallel, plots, train
from contrastive_jax.data import pipeline, sources
from tests.helpers import REPO, load_config, set_keys

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _write_idx(path: str, array: np.ndarray) -> None:
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory) -> str:
  """300 train / 100 test class-balanced Fashion-MNIST images as IDX files."""
  directory = str(tmp_path_factory.mktemp('idx'))
  for split, stem, per_class in (('train', 'train', 30), ('test', 't10k', 10)):
    src = sources.load_embedded(split)
    pick = sources.select_label_subset(src.labels, per_class=per_class)
    _write_idx(os.path.join(directory, f'{stem}-images-idx3-ubyte.gz'), src.images[pick, ..., 0])
    _write_idx(os.path.join(directory, f'{stem}-labels-idx1-ubyte.gz'), src.labels[pick])
  return directory


def eval_config(init_from: str, idx_dir: str, **overrides):
  config = load_config('eval', 'tiny')
  config.init_from = init_from
  config.data.source = 'idx'
  config.data.idx_dir = idx_dir
  return set_keys(config, overrides)


def test_the_shared_pretrain_run_has_two_checkpoints(pretrain_dir):
  # The continuous-eval tests below publish these two steps one at a time.
  assert checkpoint.checkpoint_steps(os.path.join(pretrain_dir, 'checkpoints')) == [3, 6]


@pytest.fixture(scope='module')
def evaluated(pretrain_dir, idx_dir, tmp_path_factory):
  """One evaluate() of the latest step, counting which splits were read."""
  evaldir = str(tmp_path_factory.mktemp('evaldir'))
  reads: list[str] = []
  original = sources.load_source

  def counting(data_cfg, split):
    reads.append(split)
    return original(data_cfg, split)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(sources, 'load_source', counting)
    config = eval_config(pretrain_dir, idx_dir, plot_methods='pca,tsne', plot_max_points=120)
    results = eval_lib.evaluate(config, evaldir)
  return results, evaldir, reads


# ---------------------------------------------------------------------------
# One evaluation.

def test_evaluate_writes_results_with_accuracies(evaluated):
  results, evaldir, _ = evaluated
  out = os.path.join(evaldir, 'eval')
  with open(os.path.join(out, 'results.json')) as f:
    saved = json.load(f)
  with open(os.path.join(out, 'step_6.json')) as f:
    assert json.load(f) == saved
  assert saved['step'] == 6 and results['evaluated_steps'] == [6]
  for key in ('linear_top1', 'linear_top5', 'knn_k20_top1', 'knn_k20_top5',
              'knn_k200_top1', 'knn_k200_top5', 'linear_val_top1'):
    assert 0.0 <= saved[key] <= 1.0, key
    assert saved[key] == pytest.approx(results[key])
  assert saved['linear_top5'] >= saved['linear_top1']
  # 6 steps of a 2-stage 8-wide net still beat chance (10 classes) by a margin.
  assert saved['linear_top1'] > 0.2 and saved['knn_k20_top1'] > 0.2
  # No val carve in the run (val_examples=0): val_fraction of train was carved.
  assert (saved['train_examples'], saved['val_examples'], saved['test_examples']) == (
      270, 30, 100)
  assert saved['linear_train_examples'] == 300
  assert saved['feature'] == 'h' and saved['feature_dim'] == 16
  with open(os.path.join(out, 'config.json')) as f:
    assert json.load(f)['init_from'] == saved['init_from']
  rows = [json.loads(l) for l in open(os.path.join(out, 'metrics.jsonl'))]
  assert rows[-1]['step'] == 6 and rows[-1]['linear_top1'] == pytest.approx(saved['linear_top1'])
  assert os.listdir(os.path.join(out, 'tensorboard'))


def test_hyperparameters_come_from_val_and_test_is_read_once(evaluated):
  results, _, reads = evaluated
  assert reads.count('test') == 1 and reads.count('train') == 1, reads
  grid = results['linear_grid']
  assert len(grid) == 4  # tiny: 2 learning rates x 2 weight decays
  vals = [g['val_top1'] for g in grid]
  chosen = grid[int(np.argmax(vals))]
  assert results['linear_val_top1'] == max(vals)
  assert (results['linear_base_learning_rate'], results['linear_weight_decay']) == (
      chosen['base_learning_rate'], chosen['weight_decay'])


def test_embedding_plots_are_valid_pngs(evaluated):
  _, evaldir, _ = evaluated
  pytest.importorskip('matplotlib')
  PIL = pytest.importorskip('PIL.Image')
  names = ['embedding_pca.png']
  try:
    import sklearn.manifold  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    names.append('embedding_tsne.png')
  except ImportError:
    assert not os.path.exists(os.path.join(evaldir, 'eval', 'embedding_tsne.png'))
  for name in names:
    path = os.path.join(evaldir, 'eval', name)
    with open(path, 'rb') as f:
      assert f.read(8) == PNG_MAGIC
    with PIL.open(path) as image:
      image.verify()
    with PIL.open(path) as image:
      assert image.size[0] > 200 and image.size[1] > 200
      # Not a blank canvas: many distinct colours (the class colours).
      assert len(image.convert('RGB').getcolors(1 << 20)) > 10


# ---------------------------------------------------------------------------
# Continuous mode.

def _copy_run(src: str, dst: str, steps: list[int]) -> str:
  os.makedirs(os.path.join(dst, 'checkpoints'))
  shutil.copy(os.path.join(src, 'config.json'), dst)
  for s in steps:
    shutil.copytree(os.path.join(src, 'checkpoints', str(s)),
                    os.path.join(dst, 'checkpoints', str(s)))
  return dst


def _publish(src: str, dst: str, step: int) -> None:
  """A step appears at once, as orbax's finalising rename makes it appear."""
  staging = os.path.join(dst, f'staging_{step}')
  shutil.copytree(os.path.join(src, 'checkpoints', str(step)), staging)
  os.rename(staging, os.path.join(dst, 'checkpoints', str(step)))


def test_continuous_follows_new_checkpoints_until_total_steps(pretrain_dir, idx_dir, tmp_path):
  run = _copy_run(pretrain_dir, str(tmp_path / 'run'), [3])
  evaldir = str(tmp_path / 'eval')
  config = eval_config(run, idx_dir, continuous=True, modes='knn', plot=False)
  box: dict = {}
  thread = threading.Thread(target=lambda: box.update(eval_lib.evaluate(config, evaldir)))
  thread.start()
  first = os.path.join(evaldir, 'eval', 'step_3.json')
  deadline = time.monotonic() + 120
  while not os.path.exists(first) and thread.is_alive() and time.monotonic() < deadline:
    time.sleep(0.1)
  assert os.path.exists(first), 'step 3 was not evaluated'
  assert thread.is_alive()  # step 3 < total_steps (6): still waiting
  _publish(pretrain_dir, run, 6)
  thread.join(timeout=120)
  assert not thread.is_alive(), 'did not stop after the last step'
  assert box['evaluated_steps'] == [3, 6]
  with open(os.path.join(evaldir, 'eval', 'results.json')) as f:
    assert json.load(f)['step'] == 6
  assert os.path.exists(os.path.join(evaldir, 'eval', 'step_6.json'))
  # Read only: the evaluated run's directory is unchanged.
  assert sorted(os.listdir(os.path.join(run, 'checkpoints'))) == ['3', '6']
  assert sorted(os.listdir(run)) == ['checkpoints', 'config.json']


def test_continuous_skips_a_checkpoint_deleted_while_reading(pretrain_dir, idx_dir, tmp_path,
                                                             monkeypatch):
  run = _copy_run(pretrain_dir, str(tmp_path / 'run'), [3])
  original = checkpoint.Checkpointer.restore

  def restore(self, step=None, target=None):
    if step == 3:  # keep-K deletes 3 just as the writer publishes 6
      _publish(pretrain_dir, run, 6)
      shutil.rmtree(os.path.join(run, 'checkpoints', '3'))
      raise FileNotFoundError('step 3 deleted')
    return original(self, step, target)

  monkeypatch.setattr(checkpoint.Checkpointer, 'restore', restore)
  config = eval_config(run, idx_dir, continuous=True, modes='knn', plot=False)
  results = eval_lib.evaluate(config, str(tmp_path / 'eval'))
  assert results['evaluated_steps'] == [6]


def test_continuous_skips_a_step_another_process_no_longer_lists(pretrain_dir, idx_dir,
                                                                  tmp_path, monkeypatch):
  """Multi-host: this process still lists step 3, another one saw keep-K delete it.

  All processes must skip it together, and before orbax's restore (which ends
  in a barrier); evaluating it here alone would wait forever in a collective
  the other process never joins.
  """
  run = _copy_run(pretrain_dir, str(tmp_path / 'run'), [3])
  questions = []

  def any_process(flag):
    questions.append(flag)
    if len(questions) == 1:  # "does any process miss step 3?": the other one does
      _publish(pretrain_dir, run, 6)
      return True
    return flag

  monkeypatch.setattr(eval_lib, '_on_any_process', any_process)
  config = eval_config(run, idx_dir, continuous=True, modes='knn', plot=False,
                       continuous_timeout_s=60)
  results = eval_lib.evaluate(config, str(tmp_path / 'eval'))
  assert results['evaluated_steps'] == [6]
  assert questions[0] is False  # this process itself still listed step 3


def test_continuous_times_out_without_checkpoints(idx_dir, pretrain_dir, tmp_path):
  run = _copy_run(pretrain_dir, str(tmp_path / 'run'), [])
  config = eval_config(run, idx_dir, continuous=True, continuous_timeout_s=0.3)
  with pytest.raises(TimeoutError, match='continuous_timeout_s'):
    eval_lib.evaluate(config, str(tmp_path / 'eval'))


# ---------------------------------------------------------------------------
# Classifier mode (export.load_classifier's interface: .logits(uint8) -> [N, C]).

class FakeClassifier:
  """Right on even-sum images, second-best otherwise: top-1 known, top-5 = 1."""

  def __init__(self, lookup):
    self.lookup, self.calls = lookup, 0

  def logits(self, images):
    assert images.dtype == np.uint8 and images.ndim == 4
    self.calls += 1
    out = np.zeros((len(images), 10), np.float32)
    for i, image in enumerate(images):
      label = self.lookup.get(image.tobytes(), 0)
      if int(image.sum()) % 2 == 0:
        out[i, label] = 2.0
      else:
        out[i, (label + 1) % 10], out[i, label] = 2.0, 1.0
    return out


def test_classifier_mode_scores_the_classifier_on_test(pretrain_dir, idx_dir, tmp_path,
                                                       monkeypatch):
  test = sources.load_idx(idx_dir, 'test')
  fake = FakeClassifier({img.tobytes(): int(y) for img, y in zip(test.images, test.labels)})
  config = eval_config(pretrain_dir, idx_dir, modes='classifier')
  # A pretraining run holds no classifier: refused before any checkpoint is read.
  with pytest.raises(ValueError, match='not a fine-tune or distill workdir'):
    eval_lib.evaluate(config, str(tmp_path / 'refused'))
  asked = []
  monkeypatch.setattr(export, 'require_classifier_run', lambda config, workdir: None)
  monkeypatch.setattr(export, 'classifier_from_state', lambda config, state, step, workdir:
                      asked.append((workdir, step, sorted(state))) or fake)
  # The classifier comes from the state the loop restored, never from a second
  # read, which keep-K could delete in between (continuous mode).
  monkeypatch.setattr(export, 'load_classifier', None)
  results = eval_lib.evaluate(config, str(tmp_path / 'eval'))
  even = np.array([int(img.sum()) % 2 == 0 for img in test.images])
  assert asked == [(pretrain_dir, 6, ['batch_stats', 'extra', 'opt_state', 'params', 'step'])]
  assert results['classifier_examples'] == 100
  assert results['classifier_top1'] == pytest.approx(even.mean())
  assert results['classifier_top5'] == 1.0
  assert 'linear_top1' not in results and fake.calls >= 2  # batch 64: 2 batches


# ---------------------------------------------------------------------------
# Features.

def test_features_are_the_same_on_1_and_8_devices(pretrain_dir, idx_dir):
  run_config = export.read_config(pretrain_dir)
  with checkpoint.Checkpointer(os.path.join(pretrain_dir, 'checkpoints'), read_only=True) as c:
    state, extra = c.restore(6)
  assert extra['total_steps'] == 6
  test = sources.load_idx(idx_dir, 'test')
  modality = modalities.build(run_config, test.input_shape)
  module, variables = eval_lib.feature_model(run_config.model, state, modality)
  feats = {}
  for n in (1, 8):
    mesh = parallel.make_mesh(jax.devices()[:n])
    predict = train.make_predict_fn(module, mesh, modality)
    batches = pipeline.eval_batches(test, 64)
    feats[n] = eval_lib.extract_features(predict, parallel.replicate(variables, mesh),
                                         batches, 'proj_1', mesh)
  np.testing.assert_allclose(feats[1][0], feats[8][0], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(feats[1][1], test.labels)
  assert feats[8][0].shape == (100, 16)  # proj_1: the head's hidden layer (width of h)
  with pytest.raises(ValueError, match='config.feature'):
    eval_lib.extract_features(predict, parallel.replicate(variables, mesh),
                              pipeline.eval_batches(test, 64), 'nope', mesh)


def test_feature_model_without_a_full_head_gives_h_only(pretrain_dir):
  run_config = export.read_config(pretrain_dir)
  with checkpoint.Checkpointer(os.path.join(pretrain_dir, 'checkpoints'), read_only=True) as c:
    state, _ = c.restore(6)
  # A fine-tuned classifier keeps the encoder and perhaps the first head layer.
  partial = dict(state, params={'encoder': state['params']['encoder'],
                                'classifier': {'kernel': np.zeros((16, 10))}})
  modality = modalities.build(run_config, (16, 16, 1))
  module, variables = eval_lib.feature_model(run_config.model, partial, modality)
  assert isinstance(module, eval_lib.EncoderFeatures)
  assert set(variables['params']) == {'encoder'}
  module, variables = eval_lib.feature_model(run_config.model, state, modality)
  assert set(variables['params']) == {'encoder', 'head'}  # the online probe is dropped


# ---------------------------------------------------------------------------
# Configuration.

def test_data_overrides_and_config_errors(pretrain_dir, idx_dir, tmp_path):
  run = export.read_config(pretrain_dir).data
  overrides = load_config('eval').data
  assert all(v is None for v in overrides.values())
  assert eval_lib.resolve_data_config(run, overrides).to_dict() == run.to_dict()
  overrides.source, overrides.val_examples = 'idx', 7
  merged = eval_lib.resolve_data_config(run, overrides)
  assert (merged.source, merged.val_examples, merged.image_size) == ('idx', 7, run.image_size)
  overrides.source = 'bogus'
  with pytest.raises(ValueError, match='config.data.source'):
    eval_lib.resolve_data_config(run, overrides)

  evaldir = str(tmp_path / 'e')
  with pytest.raises(ValueError, match='config.modes'):
    eval_lib.evaluate(eval_config(pretrain_dir, idx_dir, modes='linear,svm'), evaldir)
  with pytest.raises(ValueError, match='config.init_from'):
    eval_lib.evaluate(eval_config('', idx_dir), evaldir)
  with pytest.raises(ValueError, match='config.linear.optimizer'):
    eval_lib.evaluate(eval_config(pretrain_dir, idx_dir, **{'linear.optimizer': 'adam'}),
                      evaldir)
  with pytest.raises(ValueError, match='config.plot_methods'):
    eval_lib.evaluate(eval_config(pretrain_dir, idx_dir, plot_methods='pca,umap'), evaldir)
  for key in ('linear.feature_norm', 'knn.feature_norm'):
    with pytest.raises(ValueError, match=f'config.{key}'):
      eval_lib.evaluate(eval_config(pretrain_dir, idx_dir, **{key: 'none,bn'}), evaldir)
  with pytest.raises(FileNotFoundError, match='config.step'):
    eval_lib.evaluate(eval_config(pretrain_dir, idx_dir, step=5), evaldir)
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    eval_lib.evaluate(eval_config(str(tmp_path), idx_dir), evaldir)


def test_flattened_h_is_only_evaluated_at_its_pretraining_size(pretrain_dir):
  run = export.read_config(pretrain_dir)
  trained = run.data.image_size
  eval_lib.check_input_size(run, trained + 4)  # average pooling takes any size
  run.model.resnet.pool = 'flatten'
  eval_lib.check_input_size(run, trained)
  with pytest.raises(ValueError, match=f"pool='flatten'.*only takes {trained} px"):
    eval_lib.check_input_size(run, trained + 4)


def test_eval_in_the_run_directory_leaves_its_files_alone(pretrain_dir, idx_dir, tmp_path):
  run = _copy_run(pretrain_dir, str(tmp_path / 'run'), [6])
  before = open(os.path.join(run, 'config.json')).read()
  eval_lib.evaluate(eval_config(run, idx_dir, modes='knn', plot=False), run)
  assert open(os.path.join(run, 'config.json')).read() == before
  assert os.path.exists(os.path.join(run, 'eval', 'results.json'))


# ---------------------------------------------------------------------------
# Plots.

def test_pca_matches_sklearn_up_to_sign():
  sklearn_decomposition = pytest.importorskip('sklearn.decomposition')
  x = np.random.default_rng(0).normal(size=(50, 6)) * np.arange(1, 7)
  ours = plots.pca_2d(x)
  ref = sklearn_decomposition.PCA(2).fit_transform(x)
  for j in range(2):
    sign = np.sign(ours[:, j] @ ref[:, j])
    np.testing.assert_allclose(ours[:, j], sign * ref[:, j], rtol=1e-4, atol=1e-4)
  assert plots.subsample(10, 0, 0).tolist() == list(range(10))
  assert len(set(plots.subsample(100, 7, 0).tolist())) == 7


def test_scatter_without_matplotlib_returns_none(tmp_path, monkeypatch):
  for name in list(sys.modules):
    if name == 'matplotlib' or name.startswith('matplotlib.'):
      monkeypatch.delitem(sys.modules, name)
  monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import raises ImportError
  path = str(tmp_path / 'x.png')
  assert plots.scatter_png(np.zeros((3, 2)), np.arange(3), path) is None
  assert not os.path.exists(path)


# ---------------------------------------------------------------------------
# The command line, as a user runs it.

@pytest.mark.slow
def test_command_line(pretrain_dir, idx_dir, tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run(
      [sys.executable, '-m', 'contrastive_jax.eval',
       f'--config={os.path.join(REPO, "configs", "eval.py")}:tiny',
       f'--workdir={tmp_path}', f'--config.init_from={pretrain_dir}',
       '--config.data.source=idx', f'--config.data.idx_dir={idx_dir}',
       '--config.plot_methods=pca', '--config.step=3'],
      env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-5000:]
  assert 'eval step 3: linear_top1' in proc.stdout
  with open(tmp_path / 'eval' / 'results.json') as f:
    assert json.load(f)['step'] == 3
  assert (tmp_path / 'eval' / 'embedding_pca.png').exists()


@pytest.mark.slow
def test_two_processes_give_the_one_process_results(pretrain_dir, idx_dir, tmp_path):
  """2 processes x 4 devices (features all-gathered across processes) = 1 x 8."""
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
  common = [sys.executable, '-m', 'contrastive_jax.eval',
            f'--config={os.path.join(REPO, "configs", "eval.py")}:tiny',
            f'--config.init_from={pretrain_dir}', '--config.data.source=idx',
            f'--config.data.idx_dir={idx_dir}', '--config.plot=False']
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  procs = [subprocess.Popen(
      common + [f'--workdir={tmp_path / "two"}', '--config.multihost=yes'],
      env=dict(env, XLA_FLAGS='--xla_force_host_platform_device_count=4',
               JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(i)),
      cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outputs[0][-3000:] + outputs[1][-3000:]
  one = subprocess.run(common + [f'--workdir={tmp_path / "one"}'], cwd=str(tmp_path),
                       env=dict(env, XLA_FLAGS='--xla_force_host_platform_device_count=8'),
                       capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  results = []
  for name in ('two', 'one'):
    with open(tmp_path / name / 'eval' / 'results.json') as f:
      results.append({k: v for k, v in json.load(f).items() if not k.endswith('seconds')})
  assert results[0] == results[1]
