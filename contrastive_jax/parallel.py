"""Mesh, multi-host start-up and global batch assembly.

One mesh axis, 'data', over every device of every process. Parameters are
replicated and the batch is split over 'data'; under `jax.jit` XLA then
computes BatchNorm statistics over the whole global batch (SimCLR's global BN)
with no extra code, and `jax.shard_map` is used only where a collective is
explicit (the contrastive loss's all-gather).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'

# Environment variables that mean "this process is one of several".
_MULTIHOST_ENV = ('JAX_COORDINATOR_ADDRESS', 'COORDINATOR_ADDRESS')


def _env_says_multihost() -> bool:
  if any(os.environ.get(k) for k in _MULTIHOST_ENV):
    return True
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  if len([h for h in hosts.split(',') if h]) > 1:
    return True
  for key in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    if int(os.environ.get(key, '1') or 1) > 1:
      return True
  return False


def maybe_initialize_distributed(multihost: str = 'auto') -> bool:
  """Starts JAX's multi-process runtime when asked or when the environment says so.

  'auto' initialises only on a multi-host launch (TPU pod slice, SLURM, MPI, or
  JAX_COORDINATOR_ADDRESS set), never on a plain single-host run, where
  `jax.distributed.initialize()` would fail. An explicit coordinator is read
  from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. Returns
  whether the runtime was initialised by this call.
  """
  if multihost not in ('auto', 'yes', 'no'):
    raise ValueError(f"config.multihost={multihost!r}; choose 'auto', 'yes' or 'no'.")
  if multihost == 'no' or (multihost == 'auto' and not _env_says_multihost()):
    return False
  if jax.distributed.is_initialized():
    return False
  kwargs: dict[str, Any] = {}
  address = os.environ.get('JAX_COORDINATOR_ADDRESS') or os.environ.get('COORDINATOR_ADDRESS')
  if address:
    kwargs['coordinator_address'] = address
    if os.environ.get('JAX_NUM_PROCESSES'):
      kwargs['num_processes'] = int(os.environ['JAX_NUM_PROCESSES'])
    if os.environ.get('JAX_PROCESS_ID'):
      kwargs['process_id'] = int(os.environ['JAX_PROCESS_ID'])
    if os.environ.get('JAX_PLATFORMS', '') == 'cpu':
      # CPU processes need a collectives backend to all-gather across hosts.
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)
  return True


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process)."""
  devices = list(devices) if devices is not None else jax.devices()
  # Auto axes: jit propagates shardings itself; explicit-sharding mode would
  # make every op's sharding part of its type, which the model code does not need.
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def data_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """This process's share of the global batch; errors if it does not divide."""
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    raise ValueError(
        f'config.batch_size={global_batch_size} is not divisible by the '
        f'{num_devices} devices of the mesh; pick a multiple of {num_devices}.')
  return global_batch_size // jax.process_count()


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays sharded over 'data'."""
  sharding = data_sharding(mesh)
  if jax.process_count() == 1:   # the local rows are the global array: one transfer call
    return jax.device_put({k: np.asarray(v) for k, v in local.items()}, sharding,
                          may_alias=False)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}


def gather(x: jax.Array) -> np.ndarray:
  """The whole of a global array (batch-sharded rows in mesh order) on every process."""
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a host pytree (identical on every process) replicated on the mesh."""
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)
