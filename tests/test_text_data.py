"""Text sources: WordNet glosses, your own files, tfds text; the run's tokenizer."""

import json
import os

import ml_collections
import numpy as np
import pytest

from contrastive_jax import config_defaults, modalities
from contrastive_jax.data import pipeline, registry, sources, text_data, wordnet, wordnet_source
from contrastive_jax.text import tokenizer as tok_lib


def _data_cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = config_defaults.data_defaults()
  cfg.update(overrides)
  return cfg


# --- WordNet ---------------------------------------------------------------------

def test_wordnet_noun_glosses_are_the_82115_labelled_definitions():
  texts, labels, offsets = wordnet.noun_glosses()
  assert len(texts) == len(labels) == len(offsets) == 82_115
  counts = np.bincount(labels, minlength=26)
  assert counts.min() == 42 and counts.max() == 11_587  # noun.motive .. noun.artifact
  assert wordnet.NOUN_CLASSES[int(np.argmax(counts))] == 'noun.artifact'
  dog = [t for t, l in zip(texts, labels) if t.startswith('a member of the genus Canis')]
  assert dog and all(wordnet.NOUN_CLASSES[l] == 'noun.animal'
                     for t, l in zip(texts, labels) if t in dog)
  assert dog[0].endswith('occurs in many breeds')   # its example "the dog barked ..." cut
  assert 'hound' in wordnet.synonyms()['dog'] and 'domestic_dog' not in wordnet.synonyms()['dog']


def test_wordnet_split_is_stratified_disjoint_and_fixed():
  cfg = _data_cfg(source='wordnet_glosses')
  train = text_data.read_texts(cfg, 'train')
  test = text_data.read_texts(cfg, 'test')
  assert len(train.texts) + len(test.texts) == 82_115
  assert not set(train.ids.tolist()) & set(test.ids.tolist())
  full = np.bincount(np.concatenate([train.labels, test.labels]), minlength=26)
  frac = np.bincount(test.labels, minlength=26) / full
  np.testing.assert_allclose(frac, 0.1, atol=0.02)      # every class ~10%
  wordnet_source._wordnet_splits.cache_clear()         # pylint: disable=protected-access
  again = text_data.read_texts(cfg, 'test')
  np.testing.assert_array_equal(again.ids, test.ids)


def test_stratified_split_keeps_a_train_example_of_every_class():
  labels = np.array([0] * 50 + [1] * 2 + [2])
  train, test = text_data.stratified_split(labels, 0.1, seed=0)
  assert np.bincount(labels[test], minlength=3).tolist() == [5, 1, 0]
  assert set(labels[train].tolist()) == {0, 1, 2}
  assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))


def test_embedded_text_is_class_balanced_and_tokenizes(tmp_path):
  cfg = _data_cfg(source='embedded_text')
  train = text_data.read_texts(cfg, 'train')
  counts = np.bincount(train.labels, minlength=26)
  assert counts.max() == 160 and len(train.texts) == counts.sum()
  assert train.class_names == wordnet.NOUN_CLASSES
  tok = tok_lib.train_tokenizer(train.texts, kind='word', vocab_size=3000, min_count=1)
  tok.save(str(tmp_path / 'tokenizer.json'))
  cfg.tokenizer = str(tmp_path)          # a workdir holding tokenizer.json
  cfg.max_length = 12
  src = sources.load_source(cfg, 'test')
  assert src.input_key == 'tokens' and src.images.dtype == np.int32
  assert src.input_shape == (12,)
  assert (src.images[:, 0] > 0).all()    # no empty example
  batch = next(pipeline.eval_batches(src, 64))
  assert set(batch) == {'tokens', 'label', 'index', 'mask'}


# --- Your own files ----------------------------------------------------------------

def _load(tmp_path, split='train', **overrides):
  cfg = _data_cfg(source='text_file', **overrides)
  return text_data.read_texts(cfg, split)


def test_txt_file_one_example_per_line_empty_lines_left_out(tmp_path):
  path = tmp_path / 'corpus.txt'
  path.write_bytes(b'the cat sat\n\n   \nbad \xff byte here\nlast line')
  split = _load(tmp_path, path=str(path), test_fraction=0.0)
  assert split.texts == ('the cat sat', 'bad \ufffd byte here', 'last line')
  assert split.num_classes == 0 and (split.labels == -1).all()
  np.testing.assert_array_equal(split.ids, [0, 3, 4])   # line numbers: stable ids


