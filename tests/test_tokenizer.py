"""Tests for contrastive_jax.text.tokenizer: small corpora, no device work."""

import json
import random

import numpy as np
import pytest

from contrastive_jax.text import tokenizer as tok_lib

CORPUS = [
    'A domesticated carnivorous mammal that typically has a long snout.',
    'The dog barked at the cat; the cat ran up a tree.',
    'A small domesticated feline mammal with soft fur.',
    'An animal that barks, and a dog that runs.',
    'Café au lait: coffee with milk.',
    'Words in [brackets]: pad, mask, unk.',
] * 3


@pytest.fixture(scope='module', params=tok_lib.KINDS)
def tok(request):
  return tok_lib.train_tokenizer(CORPUS, kind=request.param, vocab_size=200, min_count=1)


def test_special_ids_fixed(tok):
  assert (tok_lib.PAD_ID, tok_lib.UNK_ID, tok_lib.MASK_ID) == (0, 1, 2)
  assert tok.vocab()[:3] == ['[PAD]', '[UNK]', '[MASK]']
  ids = tok.encode(CORPUS, 40)
  assert ids.dtype == np.int32 and ids.shape == (len(CORPUS), 40)
  content = ids[ids != 0]
  assert content.min() >= tok_lib.FIRST_TOKEN_ID   # every word of the corpus is known
  # Special-token strings in text are text, not the special ids.
  literal = tok.encode(['[MASK] [PAD] [UNK]'], 12)[0]
  assert tok.lengths(literal) == 9 and literal[:9].min() >= tok_lib.FIRST_TOKEN_ID
  assert tok.decode(literal) == ['[ mask ] [ pad ] [ unk ]']


def test_word_level_vocab_is_frequency_then_spelling():
  tok = tok_lib.train_tokenizer(['b a c a', 'b a d'], vocab_size=100, min_count=1)
  assert tok.kind == 'word' and tok.vocab() == ['[PAD]', '[UNK]', '[MASK]', 'a', 'b', 'c', 'd']
  assert tok.vocab_size == 7
  small = tok_lib.train_tokenizer(['b a c a', 'b a d'], vocab_size=5, min_count=1)
  assert small.vocab() == ['[PAD]', '[UNK]', '[MASK]', 'a', 'b']
  frequent = tok_lib.train_tokenizer(['b a c a', 'b a d'], vocab_size=100, min_count=2)
  assert frequent.vocab() == ['[PAD]', '[UNK]', '[MASK]', 'a', 'b']


def test_round_trip_gives_normalised_words(tok):
  ids = tok.encode(['The DOG barked; the cat ran.', 'Café  au\tlait'], 16)
  assert tok.decode(ids) == ['the dog barked ; the cat ran .', 'café au lait']
  # NFKC: full-width letters normalise to ASCII.
  assert tok.decode(tok.encode(['Ｔｈｅ ｄｏｇ'], 4)) == ['the dog']
  np.testing.assert_array_equal(tok.lengths(ids), [8, 3])


def test_unknown_words_are_unk():
  tok = tok_lib.train_tokenizer(CORPUS, kind='word', vocab_size=200, min_count=1)
  ids = tok.encode(['the zebra barked xylophone'], 6)[0]
  the, barked = tok.hf.token_to_id('the'), tok.hf.token_to_id('barked')
  np.testing.assert_array_equal(ids, [the, 1, barked, 1, 0, 0])
  assert tok.decode(ids) == ['the [UNK] barked [UNK]']
  # min_count leaves rare words out of the vocabulary: they become UNK.
  rare = tok_lib.train_tokenizer(['dog dog cat'], vocab_size=50, min_count=2)
  np.testing.assert_array_equal(rare.encode(['cat dog'], 3)[0], [1, 3, 0])
  # WordPiece spells unseen words from pieces; unseen characters are UNK.
  wp = tok_lib.train_tokenizer(CORPUS, kind='wordpiece', vocab_size=200, min_count=1)
  assert wp.decode(wp.encode(['dogcat'], 8)) == ['dogcat']
  assert wp.decode(wp.encode(['dog 狗'], 8)) == ['dog [UNK]']


