"""Interop (contrastive_jax/interop): every conversion proven by numbers.

  * export to PyTorch: the torch module written beside the file (and, for the
    ImageNet stem, torchvision's own ResNet) gives load_encoder's h and z;
  * import from PyTorch: a torchvision ResNet-18 (and lightly's Sequential
    layout, and our own export) gives torchvision's h and logits;
  * import of the official SimCLR TF1 checkpoints: a checkpoint written here
    with TensorFlow under the official names and shapes (random values) by a
    NumPy re-creation of google-research/simclr's resnet.py / model_util.py,
    whose forward is the reference: every variable consumed once, same h, z
    and supervised logits;
  * npz round trip (read without orbax) and the jax.export serialized forward;
  * misfits name the first offending variable and leave nothing behind;
  * an imported workdir is taken by load_encoder, finetune's copy of the
    pretrained weights and eval.

Equality: float32, eval mode, random (non-trivial) BN statistics; the
largest absolute difference at most 1e-4 of the largest feature magnitude.
The ResNet-50 cases use full-size weights on small inputs (32 / 64 px), which
keeps each to seconds.
"""

import gzip
import importlib.util
import json
import os
import struct
import subprocess
import sys

import flax.linen as flax_nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive_jax import classification, config_defaults, export, models
from contrastive_jax.data import sources
from contrastive_jax.interop import common, npz, tf_simclr, torch_io
from contrastive_jax.interop.common import ConversionError
from tests.helpers import REPO, load_config, set_keys

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

TOL = 1e-4


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def images(n, side, channels=3, seed=1):
  return np.random.default_rng(seed).uniform(size=(n, side, side, channels)).astype(np.float32)


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def randomize(variables, seed):
  """Random values for a variables tree (arrays or ShapeDtypeStructs): He-scaled
  kernels, and non-trivial BN statistics and affine parameters (a fresh init
  has mean 0, var 1, scale 1, bias 0)."""
  rng = np.random.default_rng(seed)
  flat = common.flatten(variables)
  for path, a in flat.items():
    leaf = path.rsplit('/', 1)[-1]
    if leaf == 'kernel':
      flat[path] = rng.normal(0, np.sqrt(2.0 / np.prod(a.shape[:-1])), a.shape)
    elif leaf == 'mean':
      flat[path] = rng.normal(0, 0.3, a.shape)
    elif leaf == 'var':
      flat[path] = rng.uniform(0.5, 2.0, a.shape)
    elif leaf == 'scale':
      flat[path] = rng.uniform(0.5, 1.5, a.shape)
    elif leaf == 'bias':
      flat[path] = rng.normal(0, 0.2, a.shape)
    flat[path] = np.asarray(flat[path], np.float32)
  return common.unflatten(flat)


def write_run(workdir, resnet, side, channels=3, num_classes=0, seed=0, **model):
  """A pretraining-style workdir with random weights and BN statistics."""
  config = config_defaults.pretrain_defaults()
  config.model.resnet.update(resnet)
  config.model.update(model)
  config.data.update(dict(source='tfds', name='cifar10', image_size=side))
  net = models.build_model(config.model, num_classes=num_classes, conv_cls=flax_nn.Conv)
  shapes = common.abstract_variables(net, (1, side, side, channels))
  common.write_workdir(str(workdir), config, randomize(shapes, seed), {'source': 'test'})
  return str(workdir)


