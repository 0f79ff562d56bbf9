"""Import of the official SimCLR v1 / v2 TensorFlow (TF1-style) checkpoints.

  python -m contrastive_jax.export --from=tf_simclr \\
      --src=r50_1x_sk0/model.ckpt-250228 --workdir=/tmp/simclr_v2_r50_1x_sk0

The names come from google-research/simclr's TF1 code (resnet.py,
model_util.py, model.py), which builds the network with tf.layers under
variable scopes, so a variable is named by its scope and a per-scope counter
in the order the graph creates it:

  base_model/conv2d/kernel, base_model/conv2d_1/kernel, ...    every convolution
  base_model/batch_normalization[_N]/{gamma,beta,moving_mean,moving_variance}
  head_contrastive/nl_{j}/dense/kernel                          projection layer j
  head_contrastive/nl_{j}/batch_normalization/{gamma,beta,...}  (no beta on the last)
  head_supervised/linear_layer/dense/{kernel,bias}              linear eval head on h
  ema_model/...                                                 v2: an EMA copy
  global_step, .../Momentum                                     step, optimizer slots

Creation order (resnet.py): the stem (one 7x7/2 conv, or with selective
kernels the 3-conv deep stem; a 3x3 conv with cifar_stem), then per block
the projection shortcut first (first block of each group), conv 1x1, the 3x3
conv (or the SK conv: 3x3 to 2F, BN, 1x1 to max(F*sk_ratio, 32), BN, 1x1 to
2F), conv 1x1 to 4F; convolutions and BNs are numbered separately. TF keeps
kernels as [kh, kw, in, out] like Flax, so values move without a transpose.

The architecture is read from the checkpoint itself: stem, stage sizes,
width (stem channels / 64) and sk_ratio from the sequence of kernel shapes;
the head's depth and widths from head_contrastive/nl_*. Every variable of the
chosen network is consumed exactly once; the step counter, optimizer slots
and the other network's copy are skipped by name; anything else, a missing
variable or a shape that does not fit stops the import naming it.

Not covered: ResNet-18/34 (basic-block) checkpoints of the official code,
whose first block of block_group1 has a projection shortcut this ResNet does
not have (the import stops naming that variable). The supervised head of a
*fine-tuned* checkpoint sits on the projection layer ft_proj_selector chose,
not on h: import such checkpoints with supervised_head='skip' (it then
becomes no probe).

Downloading the official checkpoints (needs the Google Cloud SDK's gsutil):

  # SimCLR v2, pretrained (r50|r101|r152 _ 1x|2x|3x _ sk0|sk1; see the README table):
  gsutil -m cp -r gs://simclr-checkpoints/simclrv2/pretrained/r50_1x_sk0 .
  python -m contrastive_jax.export --from=tf_simclr \\
      --src=r50_1x_sk0/model.ckpt-250228 --workdir=/tmp/simclr_v2_r50_1x_sk0
  # (the folder holds checkpoint, model.ckpt-250228.{index,data-00000-of-00001,meta}
  #  and hub/; --src may also be the folder: its latest checkpoint is read.)

  # SimCLR v1 (ResNet-50 1x / 2x / 4x; no projection head in these):
  gsutil cp gs://simclr-gcs/checkpoints/ResNet50_1x.zip . && unzip ResNet50_1x.zip
  python -m contrastive_jax.export --from=tf_simclr --src=ResNet50_1x \\
      --workdir=/tmp/simclr_v1_r50_1x
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator, Mapping, Optional, Sequence

import flax.linen as nn
import ml_collections
import numpy as np

from contrastive_jax.interop import common
from contrastive_jax.interop.common import ConversionError

NETWORKS = ('online', 'ema')
SUPERVISED_HEADS = ('probe', 'skip')
_SLOTS = ('/Momentum', '/Adam', '/Adam_1')
_NON_MODEL = ('global_step', 'beta1_power', 'beta2_power')
_MODEL_SCOPES = ('base_model/', 'head_contrastive/', 'head_supervised/')


class _Reader(Mapping):
  """A TF checkpoint as a lazy {name: np.ndarray}."""

  def __init__(self, path: str):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self.path = _checkpoint_prefix(tf, path)
    try:
      self._reader = tf.train.load_checkpoint(self.path)
    except Exception as e:  # pylint: disable=broad-except
      raise ConversionError(f'--src={path}: not a readable TF checkpoint ({type(e).__name__}: '
                            f'{str(e)[:300]})') from e
    self.shapes = {k: tuple(v) for k, v in self._reader.get_variable_to_shape_map().items()}

  def __getitem__(self, name: str) -> np.ndarray:
    return np.asarray(self._reader.get_tensor(name))

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self.shapes))

  def __len__(self) -> int:
    return len(self.shapes)

  def __contains__(self, name: object) -> bool:
    return name in self.shapes


def _checkpoint_prefix(tf: Any, path: str) -> str:
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest:
      return latest
    index = sorted(p for p in tf.io.gfile.listdir(path) if p.endswith('.index'))
    if index:
      return os.path.join(path, index[-1][:-len('.index')])
    raise ConversionError(f'--src={path} is a folder without a TF checkpoint '
                          '(no checkpoint file, no *.index).')
  if not (tf.io.gfile.exists(path + '.index') or tf.io.gfile.exists(path)):
    raise FileNotFoundError(f'--src={path}: no such checkpoint ({path}.index not found).')
  return path


def _numbered(shapes: Mapping[str, Any], scope: str, layer: str, leaf: str) -> list[str]:
  """scope/layer/leaf, scope/layer_1/leaf, ... in creation order."""
  pattern = re.compile(rf'{re.escape(scope)}{layer}(?:_(\d+))?/{leaf}')
  found = []
  for name in shapes:
    m = pattern.fullmatch(name)
    if m:
      found.append((int(m.group(1) or 0), name))
  found.sort()
  for expected, (index, name) in enumerate(found):
    if index != expected:
      missing = f'{scope}{layer}{"" if expected == 0 else f"_{expected}"}/{leaf}'
      raise ConversionError(f'The checkpoint has {name!r} but no {missing!r}.')
  return [name for _, name in found]


def parse_resnet(conv_names: Sequence[str], shapes: Mapping[str, Sequence[int]]
                 ) -> dict[str, Any]:
  """config.model.resnet keys (+ in_channels) from the kernel shapes in order."""
  from contrastive_jax.interop.torch_io import sk_ratio_from  # pylint: disable=g-import-not-at-top
  from contrastive_jax.models import resnet  # pylint: disable=g-import-not-at-top
  ks = [tuple(shapes[n]) for n in conv_names]
  n = len(ks)
  if not ks:
    raise ConversionError('The checkpoint has no base_model/conv2d*/kernel: not a SimCLR '
                          'ResNet (or --tf_network picks a network it does not hold).')

  def need(i: int, what: str, ok: bool) -> None:
    if not ok:
      where = conv_names[i] if i < n else f'a convolution after {conv_names[-1]!r}'
      shape = ks[i] if i < n else None
      raise ConversionError(f'{where!r} {shape}: expected {what} here; the checkpoint is not a '
                            'SimCLR ResNet this importer knows.')

  k0 = ks[0]
  deep = k0[0] == 3 and n > 1 and ks[1][0] == 3
  if k0[0] == 7:
    stem, i = 'imagenet', 1
  elif deep:
    stem, i = 'imagenet', 3
  else:
    need(0, 'a 7x7 or 3x3 stem convolution', k0[0] == 3)
    stem, i = 'cifar', 1
  width = ks[i - 1][3]
  in_channels = k0[2]
  stages: list[int] = []
  sk_pairs: list[tuple[int, int]] = []
  uses_sk: Optional[bool] = None
  channels = width
  while i < n:
    if not stages and ks[i][:2] == (1, 1) and i + 1 < n and ks[i + 1][:2] == (3, 3):
      # A bottleneck net's first block starts with two 1x1 convs (shortcut, conv1).
      raise ConversionError(
          f'{conv_names[i]!r} {ks[i]} is followed by a 3x3 convolution: a basic-block '
          '(ResNet-18/34) checkpoint. The official code gives the first block of '
          'block_group1 a projection shortcut that this ResNet does not have, so it cannot '
          'be imported exactly.')
    projection = ks[i][:2] == (1, 1) and i + 1 < n and ks[i + 1][:2] == (1, 1) \
        and ks[i][2] == ks[i + 1][2]
    if projection:
      stages.append(0)
      i += 1
    need(i, 'a block (the projection shortcut of a first block)', bool(stages))
    need(i, 'a 1x1 convolution (a bottleneck conv1)', i < n and ks[i][:2] == (1, 1)
         and ks[i][2] == channels)
    filters = ks[i][3]
    i += 1
    need(i, 'a 3x3 convolution', i < n and ks[i][:2] == (3, 3))
    block_sk = ks[i][3] == 2 * filters
    if uses_sk is None:
      uses_sk = block_sk
    need(i, 'the same kind of 3x3 convolution (SK or plain) as the first block',
         block_sk == uses_sk)
    i += 1
    if block_sk:
      need(i, 'the SK squeeze 1x1 convolution', i < n and ks[i][:3] == (1, 1, filters))
      need(i + 1, 'the SK mixing 1x1 convolution',
           i + 1 < n and ks[i + 1][:2] == (1, 1) and ks[i + 1][3] == 2 * filters)
      sk_pairs.append((filters, ks[i][3]))
      i += 2
    need(i, 'the 1x1 expansion convolution (conv3)', i < n and ks[i][:3] == (1, 1, filters))
    channels = ks[i][3]
    i += 1
    stages[-1] += 1
  if deep and not uses_sk:
    raise ConversionError(f'{conv_names[1]!r}: a deep stem without selective kernels has no '
                          'counterpart in this ResNet.')
  base_width, multiplier = (64, width // 64) if width % 64 == 0 else (width, 1)
  arch = dict(depth=0, stage_sizes=tuple(stages), block='bottleneck', base_width=base_width,
              width_multiplier=multiplier, stem=stem, stem_stride=1,
              sk_ratio=sk_ratio_from(sk_pairs) if uses_sk else 0.0, pool='avg',
              stem_pool='same', in_channels=in_channels)
  for depth, (sizes, kind) in resnet.DEPTHS.items():
    if tuple(sizes) == arch['stage_sizes'] and kind == 'bottleneck':
      arch.update(depth=depth, stage_sizes=(), block='')
  return arch


def tf_order(stem: str, deep: bool, stage_sizes: Sequence[int], sk: bool
             ) -> tuple[list[str], list[str]]:
  """This ResNet's conv and BN module paths in the TF code's creation order."""
  convs, bns = [], []
  if deep:
    for k in (1, 2, 3):
      convs.append(f'stem_conv{k}')
      bns.append(f'stem_bn{k}')
  else:
    convs.append('stem_conv')
    bns.append('stem_bn')
  del stem
  for i, num in enumerate(stage_sizes):
    for j in range(num):
      b = f'stage{i + 1}_block{j + 1}'
      if j == 0:
        convs.append(f'{b}/shortcut/conv')
        bns.append(f'{b}/shortcut/bn')
      convs.append(f'{b}/conv1')
      bns.append(f'{b}/bn1')
      if sk:
        convs += [f'{b}/sk/conv', f'{b}/sk/fc1', f'{b}/sk/fc2']
        bns += [f'{b}/sk/bn', f'{b}/sk/fc1_bn']
      else:
        convs.append(f'{b}/conv2')
        bns.append(f'{b}/bn2')
      convs.append(f'{b}/conv3')
      bns.append(f'{b}/bn3')
  return convs, bns


_BN_LEAVES = (('gamma', 'params', 'scale'), ('beta', 'params', 'bias'),
              ('moving_mean', 'batch_stats', 'mean'),
              ('moving_variance', 'batch_stats', 'var'))


def import_tf_simclr(src: str, workdir: str,
                     base_config: Optional[ml_collections.ConfigDict] = None, *,
                     network: str = 'online', supervised_head: str = 'probe') -> str:
  """Writes a new workdir from an official SimCLR TF1 checkpoint (module docstring).

  network: 'online' (the trained network) or 'ema' (v2's ema_model/ copy).
  supervised_head: 'probe' (head_supervised becomes the online probe on h) or
  'skip' (left out; for fine-tuned checkpoints, whose head sits on a projection layer).
  """
  from contrastive_jax import models  # pylint: disable=g-import-not-at-top
  if network not in NETWORKS:
    raise ValueError(f'network={network!r}; choose one of {NETWORKS}.')
  if supervised_head not in SUPERVISED_HEADS:
    raise ValueError(f'supervised_head={supervised_head!r}; choose one of {SUPERVISED_HEADS}.')
  common.check_new_workdir(workdir)
  reader = _Reader(src)
  shapes = reader.shapes
  source = common.Source(reader, f'{reader.path} (SimCLR TF checkpoint)', shapes=shapes)
  prefix = 'ema_model/' if network == 'ema' else ''
  base = f'{prefix}base_model/'
  conv_names = _numbered(shapes, base, 'conv2d', 'kernel')
  bn_names = _numbered(shapes, base, 'batch_normalization', 'gamma')
  arch = parse_resnet(conv_names, shapes)
  channels = int(arch.pop('in_channels'))
  deep = arch['stem'] == 'imagenet' and arch['sk_ratio'] > 0

  # The head: nl_0 .. nl_{L-1} (nonlinear) or l_0 (linear).
  head_scope = f'{prefix}head_contrastive/'
  layers = _numbered_layers(shapes, head_scope)
  head_cfg: dict[str, Any] = {}
  if layers:
    dims = [shapes[f'{head_scope}{layer}/dense/kernel'] for layer in layers]
    h_width = dims[0][0]
    head_cfg = dict(num_proj_layers=len(layers), proj_dim=int(dims[-1][1]),
                    proj_hidden_dim=0 if len(layers) < 2 or dims[0][1] == h_width
                    else int(dims[0][1]))
  elif base_config is not None:
    head_cfg = {k: base_config.model[k] for k in models.HEAD_ARCH_KEYS}
  sup = None
  if supervised_head == 'probe':
    for scope in (f'{prefix}head_supervised/', 'head_supervised/'):
      if f'{scope}linear_layer/dense/kernel' in shapes:
        sup = f'{scope}linear_layer/dense/'
        break
  probe_classes = int(shapes[f'{sup}kernel'][1]) if sup else 0
  config = common.import_config(base_config, arch, head_cfg, channels, probe_classes > 0)
  model = models.build_model(config.model, num_classes=probe_classes, conv_cls=nn.Conv)
  side = int(config.data.get('image_size', 0) or 0) or 32
  abstract = common.abstract_variables(model, (1, side, side, channels))

  values = common.Mapped()
  conv_paths, bn_paths = tf_order(arch['stem'], deep,
                                  models.resolve_architecture(config.model.resnet)[0],
                                  config.model.resnet.sk_ratio > 0)
  if len(conv_paths) != len(conv_names):
    raise ConversionError(f'{len(conv_names)} convolutions in the checkpoint, {len(conv_paths)} '
                          'in the architecture read from it.')
  if len(bn_paths) != len(bn_names):
    extra = bn_names[len(bn_paths)] if len(bn_names) > len(bn_paths) else None
    raise ConversionError(f'{len(bn_names)} batch norms in the checkpoint, {len(bn_paths)} in '
                          f'the architecture read from it' + (f' (first extra: {extra!r})'
                                                               if extra else '') + '.')
  for path, name in zip(conv_paths, conv_names):
    values.put(f'params/encoder/{path}/kernel', source.take(name), name)
  for path, gamma in zip(bn_paths, bn_names):
    scope = gamma[:-len('gamma')]
    for leaf, collection, ours in _BN_LEAVES:
      values.put(f'{collection}/encoder/{path}/{ours}', source.take(scope + leaf), scope + leaf)
  for j, layer in enumerate(layers):
    scope = f'{head_scope}{layer}/'
    values.put(f'params/head/dense{j + 1}/kernel', source.take(f'{scope}dense/kernel'),
               f'{scope}dense/kernel')
    for leaf, collection, ours in _BN_LEAVES:
      name = f'{scope}batch_normalization/{leaf}'
      if leaf == 'beta' and j == len(layers) - 1:
        if name in shapes:
          raise ConversionError(f'{name!r}: the last projection layer here has no shift.')
        continue
      values.put(f'{collection}/head/bn{j + 1}/{ours}', source.take(name), name)
  if sup:
    for leaf in ('kernel', 'bias'):
      values.put(f'params/probe/dense/{leaf}', source.take(sup + leaf), sup + leaf)

  for name in source.leftovers():
    if name in _NON_MODEL:
      source.skip(name, 'step counter / optimizer state')
    elif name.endswith(_SLOTS):
      source.skip(name, 'optimizer slot')
    elif network == 'online' and name.startswith('ema_model/'):
      source.skip(name, 'the EMA network (network=ema imports it)')
    elif network == 'ema' and name.startswith(_MODEL_SCOPES):
      source.skip(name, 'the online network (network=online imports it)')
    elif supervised_head == 'skip' and re.match(r'(ema_model/)?head_supervised/', name):
      source.skip(name, "supervised head (supervised_head='skip')")
  source.check_consumed()
  fallback = None
  if not layers:
    width = models.encoder_width(config.model, side, channels)
    fallback = common.randomize_head(config.model, width, config.seed)
  variables = common.fill_variables(abstract, values, source.what, fallback)
  record = dict(source=reader.path, format='tf_simclr', network=network,
                supervised_head=supervised_head, consumed=len(source.consumed),
                skipped=_summarise(source.skipped), initialised=[] if layers else ['head'])
  return common.write_workdir(workdir, config, variables, record)


def _numbered_layers(shapes: Mapping[str, Any], scope: str) -> list[str]:
  nl = sorted((int(m.group(1)), f'nl_{m.group(1)}') for name in shapes
              for m in [re.fullmatch(rf'{re.escape(scope)}nl_(\d+)/dense/kernel', name)] if m)
  if nl:
    for expected, (index, _) in enumerate(nl):
      if index != expected:
        raise ConversionError(f'The checkpoint has {scope}nl_{index} but no {scope}nl_{expected}.')
    return [layer for _, layer in nl]
  if f'{scope}l_0/dense/kernel' in shapes:
    return ['l_0']
  return []


def _summarise(skipped: Mapping[str, str]) -> dict[str, int]:
  out: dict[str, int] = {}
  for why in skipped.values():
    out[why] = out.get(why, 0) + 1
  return out
