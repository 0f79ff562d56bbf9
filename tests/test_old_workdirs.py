"""Workdirs and configs written before the plug-in layout keep working.

tests/fixtures/pre_redesign holds a tiny pretraining run stopped at step 3 of
6 and a fine-tune of it, both written by the code before the redesign
(reference.json names the commit and the commands). They must resume (to the
losses the old code logged for an uninterrupted run), evaluate, fine-tune and
load; an old-style config (config.mode, flat temperature and ResNet keys,
config.model.conv) must train as its new-style equivalent.
"""

import json
import os
import shutil

import ml_collections
import numpy as np
import pytest

from contrastive_jax import (config_defaults, config_migration, eval as eval_lib, export,
                             finetune, metrics_io, pretrain)
from tests.helpers import REPO, load_config

FIXTURES = os.path.join(REPO, 'tests', 'fixtures', 'pre_redesign')
REFERENCE = json.load(open(os.path.join(FIXTURES, 'reference.json')))


@pytest.fixture()
def old(tmp_path):
  """A writable copy of the fixture workdirs."""
  shutil.copytree(FIXTURES, tmp_path / 'old')
  return tmp_path / 'old'


def test_old_config_json_reads_in_the_new_layout():
  config = export.read_config(os.path.join(FIXTURES, 'pretrain_v0'))
  assert 'mode' not in config and config.method == 'simclr'
  assert config.simclr.temperature == 0.2
  assert config.model.name == 'resnet'
  assert tuple(config.model.resnet.stage_sizes) == (1, 1) and config.model.resnet.base_width == 8
  assert 'depth' not in config.model and config.kernels.conv == 'auto'
  config_defaults.validate(config)


def test_old_pretrain_workdir_resumes_to_the_old_uninterrupted_losses(old):
  config = load_config('smoke', 'tiny')
  config.log_every_steps = 1
  config.summary_images = 0
  config.keep_checkpoints = 1
  results = pretrain.train_and_evaluate(config, str(old / 'pretrain_v0'))
  assert results['step'] == 6
  logged = {r['step']: r['loss'] for r in metrics_io.read_metrics(str(old / 'pretrain_v0'))
            if 'loss' in r}
  np.testing.assert_allclose([logged[s] for s in range(1, 7)],
                             REFERENCE['pretrain_v0']['uninterrupted_losses_8_devices'],
                             rtol=1e-6)


def test_old_workdirs_evaluate_fine_tune_and_load(old, tmp_path):
  config = load_config('eval', 'tiny')
  config.init_from = str(old / 'pretrain_v0')
  config.modes = 'linear,knn'
  config.plot = False
  config.data.val_examples = 300
  results = eval_lib.evaluate(config, str(tmp_path / 'eval'))
  assert results['evaluated_steps'] == [3]
  assert 0.0 < results['linear_top1'] <= 1.0 and 0.0 < results['knn_k20_top1'] <= 1.0

  ft = config_defaults.finetune_defaults()
  ft.update(dict(init_from=str(old / 'pretrain_v0'), batch_size=64, total_steps=2,
                 labels_per_class=20, log_every_steps=1))
  ft.data.image_size = 16
  ft.data.val_examples = 500
  results = finetune.train_and_evaluate(ft, str(tmp_path / 'ft'))
  assert results['step'] == 2 and 0.0 <= results['test_top1'] <= 1.0

  images = np.random.default_rng(0).integers(0, 255, (5, 28, 28, 1)).astype(np.uint8)
  encoder = export.load_encoder(str(old / 'pretrain_v0'))
  out = encoder(images)
  assert out['h'].shape == (5, 16) and np.all(np.isfinite(out['z']))
  np.testing.assert_allclose(encoder(images[:, :, :, 0])['h'], out['h'], rtol=1e-6)
  clf = export.load_classifier(str(old / 'finetune_v0'))
  assert clf.logits(images).shape == (5, 10)

  classifier = load_config('eval', 'tiny')
  classifier.init_from = str(old / 'finetune_v0')
  classifier.modes = 'classifier'
  classifier.plot = False
  results = eval_lib.evaluate(classifier, str(tmp_path / 'eval_ft'))
  assert results['classifier_examples'] > 0


def test_an_old_style_config_trains_as_its_new_style_equivalent(tmp_path):
  new = load_config('smoke', 'tiny')
  new.update(dict(total_steps=2, log_every_steps=1, summary_images=0))
  old_style = ml_collections.ConfigDict(new.to_dict())
  del old_style['method'], old_style['simclr'], old_style['supcon']
  old_style.mode = 'simclr'
  old_style.temperature = new.simclr.temperature
  resnet = old_style.model.resnet
  del old_style.model['resnet'], old_style.model['name']
  old_style.model.update(resnet)
  old_style.model.conv = 'xla'
  del old_style['kernels']
  migrated = config_migration.migrate(old_style)
  assert migrated.method == 'simclr' and migrated.kernels.conv == 'xla'
  assert migrated.model.resnet.to_dict() == new.model.resnet.to_dict()
  with pytest.raises(ValueError, match='config.mode.*config.method'):
    config_defaults.validate(old_style)   # an unmigrated old key says what to write
  new.kernels.conv = 'xla'
  a = pretrain.train_and_evaluate(old_style, str(tmp_path / 'old_style'))
  b = pretrain.train_and_evaluate(new, str(tmp_path / 'new_style'))
  assert a['loss'] == b['loss']


@pytest.mark.slow
def test_the_smoke_job_keeps_its_pre_redesign_loss_trajectory(tmp_path):
  """configs/smoke.py for 12 steps on one CPU device with the default
  convolution, as a real process: the losses the pre-redesign code logged
  (reference.json; written on this project's 2-core CPU machines: oneDNN's
  float sums may round differently on another instruction set)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, '-m', 'contrastive_jax.pretrain', '--config=configs/smoke.py',
       f'--workdir={tmp_path}', '--config.total_steps=12', '--config.log_every_steps=1',
       '--config.checkpoint_every_steps=100'], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  logged = [r['loss'] for r in metrics_io.read_metrics(str(tmp_path)) if 'loss' in r]
  np.testing.assert_allclose(logged, REFERENCE['smoke_12_steps']['losses'], rtol=1e-6)
