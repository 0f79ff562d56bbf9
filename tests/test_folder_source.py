"""The 'folder' source: one class list for every split, the flat layout's test
carve, unreadable images, and a pretraining run on a flat folder end to end."""

import logging
import os

import numpy as np
import pytest

from contrastive_jax import config_defaults
from contrastive_jax.data import folder, pipeline, sources
from tests.helpers import load_config


def _write_png(path, value, side=12):
  from PIL import Image
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(value)
  pixels = np.clip(value + rng.integers(-20, 20, (side, side)), 0, 255).astype(np.uint8)
  Image.fromarray(pixels, 'L').save(path)


def _write_classes(root, classes, per_class, offset=0):
  """root/<class>/<i>.png; a class's gray level comes from its first letter
  (a 30, b 90, c 150, d 210), so a class looks the same in every split."""
  for name in classes:
    for i in range(per_class):
      level = 30 + 60 * 'abcd'.index(name[0])
      _write_png(os.path.join(root, name, f'{offset + i:03d}.png'), level + i)


def _cfg(root, **overrides):
  cfg = config_defaults.data_defaults()
  cfg.update(dict(source='folder', folder=str(root), image_size=8, **overrides))
  return cfg


@pytest.fixture(autouse=True)
def _no_pending():
  """Each test decodes its own splits (none waiting from a previous test)."""
  folder._PENDING.clear()
  folder._WARNED.clear()
  yield
  folder._PENDING.clear()


def test_a_test_split_with_classes_train_lacks_is_an_error_before_training(tmp_path):
  _write_classes(tmp_path / 'train', ['ant', 'bee'], 3)
  _write_classes(tmp_path / 'test', ['ant', 'cow', 'dog'], 2)
  cfg = _cfg(tmp_path)
  # Loading train (the first thing a run does) checks the test split too.
  with pytest.raises(ValueError) as err:
    pipeline.load_split(cfg, 'train')
  message = str(err.value)
  assert 'cow' in message and 'dog' in message
  assert str(tmp_path / 'test') in message and str(tmp_path / 'train') in message
  with pytest.raises(ValueError, match='cow'):
    sources.load_source(cfg, 'test')


