"""Portable files for serving: a NumPy .npz of the network, a serialized JAX forward.

`export_npz(workdir, out)` (`--to=npz`) writes one .npz (no pickle):
  'params/encoder/stem_conv/kernel', ... , 'batch_stats/encoder/stem_bn/mean', ...
      every parameter and BatchNorm statistic, float32, named by its path
  '__config__'   the run's config.json text (rebuilds the model)
  '__format__'   'contrastive_jax.npz/1';  '__step__' the checkpoint's step
Reading it needs NumPy only (`load(path)` -> (config dict, variables)); no
orbax, no checkpoint layout. `load_encoder(path)` gives the same callable as
`export.load_encoder(workdir)`.

`serialize_forward(encoder)` (`--to=jax_export`) is `jax.export` of the
encoder's eval-mode forward with the weights inside, polymorphic in the
batch size: bytes that `deserialize_forward` (jax only; no Flax, no this
project) turns back into `f(x) -> {'h', 'z', 'proj_0', ...}` for float32
images [b, S, S, C] in [0, 1], S the run's input side.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional

import numpy as np

FORMAT = 'contrastive_jax.npz/1'


def _flatten(tree: dict[str, Any], prefix: str) -> dict[str, np.ndarray]:
  out = {}
  for key, value in tree.items():
    path = f'{prefix}/{key}'
    if isinstance(value, dict):
      out.update(_flatten(value, path))
    else:
      out[path] = np.asarray(value, np.float32)
  return out


def export_npz(workdir: str, out: str, step: Optional[int] = None,
               network: str = 'online') -> str:
  """Writes OUT (.npz); returns its path."""
  from contrastive_jax import export  # pylint: disable=g-import-not-at-top
  from contrastive_jax import metrics_io  # pylint: disable=g-import-not-at-top
  from contrastive_jax.interop import common  # pylint: disable=g-import-not-at-top
  pre = export.load_pretrained(workdir, step, network=network)
  arrays: dict[str, Any] = {}
  for collection in ('params', 'batch_stats'):
    arrays.update(_flatten(dict(pre.variables.get(collection, {})), collection))
  arrays['__config__'] = np.array(json.dumps(metrics_io.to_json_types(pre.config.to_dict()),
                                             sort_keys=True))
  arrays['__format__'] = np.array(FORMAT)
  arrays['__step__'] = np.array(pre.step, np.int64)
  if not out.endswith('.npz'):
    raise ValueError(f'--out={out}: an npz export needs a path ending in .npz.')
  with common.atomic_outputs(out) as (tmp,):
    with open(tmp, 'wb') as f:
      np.savez(f, **arrays)
  return out


def load(path: str) -> tuple[dict[str, Any], dict[str, Any], int]:
  """(config as a dict, {'params': ..., 'batch_stats': ...} of numpy arrays, step)."""
  with np.load(path, allow_pickle=False) as f:
    if '__format__' not in f.files or str(f['__format__']) != FORMAT:
      raise ValueError(f'{path} is not a contrastive_jax npz export ({FORMAT}).')
    config = json.loads(str(f['__config__']))
    step = int(f['__step__'])
    variables: dict[str, Any] = {'params': {}, 'batch_stats': {}}
    for name in f.files:
      if name.startswith('__'):
        continue
      node = variables
      *parents, leaf = name.split('/')
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = f[name]
  return config, variables, step


def load_encoder(path: str) -> Any:
  """export.Encoder of an npz export: callable on images like load_encoder's."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from contrastive_jax import config_migration, export  # pylint: disable=g-import-not-at-top
  from contrastive_jax.models import build_model  # pylint: disable=g-import-not-at-top
  config, variables, step = load(path)
  config = config_migration.migrate(ml_collections.ConfigDict(config))
  probe = variables['params'].get('probe')
  classes = int(np.shape(probe['dense']['kernel'])[-1]) if probe else 0
  model = build_model(config.model, num_classes=classes, kernels_cfg=config.get('kernels'))
  return export.Encoder(export.Pretrained(config=config, model=model, variables=variables,
                                          step=step))


# -----------------------------------------------------------------------------
# jax.export.

def serialize_forward(encoder: Any, image_size: Optional[int] = None) -> bytes:
  """`encoder` (export.Encoder) as a serialized jax.export.Exported, batch-polymorphic.

  The weights are constants of the exported function; the input is float32
  [b, S, S, C] in [0, 1] (S = image_size, default the run's input side).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from contrastive_jax.models import build_model  # pylint: disable=g-import-not-at-top
  pre = encoder.pretrained
  side = int(image_size or encoder.modality.out_size)
  channels = encoder.modality.channels
  # XLA's own convolution: the CPU kernels of contrastive_jax.kernels are
  # host callbacks, which a serialized function cannot carry.
  probe = pre.variables['params'].get('probe')
  classes = int(np.shape(probe['dense']['kernel'])[-1]) if probe else 0
  model = build_model(pre.config.model, num_classes=classes, conv_cls=nn.Conv)
  variables = jax.tree.map(jnp.asarray, pre.variables)

  def forward(x):
    out = model.apply(variables, x, train=False)
    proj = out.pop('proj')
    return out | {f'proj_{i}': p for i, p in enumerate(proj)}

  shape = jax.export.symbolic_shape(f'b, {side}, {side}, {channels}')
  exported = jax.export.export(jax.jit(forward))(jax.ShapeDtypeStruct(shape, jnp.float32))
  return bytes(exported.serialize())


def deserialize_forward(data: bytes) -> Callable[[Any], dict[str, Any]]:
  """The forward of `serialize_forward`'s bytes (jax only)."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.export.deserialize(bytearray(data)).call


def export_jax(workdir: str, out: str, step: Optional[int] = None,
               network: str = 'online') -> str:
  """Writes `serialize_forward(load_encoder(workdir))` to OUT; returns its path."""
  from contrastive_jax import export  # pylint: disable=g-import-not-at-top
  from contrastive_jax.interop import common  # pylint: disable=g-import-not-at-top
  data = serialize_forward(export.load_encoder(workdir, step, network=network))
  with common.atomic_outputs(out) as (tmp,):
    with open(tmp, 'wb') as f:
      f.write(data)
  return os.fspath(out)
