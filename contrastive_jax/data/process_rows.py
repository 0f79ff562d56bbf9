"""Which rows of a global batch this process reads.

Both the in-memory batch stream (`pipeline`) and the streamed sources
(`tfds_source`) split every global batch into contiguous per-process rows, so
the batches `jax.make_array_from_process_local_data` assembles do not depend on
the number of processes. Kept in a module of its own, importing nothing from
the package, so that neither of them has to import the other.
"""

from __future__ import annotations


def process_info(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """(process_index, process_count), from jax where not given."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in [0, {process_count}).')
  return int(process_index), int(process_count)


def local_rows(global_batch_size: int, process_index: int, process_count: int) -> slice:
  """This process's contiguous rows of the global batch."""
  if global_batch_size % process_count:
    raise ValueError(f'config.batch_size={global_batch_size} must be divisible by the '
                     f'number of processes ({process_count}).')
  n_local = global_batch_size // process_count
  return slice(process_index * n_local, (process_index + 1) * n_local)