def test_a_test_split_missing_a_class_keeps_trains_numbering(tmp_path, caplog):
  # The bug: each split numbered its own sorted class folders, so a test
  # folder without 'bee' read 'cow' as class 1 and eval reported chance.
  _write_classes(tmp_path / 'train', ['ant', 'bee', 'cow'], 3)
  _write_classes(tmp_path / 'test', ['ant', 'cow'], 2)
  cfg = _cfg(tmp_path)
  with caplog.at_level(logging.WARNING):
    test = sources.load_source(cfg, 'test')
  np.testing.assert_array_equal(test.labels, [0, 0, 2, 2])
  assert test.num_classes == 3
  assert any('bee' in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
  train = sources.load_source(cfg, 'train')
  np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
  # The same class has the same pixels (and label) in both splits.
  assert abs(int(test.images[2].mean()) - int(train.images[6].mean())) < 10


def test_loose_images_in_test_while_train_has_classes_is_an_error(tmp_path):
  _write_classes(tmp_path / 'train', ['ant', 'bee'], 2)
  _write_png(str(tmp_path / 'test' / 'x.png'), 40)
  with pytest.raises(ValueError, match='loose images'):
    sources.load_source(_cfg(tmp_path), 'test')


def test_flat_layout_test_carve_is_deterministic_balanced_and_disjoint(tmp_path):
  _write_classes(tmp_path, ['a', 'b', 'c'], 10)
  _write_classes(tmp_path, ['c'], 6, offset=10)   # unbalanced: c has 16
  cfg = _cfg(tmp_path)
  assert folder.count_images(cfg) == {'train': 32, 'test': 4}  # 10% of 36
  train = sources.load_source(cfg, 'train')
  test = sources.load_source(cfg, 'test')  # decoded with train, handed over once
  assert not folder._PENDING
  assert set(train.example_ids()).isdisjoint(test.example_ids())
  assert sorted(np.concatenate([train.example_ids(), test.example_ids()])) == list(range(36))
  assert train.num_classes == test.num_classes == 3
  assert sorted(np.bincount(test.labels, minlength=3)) == [1, 1, 2]  # balanced, remainder 1
  # The same carve on every load, whatever the training seed or the load order.
  folder._PENDING.clear()
  again = sources.load_source(cfg, 'test')
  np.testing.assert_array_equal(again.example_ids(), test.example_ids())
  np.testing.assert_array_equal(again.images, test.images)
  # config.data.test_examples sets its size; at most half of a class.
  sized = sources.load_source(_cfg(tmp_path, test_examples=30), 'test')
  assert list(np.bincount(sized.labels)) == [5, 5, 8]
  # The val carve comes out of train (minus test), as for every source.
  val = pipeline.load_split(_cfg(tmp_path, val_examples=6), 'val')
  assert set(val.example_ids()) <= set(train.example_ids())


def test_a_corrupt_image_is_an_error_naming_it_before_training(tmp_path):
  _write_classes(tmp_path / 'train', ['ant', 'bee'], 3)
  _write_classes(tmp_path / 'test', ['ant', 'bee'], 2)
  truncated = tmp_path / 'test' / 'bee' / '000.png'
  truncated.write_bytes(truncated.read_bytes()[:60])
  garbage = tmp_path / 'train' / 'ant' / 'zz.png'
  garbage.write_bytes(b'not a png at all')
  with pytest.raises(ValueError) as err:
    pipeline.load_split(_cfg(tmp_path), 'train')  # train load checks test too
  message = str(err.value)
  assert str(truncated) in message and str(garbage) in message
  assert '2 image file(s)' in message and 'skip_bad_files=True' in message


def test_skip_bad_files_leaves_them_out_with_the_count_logged(tmp_path, caplog):
  _write_classes(tmp_path / 'train', ['ant', 'bee'], 3)
  _write_classes(tmp_path / 'test', ['ant', 'bee'], 2)
  (tmp_path / 'train' / 'bee' / 'bad.png').write_bytes(b'\x89PNG garbage')
  truncated = tmp_path / 'test' / 'ant' / '001.png'
  truncated.write_bytes(truncated.read_bytes()[:60])
  cfg = _cfg(tmp_path, skip_bad_files=True)
  with caplog.at_level(logging.WARNING):
    train = sources.load_source(cfg, 'train')
    test = sources.load_source(cfg, 'test')
  assert train.num_examples == 6 and test.num_examples == 3
  np.testing.assert_array_equal(test.labels, [0, 1, 1])
  warnings = [r.getMessage() for r in caplog.records if 'skipped' in r.getMessage()]
  assert warnings and 'skipped 2 unreadable' in warnings[0]
  assert 'bad.png' in warnings[0] and '001.png' in warnings[0]


def test_unlabelled_flat_folder_is_all_train_and_has_no_test(tmp_path):
  for i in range(5):
    _write_png(str(tmp_path / f'{i}.png'), 10 * i)
  cfg = _cfg(tmp_path)
  assert sources.load_source(cfg, 'train').num_examples == 5
  with pytest.raises(FileNotFoundError, match='unlabelled'):
    sources.load_source(cfg, 'test')


def test_a_test_folder_without_a_train_folder_is_an_error(tmp_path):
  _write_classes(tmp_path, ['a', 'b'], 2)
  _write_classes(tmp_path / 'test', ['a', 'b'], 1)
  with pytest.raises(ValueError, match="'test' sub-folder but no 'train'"):
    sources.load_source(_cfg(tmp_path), 'train')


def test_small_images_config_carves_val_in_proportion(tmp_path):
  _write_classes(tmp_path, ['a', 'b', 'c'], 20)
  config = load_config('small_images', str(tmp_path))
  assert config.data.source == 'folder' and config.data.folder == str(tmp_path)
  train = folder.count_images(config.data)['train']   # 60 minus the test carve
  assert config.data.val_examples == round(0.1 * train)
  assert load_config('small_images').data.val_examples == 0  # eval carves val_fraction


def test_flat_folder_pretrains_end_to_end(tmp_path):
  from contrastive_jax import pretrain
  data = tmp_path / 'images'
  _write_classes(str(data), ['ant', 'bee', 'cow', 'dog'], 16)
  config = load_config('smoke', 'tiny')
  config.data.source = 'folder'
  config.data.folder = str(data)
  config.data.val_examples = 8
  config.summary_images = 0
  results = pretrain.train_and_evaluate(config, str(tmp_path / 'run'))
  # 64 images: a 6-image test carve (10%), 8 val, 50 to train on.
  assert results['step'] == config.total_steps
  assert results['test_examples'] == 6 and results['val_examples'] == 8
  assert 0.0 <= results['test_probe_acc'] <= 1.0