@pytest.mark.parametrize('fmt', ['csv', 'tsv', 'jsonl'])
def test_table_files_with_label_column(tmp_path, fmt):
  rows = [('good film', 'pos'), ('bad plot', 'neg'), ('great cast', 'pos'), ('dull', 'neg')] * 5
  path = tmp_path / f'reviews.{fmt}'
  if fmt == 'jsonl':
    path.write_text('\n'.join(json.dumps({'review': t, 'y': l}) for t, l in rows))
  else:
    sep = ',' if fmt == 'csv' else '\t'
    path.write_text('review' + sep + 'y\n' + '\n'.join(t + sep + l for t, l in rows))
  train = _load(tmp_path, path=str(path), text_column='review', label_column='y')
  test = _load(tmp_path, 'test', path=str(path), text_column='review', label_column='y')
  assert train.class_names == ('neg', 'pos')
  assert len(train.texts) + len(test.texts) == 20 and len(test.texts) == 2
  assert sorted(test.labels.tolist()) == [0, 1]           # stratified: one of each
  with pytest.raises(ValueError, match=r"no label column 'label'.*columns are \['review', 'y'\]"):
    _load(tmp_path, path=str(path), text_column='review', label_column='label')
  with pytest.raises(ValueError, match="no text column 'text'"):
    _load(tmp_path, path=str(path), label_column='y')


def test_unseen_test_labels_and_missing_labels_are_errors(tmp_path):
  (tmp_path / 'train.csv').write_text('text,label\na b,x\nc d,y\n')
  (tmp_path / 'test.csv').write_text('text,label\ne f,z\n')
  with pytest.raises(ValueError, match=r"labels \['z'\] do not occur in the training data"):
    _load(tmp_path, 'test', path=str(tmp_path / 'train.csv'),
          test_path=str(tmp_path / 'test.csv'), label_column='label')
  (tmp_path / 'holes.csv').write_text('text,label\na b,x\nc d,\n')
  with pytest.raises(ValueError, match='row 2 has no value in the label column'):
    _load(tmp_path, path=str(tmp_path / 'holes.csv'), label_column='label')


def test_folder_of_class_subfolders(tmp_path):
  for c, texts in {'sport': ['goal scored', 'race won'], 'tech': ['new chip', 'fast code']}.items():
    (tmp_path / c).mkdir()
    for i, t in enumerate(texts):
      (tmp_path / c / f'{i}.txt').write_text(t)
  split = _load(tmp_path, path=str(tmp_path), test_fraction=0.0)
  assert split.class_names == ('sport', 'tech')
  assert split.texts == ('goal scored', 'race won', 'new chip', 'fast code')
  assert split.labels.tolist() == [0, 0, 1, 1]


def test_a_text_source_is_refused_where_no_text_is(tmp_path):
  with pytest.raises(ValueError, match='config.data.path is empty'):
    _load(tmp_path)
  with pytest.raises(ValueError, match='not a text source'):
    text_data.read_texts(_data_cfg(source='embedded'), 'train')
  assert set(registry.names('text')) >= {'wordnet_glosses', 'embedded_text', 'text_file',
                                         'tfds_text'}


def test_tfds_text_with_mock_data():
  tfds = pytest.importorskip('tensorflow_datasets')
  from contrastive_jax.data import tfds_text  # pylint: disable=g-import-not-at-top
  tfds_text._read.cache_clear()  # pylint: disable=protected-access
  with tfds.testing.mock_data(num_examples=12):
    split = text_data.read_texts(_data_cfg(source='tfds_text', name='ag_news_subset',
                                           text_column='description'), 'train')
  tfds_text._read.cache_clear()  # pylint: disable=protected-access
  assert len(split.texts) == 12 and split.class_names == ('World', 'Sports', 'Business',
                                                          'Sci/Tech')
  assert ((split.labels >= 0) & (split.labels < 4)).all()


# --- The run's tokenizer -----------------------------------------------------------

def _text_config(**data):
  config = config_defaults.pretrain_defaults()
  config.data.update(dict(source='embedded_text', vocab_size=2000, min_count=1, **data))
  config.model.name = 'rnn'
  return config


