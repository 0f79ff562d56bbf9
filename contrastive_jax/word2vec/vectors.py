"""Word vectors on disk in the C word2vec formats, which gensim's
`KeyedVectors.load_word2vec_format` reads (binary=True / False).

  WORKDIR/vectors.bin   "V D\\n", then per word: the word, a space, D little-endian
                        float32, "\\n" (the C word2vec's -binary 1 layout)
  WORKDIR/vectors.txt   "V D\\n", then per word: the word and D numbers, each
                        printed with 9 significant digits (float32 round-trips exactly)

The vectors are the input ("syn0") table, most frequent word first.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from contrastive_jax import files

BINARY_FILE = 'vectors.bin'
TEXT_FILE = 'vectors.txt'


def save(workdir: str, words: Sequence[str], vectors: np.ndarray) -> None:
  """Writes both formats into workdir (each atomically: written, then renamed)."""
  vectors = np.asarray(vectors, np.float32)
  if len(words) != vectors.shape[0]:
    raise ValueError(f'{len(words)} words for {vectors.shape[0]} vectors.')
  header = f'{vectors.shape[0]} {vectors.shape[1]}\n'.encode()
  le = vectors.astype('<f4')
  binary = header + b''.join(w.encode('utf-8') + b' ' + le[i].tobytes() + b'\n'
                             for i, w in enumerate(words))
  text = header.decode() + ''.join(
      w + ' ' + ' '.join('%.9g' % x for x in vectors[i]) + '\n' for i, w in enumerate(words))
  files.write_bytes_atomic(os.path.join(workdir, BINARY_FILE), binary)
  files.write_bytes_atomic(os.path.join(workdir, TEXT_FILE), text.encode('utf-8'))


def load_binary(path: str) -> tuple[list[str], np.ndarray]:
  data = files._path(path).read_bytes()  # pylint: disable=protected-access
  end = data.index(b'\n')
  num, dim = (int(x) for x in data[:end].split())
  words, vectors, pos = [], np.empty((num, dim), np.float32), end + 1
  for i in range(num):
    while data[pos:pos + 1] == b'\n':
      pos += 1
    space = data.index(b' ', pos)
    words.append(data[pos:space].decode('utf-8'))
    vectors[i] = np.frombuffer(data, '<f4', dim, space + 1)
    pos = space + 1 + 4 * dim
  return words, vectors


def load_text(path: str) -> tuple[list[str], np.ndarray]:
  lines = files.read_text(path).splitlines()
  num, dim = (int(x) for x in lines[0].split())
  words = [l.split(' ', 1)[0] for l in lines[1:num + 1]]
  vectors = np.asarray([l.split(' ')[1:dim + 1] for l in lines[1:num + 1]], np.float32)
  return words, vectors


def load_word_vectors(workdir: str) -> tuple[list[str], np.ndarray]:
  """(words, vectors float32 [V, D]) of a word2vec run: WORKDIR/vectors.bin, else
  vectors.txt (or a path to either file)."""
  if workdir.endswith(('.bin', '.txt')) and files.exists(workdir):
    return (load_binary if workdir.endswith('.bin') else load_text)(workdir)
  for name, load in ((BINARY_FILE, load_binary), (TEXT_FILE, load_text)):
    path = os.path.join(workdir, name)
    if files.exists(path):
      return load(path)
  raise FileNotFoundError(
      f'{workdir} has no {BINARY_FILE} or {TEXT_FILE}: train word vectors there first '
      '(python -m contrastive_jax.word2vec --config=configs/word2vec.py --workdir=DIR), or '
      'let that run finish (the vectors are written at its last step).')
