"""Makes contrastive_jax/data/embedded/wordnet_glosses_subset.npz from WordNet 3.0.

The subset is class-balanced over the 26 noun lexicographer files: up to 160
train and 40 test definitions per class, drawn without replacement with a
fixed seed from the 'wordnet_glosses' source's own train and test splits
(classes smaller than that give all they have), kept in file order. It is a
pure function of the database and this script, so rerunning reproduces it.

  apt-get install wordnet-base              # WordNet 3.0 under /usr/share/wordnet
  python launch/make_embedded_text.py       # writes the .npz, prints per-class counts
"""

from __future__ import annotations

import os

import numpy as np

from contrastive_jax.data import wordnet, wordnet_source

SEED = 3_0  # WordNet 3.0; any fixed number works
DEBIAN_COPYRIGHT = '/usr/share/doc/wordnet-base/copyright'
PER_CLASS = {'train': 160, 'test': 40}


def subset(split: str) -> dict[str, np.ndarray]:
  data = wordnet_source._wordnet_splits(wordnet.find_dir())[split]  # pylint: disable=protected-access
  picked = []
  for c in range(len(wordnet.NOUN_CLASSES)):
    pos = np.flatnonzero(data.labels == c)
    picked.append(np.random.default_rng([SEED, c]).permutation(pos)[:PER_CLASS[split]])
  pos = np.sort(np.concatenate(picked))
  return {f'{split}_texts': np.asarray([data.texts[i] for i in pos]),
          f'{split}_labels': data.labels[pos].astype(np.int8),
          f'{split}_ids': data.ids[pos].astype(np.int64)}


def write_licence(path: str, copyright_file: str = DEBIAN_COPYRIGHT) -> None:
  """WordNet's licence, which must accompany every copy of the database."""
  with open(copyright_file, encoding='utf-8') as f:
    text = f.read()
  body = text.split('License: WordNet3.0\n', 1)[1].split('\n\n', 1)[0]
  lines = ['' if l.strip() == '.' else l[1:] for l in body.splitlines()]
  with open(path, 'w', encoding='utf-8') as f:
    f.write('The text in wordnet_glosses_subset.npz is taken from WordNet 3.0, under '
            'this licence:\n\n' + '\n'.join(lines) + '\n')


def main() -> None:
  arrays = {'class_names': np.asarray(wordnet.NOUN_CLASSES)}
  for split in ('train', 'test'):
    arrays.update(subset(split))
    print(split, len(arrays[f'{split}_labels']), 'per class:',
          np.bincount(arrays[f'{split}_labels'], minlength=26).tolist())
  os.makedirs(os.path.dirname(wordnet_source.EMBEDDED_TEXT_PATH), exist_ok=True)
  np.savez_compressed(wordnet_source.EMBEDDED_TEXT_PATH, **arrays)
  write_licence(os.path.join(os.path.dirname(wordnet_source.EMBEDDED_TEXT_PATH),
                             'WORDNET_LICENSE'))
  print('wrote', wordnet_source.EMBEDDED_TEXT_PATH,
        os.path.getsize(wordnet_source.EMBEDDED_TEXT_PATH), 'bytes')


if __name__ == '__main__':
  main()
