"""The host batch stream: deterministic, resumable in O(1), process-count invariant.

Training stream (`BatchIterator`). Epoch e visits the examples in the order
`np.random.default_rng([seed, e]).permutation(N)`. The global batch at step s is
a pure function of (seed, s, N, B):
  drop_remainder=True   steps_per_epoch = N // B; step s reads positions
                        [(s % spe) * B, (s % spe + 1) * B) of epoch s // spe's
                        permutation (each epoch drops a different random tail).
  drop_remainder=False  the epochs' permutations are concatenated into one
                        stream and step s reads its positions [s * B, (s+1) * B);
                        a batch may straddle two epochs, every example is seen
                        exactly once per N positions.
Token sequences (text) may be length-bucketed: with config.data.length_buckets
= K each run of K batches of the epoch's order is sorted by length and cut into
batches, whose order is then shuffled with (seed, epoch); with
config.data.length_quantum = q every batch keeps only as many columns as its
global batch's longest example needs, rounded up to a multiple of q. Both are
functions of (seed, step) and of the whole global batch, so they hold on any
number of processes.
Process p of P gets rows [p * B/P, (p+1) * B/P) of that global batch, so the
batches that `jax.make_array_from_process_local_data` assembles are the same
whatever the number of processes; resuming is `start_step=k`, no replay.

Each batch is a dict of numpy arrays:
  image  uint8 [n_local, H, W, C]   (or `tokens` int32 [n_local, L] for text:
                                    the field is the source's input_key)
  label  int32 [n_local]   (-1 where unknown)
  index  int64 [n_local]   example ids (`ArraySource.example_ids()`), which seed
                           the per-example augmentation keys on device.
`eval_batches` adds `mask` (bool, False on padding rows).

Sources with a streaming form (`registry.Source.stream_train` / `stream_eval`,
e.g. tf.data for datasets too big for memory) give their own iterators with the
same interface; `make_train_iterator` / `make_eval_iterator` pick between the
two from config, through the registry, so this module names no source.
"""

from __future__ import annotations

import math
import queue
import threading
from typing import Any, Iterator

import numpy as np

from contrastive_jax.data import registry
from contrastive_jax.data import sources
from contrastive_jax.data.arrays import ArraySource
# Re-exported: callers and tests reach them as pipeline.process_info / local_rows.
from contrastive_jax.data.process_rows import local_rows, process_info  # pylint: disable=unused-import

# The train/val carve must not move when the training seed changes.
VAL_SEED = 0


