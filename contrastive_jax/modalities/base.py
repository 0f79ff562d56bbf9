"""What a modality is: everything the trainer, prediction and evaluation need
to know about one kind of input, so none of them names images or text.

A modality is built per run from the run config and the raw example shape of
its data (`input_shape`, e.g. (28, 28, 1) for Fashion-MNIST; None, or None
in the dimensions not known, when only a checkpoint is at hand, as in
`load_encoder`). It says:
  - `input_key`: the batch field the data sources fill with raw inputs;
  - `dummy_input(n)`: model inputs for `model.init`;
  - `train_views(step, batch, num_views)`: the augmented views of pretraining,
    [num_views, N, ...], keyed by (config.seed, step, example index, view) so a
    run is the same on any number of devices;
  - `train_inputs(step, batch)`: the light augmentation of fine-tuning and
    distillation, [N, ...];
  - `eval_inputs(raw)`: the deterministic preprocessing of evaluation and
    prediction (jittable);
  - `prepare(raw)`: a user's array as given to `load_encoder(...)(x)` -> model
    inputs, with a plain error for a shape it cannot take;
  - `adapt(x)`: another run's model inputs made fit for this network;
  - `rngs(step)`: the random streams of a training-mode forward pass (the
    'dropout' key: one per step, drawn over the global batch, so the same on
    any number of devices);
  - `setup_run(config, workdir)` / `attach_run_files(config, run_dir)`
    (classmethods): files a run keeps beside its checkpoints (the text
    modality's tokenizer), made or found before any data is read.
Which modality a run has follows from its data source (each source declares
one: `contrastive_jax.data.registry`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import jax
import ml_collections

from contrastive_jax.registry import Registry

Batch = dict[str, jax.Array]
DROPOUT_STREAM = 0x7FFFFFFF   # folded into PRNGKey(seed): apart from the views' keys


class Modality:
  name: ClassVar[str] = ''
  input_key: ClassVar[str] = ''
  unit: ClassVar[str] = 'img'     # what the progress line counts per second

  def __init__(self, config: ml_collections.ConfigDict,
               input_shape: Optional[tuple[int, ...]] = None):
    self.config = config
    self.input_shape = None if input_shape is None else tuple(
        None if d is None else int(d) for d in input_shape)

  def dummy_input(self, n: int = 2) -> jax.Array:
    raise NotImplementedError

  def train_views(self, step: Any, batch: Batch, num_views: int) -> jax.Array:
    raise NotImplementedError

  def train_inputs(self, step: Any, batch: Batch) -> jax.Array:
    raise NotImplementedError

  def eval_inputs(self, raw: jax.Array) -> jax.Array:
    raise NotImplementedError

  def prepare(self, raw: Any) -> jax.Array:
    raise NotImplementedError

  def adapt(self, x: jax.Array) -> jax.Array:
    """Another run's model inputs made fit for this one's network (a distillation
    teacher sees the student's view); jittable."""
    return x

  def describe(self) -> str:
    """One line for the log: what the network sees."""
    return self.name

  def init_params(self, params: Any) -> Any:
    """A fresh network's parameters, changed where the config asks (the text
    modality's word-vector embedding, config.model.embedding_init)."""
    if self.config.model.get('embedding_init', ''):
      raise ValueError(f'config.model.embedding_init={self.config.model.embedding_init!r}: '
                       f'word vectors initialise a text encoder; this run is {self.name}.')
    return params

  def rngs(self, step: Any) -> dict[str, jax.Array]:
    """{'dropout': key} for a training-mode apply at `step` (jittable)."""
    stream = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), DROPOUT_STREAM)
    return {'dropout': jax.random.fold_in(stream, step)}

  @classmethod
  def setup_run(cls, config: ml_collections.ConfigDict, workdir: str) -> None:
    """Makes or checks the run's own files in `workdir` and records them in
    `config` (called once by every training binary, after the workdir lock)."""
    del config, workdir

  @classmethod
  def attach_run_files(cls, config: ml_collections.ConfigDict, run_dir: str) -> None:
    """Points `config` (a run's config.json, read back) at the files the run
    keeps in `run_dir`, wherever that directory now is."""
    del config, run_dir


MODALITIES: Registry[type[Modality]] = Registry('modality', 'modality')


def modality_name(config: ml_collections.ConfigDict) -> str:
  """The modality of the run's data source."""
  from contrastive_jax.data import registry as data_registry  # pylint: disable=g-import-not-at-top
  return data_registry.get(config.data.source).modality


def setup_run(config: ml_collections.ConfigDict, workdir: str) -> None:
  MODALITIES.get(modality_name(config)).setup_run(config, workdir)


def attach_run_files(config: ml_collections.ConfigDict, run_dir: str) -> None:
  MODALITIES.get(modality_name(config)).attach_run_files(config, run_dir)


def build(config: ml_collections.ConfigDict,
          input_shape: Optional[tuple[int, ...]] = None) -> Modality:
  return MODALITIES.get(modality_name(config))(config, input_shape)