def load_module(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def torch_outputs(encoder, head, x):
  with torch.no_grad():
    h = encoder(nchw(x))
    return h.numpy(), head(h)[-1].numpy()


# -----------------------------------------------------------------------------
# Export to PyTorch.

def test_export_torch_resnet18_cifar_stem_same_h(tmp_path):
  run = write_run(tmp_path / 'run', dict(depth=18, stem='cifar'), side=32, num_classes=10)
  paths = torch_io.export_torch(run, str(tmp_path / 'out' / 'encoder.pt'))
  assert paths['module'].endswith('encoder_model.py') and os.path.exists(paths['module'])
  x = images(3, 32)
  ours = export.load_encoder(run)(x)
  module = load_module(paths['module'])       # the file the export wrote, not the package's
  encoder, head, meta = module.load(paths['weights'])
  h, z = torch_outputs(encoder, head, x)
  assert rel_err(h, ours['h']) <= TOL and rel_err(z, ours['z']) <= TOL
  assert meta['torchvision'] is None and 'cifar' in meta['why_not_torchvision']
  # The state_dict is torchvision's resnet18 with lightly's CIFAR stem.
  ckpt = torch.load(paths['weights'], weights_only=False)
  net = torchvision.models.resnet18(weights=None)
  net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
  net.maxpool, net.fc = torch.nn.Identity(), torch.nn.Linear(512, 10)
  net.load_state_dict(dict(ckpt['encoder'], **{f'fc.{k}': v for k, v in ckpt['probe'].items()}),
                      strict=True)
  with torch.no_grad():
    net.eval()
    logits = net(nchw(x)).numpy()
  assert rel_err(logits, ours['probe_logits']) <= TOL


def test_export_torch_resnet50_imagenet_stem_is_torchvision_resnet50(tmp_path):
  run = write_run(tmp_path / 'run', dict(depth=50, stem='imagenet'), side=64)
  paths = torch_io.export_torch(run, str(tmp_path / 'r50.pt'))
  x = images(2, 64)
  ours = export.load_encoder(run)(x)
  module = load_module(paths['module'])
  ckpt = torch.load(paths['weights'], weights_only=False)
  assert ckpt['meta']['torchvision'] == 'resnet50'
  net = module.torchvision_encoder(ckpt['meta'])   # torchvision.models.resnet50, fc = Identity
  net.load_state_dict(ckpt['encoder'], strict=True)
  with torch.no_grad():
    h = net.eval()(nchw(x)).numpy()
  assert rel_err(h, ours['h']) <= TOL
  encoder, head, _ = module.load(paths['weights'])
  h2, z = torch_outputs(encoder, head, x)
  assert rel_err(h2, ours['h']) <= TOL and rel_err(z, ours['z']) <= TOL


@pytest.mark.parametrize('resnet,side,channels', [
    # selective kernels: SK convs, deep stem, ResNet-D shortcuts (stride 1 and 2)
    (dict(depth=0, stage_sizes=(1, 2), block='bottleneck', base_width=8, sk_ratio=0.0625),
     32, 3),
    # basic blocks with SK, a strided CIFAR stem, flattened h, one channel
    (dict(depth=0, stage_sizes=(1, 1), block='basic', base_width=8, stem='cifar',
          stem_stride=2, sk_ratio=0.25, pool='flatten'), 16, 1),
])
def test_export_torch_extensions_same_h(tmp_path, resnet, side, channels):
  run = write_run(tmp_path / 'run', resnet, side=side, channels=channels, num_proj_layers=3,
                  proj_hidden_dim=24)
  paths = torch_io.export_torch(run, str(tmp_path / 'net.pt'))
  x = images(3, side, channels)
  ours = export.load_encoder(run)(x)
  encoder, head, meta = load_module(paths['module']).load(paths['weights'])
  assert meta['torchvision'] is None
  h, z = torch_outputs(encoder, head, x)
  assert rel_err(h, ours['h']) <= TOL and rel_err(z, ours['z']) <= TOL


# -----------------------------------------------------------------------------
# Import from PyTorch.

def _random_bn(net, seed):
  g = torch.Generator().manual_seed(seed)
  for m in net.modules():
    if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
      n = m.num_features
      m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
      m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
      m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
      m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
  return net.eval()


def test_import_torchvision_resnet18_same_features_and_logits(tmp_path):
  torch.manual_seed(0)
  net = _random_bn(torchvision.models.resnet18(weights=None, num_classes=7), 0)
  src = str(tmp_path / 'resnet18.pth')
  torch.save({'state_dict': {f'module.{k}': v for k, v in net.state_dict().items()}}, src)
  workdir = torch_io.import_torch(src, str(tmp_path / 'imported'))
  record = json.loads(open(os.path.join(workdir, common.IMPORT_FILE)).read())
  assert record['initialised'] == ['head'] and record['ignored_outside_backbone'] == []
  config = export.read_config(workdir)
  assert config.model.resnet.depth == 18 and config.model.resnet.stem_pool == 'torch'
  x = images(2, 64)                   # even sides: torchvision's own max-pool padding
  out = export.load_encoder(workdir)(x)
  with torch.no_grad():
    logits = net(nchw(x)).numpy()
    net.fc = torch.nn.Identity()
    h = net(nchw(x)).numpy()
  assert rel_err(out['h'], h) <= TOL
  assert rel_err(out['probe_logits'], logits) <= TOL


def test_import_lightly_sequential_backbone(tmp_path):
  torch.manual_seed(1)
  resnet = torchvision.models.resnet18(weights=None)
  resnet.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)   # lightly's CIFAR stem
  resnet.maxpool = torch.nn.Identity()
  backbone = torch.nn.Sequential(*list(resnet.children())[:-1])
  _random_bn(backbone, 1)
  head = torch.nn.Linear(512, 128)           # another layout's head: left out, listed
  src = str(tmp_path / 'lightly.ckpt')
  torch.save({'backbone.' + k: v for k, v in backbone.state_dict().items()}
             | {'projection_head.' + k: v for k, v in head.state_dict().items()}, src)
  workdir = torch_io.import_torch(src, str(tmp_path / 'imported'))
  record = json.loads(open(os.path.join(workdir, common.IMPORT_FILE)).read())
  assert record['ignored_outside_backbone'] == ['projection_head.bias',
                                                'projection_head.weight']
  assert export.read_config(workdir).model.resnet.stem == 'cifar'
  x = images(2, 32)
  with torch.no_grad():
    h = backbone(nchw(x)).flatten(1).numpy()
  assert rel_err(export.load_encoder(workdir)(x)['h'], h) <= TOL


