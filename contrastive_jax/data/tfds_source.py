"""Source 'tfds': TensorFlow Datasets, the one module that imports TensorFlow.

Registers source 'tfds' (any tfds dataset with an 'image' feature, named by
config.data.name), with a streaming form that `pipeline` uses when
config.data.in_memory is False. TensorFlow and tfds are imported inside
functions only, so importing this module (or anything in contrastive_jax) costs
nothing and starts no TF runtime.

Two paths:
  load_tfds_arrays   a whole split into host memory as an ArraySource (CIFAR-10/100,
                     STL-10 including 'unlabelled', (Fashion-)MNIST, any dataset
                     with an 'image' feature); then `pipeline.BatchIterator` does
                     the rest, exactly as for the other in-memory sources.
  TfdsTrainStream    a tf.data stream for data that does not fit (ImageNet):
                     `tfds.split_for_jax_process` gives each process its own
                     shard, shuffled with a per-epoch seed, batched to the local
                     batch, prefetched. Same dict batches as BatchIterator.
  stream_eval_batches  one masked, padded pass over a split, streamed.

Images: a dataset whose images all have one size keeps it (the device crop makes
the network input size). A dataset with varying sizes needs
config.data.image_size > 0 and is resized on the host to one side S
(config.data.host_image_size, else image_size), in one of two ways:
  central square   the central min(H, W) square, resized to S x S. Evaluation
                   always (SimCLR's centre crop is then taken on the device), and
                   in-memory loads, which serve training and evaluation alike.
  letterbox        training streams with config.data.random_crop_from='image'
                   (the default): the whole picture, resized so its longer side
                   is S (aspect kept; smaller pictures keep their size), in the
                   top-left corner of an S x S array whose rest repeats the last
                   row and column; the batch gets 'extent' [N, 2] = the
                   picture's (height, width), and the device's random crop is
                   drawn inside it. So crops cover the whole photo, as in
                   SimCLR (area fraction of the photo, not of its central
                   square), with fixed-shape device arrays.

Example ids (`index`): for in-memory loads, the row in the loaded split (files
read in order). For streams, the example's position in the whole split, from its
`tfds_id` (shard file + row) and the split's shard lengths, so an example keeps
its id whatever the shuffling or process count (a mocked or unprepared dataset
without shard lengths falls back to shard * 2**20 + row).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Iterator

import numpy as np

from contrastive_jax.data import registry
from contrastive_jax.data.arrays import ArraySource, host_image_size
from contrastive_jax.data.process_rows import local_rows, process_info


@functools.lru_cache(maxsize=None)
def _import_tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # TF must not take the accelerators JAX uses; the input pipeline is CPU work.
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    pass  # already initialised (visible devices can only be set once)
  return tf, tfds


def prepared_builder(name: str, data_dir: str):
  """tfds' builder of `name`, prepared; an error naming the keys to fix if not."""
  _, tfds = _import_tf()
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except  # re-raised with the keys to fix
    raise RuntimeError(
        f'tfds could not provide config.data.name={name!r} '
        f'(config.data.data_dir={data_dir!r}): {type(e).__name__}: {e}. Prepare it first '
        f'(`tfds build {name}`; ImageNet needs its manual download), or point '
        'config.data.data_dir at a prepared copy.') from e
  return builder


def _builder(name: str, data_dir: str):
  builder = prepared_builder(name, data_dir)
  if 'image' not in builder.info.features:
    raise ValueError(f'config.data.name={name!r} has no "image" feature (features: '
                     f'{list(builder.info.features)}); source=tfds reads image datasets (text: source=tfds_text).')
  return builder


def _image_spec(builder, image_size: int) -> tuple[int, int]:
  """(channels, resize side, or 0 where the dataset's one fixed size is kept).

  Fixed-size datasets ignore image_size, like the IDX and embedded sources: the
  on-device crop produces the network input size.
  """
  shape = builder.info.features['image'].shape
  channels = int(shape[-1]) if shape[-1] else 3
  fixed = shape[0] is not None and shape[1] is not None
  if not fixed and image_size <= 0:
    raise ValueError(f'{builder.info.name} images vary in size: set config.data.image_size '
                     '> 0 (e.g. 224) so the host can resize them to one shape.')
  return channels, 0 if fixed else int(image_size)