class _Sampler:
  """The pure part of BatchIterator: step -> this process's batch.

  Kept apart so the prefetch thread holds no reference to the iterator (which
  can then be garbage-collected, and its __del__ stop the thread).
  """

  def __init__(self, source: ArraySource, global_batch_size: int, seed: int,
               shuffle: bool, drop_remainder: bool, rows: slice,
               bucket_batches: int = 0, length_quantum: int = 0):
    self.source, self.global_batch_size, self.seed = source, global_batch_size, seed
    self.shuffle, self.drop_remainder, self.rows = shuffle, drop_remainder, rows
    self.ids = source.example_ids()
    self._perm_cache: dict[int, np.ndarray] = {}
    sequences = source.inputs.ndim == 2          # token ids [N, L], 0-padded at the end
    self.lengths = (source.inputs != 0).sum(1) if sequences else None
    self.bucket_batches = int(bucket_batches) if sequences and shuffle and drop_remainder else 0
    self.length_quantum = int(length_quantum) if sequences else 0

  def _bucketed(self, perm: np.ndarray, epoch: int) -> np.ndarray:
    """`perm` with each run of bucket_batches batches sorted by length and cut
    into batches, then the epoch's batches in a random order (seeded by
    (seed, epoch)): batches of similar lengths, whose padding `batch` trims."""
    b = self.global_batch_size
    used = (len(perm) // b) * b
    chunk = self.bucket_batches * b
    parts = [perm[i:min(i + chunk, used)] for i in range(0, used, chunk)]
    parts = [p[np.argsort(self.lengths[p], kind='stable')] for p in parts]
    batches = np.concatenate(parts).reshape(-1, b)
    order = np.random.default_rng([self.seed, epoch, 1]).permutation(len(batches))
    return np.concatenate([batches[order].reshape(-1), perm[used:]])

  def permutation(self, epoch: int) -> np.ndarray:
    perm = self._perm_cache.get(epoch)
    if perm is None:
      n = self.source.num_examples
      perm = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
              else np.arange(n))
      if self.bucket_batches:
        perm = self._bucketed(perm, epoch)
      # Steps move forward: this epoch and the next are all that is needed.
      for old in sorted(self._perm_cache)[:-1]:
        self._perm_cache.pop(old, None)
      self._perm_cache[epoch] = perm
    return perm

  def positions(self, step: int, rows: slice | None = None) -> np.ndarray:
    if step < 0:
      raise ValueError(f'step={step} must be >= 0.')
    n, b = self.source.num_examples, self.global_batch_size
    rows = self.rows if rows is None else rows
    rows = np.arange(rows.start, rows.stop, dtype=np.int64)
    if self.drop_remainder:
      spe = n // b
      epochs = np.full_like(rows, step // spe)
      offsets = (step % spe) * b + rows
    else:
      stream = step * b + rows
      epochs, offsets = stream // n, stream % n
    out = np.empty_like(rows)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      out[sel] = self.permutation(int(epoch))[offsets[sel]]
    return out

  def batch(self, step: int) -> dict[str, np.ndarray]:
    pos = self.positions(step)
    inputs = self.source.inputs[pos]
    if self.length_quantum:
      # Padding columns every row of the *global* batch has are cut (to a
      # multiple of length_quantum, so few shapes compile): every process
      # computes the same width from the whole batch's lengths.
      longest = int(self.lengths[self.positions(step, slice(0, self.global_batch_size))].max())
      q = self.length_quantum
      inputs = inputs[:, :min(inputs.shape[1], -(-longest // q) * q)]
    return {self.source.input_key: inputs, 'label': self.source.labels[pos],
            'index': self.ids[pos]}


class BatchIterator:
  """Infinite, deterministic stream of this process's share of each global batch.

  Iterating yields the batch for `self.step` and advances it; `get_batch(step)`
  is random access without side effects. With prefetch > 0 a daemon thread
  computes the next `prefetch` batches ahead (same batches, just earlier);
  call `close()` (or use `with`) to stop it.
  """

  def __init__(self, source: ArraySource, *, global_batch_size: int, seed: int,
               start_step: int = 0, shuffle: bool = True, drop_remainder: bool = True,
               process_index: int | None = None, process_count: int | None = None,
               prefetch: int = 0, bucket_batches: int = 0, length_quantum: int = 0):
    self.source = source
    self.global_batch_size = int(global_batch_size)
    self.seed = int(seed)
    self.shuffle = shuffle
    self.drop_remainder = drop_remainder
    self.process_index, self.process_count = process_info(process_index, process_count)
    if self.global_batch_size <= 0:
      raise ValueError(f'config.batch_size={global_batch_size} must be positive.')
    rows = local_rows(self.global_batch_size, self.process_index, self.process_count)
    self.local_batch_size = rows.stop - rows.start
    n = source.num_examples
    if n == 0:
      raise ValueError(f'{source.name} has no examples.')
    if drop_remainder and n < self.global_batch_size:
      raise ValueError(f'config.batch_size={global_batch_size} exceeds the {n} examples '
                       f'of {source.name}; lower it (drop_remainder leaves no batch).')
    self._sampler = _Sampler(source, self.global_batch_size, self.seed, shuffle,
                             drop_remainder, rows, bucket_batches, length_quantum)
    self.step = int(start_step)
    self._prefetch = int(prefetch)
    self._queue: queue.Queue | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  # --- Sizes -----------------------------------------------------------------
  @property
  def num_examples(self) -> int:
    return self.source.num_examples

  @property
  def num_classes(self) -> int:
    return self.source.num_classes

  @property
  def input_shape(self) -> tuple[int, ...]:
    """The raw example shape the run's modality sees (= image_shape for images)."""
    return self.source.input_shape

  @property
  def image_shape(self) -> tuple[int, ...]:
    return self.source.input_shape

  @property
  def steps_per_epoch(self) -> float:
    """Steps per pass over the data (fractional without drop_remainder)."""
    if self.drop_remainder:
      return self.num_examples // self.global_batch_size
    return self.num_examples / self.global_batch_size

  # --- Random access (pure) ----------------------------------------------------
  def positions(self, step: int) -> np.ndarray:
    """Rows of the source arrays that make this process's share of `step`."""
    return self._sampler.positions(step)

  def get_batch(self, step: int) -> dict[str, np.ndarray]:
    return self._sampler.batch(step)

  # --- Iteration, prefetch, checkpoint state ----------------------------------
  def state(self) -> dict[str, int]:
    """The data position to checkpoint: the next step this iterator yields."""
    return {'step': int(self.step)}

  def restore(self, state: dict[str, Any]) -> None:
    self.close()
    self.step = int(state['step'])

  def __iter__(self) -> 'BatchIterator':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._prefetch <= 0:
      batch = self._sampler.batch(self.step)
      self.step += 1
      return batch
    if self._thread is None:
      self._start_thread()
    step, batch = self._queue.get()
    if isinstance(batch, BaseException):
      self.close()
      raise batch
    assert step == self.step, (step, self.step)
    self.step += 1
    return batch

  def _start_thread(self) -> None:
    self._stop = threading.Event()
    self._queue = queue.Queue(maxsize=self._prefetch)
    self._thread = threading.Thread(
        target=_produce, args=(self._sampler, self.step, self._queue, self._stop),
        name='BatchIterator-prefetch', daemon=True)
    self._thread.start()

  def close(self) -> None:
    """Stops the prefetch thread (the next `next()` restarts it at `self.step`)."""
    if self._thread is not None:
      self._stop.set()
      self._thread.join(timeout=5)
      self._thread, self._queue = None, None

  def __enter__(self) -> 'BatchIterator':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except  # interpreter shutdown
      pass


def _produce(sampler: _Sampler, step: int, q: queue.Queue, stop: threading.Event) -> None:
  """Prefetch thread body: batches from `step` on, until `stop` is set."""
  while not stop.is_set():
    try:
      item = (step, sampler.batch(step))
    except BaseException as e:  # pylint: disable=broad-except  # re-raised by __next__
      item = (step, e)
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        break
      except queue.Full:
        continue
    if isinstance(item[1], BaseException):
      return
    step += 1


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  return math.ceil(num_examples / global_batch_size)


def eval_batches(source: ArraySource, global_batch_size: int, *,
                 process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `source` in order; every process yields the same number of batches.

  Global batch s covers examples [s * B, (s+1) * B); positions past the end are
  padding rows: inputs 0 (under the source's input_key), label 0 (a valid class, so a gather never goes out of
  range), index -1, mask False. Reduce metrics with the mask.
  """
  pi, pc = process_info(process_index, process_count)
  rows = local_rows(global_batch_size, pi, pc)
  n, ids = source.num_examples, source.example_ids()
  for s in range(num_eval_batches(n, global_batch_size)):
    pos = np.arange(s * global_batch_size + rows.start, s * global_batch_size + rows.stop)
    mask = pos < n
    valid = pos[mask]
    n_local = len(pos)
    inputs = np.zeros((n_local,) + source.input_shape, source.inputs.dtype)
    label = np.zeros((n_local,), np.int32)
    index = np.full((n_local,), -1, np.int64)
    inputs[mask], label[mask], index[mask] = source.inputs[valid], source.labels[valid], ids[valid]
    yield {source.input_key: inputs, 'label': label, 'index': index, 'mask': mask}


# ---------------------------------------------------------------------------
# Config-level entry points.

def load_split(data_cfg: Any, which: str) -> ArraySource:
  """'train' (minus the val carve), 'val' (the carve) or 'test', from config.data.

  The val carve takes config.data.val_examples class-balanced examples out of
  config.data.train_split with the fixed VAL_SEED.
  """
  if which == 'test':
    return sources.load_source(data_cfg, data_cfg.test_split)
  if which not in ('train', 'val'):
    raise ValueError(f"load_split: which={which!r}; choose 'train', 'val' or 'test'.")
  train = sources.load_source(data_cfg, data_cfg.train_split)
  train, val = sources.split_train_val(train, data_cfg.val_examples, seed=VAL_SEED,
                                      max_class_fraction=val_class_fraction(data_cfg))
  if which == 'val':
    if val is None:
      raise ValueError("load_split('val') needs config.data.val_examples > 0.")
    return val
  return train


def val_class_fraction(data_cfg: Any) -> float:
  """config.data.val_max_class_fraction (1.0 in configs written before it)."""
  return float(data_cfg.get('val_max_class_fraction', 1.0))


def streaming(data_cfg: Any) -> bool:
  """Whether config.data is read as a stream (too big for host memory): the
  source has a streaming form and config.data.in_memory is False."""
  return registry.get(data_cfg.source).streams and not data_cfg.in_memory


def make_train_iterator(data_cfg: Any, *, global_batch_size: int, seed: int,
                        start_step: int = 0, process_index: int | None = None,
                        process_count: int | None = None):
  """The training stream for config.data: a BatchIterator, or the source's own
  stream (`registry.Source.stream_train`, e.g. a tf.data stream) when it has one
  and config.data.in_memory is False.

  Both have .step, .state(), .close(), .num_examples, .num_classes,
  .image_shape, .steps_per_epoch, .local_batch_size and yield the same dicts.
  """
  pi, pc = process_info(process_index, process_count)
  if streaming(data_cfg):
    if data_cfg.val_examples:
      raise ValueError('config.data.val_examples > 0 needs config.data.in_memory=True '
                       '(streamed data evaluates on config.data.test_split).')
    return registry.get(data_cfg.source).stream_train(
        data_cfg, global_batch_size=global_batch_size, seed=seed, start_step=start_step,
        process_index=pi, process_count=pc)
  return BatchIterator(load_split(data_cfg, 'train'), global_batch_size=global_batch_size,
                       seed=seed, start_step=start_step, process_index=pi,
                       process_count=pc, prefetch=data_cfg.prefetch,
                       **sequence_options(data_cfg))


def sequence_options(data_cfg: Any) -> dict[str, int]:
  """BatchIterator's options for token sequences (ignored for images)."""
  return dict(bucket_batches=int(data_cfg.get('length_buckets', 0) or 0),
              length_quantum=int(data_cfg.get('length_quantum', 0) or 0))


def make_eval_iterator(data_cfg: Any, which: str, *, global_batch_size: int,
                       process_index: int | None = None,
                       process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One masked pass over 'train' | 'val' | 'test' (see `load_split`)."""
  pi, pc = process_info(process_index, process_count)
  if streaming(data_cfg):
    if which == 'val':
      raise ValueError("A 'val' carve needs config.data.in_memory=True.")
    split = data_cfg.test_split if which == 'test' else data_cfg.train_split
    return registry.get(data_cfg.source).stream_eval(
        data_cfg, split, global_batch_size=global_batch_size,
        process_index=pi, process_count=pc)
  return eval_batches(load_split(data_cfg, which), global_batch_size,
                      process_index=pi, process_count=pc)
