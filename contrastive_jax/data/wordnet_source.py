"""Sources 'wordnet_glosses' and 'embedded_text': WordNet noun definitions
labelled by their lexicographer file (26 classes: noun.animal, noun.food, ...).

'wordnet_glosses' reads all 82,115 noun synsets from the WordNet 3.0 database
(config.data.wordnet_dir; Debian's wordnet-base) and splits them
deterministically: a stratified 10% of every class is 'test', the rest
'train' (the val carve comes out of train, config.data.val_examples).

'embedded_text' is a class-balanced subset of those same splits shipped in the
package (`embedded/wordnet_glosses_subset.npz`, with WordNet's licence notice
in `embedded/WORDNET_LICENSE`), so a text quickstart runs with no install
step. launch/make_embedded_text.py makes it.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from contrastive_jax.data import embedded, text_data, wordnet

TEST_FRACTION = 0.1
SPLIT_SEED = 0          # the test split never moves with the training seed
EMBEDDED_TEXT_PATH = os.path.join(os.path.dirname(__file__), 'embedded',
                                  'wordnet_glosses_subset.npz')


def _check_split(split: str, source: str) -> None:
  if split not in ('train', 'test'):
    raise ValueError(f"The {source} source has splits 'train' and 'test'; got {split!r} "
                     '(check config.data.train_split / config.data.test_split).')


@functools.lru_cache(maxsize=2)
def _wordnet_splits(root: str) -> dict[str, text_data.TextSplit]:
  texts, labels, offsets = wordnet.noun_glosses(root)
  train_pos, test_pos = text_data.stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
  out = {}
  for split, pos in (('train', train_pos), ('test', test_pos)):
    # Ids: the synset offsets, stable whatever the split or the subset.
    out[split] = text_data.TextSplit(
        texts=tuple(texts[i] for i in pos), labels=labels[pos],
        class_names=wordnet.NOUN_CLASSES, name=f'wordnet_glosses:{split}',
        ids=offsets[pos])
  return out


def read_wordnet_glosses(data_cfg: Any, split: str) -> text_data.TextSplit:
  _check_split(split, 'wordnet_glosses')
  return _wordnet_splits(wordnet.find_dir(data_cfg.get('wordnet_dir', '')))[split]


def read_embedded_text(data_cfg: Any, split: str) -> text_data.TextSplit:
  del data_cfg  # the file is fixed
  _check_split(split, 'embedded_text')
  if not os.path.exists(EMBEDDED_TEXT_PATH):
    raise FileNotFoundError(
        f'{EMBEDDED_TEXT_PATH} is missing (config.data.source=embedded_text). Recreate it '
        'with `python launch/make_embedded_text.py` (needs `apt-get install wordnet-base`), '
        'or reinstall the package.')
  arrays = embedded.embedded_arrays(EMBEDDED_TEXT_PATH)
  return text_data.TextSplit(
      texts=tuple(str(t) for t in arrays[f'{split}_texts']),
      labels=arrays[f'{split}_labels'].astype(np.int32),
      class_names=tuple(str(c) for c in arrays['class_names']),
      name=f'wordnet_glosses_subset:{split}', ids=arrays[f'{split}_ids'].astype(np.int64))


text_data.register_text_source(
    'wordnet_glosses', read_wordnet_glosses,
    doc='WordNet 3.0 noun definitions, 26 lexicographer-file classes (apt wordnet-base)')
text_data.register_text_source(
    'embedded_text', read_embedded_text,
    doc='a class-balanced WordNet noun-gloss subset shipped in the package')