def _label_info(builder) -> tuple[bool, int]:
  features = builder.info.features
  if 'label' not in features:
    return False, 0
  return True, int(getattr(features['label'], 'num_classes', 0) or 0)


def _decode_fn(channels: int, side: int, fixed_shape: tuple[int | None, ...] = (None, None)):
  """Encoded image bytes -> uint8 [H, W, C]; with side > 0, central square -> side^2."""
  tf, _ = _import_tf()

  def resize(square):
    out = tf.image.resize(square, [side, side], method='bicubic', antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)

  def jpeg(encoded):
    # Decode only the central square: JPEG allows cropping while decoding.
    shape = tf.image.extract_jpeg_shape(encoded)
    h, w = shape[0], shape[1]
    s = tf.minimum(h, w)
    window = tf.stack([(h - s) // 2, (w - s) // 2, s, s])
    return tf.image.decode_and_crop_jpeg(encoded, window, channels=channels)

  def other(encoded):
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    s = tf.minimum(h, w)
    return image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]

  def decode(encoded):
    if side <= 0:
      image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
      return tf.ensure_shape(image, list(fixed_shape[:2]) + [channels])
    square = tf.cond(tf.io.is_jpeg(encoded), lambda: jpeg(encoded), lambda: other(encoded))
    return tf.ensure_shape(resize(square), [side, side, channels])

  return decode


def _letterbox_fn(channels: int, side: int):
  """Encoded image bytes -> (uint8 [side, side, C], int32 [2] extent): the whole
  picture, longer side resized to `side` (a smaller picture keeps its size:
  upsampling it here would only add a second resampling before the crop's),
  top-left; the padding repeats the last row and column, so the bicubic taps
  just outside a crop box read what clamping would."""
  tf, _ = _import_tf()

  def letterbox(encoded):
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    scale = tf.minimum(1.0, side / tf.cast(tf.maximum(h, w), tf.float32))
    nh = tf.clip_by_value(tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32), 1, side)
    nw = tf.clip_by_value(tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32), 1, side)
    out = tf.image.resize(image, tf.stack([nh, nw]), method='bicubic', antialias=True)
    out = tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)
    out = tf.concat([out, tf.repeat(out[-1:], side - nh, axis=0)], axis=0)
    out = tf.concat([out, tf.repeat(out[:, -1:], side - nw, axis=1)], axis=1)
    return tf.ensure_shape(out, [side, side, channels]), tf.stack([nh, nw])

  return letterbox


def _id_fn(builder, split: str):
  """tfds_id ('<name>-<split>.tfrecord-00012-of-01024__345') -> int64 example id."""
  tf, _ = _import_tf()
  base = split.split('[')[0].split('+')[0]
  try:
    lengths = list(builder.info.splits[base].shard_lengths)
  except (KeyError, ValueError):
    lengths = []
  offsets = tf.constant(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]), tf.int64)
  have_lengths = bool(lengths)

  def example_id(tfds_id):
    parts = tf.strings.split(tfds_id, '__')
    row = tf.strings.to_number(parts[-1], tf.int64)
    shard = tf.strings.to_number(
        tf.strings.regex_replace(parts[0], r'^.*-(\d+)-of-\d+$', r'\1'), tf.int64)
    if have_lengths:
      return tf.gather(offsets, shard) + row
    return shard * (1 << 20) + row

  return example_id


def _read(builder, split: Any, *, shuffle_seed: int | None):
  """Examples as {'image': encoded bytes, 'label', 'tfds_id', ...} in a fixed order.

  shuffle_seed None: shards read one after another, the split's own order.
  Otherwise shard order shuffled with that seed (tf.data stays deterministic).
  """
  _, tfds = _import_tf()
  kwargs = dict(add_tfds_id=True)
  if shuffle_seed is None:
    kwargs.update(interleave_cycle_length=1)
  else:
    kwargs.update(shuffle_seed=shuffle_seed, shuffle_reshuffle_each_iteration=False)
  return builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                            decoders={'image': tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(**kwargs))