def test_import_of_an_export_restores_every_variable_exactly(tmp_path):
  resnet = dict(depth=0, stage_sizes=(1, 1), block='bottleneck', base_width=8, sk_ratio=0.0625)
  run = write_run(tmp_path / 'run', resnet, side=32, num_classes=4, num_proj_layers=3)
  torch_io.export_torch(run, str(tmp_path / 'net.pt'))
  workdir = torch_io.import_torch(str(tmp_path / 'net.pt'), str(tmp_path / 'back'))
  a = export.load_pretrained(run).variables
  b = export.load_pretrained(workdir).variables
  fa, fb = common.flatten(jax.device_get(a)), common.flatten(jax.device_get(b))
  assert sorted(fa) == sorted(fb)
  for path in fa:
    np.testing.assert_array_equal(np.asarray(fa[path]), np.asarray(fb[path]), err_msg=path)
  ra, rb = export.read_config(run).model, export.read_config(workdir).model
  assert ra.resnet.to_dict() | {'depth': 0} == rb.resnet.to_dict() | {'depth': 0}
  assert (ra.num_proj_layers, ra.proj_dim) == (rb.num_proj_layers, rb.proj_dim)


def test_input_norm_fold_is_exact_away_from_the_border(tmp_path):
  torch.manual_seed(2)
  net = _random_bn(torchvision.models.resnet18(weights=None), 2)
  src = str(tmp_path / 'r18.pth')
  torch.save(net.state_dict(), src)
  workdir = torch_io.import_torch(src, str(tmp_path / 'imported'), input_norm='imagenet')
  pre = export.load_pretrained(workdir)
  x = images(2, 32)
  _, state = jax.jit(lambda v, x_: pre.model.apply(v, x_, train=False,
                                                   capture_intermediates=True))(
      pre.variables, jnp.asarray(x))
  ours = np.asarray(state['intermediates']['encoder']['stem_bn']['__call__'][0])
  mean = np.asarray(torch_io.IMAGENET_MEAN, np.float32)
  std = np.asarray(torch_io.IMAGENET_STD, np.float32)
  with torch.no_grad():
    theirs = net.bn1(net.conv1(nchw((x - mean) / std))).permute(0, 2, 3, 1).numpy()
  # The 7x7/2 conv's outputs 2..-2 never see the padding, where the two differ.
  assert rel_err(ours[:, 2:-2, 2:-2], theirs[:, 2:-2, 2:-2]) <= TOL
  assert rel_err(ours, theirs) > TOL          # and the border does differ


# -----------------------------------------------------------------------------
# The official SimCLR TF1 checkpoints.

