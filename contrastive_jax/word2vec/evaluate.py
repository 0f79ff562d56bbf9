"""Intrinsic and downstream evaluation of word vectors.

  - word similarity: Spearman's rho between cosine similarity and human scores
    on WordSim-353 (Finkelstein et al. 2002) and SimLex-999 (Hill et al. 2015);
    pairs with a word outside the vocabulary are left out and counted (OOV
    rate), as gensim's `evaluate_word_pairs` does;
  - analogies: the Google analogy questions (Mikolov et al. 2013a), 3CosAdd
    (the answer is the nearest unit vector to b - a + c, the three question
    words excluded) over the `restrict_vocab` most frequent words; questions
    with a word outside them are skipped and counted (OOV rate), as gensim's
    `evaluate_word_analogies` does;
  - nearest neighbours of probe words, for the log;
  - downstream: averaged word vectors of a text + logistic regression.

The benchmark files are the ones the gensim wheel ships
(`gensim.test.utils.datapath`): gensim is an optional dependency (the
`[text]` extra); the files are never copied into this repository.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from contrastive_jax.word2vec import vocab as vocab_lib

BENCHMARKS = {'ws353': 'wordsim353.tsv', 'simlex999': 'simlex999.txt',
              'analogy': 'questions-words.txt'}


def benchmark_path(name: str) -> str:
  """The path of a benchmark file in the gensim wheel."""
  try:
    from gensim.test.utils import datapath  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("The word-vector benchmarks are read from gensim's test data: "
                      "pip install 'contrastive_jax[text]' (or gensim).") from e
  path = datapath(BENCHMARKS[name])
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing from the gensim installation; reinstall gensim.')
  return path


def unit_rows(vectors: np.ndarray) -> np.ndarray:
  vectors = np.asarray(vectors, np.float32)
  return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return float(stats.spearmanr(a, b).statistic)


def word_similarity(words: Sequence[str], vectors: np.ndarray, path: str) -> dict[str, float]:
  """{'spearman', 'oov_rate', 'pairs'} on a tab-separated 'w1 w2 score' file."""
  index = {w: i for i, w in enumerate(words)}
  unit = unit_rows(vectors)
  sims, gold, total = [], [], 0
  for line in open(path, encoding='utf-8'):
    if line.startswith('#') or not line.strip():
      continue
    a, b, score = line.rstrip('\n').split('\t')[:3]
    a, b = a.lower(), b.lower()
    total += 1
    if a in index and b in index:
      sims.append(float(unit[index[a]] @ unit[index[b]]))
      gold.append(float(score))
  rho = _spearman(np.asarray(sims), np.asarray(gold)) if len(sims) > 2 else float('nan')
  return {'spearman': rho, 'oov_rate': 1.0 - len(sims) / max(total, 1), 'pairs': len(sims)}


def analogies(words: Sequence[str], vectors: np.ndarray, path: str,
              restrict_vocab: int = 30000, batch: int = 512) -> dict[str, float]:
  """{'accuracy', 'oov_rate', 'questions'}: 3CosAdd over the `restrict_vocab` most
  frequent words (words and vectors most frequent first)."""
  n = min(restrict_vocab, len(words))
  index = {w: i for i, w in enumerate(words[:n])}
  unit = unit_rows(vectors[:n])
  questions, total = [], 0
  for line in open(path, encoding='utf-8'):
    if line.startswith(':') or not line.strip():
      continue
    total += 1
    q = [w.lower() for w in line.split()]
    if all(w in index for w in q):
      questions.append([index[w] for w in q])
  if not questions:
    return {'accuracy': float('nan'), 'oov_rate': 1.0, 'questions': 0}
  q = np.asarray(questions)
  correct = 0
  for s in range(0, len(q), batch):
    a, b, c, d = q[s:s + batch].T
    target = unit[b] - unit[a] + unit[c]
    scores = target @ unit.T
    rows = np.arange(len(a))
    for x in (a, b, c):
      scores[rows, x] = -np.inf
    correct += int(np.sum(scores.argmax(1) == d))
  return {'accuracy': correct / len(q), 'oov_rate': 1.0 - len(q) / total, 'questions': len(q)}


def neighbours(words: Sequence[str], vectors: np.ndarray, probes: Sequence[str],
               k: int = 5) -> dict[str, list[str]]:
  """The k nearest words (cosine) of each probe word in the vocabulary."""
  index = {w: i for i, w in enumerate(words)}
  unit = unit_rows(vectors)
  out = {}
  for p in probes:
    if p not in index:
      continue
    scores = unit @ unit[index[p]]
    scores[index[p]] = -np.inf
    out[p] = [words[i] for i in np.argsort(-scores)[:k]]
  return out


def intrinsic(words: Sequence[str], vectors: np.ndarray, restrict_vocab: int) -> dict[str, float]:
  """WS353 / SimLex-999 Spearman and analogy accuracy with their OOV rates."""
  out = {}
  for name in ('ws353', 'simlex999'):
    r = word_similarity(words, vectors, benchmark_path(name))
    out[f'{name}_spearman'], out[f'{name}_oov_rate'] = r['spearman'], r['oov_rate']
  r = analogies(words, vectors, benchmark_path('analogy'), restrict_vocab)
  out['analogy_accuracy'], out['analogy_oov_rate'] = r['accuracy'], r['oov_rate']
  return out


def average_vectors(texts: Sequence[str], words: Sequence[str], vectors: np.ndarray) -> np.ndarray:
  """Each text's mean in-vocabulary word vector (zeros when it has none) [N, D]."""
  index = {w: i for i, w in enumerate(words)}
  out = np.zeros((len(texts), vectors.shape[1]), np.float32)
  for n, text in enumerate(texts):
    ids = [index[w] for w in vocab_lib.tokenize(text) if w in index]
    if ids:
      out[n] = vectors[ids].mean(0)
  return out


def stratified_split(labels: np.ndarray, fraction: float, seed: int = 0,
                     test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, test indices): a fixed class-stratified test split of
  `test_fraction`, and `fraction` of each class's remaining rows (at least one)."""
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    rows = rng.permutation(np.flatnonzero(labels == c))
    n_test = int(round(len(rows) * test_fraction))
    test.append(rows[:n_test])
    rest = rows[n_test:]
    train.append(rest[:max(1, int(round(len(rest) * fraction)))])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def gloss_classification(words: Sequence[str], vectors: np.ndarray, texts: Sequence[str],
                         labels: np.ndarray, fraction: float, seed: int = 0) -> float:
  """Test accuracy of a logistic regression on averaged vectors, trained on
  `fraction` of the labels (stratified_split)."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top
  features = average_vectors(texts, words, vectors)
  train, test = stratified_split(labels, fraction, seed)
  scaler = StandardScaler().fit(features[train])
  clf = LogisticRegression(max_iter=1000, C=1.0)
  clf.fit(scaler.transform(features[train]), labels[train])
  return float(np.mean(clf.predict(scaler.transform(features[test])) == labels[test]))