def _cardinality(ds, what: str) -> int:
  n = int(ds.cardinality().numpy())
  if n < 0:
    raise ValueError(f'{what}: tf.data cannot tell the number of examples (cardinality {n}).')
  return n


def load_tfds_arrays(name: str, split: str, data_dir: str = '', *, image_size: int = 0,
                     batch_size: int = 1024) -> ArraySource:
  """A whole tfds split in host memory (for datasets that fit, e.g. CIFAR, STL-10).

  Labels are the 'label' feature, or -1 where the dataset has none (or, like
  STL-10's 'unlabelled' split, stores -1). Examples are in the split's order.
  """
  tf, tfds = _import_tf()
  builder = _builder(name, data_dir)
  channels, side = _image_spec(builder, image_size)
  has_label, num_classes = _label_info(builder)
  decode = _decode_fn(channels, side, builder.info.features['image'].shape)
  ds = _read(builder, split, shuffle_seed=None)
  ds = ds.map(lambda ex: (decode(ex['image']),
                          tf.cast(ex['label'], tf.int32) if has_label else tf.constant(-1)),
              num_parallel_calls=tf.data.AUTOTUNE)
  images, labels = [], []
  for image, label in tfds.as_numpy(ds.batch(batch_size)):
    images.append(image)
    labels.append(label)
  if not images:
    raise ValueError(f'config.data.name={name!r} split {split!r} is empty.')
  return ArraySource(images=np.concatenate(images), labels=np.concatenate(labels),
                     num_classes=num_classes, name=f'{name}:{split}')


def _epoch_seed(seed: int, epoch: int) -> int:
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] & 0x7FFFFFFF)


