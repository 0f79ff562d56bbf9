"""What every converter shares: name accounting, filling a model's variables,
and writing an imported workdir (or an exported file) all at once or not at all.

A converter reads a foreign checkpoint as a flat {name: array}, maps each
name it understands onto a path of this project's variables
('params/encoder/stem_conv/kernel', ...) and hands the result to
`fill_variables`, which checks it against the model that config.model builds:
every variable of the model gets exactly one value of its exact shape, and
`Source` makes sure every foreign name is consumed exactly once (or skipped
by a stated rule). The first misfit stops the conversion with its name,
before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

PyTree = Any

# The file that records where an imported workdir's weights came from.
IMPORT_FILE = 'import.json'


class ConversionError(ValueError):
  """A checkpoint whose names or shapes do not fit; the message names the first
  offending variable. A ValueError, so the binaries report it in one line."""


# -----------------------------------------------------------------------------
# Name accounting.

class Source:
  """A foreign checkpoint's variables, each to be consumed exactly once.

  `take(name)` returns a variable and marks it consumed (a second take of the
  same name, or a name that is not there, raises naming it); `skip(name, why)`
  sets one aside on purpose (optimizer slots, the step counter, the other
  network's copy); `check_consumed()` raises naming what is left.
  """

  def __init__(self, arrays: Mapping[str, Any], what: str,
               shapes: Optional[Mapping[str, tuple[int, ...]]] = None):
    # A Mapping, possibly lazy (a TF checkpoint reader reads on access).
    self.arrays = arrays
    self._shapes = dict(shapes) if shapes is not None else None
    self.what = what
    self.consumed: list[str] = []
    self.skipped: dict[str, str] = {}
    self._seen: set[str] = set()

  def __contains__(self, name: str) -> bool:
    return name in self.arrays

  def names(self) -> list[str]:
    return list(self.arrays)

  def shape(self, name: str) -> tuple[int, ...]:
    if self._shapes is not None:
      return tuple(self._shapes[name])
    return tuple(np.shape(self.arrays[name]))

  def take(self, name: str) -> np.ndarray:
    if name not in self.arrays:
      raise ConversionError(f'{self.what} has no variable {name!r}, which this architecture '
                            'needs (is it the architecture you meant?).')
    if name in self._seen:
      raise ConversionError(f'{self.what}: variable {name!r} would be used twice.')
    self._seen.add(name)
    self.consumed.append(name)
    return np.asarray(self.arrays[name])

  def skip(self, name: str, why: str) -> None:
    if name in self._seen:
      raise ConversionError(f'{self.what}: variable {name!r} is both used and skipped.')
    self._seen.add(name)
    self.skipped[name] = why

  def leftovers(self) -> list[str]:
    return sorted(n for n in self.arrays if n not in self._seen)

  def check_consumed(self) -> None:
    left = self.leftovers()
    if left:
      more = f' (and {len(left) - 5} more)' if len(left) > 5 else ''
      raise ConversionError(
          f'{self.what}: {len(left)} variable(s) fit no part of this architecture, first '
          f'{left[0]!r}; left over: {left[:5]}{more}. The checkpoint is not the '
          'architecture inferred for it, or not a layout this converter knows.')


# -----------------------------------------------------------------------------
# Trees.

def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x} (dict trees of arrays)."""
  out: dict[str, Any] = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, Mapping):
      out.update(flatten(value, path + '/'))
    else:
      out[path] = value
  return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def abstract_variables(model: Any, input_shape: tuple[int, ...]) -> dict[str, Any]:
  """{'params': ..., 'batch_stats': ...} of `model` as ShapeDtypeStructs."""
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  return jax.eval_shape(lambda x_: model.init(jax.random.PRNGKey(0), x_, train=False), x)