def test_pretraining_trains_saves_and_records_its_tokenizer(tmp_path):
  config = _text_config()
  modalities.setup_run(config, str(tmp_path))
  path = tmp_path / 'tokenizer.json'
  assert path.exists() and config.data.tokenizer == str(path)
  tok = tok_lib.Tokenizer.load(str(path))
  assert config.model.rnn.vocab_size == tok.vocab_size <= 2000
  # A rerun keeps it; another tokenizer for the same workdir is refused.
  again = _text_config()
  modalities.setup_run(again, str(tmp_path))
  assert again.data.tokenizer == str(path)
  other = tok_lib.train_tokenizer(['some other words entirely'], kind='word', vocab_size=50,
                                  min_count=1)
  other.save(str(tmp_path / 'other.json'))
  with pytest.raises(ValueError, match="differs from .*tokenizer this workdir's checkpoints"):
    modalities.setup_run(_text_config(tokenizer=str(tmp_path / 'other.json')), str(tmp_path))
  # A fine-tune takes init_from's; a vocab_size that does not fit is refused.
  ft = _text_config()
  ft.init_from = str(tmp_path)
  modalities.setup_run(ft, str(tmp_path / 'ft'))
  assert tok_lib.Tokenizer.load(ft.data.tokenizer).fingerprint == tok.fingerprint
  bad = _text_config()
  bad.model.rnn.vocab_size = tok.vocab_size + 1
  with pytest.raises(ValueError, match='vocab_size=.* but the tokenizer has'):
    modalities.setup_run(bad, str(tmp_path))


def test_reading_text_without_a_tokenizer_says_how_to_get_one():
  with pytest.raises(ValueError, match='config.data.tokenizer is empty'):
    sources.load_source(_data_cfg(source='embedded_text'), 'train')


# --- Length bucketing ----------------------------------------------------------------

def _token_source(n=400, max_len=24, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, max_len + 1, n)
  ids = np.zeros((n, max_len), np.int32)
  for i, l in enumerate(lengths):
    ids[i, :l] = rng.integers(3, 50, l)
  return sources.ArraySource(images=ids, labels=np.zeros(n, np.int32), num_classes=1,
                             name='tokens', input_key='tokens'), lengths


def test_length_buckets_cut_padding_and_keep_every_example_once_per_epoch():
  src, lengths = _token_source()
  plain = pipeline.BatchIterator(src, global_batch_size=32, seed=3)
  bucketed = pipeline.BatchIterator(src, global_batch_size=32, seed=3, bucket_batches=4,
                                    length_quantum=8)
  spe = 400 // 32
  seen, widths, spreads, plain_spreads = [], [], [], []
  for step in range(spe):
    batch = bucketed.get_batch(step)
    seen += batch['index'].tolist()
    width = batch['tokens'].shape[1]
    longest = lengths[batch['index']].max()
    assert width == min(24, -(-longest // 8) * 8)            # quantum-rounded global max
    assert (batch['tokens'] != 0).sum(1).tolist() == lengths[batch['index']].tolist()
    widths.append(width)
    spreads.append(np.ptp(lengths[batch['index']]))
    plain_spreads.append(np.ptp(lengths[plain.get_batch(step)['index']]))
  assert len(set(seen)) == len(seen) == spe * 32               # once per epoch
  assert np.mean(spreads) < 0.5 * np.mean(plain_spreads)        # similar lengths per batch
  assert min(widths) < 24
  # The same batches from a fresh iterator, and row shares of two processes.
  again = pipeline.BatchIterator(src, global_batch_size=32, seed=3, bucket_batches=4,
                                 length_quantum=8, start_step=5)
  np.testing.assert_array_equal(next(again)['tokens'], bucketed.get_batch(5)['tokens'])
  halves = [pipeline.BatchIterator(src, global_batch_size=32, seed=3, bucket_batches=4,
                                   length_quantum=8, process_index=p, process_count=2)
            .get_batch(5)['tokens'] for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate(halves), bucketed.get_batch(5)['tokens'])


def test_images_ignore_the_sequence_options():
  src = sources.load_embedded('test')
  a = pipeline.BatchIterator(src, global_batch_size=16, seed=0, bucket_batches=4,
                             length_quantum=8).get_batch(2)
  b = pipeline.BatchIterator(src, global_batch_size=16, seed=0).get_batch(2)
  np.testing.assert_array_equal(a['image'], b['image'])
