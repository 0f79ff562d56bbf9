"""The plug-in points, used as a contributor would: a method, an encoder and a
data source are registered from this test module (no edit of the package) and
pretraining runs with them, resumes exactly (the method's extra state
included) and loads back through load_encoder.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from contrastive_jax import checkpoint, config_defaults, export, losses, methods, models, pretrain
from contrastive_jax.data import registry as data_registry
from contrastive_jax.data import sources
from tests.helpers import load_config

SOURCE, ENCODER, METHOD = 'test_bars', 'test_mlp', 'test_ema_pair'


# --- A data source: 8x8 grayscale images of a bar whose row is the class ----------

def _bars(data_cfg, split):
  n = 192 if split == data_cfg.train_split else 64
  rng = np.random.default_rng(0 if split == data_cfg.train_split else 1)
  labels = rng.integers(0, 4, n)
  images = rng.integers(0, 40, (n, 8, 8, 1)).astype(np.uint8)
  for i, y in enumerate(labels):
    images[i, 2 * y:2 * y + 2] = 255
  return sources.ArraySource(images=images, labels=labels, num_classes=4,
                             name=f'{SOURCE}:{split}')


# --- An encoder: flatten -> Dense -> ReLU --------------------------------------------

class _MLP(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x, train):
    del train
    x = nn.relu(nn.Dense(self.width, name='layer0')(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.width, name='layer1')(x)


def _mlp_defaults():
  return ml_collections.ConfigDict(dict(width=16))


def _mlp_validate(section):
  if section.width <= 0:
    raise ValueError(f'config.model.{ENCODER}.width={section.width} must be > 0.')


# --- A method: online view 0 against an EMA network's view 1 (extra state) ------------

class _EmaPair(methods.Method):
  name = METHOD

  @staticmethod
  def defaults():
    return ml_collections.ConfigDict(dict(temperature=0.5, momentum=0.5))

  def init_extra(self, params, batch_stats, *, global_batch_size):
    return {'ema': params, 'count': jnp.zeros((), jnp.int32)}

  def targets(self, ctx):
    out = ctx.apply({'params': ctx.extra['ema'], 'batch_stats': ctx.batch_stats}, ctx.x)
    return out['z'].reshape(-1, self.num_views, out['z'].shape[-1])

  def loss(self, outputs, labels, targets, extra, *, axis_name):
    return losses.nt_xent(outputs['z'][:, 0], targets[:, 1], temperature=self.cfg.temperature,
                          axis_name=axis_name)

  def update_extra(self, ctx):
    m = self.cfg.momentum
    ema = jax.tree.map(lambda t, o: m * t + (1 - m) * o, ctx.extra['ema'], ctx.params)
    return {'ema': ema, 'count': ctx.extra['count'] + 1}


@pytest.fixture(scope='module', autouse=True)
def plugins():
  data_registry.register(data_registry.Source(name=SOURCE, load=_bars))
  models.ENCODERS.register(models.EncoderSpec(
      name=ENCODER, defaults=_mlp_defaults, build=lambda model_cfg, conv: _MLP(
          model_cfg[ENCODER].width),
      freeze_level=lambda name: {'layer0': 0, 'layer1': 1}.get(name), freeze_all=2,
      arch_keys=('width',), validate=_mlp_validate,
      width=lambda model_cfg: model_cfg[ENCODER].width))
  methods.METHODS.register(_EmaPair)
  yield
  methods.METHODS.unregister(METHOD)
  models.ENCODERS.unregister(ENCODER)
  data_registry.unregister(SOURCE)


def _config(**overrides):
  config = load_config('smoke', 'tiny')
  config.method = METHOD
  config[METHOD] = _EmaPair.defaults()
  config.model.name = ENCODER
  config.model[ENCODER] = _mlp_defaults()
  config.data.source = SOURCE
  config.data.image_size = 0
  config.summary_images = 0
  config.log_every_steps = 1
  config.total_steps = 4
  config.checkpoint_every_steps = 2
  config.update(overrides)
  return config


def _final(workdir):
  with checkpoint.Checkpointer(f'{workdir}/checkpoints', read_only=True) as c:
    state, _ = c.restore()
  return state


def test_plugins_pretrain_resume_exactly_and_load(tmp_path):
  full = pretrain.train_and_evaluate(_config(), str(tmp_path / 'full'))
  assert full['step'] == 4 and np.isfinite(full['loss'])
  assert 0.0 <= full['test_probe_acc'] <= 1.0
  state = _final(tmp_path / 'full')
  assert int(state['extra']['count']) == 4
  assert set(state['params']['encoder']) == {'layer0', 'layer1'}

  half = str(tmp_path / 'half')
  pretrain.train_and_evaluate(_config(stop_at_step=2), half)
  assert checkpoint.checkpoint_steps(f'{half}/checkpoints') == [2]
  pretrain.train_and_evaluate(_config(), half)
  resumed = _final(half)
  jax.tree.map(np.testing.assert_array_equal, resumed, state)   # extra state included

  encoder = export.load_encoder(str(tmp_path / 'full'))
  out = encoder(np.zeros((3, 8, 8, 1), np.uint8))
  assert out['h'].shape == (3, 16) and out['z'].shape == (3, 16)


def test_plugin_keys_are_validated_with_their_names():
  config = _config()
  config.model[ENCODER].width = 0
  with pytest.raises(ValueError, match=f'config.model.{ENCODER}.width'):
    config_defaults.validate(config)
  config = _config()
  config.method = 'no_such_method'
  with pytest.raises(ValueError, match=f"config.method='no_such_method'.*{METHOD}"):
    config_defaults.validate(config)
  config = _config()
  config.model.name = 'no_such_encoder'
  with pytest.raises(ValueError, match=f'config.model.name.*{ENCODER}'):
    config_defaults.validate(config)
  with pytest.raises(ValueError, match='already registered'):
    methods.METHODS.register(_EmaPair)
