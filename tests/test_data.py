"""Host input: the source registry, the IDX/embedded/folder/tfds sources and the
deterministic batch stream."""

import ast
import dataclasses
import gzip
import importlib.util
import os
import struct
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from contrastive_jax import config_defaults
from contrastive_jax.data import embedded
from contrastive_jax.data import folder
from contrastive_jax.data import idx
from contrastive_jax.data import pipeline
from contrastive_jax.data import registry
from contrastive_jax.data import sources
from contrastive_jax.data.sources import ArraySource

REAL_IDX_DIR = config_defaults.data_defaults().idx_dir
HAVE_REAL_IDX = os.path.exists(os.path.join(REAL_IDX_DIR, 'train-images-idx3-ubyte.gz'))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, 'contrastive_jax', 'data')


def _data_cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = config_defaults.data_defaults()
  cfg.update(overrides)
  return cfg


def _toy_source(n=50, num_classes=5, side=4, seed=0) -> ArraySource:
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, side, side, 1), dtype=np.uint8)
  images[:, 0, 0, 0] = np.arange(n) % 256  # row tag, to match images to ids
  return ArraySource(images=images, labels=np.arange(n) % num_classes,
                     num_classes=num_classes, name='toy:train')


# ---------------------------------------------------------------------------
# IDX files.

def _write_idx(path, array, code=0x08, compress=True):
  header = struct.pack('>BBBB', 0, 0, code, array.ndim)
  header += struct.pack('>' + 'I' * array.ndim, *array.shape)
  big_endian = {0x08: '>u1', 0x0C: '>i4', 0x0D: '>f4'}[code]
  payload = header + array.astype(big_endian).tobytes()
  with (gzip.open if compress else open)(path, 'wb') as f:
    f.write(payload)


def _write_fake_idx_dir(directory, n_train=12, n_test=5, side=3):
  rng = np.random.default_rng(1)
  arrays = {}
  for split, stem, n in (('train', 'train', n_train), ('test', 't10k', n_test)):
    images = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    _write_idx(os.path.join(directory, f'{stem}-images-idx3-ubyte.gz'), images)
    _write_idx(os.path.join(directory, f'{stem}-labels-idx1-ubyte.gz'), labels)
    arrays[split] = (images, labels)
  return arrays


def test_read_idx_generated_files(tmp_path):
  arrays = _write_fake_idx_dir(str(tmp_path))
  for split in ('train', 'test'):
    src = idx.load_idx(str(tmp_path), split)
    images, labels = arrays[split]
    assert src.images.dtype == np.uint8 and src.images.shape == images.shape + (1,)
    np.testing.assert_array_equal(src.images[..., 0], images)
    np.testing.assert_array_equal(src.labels, labels)
    assert src.labels.dtype == np.int32 and src.num_classes == labels.max() + 1
  # Other dtypes, uncompressed files.
  ints = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
  _write_idx(str(tmp_path / 'ints-idx2'), ints, code=0x0C, compress=False)
  np.testing.assert_array_equal(idx.read_idx(str(tmp_path / 'ints-idx2')), ints)
  floats = np.linspace(0, 1, 5, dtype=np.float32)
  _write_idx(str(tmp_path / 'f.gz'), floats, code=0x0D)
  np.testing.assert_array_equal(idx.read_idx(str(tmp_path / 'f.gz')), floats)


def test_read_idx_rejects_bad_files(tmp_path):
  (tmp_path / 'junk').write_bytes(b'PK\x03\x04 not idx')
  with pytest.raises(ValueError, match='not an IDX file'):
    idx.read_idx(str(tmp_path / 'junk'))
  with open(tmp_path / 'short', 'wb') as f:  # header says 10 bytes, 3 follow
    f.write(struct.pack('>BBBBI', 0, 0, 8, 1, 10) + b'abc')
  with pytest.raises(ValueError, match='header says'):
    idx.read_idx(str(tmp_path / 'short'))


def test_missing_idx_names_key_and_package(tmp_path):
  with pytest.raises(FileNotFoundError) as err:
    idx.load_idx(str(tmp_path), 'train')
  assert 'config.data.idx_dir' in str(err.value)
  assert 'apt-get install dataset-fashion-mnist' in str(err.value)
  with pytest.raises(ValueError, match='train_split'):
    idx.load_idx(str(tmp_path), 'validation')


