"""The data sources `config.data.source` can name, as registered plug-ins.

A source is a `Source`: its name, a loader of one split into host memory and,
when the data can be too big for memory, a tf.data-style streaming form.
Each built-in source lives in a module of its own (`embedded`, `idx`, `tfds_source`,
`folder`) that registers it when imported; `contrastive_jax/data/__init__.py`
imports them all, so importing anything under `contrastive_jax.data` registers
the built-ins. Code outside the package (a test, a project of its own) adds a
source with `register(Source(...))`, and `config.data.source` can name it at once:
`sources.load_source`, `pipeline.load_split`, `pipeline.make_train_iterator` and
`pipeline.make_eval_iterator` dispatch through `get`, and the valid choices are
`names()`, so no list of sources is kept anywhere else.

This module imports nothing from the package at run time (`ArraySource` only
for type hints), so every source module can import it without an import cycle.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

if TYPE_CHECKING:
  from contrastive_jax.data.arrays import ArraySource


@dataclasses.dataclass(frozen=True)
class Source:
  """One data source.

  Attributes:
    name: the value of `config.data.source` that picks it.
    load: (data_cfg, split) -> ArraySource, the whole split in host memory;
      data_cfg is `config.data`, split a split name such as
      config.data.train_split or config.data.test_split.
    modality: what the examples are ('image' for every source so far); lets
      `names(modality)` list the sources one kind of model can read.
    stream_train: optional streaming form of the training data, used when
      `config.data.in_memory` is False: (data_cfg, *, global_batch_size, seed,
      start_step, process_index, process_count) -> an iterator with the
      BatchIterator interface (.step, .state(), .restore(), .close(),
      .num_examples, .num_classes, .image_shape, .steps_per_epoch,
      .local_batch_size) yielding the same dict batches.
    stream_eval: its evaluation counterpart, given with stream_train:
      (data_cfg, split, *, global_batch_size, process_index, process_count) ->
      one masked, padded pass over `split`, as `pipeline.eval_batches` yields.
    doc: one line for help texts.
  """
  name: str
  load: Callable[[Any, str], 'ArraySource']
  modality: str = 'image'
  stream_train: Optional[Callable[..., Any]] = None
  stream_eval: Optional[Callable[..., Iterator[dict[str, Any]]]] = None
  doc: str = ''

  @property
  def streams(self) -> bool:
    """Whether the source has a streaming form (stream_train and stream_eval)."""
    return self.stream_train is not None


_SOURCES: dict[str, Source] = {}


def register(source: Source, *, replace: bool = False) -> Source:
  """Makes `source` available as config.data.source=source.name; returns it.

  A name already registered is an error unless replace=True.
  """
  if not isinstance(source, Source):
    raise TypeError(f'register: expected a registry.Source, got {type(source).__name__}.')
  if not isinstance(source.name, str) or not source.name:
    raise ValueError(f'register: a source needs a non-empty str name; got {source.name!r}.')
  if not callable(source.load):
    raise TypeError(f'register: source {source.name!r} has a load that is not callable.')
  if (source.stream_train is None) != (source.stream_eval is None):
    raise ValueError(f'register: source {source.name!r} needs both stream_train and '
                     'stream_eval, or neither.')
  if source.name in _SOURCES and not replace:
    raise ValueError(f'data source {source.name!r} is already registered; pass '
                     'replace=True to replace it.')
  _SOURCES[source.name] = source
  return source


def unregister(name: str) -> Source:
  """Removes the source called `name` (e.g. one a test registered); returns it."""
  source = get(name)
  del _SOURCES[name]
  return source


def get(name: str) -> Source:
  """The source registered as `name`; a ValueError naming the valid choices if none."""
  try:
    return _SOURCES[name]
  except (KeyError, TypeError):
    raise ValueError(f'config.data.source={name!r} is not valid; choose one of '
                     f'{names()}.') from None


def names(modality: str | None = None) -> tuple[str, ...]:
  """Registered source names, in registration order; only `modality`'s if given."""
  return tuple(name for name, source in _SOURCES.items()
               if modality is None or source.modality == modality)
