"""WordNet 3.0 read from its database files (Debian's `wordnet-base`).

Each line of `data.noun` / `data.verb` / `data.adj` / `data.adv` outside the
licence header (lines starting with two spaces) is one synset:

  offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt [ptr ...] [frames] | gloss

(wndb(5WN)). `lex_filenum` names the lexicographer file; for nouns, 03-28 are
the 26 classes noun.Tops .. noun.time (lexnames(5WN)). The gloss is the
definition, then optional examples in double quotes after `; `.

The noun glosses labelled by lexicographer file are the text modality's
offline benchmark ("a domesticated carnivorous mammal ..." -> noun.animal);
all glosses are word2vec's offline corpus; the words of a synset are the
synonyms of the text views' synonym substitution.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Iterator, Sequence

import numpy as np

DEFAULT_DIR = '/usr/share/wordnet'
POS_FILES = {'noun': 'data.noun', 'verb': 'data.verb', 'adj': 'data.adj', 'adv': 'data.adv'}

# lexnames(5WN): lex_filenum 3..28 are the noun files, in this order.
NOUN_CLASSES = (
    'noun.Tops', 'noun.act', 'noun.animal', 'noun.artifact', 'noun.attribute', 'noun.body',
    'noun.cognition', 'noun.communication', 'noun.event', 'noun.feeling', 'noun.food',
    'noun.group', 'noun.location', 'noun.motive', 'noun.object', 'noun.person',
    'noun.phenomenon', 'noun.plant', 'noun.possession', 'noun.process', 'noun.quantity',
    'noun.relation', 'noun.shape', 'noun.state', 'noun.substance', 'noun.time')
FIRST_NOUN_LEXFILE = 3


@dataclasses.dataclass(frozen=True)
class Synset:
  offset: int
  lex_filenum: int
  pos: str
  lemmas: tuple[str, ...]     # as written in the file: underscores join words
  gloss: str                  # definition and examples

  @property
  def definition(self) -> str:
    """The gloss without its quoted examples."""
    return self.gloss.split('; "', 1)[0].strip().rstrip(';').strip()


def find_dir(path: str = '') -> str:
  """The WordNet database folder: `path`, else $WNSEARCHDIR, else /usr/share/wordnet."""
  root = path or os.environ.get('WNSEARCHDIR') or DEFAULT_DIR
  if not os.path.exists(os.path.join(root, POS_FILES['noun'])):
    raise FileNotFoundError(
        f'WordNet 3.0 is not at {root} (no {POS_FILES["noun"]}). Install it with '
        '`apt-get install wordnet-base`, or point config.data.wordnet_dir (or $WNSEARCHDIR) '
        'at a folder holding data.noun.')
  return root


def parse_line(line: str, pos: str) -> Synset:
  """One synset line of a data.* file."""
  head, _, gloss = line.partition(' | ')
  fields = head.split()
  offset, lex_filenum, _ss_type, w_cnt = fields[:4]
  n_words = int(w_cnt, 16)
  lemmas = tuple(fields[4 + 2 * i] for i in range(n_words))
  return Synset(offset=int(offset), lex_filenum=int(lex_filenum), pos=pos,
                lemmas=lemmas, gloss=gloss.strip())


def iter_synsets(root: str = '', pos: str = 'noun') -> Iterator[Synset]:
  """The synsets of one part of speech, in file order."""
  if pos not in POS_FILES:
    raise ValueError(f'pos={pos!r}; choose one of {tuple(POS_FILES)}.')
  path = os.path.join(find_dir(root), POS_FILES[pos])
  with open(path, encoding='utf-8', errors='replace') as f:
    for line in f:
      if line.startswith('  ') or not line.strip():
        continue   # the licence header
      yield parse_line(line.rstrip('\n'), pos)


@functools.lru_cache(maxsize=4)
def noun_glosses(root: str = '') -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
  """(definitions, labels int32 [N] in 0..25 = NOUN_CLASSES, offsets int64 [N]),
  every noun synset in file order."""
  texts, labels, offsets = [], [], []
  for s in iter_synsets(root, 'noun'):
    texts.append(s.definition)
    labels.append(s.lex_filenum - FIRST_NOUN_LEXFILE)
    offsets.append(s.offset)
  labels_arr = np.asarray(labels, np.int32)
  if labels_arr.min() < 0 or labels_arr.max() >= len(NOUN_CLASSES):
    raise ValueError(f'{root}: noun lexicographer file numbers outside 3..28; is this '
                     'WordNet 3.0?')
  return tuple(texts), labels_arr, np.asarray(offsets, np.int64)


def all_glosses(root: str = '', pos: Sequence[str] = tuple(POS_FILES)) -> list[str]:
  """Every gloss (definition and examples) of the given parts of speech: the
  offline word2vec corpus."""
  return [s.gloss for p in pos for s in iter_synsets(root, p)]


@functools.lru_cache(maxsize=2)
def synonyms(root: str = '') -> dict[str, tuple[str, ...]]:
  """Lower-cased single-word lemma -> the other single-word lemmas sharing a
  synset with it (any part of speech), sorted; multi-word lemmas are left out."""
  table: dict[str, set[str]] = {}
  for pos in POS_FILES:
    for s in iter_synsets(root, pos):
      words = sorted({_lemma_word(l) for l in s.lemmas if '_' not in l and '-' not in l})
      for w in words:
        table.setdefault(w, set()).update(x for x in words if x != w)
  return {w: tuple(sorted(others)) for w, others in table.items() if others}


def _lemma_word(lemma: str) -> str:
  # Adjective lemmas may carry a syntactic marker: "big(a)".
  return lemma.split('(', 1)[0].lower()
