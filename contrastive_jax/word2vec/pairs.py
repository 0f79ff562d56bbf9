"""The training examples of one step: a pure function of (seed, step).

Step s reads the corpus positions [c T, (c + 1) T) of epoch s // steps_per_epoch
(c = s mod steps_per_epoch, T = config.batch_size ids), so every epoch covers the
corpus once in order, the learning rate falls with the words processed as in
gensim, and a resumed or multi-device run sees exactly the same examples.
Within the chunk, as the C word2vec and gensim do (Mikolov et al. 2013):

  - each word is kept with probability vocab.keep_probabilities (subsampling);
  - each kept word draws its window b uniformly from 1..window ("dynamic window");
  - skip-gram (sg=1): every kept word within b of the centre, in the same
    sentence, gives the pair (input = that context word, output = the centre),
    centre by centre;
  - CBOW (sg=0): the centre's context words within b form one example.

Windows do not reach across a chunk boundary (a few pairs per chunk of T words
are lost). Examples are padded to a fixed `capacity` (the arrays' shape, so
the update compiles once); a chunk with more is cut and the loss counted as
`dropped` (the capacity is sized from sampled chunks to make that rare).
Negatives are drawn on the device (sgns.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from absl import logging

ALIGN = 512   # capacity multiple: divisible by any device count up to 512 that is a power of 2


class PairStream:
  """Batches of (input, output) examples by step, with the iterator interface
  the shared loop needs (`next`, `state()`, `restore()`)."""

  def __init__(self, ids: np.ndarray, keep_prob: np.ndarray, *, sg: bool, window: int,
               tokens_per_step: int, seed: int, start_step: int = 0, capacity: int = 0):
    self.ids, self.keep_prob = ids, np.asarray(keep_prob, np.float64)
    self.sg, self.window, self.tokens_per_step, self.seed = sg, window, tokens_per_step, seed
    self.steps_per_epoch = max(1, math.ceil(len(ids) / tokens_per_step))
    self.step = start_step
    self.dropped = 0
    self.effective_words = 0   # kept words of the batches made by this process
    self.capacity = capacity or self.estimate_capacity()

  # --- the examples of one step ---------------------------------------------------------
  def _kept_words(self, step: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """(word ids, sentence ids) of the chunk after subsampling, and the step's generator."""
    rng = np.random.default_rng([self.seed, step])
    start = (step % self.steps_per_epoch) * self.tokens_per_step
    chunk = np.asarray(self.ids[start:start + self.tokens_per_step])
    words = chunk >= 0
    sentence = np.cumsum(~words)
    keep = words & (rng.random(len(chunk)) < self.keep_prob[np.where(words, chunk, 0)])
    return chunk[keep], sentence[keep], rng

  def examples(self, step: int) -> dict[str, np.ndarray]:
    """The unpadded examples of `step` (see the module docstring), centre by
    centre in corpus order, each centre's context words left to right (the
    order of the C word2vec and gensim): consecutive skip-gram examples share
    their output row and most of their input rows, which the fused CPU update
    then finds in cache."""
    w, s, rng = self._kept_words(step)
    n = len(w)
    b = rng.integers(1, self.window + 1, size=n)
    offsets = np.concatenate([np.arange(-self.window, 0), np.arange(1, self.window + 1)])
    j = np.arange(n)[:, None] + offsets[None, :]
    jc = np.clip(j, 0, max(n - 1, 0))
    # Context j of centre i: inside the chunk, in i's sentence, within i's window b[i].
    valid = (j >= 0) & (j < n) & (s[jc] == s[:, None]) & (np.abs(offsets)[None, :] <= b[:, None])
    if self.sg:
      return {'inp': w[jc[valid]].astype(np.int32),
              'out': np.repeat(w, valid.sum(1)).astype(np.int32), 'words': n}
    has_context = valid.any(1)
    return {'ctx': np.where(valid, w[jc], 0)[has_context].astype(np.int32),
            'ctx_mask': valid[has_context].astype(np.float32),
            'out': w[has_context].astype(np.int32), 'words': n}

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """The examples of `step` padded (or cut) to `capacity`, with a 0/1 'mask'."""
    ex = self.examples(step)
    count, cap = len(ex['out']), self.capacity
    if count > cap:
      self.dropped += count - cap
      logging.warning('Step %d has %d examples, %d over the capacity %d: they are left out '
                      '(%d so far).', step, count, count - cap, cap, self.dropped)
    keep = min(count, cap)
    self.effective_words += ex['words']
    out: dict[str, np.ndarray] = {}
    for k, v in ex.items():
      if k == 'words':
        continue
      padded = np.zeros((cap,) + v.shape[1:], v.dtype)
      padded[:keep] = v[:keep]
      out[k] = padded
    out['mask'] = (np.arange(cap) < keep).astype(np.float32)
    # The effective (kept) words of the chunk, as a per-row count that the
    # step sums (every array of the batch is split over devices by rows).
    out['words'] = np.zeros(cap, np.float32)
    out['words'][0] = ex['words']
    return out

  def estimate_capacity(self, samples: int = 16, margin: float = 1.1) -> int:
    """Examples per step to pad to: the most in `samples` chunks spread over the
    first epoch, plus `margin`, rounded up to ALIGN."""
    steps = np.unique(np.linspace(0, self.steps_per_epoch - 1, samples).astype(int))
    most = max(len(self.examples(int(s))['out']) for s in steps)
    return int(math.ceil(most * margin / ALIGN) * ALIGN)

  # --- the iterator the loop drives ----------------------------------------------------
  def __iter__(self) -> 'PairStream':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.batch(self.step)
    self.step += 1
    return batch

  def state(self) -> dict[str, Any]:
    return {'step': self.step, 'capacity': self.capacity}

  def restore(self, state: dict[str, Any]) -> None:
    self.step = int(state['step'])
    if int(state.get('capacity', self.capacity)) != self.capacity:
      raise ValueError(f"The checkpoint's batches hold {state['capacity']} examples, this run's "
                       f'{self.capacity}: resume with the same corpus and config.')
