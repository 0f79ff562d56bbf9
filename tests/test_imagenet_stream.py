"""The streamed (ImageNet) path end to end: configs/imagenet_simclr_v1.py
shrunk, then finetune_v1.py:linear and a distillation from it, all reading
letterboxed tf.data streams (extents to the device crop) of a small prepared
tfds dataset of photos of varying sizes, written here with
`tfds.dataset_builders.store_as_tfds_dataset` (real TFRecord shards, tfds_ids,
split_for_jax_process; no download, no mock)."""

import json
import os

import jax
import numpy as np
import pytest

from tests.helpers import load_config, set_keys

tfds = pytest.importorskip('tensorflow_datasets')

TRAIN, TEST, CLASSES = 72, 16, 3  # 72 / 16: each epoch drops a tail of 8
TINY_MODEL = {'model.resnet.depth': 0, 'model.resnet.block': 'basic', 'model.resnet.stage_sizes': (1, 1),
              'model.resnet.base_width': 8, 'model.proj_dim': 16}


@pytest.fixture(scope='module')
def photos_dir(tmp_path_factory) -> str:
  """tfds 'cj_photos': 72 train / 16 validation RGB photos, 12-39 px a side."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  rng = np.random.default_rng(0)

  def examples(n):
    return [(i, {'image': rng.integers(0, 256, (*rng.integers(12, 40, 2), 3), dtype=np.uint8),
                 'label': i % CLASSES}) for i in range(n)]

  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3)),
      'label': tfds.features.ClassLabel(num_classes=CLASSES)})
  tfds.dataset_builders.store_as_tfds_dataset(
      name='cj_photos', version='1.0.0', features=features, data_dir=data_dir,
      split_datasets={'train': examples(TRAIN), 'validation': examples(TEST)})
  return data_dir


def _stream_data(data_dir: str) -> dict:
  return {'data.source': 'tfds', 'data.name': 'cj_photos', 'data.in_memory': False,
          'data.data_dir': data_dir, 'data.image_size': 16, 'data.host_image_size': 24,
          'data.shuffle_buffer': 32, 'data.val_examples': 0,
          'data.test_split': 'validation', 'data.prefetch': 0}


def _metric_rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_the_stream_letterboxes_training_photos(photos_dir):
  from contrastive_jax.data import pipeline, tfds_source
  builder = tfds.builder('cj_photos', data_dir=photos_dir)
  example_id = tfds_source._id_fn(builder, 'train')
  sizes = {}  # example id -> (height, width) of the stored photo
  for ex in builder.as_dataset(split='train', read_config=tfds.ReadConfig(add_tfds_id=True)):
    sizes[int(example_id(ex['tfds_id']))] = ex['image'].shape[:2]
  assert sorted(sizes) == list(range(TRAIN))
  cfg = set_keys(load_config('imagenet_simclr_v1'), _stream_data(photos_dir)).data
  stream = pipeline.make_train_iterator(cfg, global_batch_size=16, seed=0)
  batch = next(stream)
  stream.close()
  assert batch['image'].shape == (16, 24, 24, 3) and batch['extent'].dtype == np.int32
  # The longer side of a photo goes to 24 px; a smaller photo keeps its size.
  sizes = np.array([sizes[int(i)] for i in batch['index']])
  scale = np.minimum(1.0, 24 / sizes.max(axis=1, keepdims=True))
  np.testing.assert_array_equal(batch['extent'], np.round(sizes * scale))
  assert (sizes.max(axis=1) < 24).any() and (sizes.max(axis=1) > 24).any()


def test_pretrain_linear_eval_and_distill_on_a_stream(photos_dir, tmp_path):
  from contrastive_jax import distill, export, finetune, pretrain  # 8 devices by now
  data = _stream_data(photos_dir)
  pre_dir, lin_dir, dis_dir = (str(tmp_path / n) for n in ('pre', 'lin', 'dis'))
  config = set_keys(load_config('imagenet_simclr_v1'), {
      **data, **TINY_MODEL, 'batch_size': 16, 'total_steps': 5, 'log_every_steps': 1,
      'checkpoint_every_steps': 2})
  results = pretrain.train_and_evaluate(config, pre_dir)
  assert results['test_examples'] == TEST and 0.0 <= results['test_probe_acc'] <= 1.0
  losses = [r['loss'] for r in _metric_rows(pre_dir) if 'loss' in r]
  assert len(losses) == 5 and np.isfinite(losses).all()  # into the second epoch

  # SimCLR's linear evaluation streams every label; nothing but the classifier moves.
  config = set_keys(load_config('finetune_v1', 'linear'), {
      **data, 'init_from': pre_dir, 'batch_size': 16, 'total_steps': 5,
      'log_every_steps': 1})
  results = finetune.train_and_evaluate(config, lin_dir)
  assert results['step'] == 5 and results['label_examples'] == TRAIN
  assert results['test_examples'] == TEST and 0.0 <= results['test_top1'] <= 1.0
  assert not os.path.exists(os.path.join(lin_dir, finetune.LABEL_SUBSET_FILE))  # streamed
  # Interrupted after step 2 and rerun: the stream resumes in place, same result.
  resumed_dir = str(tmp_path / 'lin_resumed')
  finetune.train_and_evaluate(set_keys(config.copy_and_resolve_references(),
                                       {'stop_at_step': 2}), resumed_dir)
  again = finetune.train_and_evaluate(config, resumed_dir)
  assert again['test_top1'] == results['test_top1']
  for a, b in zip(*(jax.tree.leaves(export.load_classifier(d).variables['params'])
                    for d in (lin_dir, resumed_dir))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  final = export.load_classifier(lin_dir).variables
  pre = export.load_pretrained(pre_dir).variables
  for a, b in zip(*(jax.tree.leaves(t['params']['encoder']) for t in (final, pre))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(final['params']['classifier']['dense']['kernel']).max() > 0

  # A subset of a stream's labels cannot be drawn: refused before anything runs.
  config.label_fraction = 0.1
  with pytest.raises(ValueError, match='in_memory=True'):
    finetune.train_and_evaluate(config, str(tmp_path / 'subset'))

  # Distillation over the stream, with the labelled loss on every row.
  config = set_keys(load_config('distill'), {
      **data, 'teacher': lin_dir, 'batch_size': 16, 'total_steps': 2,
      'log_every_steps': 1, 'alpha': 0.5})
  results = distill.train_and_evaluate(config, dis_dir)
  assert results['step'] == 2 and 0.0 <= results['test_teacher_agreement'] <= 1.0
  rows = [r for r in _metric_rows(dis_dir) if 'labelled_rows' in r]
  assert rows and all(r['labelled_rows'] == 16 for r in rows)
  # Another split than the teacher's: its labelled rows are unknown, refused.
  config.data.train_split = 'train[:50%]'
  with pytest.raises(ValueError, match='labelled rows are unknown'):
    distill.train_and_evaluate(config, str(tmp_path / 'other_split'))