class TFSimCLR:
  """google-research/simclr's TF1 network (resnet.py, model_util.py) in NumPy.

  Each layer call takes the next tf.layers name of its scope (conv2d, conv2d_1,
  ...; batch_normalization, batch_normalization_1, ...) and creates that
  variable with random values the first time: one pass writes the official
  variable names and shapes, in the official order, and computes the
  reference forward (eval mode, float64) from the same values.
  """

  def __init__(self, seed: int, prefix: str = ''):
    self.rng = np.random.default_rng(seed)
    self.prefix = prefix
    self.vars: dict[str, np.ndarray] = {}
    self.count: dict[str, int] = {}
    self.scope = ''

  def _name(self, layer):
    key = self.scope + layer
    n = self.count.get(key, 0)
    self.count[key] = n + 1
    return f'{self.prefix}{self.scope}{layer}' + (f'_{n}' if n else '')

  def _var(self, name, shape, init):
    if name not in self.vars:
      self.vars[name] = np.asarray(init(shape), np.float32)
    return self.vars[name].astype(np.float64)

  # -- layers (TF semantics) --
  @staticmethod
  def _pad(x, before, after, value=0.0):
    return np.pad(x, ((0, 0), before, after, (0, 0)), constant_values=value)

  @staticmethod
  def _same(size, k, s):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2

  def conv(self, x, filters, k, stride):
    """conv2d_fixed_padding; a plain tf.layers.conv2d is the k=1 / stride-1 case."""
    if stride > 1:
      beg = (k - 1) // 2
      x = np.pad(x, ((0, 0), (beg, k - 1 - beg), (beg, k - 1 - beg), (0, 0)))
    else:
      ph, pw = self._same(x.shape[1], k, 1), self._same(x.shape[2], k, 1)
      x = np.pad(x, ((0, 0), ph, pw, (0, 0)))
    cin = x.shape[-1]
    w = self._var(self._name('conv2d') + '/kernel', (k, k, cin, filters),
                  lambda s: self.rng.normal(0, np.sqrt(2.0 / (k * k * cin)), s))
    ho, wo = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, filters))
    for i in range(k):
      for j in range(k):
        patch = x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
        out += np.einsum('nhwc,co->nhwo', patch, w[i, j])
    return out

  def bn(self, x, relu=True, init_zero=False, center=True):
    name = self._name('batch_normalization')
    n = x.shape[-1]
    gamma = self._var(name + '/gamma', (n,), lambda s: self.rng.uniform(
        0.1 if init_zero else 0.5, 0.5 if init_zero else 1.5, s))
    beta = (self._var(name + '/beta', (n,), lambda s: self.rng.normal(0, 0.2, s))
            if center else 0.0)
    mean = self._var(name + '/moving_mean', (n,), lambda s: self.rng.normal(0, 0.3, s))
    var = self._var(name + '/moving_variance', (n,), lambda s: self.rng.uniform(0.5, 2.0, s))
    x = (x - mean) / np.sqrt(var + 1e-5) * gamma + beta       # BATCH_NORM_EPSILON
    return np.maximum(x, 0) if relu else x

  def max_pool_same(self, x):
    ph, pw = self._same(x.shape[1], 3, 2), self._same(x.shape[2], 3, 2)
    x = np.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=-np.inf)
    ho, wo = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    return np.max([x[:, i:i + 2 * (ho - 1) + 1:2, j:j + 2 * (wo - 1) + 1:2]
                   for i in range(3) for j in range(3)], axis=0)

  @staticmethod
  def avg_pool_2(x, stride):
    if stride > 1:      # fixed_padding(inputs, 2) then 'VALID'
      x = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
      ho, wo = (x.shape[1] - 2) // stride + 1, (x.shape[2] - 2) // stride + 1
      return np.mean([x[:, i:i + stride * (ho - 1) + 1:stride,
                        j:j + stride * (wo - 1) + 1:stride]
                      for i in range(2) for j in range(2)], axis=0)
    # 'SAME', stride 1: TF averages over the valid pixels only.
    xp = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    ones = np.pad(np.ones_like(x[..., :1]), ((0, 0), (0, 1), (0, 1), (0, 0)))
    s = sum(xp[:, i:i + x.shape[1], j:j + x.shape[2]] for i in range(2) for j in range(2))
    c = sum(ones[:, i:i + x.shape[1], j:j + x.shape[2]] for i in range(2) for j in range(2))
    return s / c

  def sk_conv(self, x, filters, stride, sk_ratio):
    x = self.bn(self.conv(x, 2 * filters, 3, stride))
    a, b = np.split(x, 2, axis=-1)
    g = (a + b).mean(axis=(1, 2), keepdims=True)
    g = self.bn(self.conv(g, max(int(filters * sk_ratio), 32), 1, 1))
    m = self.conv(g, 2 * filters, 1, 1)
    ma, mb = np.split(m, 2, axis=-1)
    e = np.exp(np.stack([ma, mb]) - np.maximum(ma, mb))
    w = e / e.sum(0)
    return w[0] * a + w[1] * b

  def bottleneck(self, x, filters, stride, use_projection, sk_ratio):
    shortcut = x
    if use_projection:
      if sk_ratio > 0:
        shortcut = self.conv(self.avg_pool_2(x, stride), 4 * filters, 1, 1)
      else:
        shortcut = self.conv(x, 4 * filters, 1, stride)
      shortcut = self.bn(shortcut, relu=False)
    x = self.bn(self.conv(x, filters, 1, 1))
    if sk_ratio > 0:
      x = self.sk_conv(x, filters, stride, sk_ratio)
    else:
      x = self.bn(self.conv(x, filters, 3, stride))
    x = self.bn(self.conv(x, 4 * filters, 1, 1), relu=False, init_zero=True)
    return np.maximum(x + shortcut, 0)

  def resnet(self, x, layers, width=64, cifar_stem=False, sk_ratio=0.0):
    self.scope = 'base_model/'
    if cifar_stem:
      x = self.bn(self.conv(x, width, 3, 1))
    else:
      if sk_ratio > 0:
        x = self.bn(self.conv(x, width // 2, 3, 2))
        x = self.bn(self.conv(x, width // 2, 3, 1))
        x = self.conv(x, width, 3, 1)
      else:
        x = self.conv(x, width, 7, 2)
      x = self.max_pool_same(self.bn(x))
    for g, blocks in enumerate(layers):
      for j in range(blocks):
        x = self.bottleneck(x, width * 2 ** g, 2 if g > 0 and j == 0 else 1, j == 0, sk_ratio)
    return x.mean(axis=(1, 2))

  def dense(self, x, units, bias):
    w = self._var(self._name('dense') + '/kernel', (x.shape[-1], units),
                  lambda s: self.rng.normal(0, 1 / np.sqrt(s[0]), s))
    name = f'{self.prefix}{self.scope}dense'
    out = x @ w
    if bias:
      out = out + self._var(name + '/bias', (units,), lambda s: self.rng.normal(0, 0.1, s))
    return out

  def projection_head(self, h, num_layers, out_dim):
    outs = [h]
    for j in range(num_layers):
      last = j == num_layers - 1
      self.scope, self.count = f'head_contrastive/nl_{j}/', {}
      x = self.dense(outs[-1], out_dim if last else h.shape[-1], bias=False)
      outs.append(self.bn(x, relu=not last, center=not last))
    return outs

  def supervised_head(self, h, classes):
    self.scope = 'head_supervised/linear_layer/'
    return self.dense(h, classes, bias=True)


def save_tf_checkpoint(prefix, variables):
  tf = pytest.importorskip('tensorflow')
  names = sorted(variables)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[''] * len(names),
                    tensors=[tf.constant(variables[n]) for n in names])
  return prefix


def simclr_checkpoint(tmp_path, x, *, layers, width=64, sk_ratio=0.0, cifar_stem=False,
                      proj_layers=3, proj_dim=128, classes=1000, ema=False, name='ckpt'):
  """(checkpoint prefix, {network: reference outputs}) of a v2-style checkpoint."""
  variables, refs = {}, {}
  for network, prefix, seed in (('online', '', 0), ('ema', 'ema_model/', 1))[:2 if ema else 1]:
    net = TFSimCLR(seed, prefix)
    h = net.resnet(x.astype(np.float64), layers, width, cifar_stem, sk_ratio)
    outs = net.projection_head(h, proj_layers, proj_dim) if proj_layers else [h]
    ref = dict(h=h, z=outs[-1])
    if classes and not prefix:      # the official checkpoints keep one supervised head
      ref['probe_logits'] = net.supervised_head(h, classes)
    variables.update(net.vars)
    refs[network] = ref
  variables['global_step'] = np.asarray(250228, np.int64)
  first_conv = 'base_model/conv2d/kernel'
  variables[first_conv + '/Momentum'] = np.zeros_like(variables[first_conv])  # optimizer slot
  path = save_tf_checkpoint(str(tmp_path / name / 'model.ckpt-250228'), variables)
  return path, refs, variables


def _check_outputs(workdir, x, ref):
  out = export.load_encoder(workdir)(x)
  for key, value in ref.items():
    assert rel_err(out[key], value) <= TOL, key


def test_tf_simclr_r50_1x_official_names_and_shapes(tmp_path):
  x = images(2, 32)
  src, refs, variables = simclr_checkpoint(tmp_path, x, layers=(3, 4, 6, 3))
  n_model = sum(1 for k in variables
                if k.startswith(('base_model/', 'head_')) and not k.endswith('/Momentum'))
  assert n_model == 53 + 53 * 4 + 3 + 3 * 4 - 1 + 2     # convs, BNs, head, supervised
  workdir = tf_simclr.import_tf_simclr(src, str(tmp_path / 'imported'))
  record = json.loads(open(os.path.join(workdir, common.IMPORT_FILE)).read())
  assert record['consumed'] == n_model and sum(record['skipped'].values()) == 2
  config = export.read_config(workdir)
  assert (config.model.resnet.depth, config.model.resnet.width_multiplier,
          config.model.resnet.sk_ratio, config.model.num_proj_layers) == (50, 1, 0.0, 3)
  assert config.data.image_size == 224
  _check_outputs(workdir, x, refs['online'])


@pytest.mark.parametrize('kind', ['sk_imagenet_stem_ema', 'cifar_stem_v1_no_head'])
def test_tf_simclr_tiny_variants(tmp_path, kind):
  x = images(2, 32)
  if kind == 'sk_imagenet_stem_ema':
    src, refs, variables = simclr_checkpoint(tmp_path, x, layers=(1, 2, 1, 1), width=16,
                                             sk_ratio=0.0625, proj_dim=16, classes=5,
                                             ema=True)
  else:
    src, refs, variables = simclr_checkpoint(tmp_path, x, layers=(1, 1, 1, 1), width=16,
                                             cifar_stem=True, proj_layers=0, classes=3)
  networks = ('online', 'ema') if 'ema' in kind else ('online',)
  for network in networks:
    workdir = tf_simclr.import_tf_simclr(src, str(tmp_path / f'imported_{network}'),
                                         network=network)
    record = json.loads(open(os.path.join(workdir, common.IMPORT_FILE)).read())
    # Every variable used or skipped by a stated rule, none twice: the counts add up.
    assert record['consumed'] + sum(record['skipped'].values()) == len(variables)
    resnet = export.read_config(workdir).model.resnet
    assert tuple(resnet.stage_sizes) == ((1, 2, 1, 1) if 'sk' in kind else (1, 1, 1, 1))
    ref = refs[network]
    if network == 'ema':          # the one supervised head (online names) on the EMA h
      sup = 'head_supervised/linear_layer/dense/'
      ref = dict(ref, probe_logits=ref['h'] @ variables[sup + 'kernel'].astype(np.float64)
                 + variables[sup + 'bias'])
    if 'no_head' in kind:
      assert record['initialised'] == ['head']
      ref = {k: v for k, v in ref.items() if k != 'z'}   # z: the fresh head's
    _check_outputs(workdir, x, ref)


def _tiny_tf(tmp_path, name='ckpt'):
  return simclr_checkpoint(tmp_path, images(1, 16), layers=(1, 1, 1, 1), width=16,
                           proj_dim=16, classes=3, name=name)


def _assert_nothing_written(tmp_path, workdir):
  assert not os.path.exists(workdir)
  assert not [p for p in os.listdir(tmp_path) if 'importing' in p]


@pytest.mark.parametrize('defect,named', [
    ('missing', 'base_model/batch_normalization_7/moving_variance'),
    ('unknown', 'base_model/stray_layer/kernel'),
    ('shape', 'head_contrastive/nl_1/batch_normalization/gamma'),
    ('extra_beta', 'head_contrastive/nl_2/batch_normalization/beta'),
])
def test_tf_simclr_misfits_name_the_variable_and_write_nothing(tmp_path, defect, named):
  _, _, variables = _tiny_tf(tmp_path)
  variables = dict(variables)
  if defect == 'missing':
    del variables[named]
  elif defect == 'unknown':
    variables[named] = np.zeros((1, 1, 2, 2), np.float32)
  elif defect == 'shape':
    variables[named] = np.ones(7, np.float32)
  else:
    variables[named] = np.zeros(16, np.float32)
  src = save_tf_checkpoint(str(tmp_path / 'bad' / 'model.ckpt-1'), variables)
  workdir = str(tmp_path / 'imported')
  with pytest.raises(ConversionError, match=named):
    tf_simclr.import_tf_simclr(src, workdir)
  _assert_nothing_written(tmp_path, workdir)


def test_tf_simclr_basic_block_checkpoints_are_refused_by_name(tmp_path):
  # ResNet-18 as the official code builds it: block_group1's first block has a
  # projection shortcut (1x1 conv2d_1) followed by its 3x3 convs.
  variables = {'base_model/conv2d/kernel': np.zeros((3, 3, 3, 64), np.float32),
               'base_model/conv2d_1/kernel': np.zeros((1, 1, 64, 64), np.float32),
               'base_model/conv2d_2/kernel': np.zeros((3, 3, 64, 64), np.float32)}
  src = save_tf_checkpoint(str(tmp_path / 'r18' / 'model.ckpt-1'), variables)
  with pytest.raises(ConversionError, match=r"base_model/conv2d_1/kernel.*basic-block"):
    tf_simclr.import_tf_simclr(src, str(tmp_path / 'imported'))


def test_torch_misfits_name_the_variable_and_write_nothing(tmp_path):
  torch.manual_seed(3)
  sd = torchvision.models.resnet18(weights=None).state_dict()
  bad = dict(sd, **{'layer3.1.bn2.running_var': torch.ones(5)})
  torch.save(bad, str(tmp_path / 'shape.pth'))
  workdir = str(tmp_path / 'imported')
  with pytest.raises(ConversionError, match=r"layer3\.1\.bn2\.running_var.*\(5,\)"):
    torch_io.import_torch(str(tmp_path / 'shape.pth'), workdir)
  _assert_nothing_written(tmp_path, workdir)
  extra = dict(sd, **{'layer2.0.attention.weight': torch.ones(3)})
  torch.save(extra, str(tmp_path / 'extra.pth'))
  with pytest.raises(ConversionError, match=r'layer2\.0\.attention\.weight'):
    torch_io.import_torch(str(tmp_path / 'extra.pth'), workdir)
  _assert_nothing_written(tmp_path, workdir)
  torch.save(sd, str(tmp_path / 'good.pth'))
  os.makedirs(workdir)
  open(os.path.join(workdir, 'keep.txt'), 'w').close()
  with pytest.raises(FileExistsError, match='not empty'):
    torch_io.import_torch(str(tmp_path / 'good.pth'), workdir)
  assert os.listdir(workdir) == ['keep.txt']


# -----------------------------------------------------------------------------
# Portable files: npz, jax.export.

@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  directory = tmp_path_factory.mktemp('tiny_run')
  return write_run(directory / 'run', dict(depth=0, stage_sizes=(1, 1), block='basic',
                                           base_width=8, stem='cifar'), side=16, num_classes=3)


def test_npz_round_trip_without_orbax(tmp_path, tiny_run):
  out = npz.export_npz(tiny_run, str(tmp_path / 'net.npz'))
  # Readable by NumPy alone: orbax made unimportable in a fresh interpreter.
  code = ('import sys; sys.modules["orbax"] = None; sys.modules["orbax.checkpoint"] = None\n'
          'from contrastive_jax.interop import npz\n'
          f'config, variables, step = npz.load({out!r})\n'
          'print(config["model"]["resnet"]["base_width"], step, '
          'sorted(variables["params"]["encoder"])[0], "orbax" in sys.modules and '
          'sys.modules["orbax"] is not None)')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=REPO, check=True)
  assert result.stdout.split() == ['8', '0', 'stage1_block1', 'False']
  x = images(3, 16)
  expected = export.load_encoder(tiny_run)(x)
  got = npz.load_encoder(out)(x)
  for key in ('h', 'z', 'probe_logits'):
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(expected[key]))


def test_jax_export_serialized_forward_reproduces_features(tmp_path, tiny_run):
  encoder = export.load_encoder(tiny_run)
  data = npz.serialize_forward(encoder)
  forward = npz.deserialize_forward(data)          # jax only
  for n in (1, 5):                                 # one artifact, any batch size
    x = images(n, 16, seed=n)
    got, expected = forward(jnp.asarray(x)), encoder(x)
    for key in ('h', 'z', 'proj_1', 'probe_logits'):
      assert rel_err(got[key], expected[key]) <= TOL, key


# -----------------------------------------------------------------------------
# Imported workdirs in the binaries; the command line.

def _write_idx(path, array):
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


@pytest.fixture(scope='module')
def one_channel_import(tmp_path_factory):
  """A 1-channel CIFAR-stem ResNet built in torch (the exported module's class,
  saved as a bare state_dict) imported with configs/smoke.py:tiny's data."""
  directory = tmp_path_factory.mktemp('one_channel')
  torch.manual_seed(4)
  net = torch_io_module().ResNet(stage_sizes=(1, 1), block='basic', base_width=8,
                                 stem='cifar', in_channels=1)
  _random_bn(net, 4)
  src = str(directory / 'tiny.pth')
  torch.save(net.state_dict(), src)
  workdir = torch_io.import_torch(src, str(directory / 'imported'), load_config('smoke', 'tiny'))
  return workdir, net


def torch_io_module():
  from contrastive_jax.interop import torch_resnet  # pylint: disable=g-import-not-at-top
  return torch_resnet


def test_imported_workdir_load_encoder_finetune_and_eval(tmp_path, one_channel_import):
  workdir, net = one_channel_import
  x = images(4, 16, channels=1)
  with torch.no_grad():
    h = net(nchw(x)).numpy()
  assert rel_err(export.load_encoder(workdir)(x)['h'], h) <= TOL

  # finetune: classification.pretrained_variables (copy_pretrained's read).
  ft = config_defaults.finetune_defaults()
  ft.init_from = workdir
  ft = classification.resolve_config(ft)
  classifier = classification.build_model(ft, num_classes=10)
  init = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype),
                      common.abstract_variables(classifier, (1, 16, 16, 1)))
  copied, step = classification.pretrained_variables(init, workdir)
  assert step == 0
  pre = export.load_pretrained(workdir).variables
  for path, value in common.flatten(pre['params']['encoder']).items():
    np.testing.assert_array_equal(common.flatten(copied['params']['encoder'])[path], value)

  # eval: kNN on a small IDX copy of the embedded data.
  from contrastive_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  idx = str(tmp_path / 'idx')
  os.makedirs(idx)
  for split, stem, per_class in (('train', 'train', 10), ('test', 't10k', 5)):
    src = sources.load_embedded(split)
    pick = sources.select_label_subset(src.labels, per_class=per_class)
    _write_idx(os.path.join(idx, f'{stem}-images-idx3-ubyte.gz'), src.images[pick, ..., 0])
    _write_idx(os.path.join(idx, f'{stem}-labels-idx1-ubyte.gz'), src.labels[pick])
  config = set_keys(load_config('eval', 'tiny'), {
      'init_from': workdir, 'modes': 'knn', 'plot': False, 'data.source': 'idx',
      'data.idx_dir': idx, 'data.image_size': 16})
  results = eval_lib.evaluate(config, str(tmp_path / 'eval'))
  assert results['evaluated_steps'] == [0]
  assert any(k.startswith('knn') for k in results), sorted(results)


