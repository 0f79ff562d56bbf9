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
    centre by centre, each centre's context left to right (their order);
  - CBOW (sg=0): the centre's context words within b form one example.

The host sends only the chunk's kept words, each with how far its window
reaches to its left and right inside its sentence (`PairStream.batch`: ids,
left, right, padded with -1 / 0 to `rows`); `expand` turns them into the
examples on the device, in the jitted step (sgns.make_update), as a fixed
[rows, 2 window] grid of (centre, offset) slots with a 0/1 mask. Nothing is
ever cut to fit a shape, and the host's share of a step is a few vector ops
on the chunk. Windows do not reach across a chunk boundary (a few pairs per
chunk of T words are lost). Negatives are drawn on the device (sgns.py).

With `substeps` S > 1 the chunk is S sub-chunks of T / S positions, each
laid out in its own block of rows (sgns.make_update applies the blocks'
updates one after the other) and, like a chunk, not reached across by a
window.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ALIGN = 512   # rows multiple: divisible by any device count up to 512 that is a power of 2


def offsets(window: int) -> np.ndarray:
  """The grid's columns: context offsets -window..-1, 1..window."""
  return np.concatenate([np.arange(-window, 0), np.arange(1, window + 1)]).astype(np.int32)


def expand(ids, left, right, *, window: int, sg: bool, xp=np) -> dict[str, Any]:
  """The examples of a batch (`PairStream.batch`'s ids, left, right over R
  rows), with xp = numpy on the host or jax.numpy in a jitted step.

  Skip-gram: 'inp', 'out', 'mask' over the R x 2 window slots, centre-major
  (slot (i, o): input ids[i + o], output ids[i], mask 1 when -left[i] <= o <=
  right[i]). CBOW: 'ctx', 'ctx_mask' [R, 2 window], 'out', 'mask' [R] (mask 1
  for a centre with any context). Masked slots carry id 0."""
  rows = ids.shape[0]
  off = xp.asarray(offsets(window))
  j = xp.clip(xp.arange(rows, dtype=xp.int32)[:, None] + off[None, :], 0, rows - 1)
  valid = ((off[None, :] < 0) & (-off[None, :] <= left[:, None])) | (
      (off[None, :] > 0) & (off[None, :] <= right[:, None]))
  ctx = xp.where(valid, ids[j], 0).astype(xp.int32)
  centre = xp.maximum(ids, 0).astype(xp.int32)
  if sg:
    return {'inp': ctx.reshape(-1),
            'out': xp.broadcast_to(centre[:, None], valid.shape).reshape(-1),
            'mask': valid.reshape(-1).astype(xp.float32)}
  has_context = valid.any(axis=1)
  return {'ctx': ctx, 'ctx_mask': valid.astype(xp.float32),
          'out': xp.where(has_context, centre, 0), 'mask': has_context.astype(xp.float32)}