@pytest.mark.skipif(not HAVE_REAL_IDX, reason='apt-get install dataset-fashion-mnist')
def test_real_fashion_mnist_idx():
  train = idx.load_idx(REAL_IDX_DIR, 'train')
  test = idx.load_idx(REAL_IDX_DIR, 'test')
  assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
  assert train.num_classes == 10
  np.testing.assert_array_equal(np.bincount(train.labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)


# ---------------------------------------------------------------------------
# Embedded subset.

def test_embedded_subset_loads_balanced():
  assert os.path.getsize(embedded.EMBEDDED_PATH) <= 5.5e6
  train, test = embedded.load_embedded('train'), embedded.load_embedded('test')
  assert train.images.shape == (10000, 28, 28, 1) and train.images.dtype == np.uint8
  assert test.images.shape == (2000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(train.labels), [1000] * 10)
  np.testing.assert_array_equal(np.bincount(test.labels), [200] * 10)
  assert train.num_classes == 10 and train.labels.dtype == np.int32
  assert not train.images.flags.writeable  # shared through a cache
  assert 0 < train.images.mean() < 255
  with pytest.raises(ValueError, match='test_split'):
    embedded.load_embedded('validation')


@pytest.mark.skipif(not HAVE_REAL_IDX, reason='apt-get install dataset-fashion-mnist')
def test_embedded_subset_is_reproducible_from_idx(capsys):
  spec = importlib.util.spec_from_file_location(
      'make_embedded_dataset', os.path.join(REPO, 'launch', 'make_embedded_dataset.py'))
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  assert script.main(['--check']) == 0, capsys.readouterr().out
  # Rows are the IDX rows the file says they are.
  with np.load(embedded.EMBEDDED_PATH) as npz:
    rows = npz['test_source_index']
  full = idx.load_idx(REAL_IDX_DIR, 'test')
  np.testing.assert_array_equal(full.images[rows], embedded.load_embedded('test').images)


# ---------------------------------------------------------------------------
# Folder source.

def _write_png(path, size, mode='RGB', value=0):
  from PIL import Image
  color = value if mode == 'L' else (value, 255 - value, 7)
  Image.new(mode, size, color).save(path)


def test_folder_source_with_class_subfolders(tmp_path):
  for cls, value in (('zebra', 10), ('ant', 200)):
    (tmp_path / cls).mkdir()
    for i in range(3):
      _write_png(tmp_path / cls / f'{i}.png', (12 + 4 * i, 10), value=value + i)
  _write_png(tmp_path / 'ant' / 'gray.png', (10, 10), mode='L', value=99)  # mixed modes -> RGB
  (tmp_path / 'ant' / 'notes.txt').write_text('not an image')
  src = folder.load_folder(str(tmp_path), image_size=8)
  assert src.images.shape == (7, 8, 8, 3) and src.images.dtype == np.uint8
  assert src.num_classes == 2
  np.testing.assert_array_equal(src.labels, [0, 0, 0, 0, 1, 1, 1])  # 'ant' < 'zebra'
  assert src.images[0, 4, 4, 0] == 200 and src.images[6, 4, 4, 0] == 12
  np.testing.assert_array_equal(src.images[3, 4, 4], [99, 99, 99])  # gray.png as RGB
  # image_size 0: every image resized to the first one's size (W=12, H=10).
  assert folder.load_folder(str(tmp_path)).images.shape == (7, 10, 12, 3)


def test_folder_source_flat_grayscale_and_splits(tmp_path):
  flat = tmp_path / 'flat'
  flat.mkdir()
  for i in range(4):
    _write_png(flat / f'{i}.png', (6, 6), mode='L', value=i)
  src = folder.load_folder(str(flat))
  assert src.images.shape == (4, 6, 6, 1) and src.num_classes == 0
  np.testing.assert_array_equal(src.labels, [-1] * 4)
  # load_source: folder/<split>/ when present; else the whole folder is train only.
  for split in ('train', 'test'):
    (tmp_path / 'ds' / split / 'a').mkdir(parents=True)
    _write_png(tmp_path / 'ds' / split / 'a' / 'x.png', (5, 5))
  cfg = _data_cfg(source='folder', folder=str(tmp_path / 'ds'), image_size=4)
  assert sources.load_source(cfg, 'test').images.shape == (1, 4, 4, 3)
  cfg = _data_cfg(source='folder', folder=str(flat))
  assert sources.load_source(cfg, 'train').num_examples == 4
  with pytest.raises(FileNotFoundError, match='test'):
    sources.load_source(cfg, 'test')
  with pytest.raises(FileNotFoundError, match='config.data.folder'):
    folder.load_folder(str(tmp_path / 'nope'))


def test_load_source_dispatch(tmp_path):
  _write_fake_idx_dir(str(tmp_path))
  assert sources.load_source(_data_cfg(), 'test').num_examples == 2000
  idx_cfg = _data_cfg(source='idx', idx_dir=str(tmp_path))
  assert sources.load_source(idx_cfg, 'test').num_examples == 5
  with pytest.raises(ValueError) as err:
    sources.load_source(_data_cfg(source='hdf5'), 'train')
  assert 'config.data.source' in str(err.value) and "'folder'" in str(err.value)
  # The names other modules and scripts reach through `sources`.
  assert sources.load_idx is idx.load_idx and sources.load_embedded is embedded.load_embedded
  assert sources.EMBEDDED_PATH == embedded.EMBEDDED_PATH


# ---------------------------------------------------------------------------
# The source registry.

def test_builtin_sources_registered_in_order():
  assert registry.names('image') == ('embedded', 'idx', 'tfds', 'folder')
  assert registry.names('text') == ('wordnet_glosses', 'embedded_text', 'text_file', 'tfds_text')
  assert registry.names() == registry.names('image') + registry.names('text')
  assert registry.get('tfds').streams and registry.get('tfds').stream_eval is not None
  assert not any(registry.get(n).streams for n in ('embedded', 'idx', 'folder'))
  assert all(registry.get(n).doc for n in registry.names())


def _checkerboard(data_cfg, split: str) -> ArraySource:
  """Tiny uint8 checkerboards: example i has squares of side 1 + i % 3, phase i % 2."""
  n, side = {'train': 24, 'test': 6}[split], 6
  rows, cols = np.indices((side, side))
  images = np.stack([(((rows // (1 + i % 3) + cols // (1 + i % 3) + i) % 2) * 255)
                     for i in range(n)]).astype(np.uint8)[..., None]
  images[:, 0, 0, 0] = np.arange(n)  # row tag, to match images to ids
  return ArraySource(images=images, labels=np.arange(n) % 3, num_classes=3,
                     name=f'checkerboard:{split}')


@pytest.fixture
def checkerboard():
  """A source registered from this test module; gone again afterwards."""
  source = registry.register(registry.Source(
      name='checkerboard', load=_checkerboard, doc='tiny generated checkerboards'))
  yield source
  registry.unregister('checkerboard')
  assert 'checkerboard' not in registry.names()


def test_a_registered_source_feeds_the_pipeline(checkerboard):
  assert registry.get('checkerboard') is checkerboard
  assert registry.names()[-1] == 'checkerboard'
  cfg = _data_cfg(source='checkerboard', val_examples=6)
  test = sources.load_source(cfg, 'test')
  np.testing.assert_array_equal(test.images, _checkerboard(cfg, 'test').images)
  train, val = pipeline.load_split(cfg, 'train'), pipeline.load_split(cfg, 'val')
  assert train.num_examples == 18 and val.num_examples == 6
  np.testing.assert_array_equal(np.bincount(val.labels), [2, 2, 2])
  np.testing.assert_array_equal(
      np.sort(np.concatenate([train.example_ids(), val.example_ids()])), np.arange(24))
  assert not pipeline.streaming(cfg)
  it = pipeline.make_train_iterator(cfg, global_batch_size=6, seed=0,
                                    process_index=0, process_count=1)
  assert isinstance(it, pipeline.BatchIterator) and it.steps_per_epoch == 3
  batch = next(it)
  full = _checkerboard(cfg, 'train')
  np.testing.assert_array_equal(batch['image'], full.images[batch['index']])
  np.testing.assert_array_equal(batch['label'], batch['index'] % 3)
  assert not set(batch['index']) & set(val.example_ids())
  evals = list(pipeline.make_eval_iterator(cfg, 'test', global_batch_size=4,
                                           process_index=0, process_count=1))
  assert len(evals) == 2 and sum(b['mask'].sum() for b in evals) == 6


def test_a_registered_stream_is_used_when_not_in_memory(checkerboard):
  calls = []

  def stream_train(data_cfg, **kw):
    calls.append(('train', kw['seed'], kw['start_step']))
    return pipeline.BatchIterator(checkerboard.load(data_cfg, data_cfg.train_split), **kw)

  def stream_eval(data_cfg, split, **kw):
    calls.append(('eval', split))
    return pipeline.eval_batches(checkerboard.load(data_cfg, split), **kw)

  registry.register(dataclasses.replace(checkerboard, stream_train=stream_train,
                                        stream_eval=stream_eval), replace=True)
  cfg = _data_cfg(source='checkerboard', in_memory=False, val_examples=0)
  assert pipeline.streaming(cfg)
  it = pipeline.make_train_iterator(cfg, global_batch_size=6, seed=3, start_step=1,
                                    process_index=0, process_count=1)
  assert next(it)['image'].shape == (6, 6, 6, 1) and it.step == 2
  assert len(list(pipeline.make_eval_iterator(cfg, 'test', global_batch_size=4,
                                              process_index=0, process_count=1))) == 2
  assert calls == [('train', 3, 1), ('eval', 'test')]
  with pytest.raises(ValueError, match="'val' carve"):
    pipeline.make_eval_iterator(cfg, 'val', global_batch_size=4, process_index=0,
                                process_count=1)
  cfg.val_examples = 6
  with pytest.raises(ValueError, match='in_memory=True'):
    pipeline.make_train_iterator(cfg, global_batch_size=6, seed=0, process_index=0,
                                 process_count=1)
  cfg.in_memory = True  # the same source, loaded whole
  assert not pipeline.streaming(cfg)
  assert pipeline.load_split(cfg, 'val').num_examples == 6


def test_unknown_source_lists_the_registered_ones(checkerboard):
  for call in (lambda cfg: sources.load_source(cfg, 'train'),
               lambda cfg: pipeline.load_split(cfg, 'train'), pipeline.streaming,
               lambda cfg: registry.get(cfg.source)):
    with pytest.raises(ValueError) as err:
      call(_data_cfg(source='hdf5'))
    message = str(err.value)
    assert message.startswith("config.data.source='hdf5' is not valid; choose one of (")
    for name in ('embedded', 'idx', 'tfds', 'folder', 'checkerboard'):
      assert repr(name) in message


def test_register_refuses_a_taken_name_unless_replace():
  embedded_source = registry.get('embedded')
  with pytest.raises(ValueError, match="'embedded' is already registered"):
    registry.register(registry.Source(name='embedded', load=_checkerboard))
  assert registry.get('embedded') is embedded_source
  try:
    registry.register(registry.Source(name='embedded', load=_checkerboard), replace=True)
    assert sources.load_source(_data_cfg(), 'test').name == 'checkerboard:test'
  finally:
    registry.register(embedded_source, replace=True)
  assert sources.load_source(_data_cfg(), 'test').name == 'fashion_mnist_subset:test'
  assert registry.names('image') == ('embedded', 'idx', 'tfds', 'folder')  # order kept
  with pytest.raises(ValueError, match='stream_train and stream_eval'):
    registry.register(registry.Source(name='half', load=_checkerboard,
                                      stream_train=lambda cfg, **kw: None))
  with pytest.raises(TypeError):
    registry.register(registry.Source(name='nothing', load=None))
  assert 'half' not in registry.names() and 'nothing' not in registry.names()


def _data_imports() -> dict[str, set[str]]:
  """contrastive_jax.data module -> the package modules it imports (anywhere in it)."""
  modules = {f[:-3] for f in os.listdir(DATA_DIR) if f.endswith('.py')} - {'__init__'}
  graph = {}
  for module in modules:
    with open(os.path.join(DATA_DIR, module + '.py')) as f:
      tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        targets = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
      else:
        continue
      for target in targets:
        if target.startswith('contrastive_jax.data.'):
          name = target.split('.')[2]
          if name in modules:
            found.add(name)
    graph[module] = found - {module}
  return graph


def test_no_import_cycle_among_data_modules():
  graph = _data_imports()
  assert {'registry', 'sources', 'pipeline', 'tfds_source', 'process_rows'} <= set(graph)
  assert 'tfds_source' not in graph['pipeline'] and 'pipeline' not in graph['tfds_source']
  # Every source module can import these two: they import nothing else of the
  # package (registry names ArraySource for type hints only).
  assert graph['registry'] <= {'arrays'} and graph['arrays'] == set()
  done, path = set(), []

  def visit(module):
    assert module not in path, ' -> '.join(path[path.index(module):] + [module])
    if module in done:
      return
    path.append(module)
    for dep in sorted(graph[module]):
      visit(dep)
    path.pop()
    done.add(module)

  for module in sorted(graph):
    visit(module)
  # And each module imports first, in a fresh interpreter, with the sources registered.
  for module in sorted(graph):
    code = (f'import contrastive_jax.data.{module}\n'
            'from contrastive_jax.data import registry\n'
            "assert registry.names('image') == ('embedded', 'idx', 'tfds', 'folder'), "
            "registry.names()\n")
    subprocess.run([sys.executable, '-c', code], check=True, cwd=REPO)


# ---------------------------------------------------------------------------
# Subsets.

def test_select_label_subset_balanced_deterministic_nested():
  labels = embedded.load_embedded('train').labels
  one = sources.select_label_subset(labels, fraction=0.01, seed=3)
  ten = sources.select_label_subset(labels, fraction=0.10, seed=3)
  assert len(one) == 100 and len(ten) == 1000
  np.testing.assert_array_equal(np.bincount(labels[one]), [10] * 10)
  np.testing.assert_array_equal(np.bincount(labels[ten]), [100] * 10)
  assert np.all(np.diff(one) > 0)  # sorted, unique
  np.testing.assert_array_equal(one, sources.select_label_subset(labels, fraction=0.01, seed=3))
  assert not np.array_equal(one, sources.select_label_subset(labels, fraction=0.01, seed=4))
  assert set(one) <= set(ten)
  np.testing.assert_array_equal(sources.select_label_subset(labels, per_class=10, seed=3), one)
  # Remainders go to some classes; unlabelled (-1) never picked.
  mixed = np.array([0, 1, 2, -1] * 10)
  pick = sources.select_label_subset(mixed, fraction=0.5, seed=0)  # 15 of 30 labelled
  assert len(pick) == 15 and (mixed[pick] >= 0).all()
  np.testing.assert_array_equal(np.bincount(mixed[pick]), [5, 5, 5])
  with pytest.raises(ValueError, match='fewer'):
    sources.select_label_subset(mixed, per_class=11)
  with pytest.raises(ValueError, match='exactly one'):
    sources.select_label_subset(mixed)


def test_split_train_val():
  src = _toy_source(n=50, num_classes=5)
  train, val = sources.split_train_val(src, 10, seed=0)
  assert train.num_examples == 40 and val.num_examples == 10
  np.testing.assert_array_equal(np.bincount(val.labels), [2] * 5)
  ids = np.concatenate([train.example_ids(), val.example_ids()])
  np.testing.assert_array_equal(np.sort(ids), np.arange(50))
  np.testing.assert_array_equal(val.images[:, 0, 0, 0], val.example_ids())  # ids kept
  again = sources.split_train_val(src, 10, seed=0)[1]
  np.testing.assert_array_equal(again.example_ids(), val.example_ids())
  assert sources.split_train_val(src, 0) == (src, None)
  with pytest.raises(ValueError, match='val_examples'):
    sources.split_train_val(src, 50)


# ---------------------------------------------------------------------------
# Batch stream.

def _iterator(src, **kw):
  kw.setdefault('process_index', 0)
  kw.setdefault('process_count', 1)
  return pipeline.BatchIterator(src, seed=kw.pop('seed', 7), **kw)


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_iterator_determinism_and_format():
  src = _toy_source()
  a, b = _iterator(src, global_batch_size=8), _iterator(src, global_batch_size=8)
  first = [next(a) for _ in range(10)]
  for batch in first:
    _assert_batches_equal(batch, next(b))
  batch = first[0]
  assert batch['image'].shape == (8, 4, 4, 1) and batch['image'].dtype == np.uint8
  assert batch['label'].dtype == np.int32 and batch['index'].dtype == np.int64
  np.testing.assert_array_equal(batch['image'][:, 0, 0, 0], batch['index'])
  np.testing.assert_array_equal(batch['label'], batch['index'] % 5)
  other = next(_iterator(src, global_batch_size=8, seed=8))
  assert not np.array_equal(other['index'], batch['index'])
  unshuffled = next(_iterator(src, global_batch_size=8, shuffle=False))
  np.testing.assert_array_equal(unshuffled['index'], np.arange(8))


@pytest.mark.parametrize('drop_remainder', [True, False])
def test_iterator_resume_equals_continuing(drop_remainder):
  src = _toy_source(n=50)  # B=8: 6 steps/epoch, so 20 steps cross epochs
  full = _iterator(src, global_batch_size=8, drop_remainder=drop_remainder)
  batches = [next(full) for _ in range(20)]
  assert full.state() == {'step': 20}
  for k in (0, 5, 6, 13):
    resumed = _iterator(src, global_batch_size=8, drop_remainder=drop_remainder, start_step=k)
    for s in range(k, 20):
      _assert_batches_equal(next(resumed), batches[s])
    _assert_batches_equal(full.get_batch(k), batches[k])  # random access
  restored = _iterator(src, global_batch_size=8, drop_remainder=drop_remainder)
  restored.restore({'step': 11})
  _assert_batches_equal(next(restored), batches[11])


@pytest.mark.parametrize('drop_remainder', [True, False])
@pytest.mark.parametrize('process_count', [2, 4])
def test_process_rows_union_is_global_batch(drop_remainder, process_count):
  src = _toy_source(n=50)
  one = _iterator(src, global_batch_size=8, drop_remainder=drop_remainder)
  many = [_iterator(src, global_batch_size=8, drop_remainder=drop_remainder,
                    process_index=p, process_count=process_count, start_step=3)
          for p in range(process_count)]
  assert many[0].local_batch_size == 8 // process_count
  for step in range(3, 15):
    parts = [next(it) for it in many]
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    _assert_batches_equal(joined, one.get_batch(step))
  with pytest.raises(ValueError, match='divisible'):
    _iterator(src, global_batch_size=9, process_index=0, process_count=2)


def test_every_example_once_per_epoch():
  src = _toy_source(n=50)
  # Continuous stream: each block of N positions is a permutation of all ids.
  it = _iterator(src, global_batch_size=8, drop_remainder=False)
  ids = np.concatenate([next(it)['index'] for _ in range(25)])  # 200 = 4 epochs
  epochs = ids.reshape(4, 50)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(50))
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
  # drop_remainder: N // B batches per epoch, no example twice within one.
  it = _iterator(src, global_batch_size=8)
  assert it.steps_per_epoch == 6
  for _ in range(3):
    ids = np.concatenate([next(it)['index'] for _ in range(6)])
    assert len(np.unique(ids)) == 48


def test_prefetch_thread_gives_same_batches():
  src = _toy_source(n=50)
  plain = _iterator(src, global_batch_size=8)
  with _iterator(src, global_batch_size=8, prefetch=3) as fetched:
    for _ in range(9):
      _assert_batches_equal(next(fetched), next(plain))
    fetched.close()  # restarts at the right step
    _assert_batches_equal(next(fetched), next(plain))
    assert fetched.step == plain.step == 10
  assert fetched._thread is None  # pylint: disable=protected-access


def test_iterator_rejects_batch_larger_than_data():
  with pytest.raises(ValueError, match='config.batch_size'):
    _iterator(_toy_source(n=5), global_batch_size=8)
  it = _iterator(_toy_source(n=5), global_batch_size=8, drop_remainder=False)
  assert sorted(next(it)['index'][:5]) == list(range(5))


def test_eval_batches_padding_and_processes():
  src = _toy_source(n=10)
  single = list(pipeline.eval_batches(src, 4, process_index=0, process_count=1))
  assert len(single) == 3 == pipeline.num_eval_batches(10, 4)
  np.testing.assert_array_equal(single[-1]['mask'], [True, True, False, False])
  np.testing.assert_array_equal(single[-1]['index'], [8, 9, -1, -1])
  np.testing.assert_array_equal(single[-1]['label'][2:], [0, 0])
  np.testing.assert_array_equal(single[-1]['image'][2:], 0)
  valid = np.concatenate([b['index'][b['mask']] for b in single])
  np.testing.assert_array_equal(valid, np.arange(10))
  halves = [list(pipeline.eval_batches(src, 4, process_index=p, process_count=2))
            for p in range(2)]
  assert len(halves[0]) == len(halves[1]) == 3
  for s in range(3):
    joined = {k: np.concatenate([halves[0][s][k], halves[1][s][k]]) for k in single[s]}
    _assert_batches_equal(joined, single[s])


def test_config_entry_points_carve_val():
  cfg = _data_cfg(val_examples=500)
  train, val = pipeline.load_split(cfg, 'train'), pipeline.load_split(cfg, 'val')
  assert train.num_examples == 9500 and val.num_examples == 500
  np.testing.assert_array_equal(np.bincount(val.labels), [50] * 10)
  assert not set(train.example_ids()) & set(val.example_ids())
  it = pipeline.make_train_iterator(cfg, global_batch_size=64, seed=0, start_step=2,
                                    process_index=0, process_count=1)
  try:
    batch = next(it)
    assert batch['image'].shape == (64, 28, 28, 1) and it.step == 3
    assert not set(batch['index']) & set(val.example_ids())
  finally:
    it.close()
  batches = list(pipeline.make_eval_iterator(cfg, 'val', global_batch_size=128,
                                             process_index=0, process_count=1))
  assert len(batches) == 4 and sum(b['mask'].sum() for b in batches) == 500


# ---------------------------------------------------------------------------
# TensorFlow Datasets (mocked: no network, no files).

@pytest.fixture(scope='module')
def tfds_mod():
  tfds = pytest.importorskip('tensorflow_datasets')
  return tfds


def test_tfds_arrays_mock(tfds_mod, tmp_path):
  from contrastive_jax.data import tfds_source
  with tfds_mod.testing.mock_data(num_examples=20):
    src = tfds_source.load_tfds_arrays('cifar10', 'train', str(tmp_path))
    assert src.images.shape == (20, 32, 32, 3) and src.images.dtype == np.uint8
    assert src.num_classes == 10 and ((0 <= src.labels) & (src.labels < 10)).all()
    again = sources.load_source(_data_cfg(source='tfds', name='cifar10',
                                          data_dir=str(tmp_path)), 'train')
    np.testing.assert_array_equal(again.images, src.images)
    # No 'label' feature and varying image sizes: labels -1, resized to image_size.
    lsun = tfds_source.load_tfds_arrays('lsun', 'train', str(tmp_path), image_size=8)
    assert lsun.images.shape == (20, 8, 8, 3) and (lsun.labels == -1).all()
    assert lsun.num_classes == 0
    with pytest.raises(ValueError, match='config.data.image_size'):
      tfds_source.load_tfds_arrays('lsun', 'train', str(tmp_path))


def test_letterbox_keeps_the_whole_picture(tfds_mod):
  import tensorflow as tf
  from contrastive_jax.data import tfds_source
  picture = np.random.default_rng(0).integers(0, 256, (30, 60, 3), dtype=np.uint8)
  image, extent = tfds_source._letterbox_fn(3, 16)(tf.io.encode_png(picture))
  image, extent = image.numpy(), extent.numpy()
  assert image.shape == (16, 16, 3) and image.dtype == np.uint8
  np.testing.assert_array_equal(extent, [8, 16])
  resized = tf.image.resize(picture, [8, 16], method='bicubic', antialias=True)
  np.testing.assert_array_equal(image[:8], np.clip(np.round(resized.numpy()), 0, 255))
  np.testing.assert_array_equal(image[8:], np.broadcast_to(image[7:8], (8, 16, 3)))
  # Portrait JPEG: full height, columns repeated on the right.
  image, extent = tfds_source._letterbox_fn(3, 16)(tf.io.encode_jpeg(picture.transpose(1, 0, 2)))
  image, extent = image.numpy(), extent.numpy()
  np.testing.assert_array_equal(extent, [16, 8])
  np.testing.assert_array_equal(image[:, 8:], np.broadcast_to(image[:, 7:8], (16, 8, 3)))
  # A square picture fills the array; one smaller than the side keeps its size
  # (no upsampling); grayscale keeps one channel.
  image, extent = tfds_source._letterbox_fn(3, 16)(tf.io.encode_png(picture[:, :30]))
  np.testing.assert_array_equal(extent.numpy(), [16, 16])
  gray = picture[:7, :9, :1]
  image, extent = tfds_source._letterbox_fn(1, 16)(tf.io.encode_png(gray))
  image, extent = image.numpy(), extent.numpy()
  assert image.shape == (16, 16, 1)
  np.testing.assert_array_equal(extent, [7, 9])
  np.testing.assert_array_equal(image[:7, :9], gray)
  np.testing.assert_array_equal(image[7:, :9], np.broadcast_to(gray[-1:], (9, 9, 1)))
  np.testing.assert_array_equal(image[:, 9:], np.broadcast_to(image[:, 8:9], (16, 7, 1)))


def test_tfds_stream_mock(tfds_mod, tmp_path):
  from contrastive_jax.data import tfds_source
  cfg = _data_cfg(source='tfds', name='imagenet2012', data_dir=str(tmp_path),
                  in_memory=False, image_size=16, shuffle_buffer=64)
  with tfds_mod.testing.mock_data(num_examples=40):
    # The mock ignores sub-splits: each of the 2 processes sees all 40 examples.
    stream = pipeline.make_train_iterator(cfg, global_batch_size=16, seed=1,
                                          process_index=1, process_count=2)
    assert isinstance(stream, tfds_source.TfdsTrainStream)
    assert stream.steps_per_epoch == 5 and stream.num_classes == 1000
    assert stream.image_shape == (16, 16, 3)
    batches = [next(stream) for _ in range(12)]
    assert stream.state() == {'step': 12}
    first = batches[0]
    assert first['image'].shape == (8, 16, 16, 3) and first['image'].dtype == np.uint8
    assert first['label'].dtype == np.int32 and first['index'].dtype == np.int64
    # Letterboxed (random_crop_from='image'): longer sides at most 16 (the
    # exact extents are checked against stored photos in test_imagenet_stream).
    assert first['extent'].shape == (8, 2) and first['extent'].dtype == np.int32
    assert (first['extent'] <= 16).all() and (first['extent'] >= 1).all()
    epoch0 = np.concatenate([b['index'] for b in batches[:5]])
    np.testing.assert_array_equal(np.sort(epoch0), np.arange(40))
    epoch1 = np.concatenate([b['index'] for b in batches[5:10]])
    assert not np.array_equal(epoch0, epoch1)
    for k in (3, 7):  # resume inside epoch 0 and epoch 1
      resumed = pipeline.make_train_iterator(cfg, global_batch_size=16, seed=1, start_step=k,
                                             process_index=1, process_count=2)
      for s in range(k, 12):
        _assert_batches_equal(next(resumed), batches[s])
      resumed.close()
    stream.close()
    cfg.random_crop_from = 'center_square'
    square = pipeline.make_train_iterator(cfg, global_batch_size=16, seed=1,
                                          process_index=1, process_count=2)
    batch = next(square)
    square.close()
    assert 'extent' not in batch and batch['image'].shape == (8, 16, 16, 3)
    np.testing.assert_array_equal(batch['index'], first['index'])
    evals = list(pipeline.make_eval_iterator(cfg, 'test', global_batch_size=16,
                                             process_index=0, process_count=2))
    # 2 x 40 mocked examples -> ceil(40 / 8) = 5 batches per process, all real.
    assert len(evals) == 5 and all(b['mask'].all() for b in evals)
    assert 'extent' not in evals[0]  # evaluation: the central square
    np.testing.assert_array_equal(np.concatenate([b['index'] for b in evals]), np.arange(40))


def test_no_tensorflow_import():
  code = ('import sys\n'
          'import contrastive_jax.data\n'
          "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]\n"
          'assert not bad, bad\n'
          'import contrastive_jax.data.pipeline, contrastive_jax.data.sources\n'
          'import contrastive_jax.data.tfds_source\n'
          'from contrastive_jax.data import pipeline, registry, sources\n'
          "sources.load_embedded('test')\n"
          'from contrastive_jax import config_defaults\n'
          "cfg = config_defaults.data_defaults()\n"
          "cfg.source, cfg.in_memory = 'tfds', False\n"
          'assert pipeline.streaming(cfg)  # asks the registry, not TensorFlow\n'
          "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]\n"
          'assert not bad, bad\n')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=REPO)