def fill_variables(abstract: Mapping[str, Any], values: Mapping[str, np.ndarray],
                   what: str, fallback: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
  """The model's variables from `values` ({'params/encoder/...': array}).

  Every variable of `abstract` must get one value of its shape, except those
  under a prefix of `fallback` ({path prefix: variables to use instead}, e.g.
  a freshly initialised projection head), and every value must have a place.
  Raises ConversionError naming the first misfit.
  """
  fallback = dict(fallback or {})
  target = flatten(abstract)
  fallback_flat = flatten(fallback) if fallback else {}
  for path in values:
    if path not in target:
      raise ConversionError(f'{what}: nothing in this architecture takes {path!r}.')
  out: dict[str, Any] = {}
  for path, leaf in target.items():
    if path in values:
      value = np.asarray(values[path], np.float32)
      if tuple(value.shape) != tuple(leaf.shape):
        raise ConversionError(f'{what}: {values_source(values, path)} has shape '
                              f'{tuple(value.shape)}, but {path} needs {tuple(leaf.shape)}.')
      out[path] = value
    elif path in fallback_flat:
      out[path] = np.asarray(fallback_flat[path], np.float32)
    else:
      raise ConversionError(f'{what}: no variable of the checkpoint gives {path} '
                            f'{tuple(leaf.shape)}.')
  return unflatten(out)


class Mapped(dict):
  """{target path: array} that remembers each value's source name (for errors)."""

  def __init__(self):
    super().__init__()
    self.sources: dict[str, str] = {}

  def put(self, path: str, value: np.ndarray, source_name: str) -> None:
    if path in self:
      raise ConversionError(f'{source_name!r} and {self.sources[path]!r} both map onto {path}.')
    self[path] = value
    self.sources[path] = source_name


def values_source(values: Mapping[str, Any], path: str) -> str:
  name = getattr(values, 'sources', {}).get(path)
  return f'variable {name!r}' if name else path


# -----------------------------------------------------------------------------
# Configs of imported workdirs.

DATA_BY_STEM = {
    # (stem, channels) -> config.data keys an imported workdir starts with
    # (--config replaces them); eval / finetune read the data from here.
    ('imagenet', 3): dict(source='tfds', name='imagenet2012', image_size=224,
                          test_split='validation', in_memory=False),
    ('cifar', 3): dict(source='tfds', name='cifar10', image_size=32),
    ('cifar', 1): dict(source='embedded', image_size=0),
}


def import_config(base: Optional[ml_collections.ConfigDict], resnet: Mapping[str, Any],
                  head: Mapping[str, Any], channels: int, probe: bool
                  ) -> ml_collections.ConfigDict:
  """A pretrain config (`base`, else the defaults with data for the stem) whose
  config.model is the imported network: `resnet` = config.model.resnet keys,
  `head` = num_proj_layers / proj_dim / proj_hidden_dim."""
  from contrastive_jax import config_defaults, config_migration  # pylint: disable=g-import-not-at-top
  from contrastive_jax.models import resnet as resnet_lib  # pylint: disable=g-import-not-at-top
  if base is None:
    config = config_defaults.pretrain_defaults()
    data = DATA_BY_STEM.get((resnet.get('stem', 'imagenet'), channels))
    if data:
      config.data.update(data)
  else:
    config = config_migration.migrate(ml_collections.ConfigDict(base.to_dict()))
  config.model.name = 'resnet'
  section = resnet_lib.resnet_defaults()
  section.update(dict(resnet))
  config.model.resnet = section
  for key, value in head.items():
    config.model[key] = value
  if 'probe' in config:
    config.probe = bool(probe)
  config_defaults.validate(config)
  return config


def randomize_head(model_cfg: ml_collections.ConfigDict, width: int, seed: int
                   ) -> dict[str, Any]:
  """Freshly initialised projection-head variables {'params': {'head': ...},
  'batch_stats': {'head': ...}} for a checkpoint that has none."""
  from contrastive_jax import models  # pylint: disable=g-import-not-at-top
  head = models.build_head(model_cfg)
  variables = jax.jit(lambda: head.init(jax.random.PRNGKey(seed),
                                        jnp.zeros((2, width), jnp.float32), train=False))()
  return {c: {'head': jax.device_get(v)} for c, v in variables.items()}


# -----------------------------------------------------------------------------
# Writing: all or nothing.

def check_new_workdir(workdir: str) -> None:
  """Refuses an existing, non-empty workdir (an import never writes into a run)."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
    raise FileExistsError(f'--workdir={workdir} already exists and is not empty: an import '
                          'writes a new workdir; pick a new path (nothing was written).')


def write_workdir(workdir: str, config: ml_collections.ConfigDict,
                  variables: Mapping[str, Any], record: Mapping[str, Any]) -> str:
  """Writes a pretraining-style workdir: config.json, import.json (`record`)
  and a checkpoint at step 0 holding a TrainState-shaped dict (step, params,
  batch_stats, empty opt_state and extra), readable by load_encoder, eval and
  finetune (init_from). Built in a temporary sibling directory and renamed
  into place at the end, so a failure leaves no half-written workdir."""
  from contrastive_jax import checkpoint, metrics_io  # pylint: disable=g-import-not-at-top
  if '://' in workdir:
    raise ValueError(f'--workdir={workdir}: imports write a local workdir (copy it to the '
                     'bucket afterwards, e.g. with gsutil -m cp -r).')
  workdir = os.path.abspath(os.path.expanduser(workdir))
  check_new_workdir(workdir)
  parent = os.path.dirname(workdir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(workdir)}.importing-', dir=parent)
  try:
    text = json.dumps(metrics_io.to_json_types(config.to_dict()), indent=2, sort_keys=True)
    with open(os.path.join(tmp, 'config.json'), 'w', encoding='utf-8') as f:
      f.write(text + '\n')
    with open(os.path.join(tmp, IMPORT_FILE), 'w', encoding='utf-8') as f:
      f.write(json.dumps(metrics_io.to_json_types(dict(record)), indent=2, sort_keys=True)
              + '\n')
    state = {'step': np.zeros((), np.int32),
             'params': jax.tree.map(lambda a: np.asarray(a, np.float32), variables['params']),
             'batch_stats': jax.tree.map(lambda a: np.asarray(a, np.float32),
                                         variables.get('batch_stats', {})),
             'opt_state': {}, 'extra': {}}
    ckpt = checkpoint.Checkpointer(os.path.join(tmp, 'checkpoints'), async_save=False)
    try:
      ckpt.save(0, state, {'imported_from': record.get('source', '')}, force=True)
    finally:
      ckpt.close()
    if os.path.isdir(workdir):      # an empty directory the user made: replace it
      os.rmdir(workdir)
    os.rename(tmp, workdir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return workdir


@contextlib.contextmanager
def atomic_outputs(*paths: str) -> Iterator[list[str]]:
  """Temporary names for `paths` (same directories); renamed onto them when the
  block ends without an error, all removed otherwise."""
  tmps = []
  for path in paths:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmps.append(os.path.join(directory, f'.{os.path.basename(path)}.tmp-{os.getpid()}'))
  try:
    yield tmps
    for tmp, path in zip(tmps, paths):
      os.replace(tmp, path)
  except BaseException:
    for tmp in tmps:
      with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
    raise


def host_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
  """float32 numpy copies of {'params', 'batch_stats'} (any array leaves)."""
  return {c: jax.tree.map(lambda a: np.asarray(a, np.float32), dict(variables.get(c, {})))
          for c in ('params', 'batch_stats')}
