"""Fine-tuning: label subsets, restoring the pretrained encoder, freezing, accuracy,
exact resume, and export.load_classifier.

Everything runs on a tiny pretraining run (configs/smoke.py:tiny, 6 steps at
16 px), built once per module; the fine-tuning runs use the embedded data at
16 px with a 64-image batch, so each costs a few seconds plus compilation.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive_jax import (classification, config_defaults, export, finetune, metrics_io,
                             models, train)
from contrastive_jax.data import pipeline
from contrastive_jax.models import HEAD_ARCH_KEYS, resnet
from contrastive_jax.models import classifier as classifier_lib
from contrastive_jax.models import tiny_model_config
from tests.helpers import load_config, set_keys

STEPS = 40          # the reference fine-tuning run
PREEMPT_AT = 20     # the interrupted run stops here, then resumes


def ft_config(init_from, **overrides):
  config = config_defaults.finetune_defaults()
  config.init_from = init_from
  config.batch_size = 64
  config.total_steps = STEPS
  config.log_every_steps = 1
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 2
  config.labels_per_class = 20
  config.data.source = 'embedded'
  config.data.image_size = 16
  config.data.val_examples = 500
  config.data.prefetch = 0
  config.optim.learning_rate = 0.5   # tiny net, tiny batch: the v1 rule's 0.05 x 64/256 is slow
  config.optim.lr_scaling = 'none'
  return set_keys(config, overrides)


@pytest.fixture(scope='module')
def full_run(pretrain_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('ft_full'))
  results = finetune.train_and_evaluate(ft_config(pretrain_dir), workdir)
  return workdir, results


@pytest.fixture(scope='module')
def frozen_run(pretrain_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('ft_frozen'))
  config = ft_config(pretrain_dir, fine_tune_after_block=4, ft_proj_selector=1,
                     total_steps=10, save_logits=True)
  results = finetune.train_and_evaluate(config, workdir)
  return workdir, results


def _final_state(workdir):
  return export.load_classifier(workdir).variables


def _assert_trees_equal(a, b):
  a, b = jax.device_get(a), jax.device_get(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- Label subsets -------------------------------------------------------------

def test_label_subset_saved_reused_balanced_and_disjoint_from_val(tmp_path):
  config = ft_config('', labels_per_class=0, label_fraction=0.1)
  train = pipeline.load_split(config.data, 'train')
  val = pipeline.load_split(config.data, 'val')
  positions = classification.label_subset(config, train, str(tmp_path))
  saved = json.loads((tmp_path / finetune.LABEL_SUBSET_FILE).read_text())

  assert saved == train.example_ids()[positions].tolist()
  assert len(positions) == round(0.1 * train.num_examples)          # 950
  counts = np.bincount(train.labels[positions], minlength=10)
  assert counts.max() - counts.min() <= 1                           # class-balanced
  assert not set(saved) & set(val.example_ids().tolist())           # not in the val carve
  assert set(saved) <= set(train.example_ids().tolist())            # train, never test
  # Deterministic for a seed; another label_seed draws another subset.
  again = classification.label_subset(config, train, str(tmp_path / 'again'))
  np.testing.assert_array_equal(again, positions)
  config.label_seed = 1
  other = classification.label_subset(config, train, str(tmp_path / 'other'))
  assert set(other.tolist()) != set(positions.tolist())

  # An existing file wins over the config: it is what the run trained on.
  (tmp_path / finetune.LABEL_SUBSET_FILE).write_text(json.dumps(saved[:30]))
  reused = classification.label_subset(config, train, str(tmp_path))
  assert train.example_ids()[reused].tolist() == sorted(saved[:30])
  (tmp_path / finetune.LABEL_SUBSET_FILE).write_text(json.dumps([10 ** 9]))
  with pytest.raises(ValueError, match='not in the training split'):
    classification.label_subset(config, train, str(tmp_path))


# --- Model -----------------------------------------------------------------------

def test_ft_proj_selector_sets_the_classifier_input_width():
  model_cfg = tiny_model_config()               # h: 16 wide
  model_cfg.proj_hidden_dim = 24
  model_cfg.proj_dim = 12
  model_cfg.num_proj_layers = 2
  x = jax.ShapeDtypeStruct((2, 8, 8, 1), np.float32)
  widths = {}
  for selector in (0, 1, 2, -1):
    model = classifier_lib.build_classifier(model_cfg, 10, ft_proj_selector=selector)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    widths[selector] = variables['params']['classifier']['dense']['kernel'].shape
    assert widths[selector][0] == classifier_lib.feature_width(model_cfg, selector)
    assert ('head' in variables['params']) == (selector != 0)
  assert widths == {0: (16, 10), 1: (24, 10), 2: (12, 10), -1: (12, 10)}
  with pytest.raises(ValueError, match='ft_proj_selector'):
    classifier_lib.build_classifier(model_cfg, 10, ft_proj_selector=3)
  # pool='flatten': h is the last 4x4x16 map of an 8 px input.
  model_cfg.resnet.pool = 'flatten'
  for selector, width in ((0, 256), (1, 24)):
    model = classifier_lib.build_classifier(model_cfg, 10, ft_proj_selector=selector)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    assert variables['params']['classifier']['dense']['kernel'].shape == (width, 10)
    assert classifier_lib.feature_width(model_cfg, selector, image_size=8) == width


def test_the_architecture_comes_from_the_pretrain_run(tmp_path):
  run_model = tiny_model_config()
  run_model.resnet.update(dict(stage_sizes=(1, 1, 1), base_width=4, stem_stride=2,
                               pool='flatten'))
  run_model.update(dict(proj_hidden_dim=32, dtype='bfloat16'))
  (tmp_path / 'config.json').write_text(json.dumps({'model': run_model.to_dict()}))
  config = classification.resolve_config(ft_config(str(tmp_path)))
  for key in resnet.ARCH_KEYS:
    assert config.model.resnet[key] == run_model.resnet[key], key
  for key in HEAD_ARCH_KEYS:
    assert config.model[key] == run_model[key], key
  assert config.model.dtype == 'float32'   # the fine-tune's own, not an arch key


def test_restored_encoder_equals_the_pretrain_checkpoint(pretrain_dir):
  config = classification.resolve_config(ft_config(pretrain_dir, ft_proj_selector=1))
  mesh = jax.make_mesh((8,), ('data',))
  model = classification.build_model(config, 10)
  tx, _ = classification.build_optimizer(config, total_steps=10, warmup_steps=0)
  state = train.init_state(model, tx, seed=0, dummy_input=jnp.zeros((2, 16, 16, 1)), mesh=mesh)
  state = classification.copy_pretrained(state, config, tx, mesh)
  pre = export.load_pretrained(pretrain_dir)
  assert pre.step == 6
  for collection, mine in (('params', state.params), ('batch_stats', state.batch_stats)):
    theirs = pre.variables[collection]
    _assert_trees_equal(mine['encoder'], theirs['encoder'])
    assert set(mine['head']) == {'dense1', 'bn1'} if collection == 'params' else {'bn1'}
    for layer in mine['head']:
      _assert_trees_equal(mine['head'][layer], theirs['head'][layer])
  # The architecture came from the pretrain run's config.json, not the defaults (R50).
  assert tuple(config.model.resnet.stage_sizes) == (1, 1) and config.model.resnet.base_width == 8
  # zero_init: the classifier starts at zero logits.
  assert not np.any(np.asarray(state.params['classifier']['dense']['kernel']))


def test_freezing_everything_but_the_classifier(pretrain_dir, frozen_run):
  workdir, results = frozen_run
  assert results['step'] == 10
  final = _final_state(workdir)
  pre = export.load_pretrained(pretrain_dir).variables
  for collection in ('params', 'batch_stats'):   # BN ran in inference mode: stats unchanged
    _assert_trees_equal(final[collection]['encoder'], pre[collection]['encoder'])
    _assert_trees_equal(final[collection]['head']['bn1'], pre[collection]['head']['bn1'])
  _assert_trees_equal(final['params']['head']['dense1'], pre['params']['head']['dense1'])
  kernel = np.asarray(final['params']['classifier']['dense']['kernel'])
  assert np.abs(kernel).max() > 1e-3              # zero-initialised, then trained


def test_frozen_labels_follow_fine_tune_after_block():
  names = [('encoder', 'stem_conv', 'kernel'), ('encoder', 'stage1_block1', 'conv1', 'kernel'),
           ('encoder', 'stage2_block1', 'bn2', 'scale'), ('head', 'dense1', 'kernel'),
           ('classifier', 'dense', 'kernel')]
  spec = models.ENCODERS.get('resnet')
  frozen = {k: [classifier_lib.is_frozen(n, k, spec.freeze_level, spec.freeze_all)
                for n in names] for k in (-1, 0, 1, 2, 4)}
  assert frozen == {-1: [False] * 5,
                    0: [True, False, False, False, False],
                    1: [True, True, False, False, False],
                    2: [True, True, True, False, False],
                    4: [True, True, True, True, False]}


# --- Training ----------------------------------------------------------------------

def test_fine_tuned_accuracy_is_clearly_above_chance(full_run):
  workdir, results = full_run
  assert results['label_examples'] == 200 and results['step'] == STEPS
  # 10 classes: chance is 0.1. Measured about 0.5 for this 40-step run.
  assert results['test_top1'] > 0.3, results
  assert results['val_top1'] > 0.3, results
  on_disk = json.loads(open(os.path.join(workdir, finetune.RESULTS_FILE)).read())
  assert on_disk['test_top1'] == results['test_top1']
  assert os.path.exists(os.path.join(workdir, 'config.json'))


def test_resume_is_exact(pretrain_dir, full_run, tmp_path):
  """k steps, stop (stop_at_step: the same exit path as SIGTERM), resume k more
  == 2k steps in one go: the same loss at every step and the same parameters."""
  reference_dir, _ = full_run
  workdir = str(tmp_path / 'resumed')
  first = finetune.train_and_evaluate(ft_config(pretrain_dir, stop_at_step=PREEMPT_AT), workdir)
  assert first['step'] == PREEMPT_AT and 'test_top1' not in first
  second = finetune.train_and_evaluate(ft_config(pretrain_dir), workdir)
  assert second['step'] == STEPS

  ref = {r['step']: r for r in metrics_io.read_metrics(reference_dir) if 'loss' in r}
  got = {r['step']: r for r in metrics_io.read_metrics(workdir) if 'loss' in r}
  assert sorted(got) == sorted(ref) == list(range(1, STEPS + 1))
  for step in ref:
    assert got[step]['loss'] == ref[step]['loss'], step
  _assert_trees_equal(_final_state(workdir), _final_state(reference_dir))


# --- Export ----------------------------------------------------------------------------

def test_load_classifier_round_trip(pretrain_dir, frozen_run):
  workdir, results = frozen_run
  clf = export.load_classifier(workdir)
  saved = np.load(os.path.join(workdir, 'logits_test.npz'))
  test = pipeline.load_split(clf.config.data, 'test')
  np.testing.assert_array_equal(saved['id'], test.example_ids())
  logits = clf.logits(test.images)
  assert logits.shape == (test.num_examples, 10)
  np.testing.assert_allclose(logits, saved['logits'], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(clf.predict(test.images[:100]), saved['pred'][:100])
  assert np.mean(clf.predict(test.images) == test.labels) == pytest.approx(
      results['test_top1'], abs=1e-3)
  with pytest.raises(ValueError, match='load_encoder'):
    export.load_classifier(pretrain_dir)     # a pretraining run has no classifier


def test_linear_evaluation_config_trains_only_the_classifier(pretrain_dir, tmp_path):
  """configs/finetune_v1.py:linear (SimCLR's linear eval), shortened: every
  label, crop + flip, and nothing but the classifier moves."""
  config = set_keys(load_config('finetune_v1', 'linear'), {
      'init_from': pretrain_dir, 'batch_size': 64, 'total_steps': 6,
      'log_every_steps': 3, 'data.image_size': 16, 'data.val_examples': 500})
  results = finetune.train_and_evaluate(config, str(tmp_path))
  assert results['step'] == 6 and 0.0 <= results['test_top1'] <= 1.0
  with open(tmp_path / finetune.LABEL_SUBSET_FILE) as f:
    assert len(json.load(f)) == 10_000 - 500  # the whole embedded train split minus val
  final = _final_state(str(tmp_path))
  pre = export.load_pretrained(pretrain_dir).variables
  for collection in ('params', 'batch_stats'):
    _assert_trees_equal(final[collection]['encoder'], pre[collection]['encoder'])
  assert np.abs(np.asarray(final['params']['classifier']['dense']['kernel'])).max() > 1e-4