class PairStream:
  """Batches of a step's kept words and their windows' reach (see the module
  docstring), with the iterator interface the shared loop needs (`next`,
  `state()`, `restore()`). With several processes each gets its share of the
  rows (process_index's block of rows / process_count)."""

  def __init__(self, ids: np.ndarray, keep_prob: np.ndarray, *, window: int,
               tokens_per_step: int, seed: int, start_step: int = 0,
               process_index: int = 0, process_count: int = 1, substeps: int = 1):
    if not 1 <= substeps <= tokens_per_step:
      raise ValueError(f'substeps={substeps} must be in [1, batch_size={tokens_per_step}].')
    self.ids, self.keep_prob = ids, np.asarray(keep_prob, np.float64)
    self.window, self.tokens_per_step, self.seed = window, tokens_per_step, seed
    self.substeps = substeps
    self.steps_per_epoch = max(1, math.ceil(len(ids) / tokens_per_step))
    # Each sub-chunk's block of rows, a multiple of ALIGN / gcd(ALIGN, S): the
    # S blocks together are a multiple of ALIGN.
    align = ALIGN // math.gcd(ALIGN, substeps)
    self.block_rows = int(math.ceil(math.ceil(tokens_per_step / substeps) / align) * align)
    self.rows = substeps * self.block_rows
    if self.rows % process_count:
      raise ValueError(f'{self.rows} rows per step do not split over {process_count} processes; '
                       'use a process count that divides 512.')
    self.process_index, self.process_count = process_index, process_count
    self.step = start_step
    self.effective_words = 0   # kept words of the batches made by this process

  # --- the centres of one step ----------------------------------------------------------
  def _kept_words(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                             np.random.Generator]:
    """(word ids, sentence ids, sub-chunks) of the chunk after subsampling,
    and the step's generator."""
    rng = np.random.default_rng([self.seed, step])
    start = (step % self.steps_per_epoch) * self.tokens_per_step
    chunk = np.asarray(self.ids[start:start + self.tokens_per_step])
    words = chunk >= 0
    sentence = np.cumsum(~words)
    keep = words & (rng.random(len(chunk)) < self.keep_prob[np.where(words, chunk, 0)])
    sub = np.arange(len(chunk)) * self.substeps // self.tokens_per_step
    return chunk[keep], sentence[keep], sub[keep], rng

  def centres(self, step: int) -> dict[str, np.ndarray]:
    """The kept words of `step` ('ids'), their sub-chunks ('block') and how
    many kept words their windows reach to the left and right without
    leaving the sentence or the sub-chunk."""
    w, sentence, block, rng = self._kept_words(step)
    s = sentence * self.substeps + block   # changes where either does
    n = len(w)
    b = rng.integers(1, self.window + 1, size=n)
    i = np.arange(n)
    first = np.ones(n, bool)
    first[1:] = s[1:] != s[:-1]                  # a sentence starts here
    last = np.ones(n, bool)
    last[:-1] = first[1:]                        # ... ends here
    start = np.maximum.accumulate(np.where(first, i, 0))
    end = np.minimum.accumulate(np.where(last, i, n)[::-1])[::-1]
    return {'ids': w.astype(np.int32), 'left': np.minimum(b, i - start).astype(np.int32),
            'right': np.minimum(b, end - i).astype(np.int32), 'block': block.astype(np.int32)}

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """centres(step) in `rows` rows (ids -1, reach 0 where none): sub-chunk
    b's kept words from row b x block_rows on; this process's rows."""
    c = self.centres(step)
    block = c.pop('block')
    n = len(block)
    self.effective_words += n
    first = np.searchsorted(block, np.arange(self.substeps))   # each block's first kept word
    row = block * self.block_rows + np.arange(n) - first[block]
    out = {}
    for k, v in c.items():
      padded = np.full(self.rows, -1 if k == 'ids' else 0, np.int32)
      padded[row] = v
      out[k] = padded
    if self.process_count > 1:
      share = self.rows // self.process_count
      out = {k: v[self.process_index * share:(self.process_index + 1) * share]
             for k, v in out.items()}
    return out

  def examples(self, step: int, sg: bool = True) -> dict[str, np.ndarray]:
    """The examples of `step` on the host, as `expand` makes them on the
    device, without the masked slots (for tests and inspection)."""
    c = self.centres(step)   # reaches stop at sub-chunks: the blocks' examples in order
    ex = expand(c['ids'], c['left'], c['right'], window=self.window, sg=sg)
    keep = ex.pop('mask') > 0
    return {k: v[keep] for k, v in ex.items()}

  # --- the iterator the loop drives ----------------------------------------------------
  def __iter__(self) -> 'PairStream':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.batch(self.step)
    self.step += 1
    return batch

  def state(self) -> dict[str, Any]:
    return {'step': self.step, 'rows': self.rows, 'substeps': self.substeps}

  def restore(self, state: dict[str, Any]) -> None:
    self.step = int(state['step'])
    if int(state.get('rows', self.rows)) != self.rows:
      raise ValueError(f"The checkpoint's batches hold {state['rows']} rows, this run's "
                       f'{self.rows}: resume with the same config.batch_size.')
    if int(state.get('substeps', 1)) != self.substeps:
      raise ValueError(f"The checkpoint's steps have {state['substeps']} substeps, this run's "
                       f'{self.substeps}: resume with the same config.substeps.')