class TfdsTrainStream:
  """Infinite stream of this process's local batches from a tfds split (tf.data).

  Each process reads `tfds.split_for_jax_process(split)` (equal shards, the
  remainder dropped). Epoch e of a process: its shard's files shuffled and a
  shuffle buffer, both seeded by (seed, e), then batched to the local batch
  (global_batch_size / process_count, remainder of the epoch dropped), so
  steps_per_epoch = (N // P) // (B / P) for every process. The stream is a
  deterministic function of (seed, step): resuming at step s starts epoch
  s // steps_per_epoch and skips the first (s % steps_per_epoch) local batches
  of it before decoding, reading (not decoding) at most one epoch of records.
  Unlike the in-memory BatchIterator, batches depend on the process count.

  random_crop_from: 'image' letterboxes varying-size images and adds 'extent'
  to the batches; 'center_square' gives the central square (module docstring).
  """

  def __init__(self, name: str, split: str, *, data_dir: str = '', global_batch_size: int,
               seed: int, start_step: int = 0, image_size: int = 0,
               random_crop_from: str = 'image', shuffle_buffer: int = 10_000,
               prefetch: int = 2, process_index: int | None = None,
               process_count: int | None = None):
    if random_crop_from not in ('image', 'center_square'):
      raise ValueError(f"random_crop_from={random_crop_from!r}; choose 'image' or "
                       "'center_square' (config.data.random_crop_from).")
    _, tfds = _import_tf()
    self.name, self.split, self.seed = name, split, int(seed)
    self.global_batch_size = int(global_batch_size)
    self.process_index, self.process_count = process_info(process_index, process_count)
    rows = local_rows(self.global_batch_size, self.process_index, self.process_count)
    self.local_batch_size = rows.stop - rows.start
    self.shuffle_buffer, self.prefetch = int(shuffle_buffer), int(prefetch)
    self._builder = _builder(name, data_dir)
    self._channels, self._side = _image_spec(self._builder, image_size)
    self._has_label, self._num_classes = _label_info(self._builder)
    self._subsplit = tfds.split_for_jax_process(
        split, process_index=self.process_index, process_count=self.process_count,
        drop_remainder=True)
    probe = _read(self._builder, self._subsplit, shuffle_seed=0)
    self.local_num_examples = _cardinality(probe, f'{name}:{split}')
    if self.local_num_examples < self.local_batch_size:
      raise ValueError(f'config.batch_size={global_batch_size}: each process holds only '
                       f'{self.local_num_examples} examples of {name}:{split}.')
    self._decode = _decode_fn(self._channels, self._side,
                              self._builder.info.features['image'].shape)
    self._letterbox = (_letterbox_fn(self._channels, self._side)
                       if self._side and random_crop_from == 'image' else None)
    self._example_id = _id_fn(self._builder, split)
    self.step = int(start_step)
    self._iterator: Iterator[dict[str, np.ndarray]] | None = None

  @property
  def num_examples(self) -> int:
    """Examples per epoch over all processes (the split less the dropped remainder)."""
    return self.local_num_examples * self.process_count

  @property
  def num_classes(self) -> int:
    return self._num_classes

  @property
  def input_shape(self) -> tuple[int, ...]:
    """The raw example shape the run's modality sees (= image_shape for images)."""
    return self.image_shape

  @property
  def image_shape(self) -> tuple[int, int, int]:
    shape = self._builder.info.features['image'].shape
    if self._side:
      return (self._side, self._side, self._channels)
    return (int(shape[0]), int(shape[1]), self._channels)

  @property
  def steps_per_epoch(self) -> int:
    return self.local_num_examples // self.local_batch_size

  def epoch_dataset(self, epoch: int, skip_batches: int = 0):
    """tf.data pipeline of one epoch's local batches, from batch `skip_batches` on."""
    tf, _ = _import_tf()
    epoch_seed = _epoch_seed(self.seed, epoch)
    ds = _read(self._builder, self._subsplit, shuffle_seed=epoch_seed)
    has_label, example_id, decode = self._has_label, self._example_id, self._decode
    ds = ds.map(lambda ex: dict(
        image=ex['image'],
        label=tf.cast(ex['label'], tf.int32) if has_label else tf.constant(-1, tf.int32),
        index=example_id(ex['tfds_id'])))
    ds = ds.shuffle(self.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    # Skip on the still-encoded records: resuming reads but does not decode.
    ds = ds.skip(skip_batches * self.local_batch_size)
    if self._letterbox is None:
      ds = ds.map(lambda ex: dict(ex, image=decode(ex['image'])),
                  num_parallel_calls=tf.data.AUTOTUNE)
    else:
      letterbox = self._letterbox

      def letterboxed(ex):
        image, extent = letterbox(ex['image'])
        return dict(ex, image=image, extent=extent)

      ds = ds.map(letterboxed, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(self.local_batch_size, drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    return ds.prefetch(self.prefetch if self.prefetch > 0 else tf.data.AUTOTUNE)

  def _batches(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    _, tfds = _import_tf()
    spe = self.steps_per_epoch
    epoch, skip = divmod(start_step, spe)
    while True:
      count = 0
      for batch in tfds.as_numpy(self.epoch_dataset(epoch, skip)):
        count += 1
        yield batch
      if count != spe - skip:
        raise RuntimeError(f'{self.name}:{self.split} epoch {epoch} gave {count} batches, '
                           f'expected {spe - skip}.')
      epoch, skip = epoch + 1, 0

  def state(self) -> dict[str, int]:
    return {'step': int(self.step)}

  def restore(self, state: dict[str, Any]) -> None:
    self.close()
    self.step = int(state['step'])

  def __iter__(self) -> 'TfdsTrainStream':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iterator is None:
      self._iterator = self._batches(self.step)
    batch = next(self._iterator)
    self.step += 1
    return batch

  def close(self) -> None:
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None

  def __enter__(self) -> 'TfdsTrainStream':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def stream_eval_batches(name: str, split: str, *, data_dir: str = '',
                        global_batch_size: int, image_size: int = 0,
                        process_index: int | None = None,
                        process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One pass over a tfds split, streamed, in order; padded batches with `mask`.

  Each process reads its own `split_for_jax_process` shard (no example
  dropped); every process yields ceil(ceil(N / P) / local_batch) batches so the
  collective eval steps line up. Padding rows as in `pipeline.eval_batches`.
  """
  tf, tfds = _import_tf()
  pi, pc = process_info(process_index, process_count)
  rows = local_rows(global_batch_size, pi, pc)
  local_batch = rows.stop - rows.start
  builder = _builder(name, data_dir)
  channels, side = _image_spec(builder, image_size)
  has_label, _ = _label_info(builder)
  decode = _decode_fn(channels, side, builder.info.features['image'].shape)
  example_id = _id_fn(builder, split)
  subsplit = tfds.split_for_jax_process(split, process_index=pi, process_count=pc,
                                        drop_remainder=False)
  ds = _read(builder, subsplit, shuffle_seed=None)
  local_n = _cardinality(ds, f'{name}:{split}')
  try:
    total = int(builder.info.splits[split].num_examples)
  except (KeyError, ValueError):
    total = local_n * pc  # mocked/unknown split sizes: every shard the same size
  num_batches = math.ceil(math.ceil(total / pc) / local_batch)
  ds = ds.map(lambda ex: dict(
      image=decode(ex['image']),
      label=tf.cast(ex['label'], tf.int32) if has_label else tf.constant(-1, tf.int32),
      index=example_id(ex['tfds_id'])), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch).prefetch(tf.data.AUTOTUNE)
  image_shape = None
  emitted = 0
  for batch in tfds.as_numpy(ds):
    n = len(batch['label'])
    image_shape = batch['image'].shape[1:]
    out = dict(image=np.zeros((local_batch,) + image_shape, np.uint8),
               label=np.zeros((local_batch,), np.int32),
               index=np.full((local_batch,), -1, np.int64),
               mask=np.arange(local_batch) < n)
    for key in ('image', 'label', 'index'):
      out[key][:n] = batch[key]
    emitted += 1
    yield out
  if image_shape is None:
    image_shape = (side, side, channels) if side else tuple(builder.info.features['image'].shape)
  for _ in range(num_batches - emitted):
    yield dict(image=np.zeros((local_batch,) + tuple(image_shape), np.uint8),
               label=np.zeros((local_batch,), np.int32),
               index=np.full((local_batch,), -1, np.int64),
               mask=np.zeros((local_batch,), bool))


# ---------------------------------------------------------------------------
# The registered source: config.data -> the functions above.

def _load(data_cfg: Any, split: str) -> ArraySource:
  return load_tfds_arrays(data_cfg.name, split, data_cfg.data_dir,
                          image_size=host_image_size(data_cfg))


def _stream_train(data_cfg: Any, *, global_batch_size: int, seed: int, start_step: int,
                  process_index: int, process_count: int) -> TfdsTrainStream:
  return TfdsTrainStream(
      data_cfg.name, data_cfg.train_split, data_dir=data_cfg.data_dir,
      global_batch_size=global_batch_size, seed=seed, start_step=start_step,
      image_size=host_image_size(data_cfg),
      random_crop_from=data_cfg.get('random_crop_from', 'image'),
      shuffle_buffer=data_cfg.shuffle_buffer,
      prefetch=data_cfg.prefetch, process_index=process_index,
      process_count=process_count)


def _stream_eval(data_cfg: Any, split: str, *, global_batch_size: int, process_index: int,
                 process_count: int) -> Iterator[dict[str, np.ndarray]]:
  return stream_eval_batches(
      data_cfg.name, split, data_dir=data_cfg.data_dir,
      global_batch_size=global_batch_size, image_size=host_image_size(data_cfg),
      process_index=process_index, process_count=process_count)


SOURCE = registry.register(registry.Source(
    name='tfds', load=_load, stream_train=_stream_train, stream_eval=_stream_eval,
    doc='a TensorFlow Datasets image dataset (config.data.name), in memory or streamed'))