def test_command_line(tmp_path, tiny_run, one_channel_import):
  env = dict(os.environ, JAX_PLATFORMS='cpu')

  def cli(*args):
    return subprocess.run([sys.executable, '-m', 'contrastive_jax.export', *args],
                          capture_output=True, text=True, cwd=REPO, env=env)

  out = str(tmp_path / 'enc.pt')
  done = cli(f'--workdir={tiny_run}', '--to=torch', f'--out={out}')
  assert done.returncode == 0, done.stderr
  assert os.path.exists(out) and os.path.exists(str(tmp_path / 'enc_model.py'))
  done = cli('--from=torch', f'--src={out}', f'--workdir={tmp_path / "back"}')
  assert done.returncode == 0, done.stderr
  assert 'Imported' in done.stdout
  # A misfit: exit 2, one line naming the variable, no workdir.
  _, net = one_channel_import
  sd = dict(net.state_dict(), **{'layer2.0.bn2.weight': torch.ones(3)})
  torch.save(sd, str(tmp_path / 'bad.pth'))
  done = cli('--from=torch', f'--src={tmp_path / "bad.pth"}', f'--workdir={tmp_path / "bad"}')
  assert done.returncode == 2 and 'layer2.0.bn2.weight' in done.stderr, done.stderr
  assert not os.path.exists(tmp_path / 'bad')