def test_truncation_padding_and_empty_texts(tok):
  texts = ['the dog barked at the cat', 'dog', '', '   ']
  ids = tok.encode(texts, 3)
  full = tok.encode(texts, 12)
  np.testing.assert_array_equal(ids[0], full[0, :3])       # the first 3 tokens
  n = tok.lengths(full)
  assert n[0] >= 6 and (full[0, n[0]:] == 0).all()
  np.testing.assert_array_equal(tok.lengths(ids), [3, 1, 1, 1])
  np.testing.assert_array_equal(ids[2:], [[1, 0, 0], [1, 0, 0]])  # empty -> one UNK
  # Padding only at the end of every row.
  for row in full:
    n = tok.lengths(row)
    assert (row[:n] != 0).all() and (row[n:] == 0).all()
  with pytest.raises(ValueError, match='max_length=0'):
    tok.encode(texts, 0)
  with pytest.raises(TypeError, match='sequence of texts'):
    tok.encode('one text', 4)


def test_save_load_same_ids_and_fingerprint(tok, tmp_path):
  path = tmp_path / 'sub' / 'tokenizer.json'
  tok.save(path)
  back = tok_lib.Tokenizer.load(path)
  assert back.fingerprint == tok.fingerprint and len(tok.fingerprint) == 64
  assert back.to_json() == tok.to_json() == path.read_text(encoding='utf-8')
  assert back.kind == tok.kind and back.vocab() == tok.vocab()
  np.testing.assert_array_equal(back.encode(CORPUS, 24), tok.encode(CORPUS, 24))


def test_load_errors_name_the_path(tmp_path):
  missing = tmp_path / 'nope.json'
  with pytest.raises(FileNotFoundError, match=str(missing)):
    tok_lib.Tokenizer.load(missing)
  bad = tmp_path / 'bad.json'
  bad.write_text('{"not": "a tokenizer"', encoding='utf-8')
  with pytest.raises(ValueError, match=f'{bad} is not a tokenizer JSON'):
    tok_lib.Tokenizer.load(bad)
  # A valid tokenizer JSON without the fixed special ids.
  tok = tok_lib.train_tokenizer(['a b'], vocab_size=10)
  data = json.loads(tok.to_json())
  vocab = data['model']['vocab']
  vocab['[PAD]'], vocab['a'] = vocab['a'], vocab['[PAD]']
  other = tmp_path / 'other.json'
  other.write_text(json.dumps(data), encoding='utf-8')
  with pytest.raises(ValueError, match=f'{other}: ids 0, 1, 2'):
    tok_lib.Tokenizer.load(other)


@pytest.mark.parametrize('kind', tok_lib.KINDS)
def test_training_is_deterministic(kind):
  # Enough distinct words and pieces for hash-order ties to show if unhandled.
  rng = random.Random(0)
  letters = 'abcdefghijklmnopqrstuvwxyz'
  words = [''.join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(400)]
  texts = [' '.join(rng.choice(words) for _ in range(12)) for _ in range(300)]
  shuffled = rng.sample(texts, len(texts))
  train = lambda t: tok_lib.train_tokenizer(t, kind=kind, vocab_size=300, min_count=2)
  jsons = {train(texts).to_json() for _ in range(3)} | {train(shuffled).to_json()}
  assert len(jsons) == 1
  assert train(texts).vocab_size == 300


def test_bad_arguments_say_how_to_fix():
  with pytest.raises(ValueError, match="kind='bpe'"):
    tok_lib.train_tokenizer(['a'], kind='bpe', vocab_size=10)
  with pytest.raises(ValueError, match='vocab_size > 3'):
    tok_lib.train_tokenizer(['a'], vocab_size=3)
  with pytest.raises(ValueError, match='min_count >= 1'):
    tok_lib.train_tokenizer(['a'], vocab_size=10, min_count=0)
