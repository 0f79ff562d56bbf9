"""PyTorch interop: export a workdir to a torchvision-layout state_dict, import
torchvision / PyTorch ResNet weights (or such an export) into a new workdir.

Export (`export_torch`, `--to=torch --out=encoder.pt`) writes
  encoder.pt        torch.save({'format', 'meta', 'encoder', 'head'[, 'probe']})
  encoder_model.py  the PyTorch module (a copy of interop/torch_resnet.py)
'encoder' uses torchvision's names (conv1, bn1, layerK.j.convN / bnN /
downsample.0-1, running statistics included). With the ImageNet stem, width
64 and depth 18/34/50/101/152 it loads with strict=True into
`torchvision.models.resnetXX()` whose fc is nn.Identity(); meta['torchvision']
names that model and `encoder_model.torchvision_encoder(meta)` builds it with
the one function change SimCLR needs: TF's 'SAME' stem max-pool (torchvision
pads both sides; a one-pixel shift of the pool windows on even sides). Other
networks (CIFAR stem, other widths or stage sizes, selective kernels,
pool='flatten', one input channel) run in `encoder_model.ResNet`, whose names
extend torchvision's; meta['why_not_torchvision'] says what differs.

Import (`import_torch`, `--from=torch --src=FILE --workdir=NEW`) reads
  * such an export (architecture, head and probe from its meta), or
  * a torchvision ResNet state_dict (e.g. resnet50(weights=...).state_dict()),
    bare or under 'state_dict' / 'model' / 'model_state_dict', with a module
    prefix ('module.', 'encoder.', 'backbone.', ...) or as lightly's
    nn.Sequential(*list(resnet.children())[:-1]) ('0.weight' = conv1, '4.' =
    layer1, ...): the architecture comes from the names and shapes (kernel 7
    = ImageNet stem with torchvision's max-pool, stem_pool='torch'; kernel 3
    = CIFAR stem), fc becomes the online probe, and the projection head is
    freshly initialised (config.model's head keys; --config sets them).
Every state_dict entry under the backbone's prefix must find a place (else
the first leftover is named); entries outside it (another network's, a
projection head of another layout) are listed in WORKDIR/import.json.

torchvision's ImageNet weights expect mean/std-normalised inputs where this
project feeds [0, 1] images: `input_norm='imagenet'` folds the normalisation
into the stem (1/std into the conv, the mean into the following BN's running
mean). That is exact except on the border pixels of the stem convolution,
which torchvision pads with the normalised zero (= the mean colour) and this
network with black.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import ml_collections
import numpy as np

from contrastive_jax.interop import common
from contrastive_jax.interop.common import ConversionError

FORMAT = 'contrastive_jax.torch/1'
MODULE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'torch_resnet.py')

TORCHVISION = {((2, 2, 2, 2), 'basic'): 'resnet18', ((3, 4, 6, 3), 'basic'): 'resnet34',
               ((3, 4, 6, 3), 'bottleneck'): 'resnet50',
               ((3, 4, 23, 3), 'bottleneck'): 'resnet101',
               ((3, 8, 36, 3), 'bottleneck'): 'resnet152'}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_NORMS = {'none': None, 'imagenet': (IMAGENET_MEAN, IMAGENET_STD)}

# Keys of a checkpoint dict that may hold the state_dict, in order of preference.
_CONTAINERS = ('state_dict', 'model_state_dict', 'model', 'net', 'network')
# lightly / nn.Sequential(*list(resnet.children())[:-1]) child index -> torchvision name.
_SEQUENTIAL = {'0': 'conv1', '1': 'bn1', '4': 'layer1', '5': 'layer2', '6': 'layer3',
               '7': 'layer4'}

_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
         'var': 'running_var'}


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit(f'--to=torch / --from=torch need PyTorch ({e}): pip install torch') from e
  return torch


# -----------------------------------------------------------------------------
# Names: this project's variable paths <-> torchvision-style state_dict keys.

def torch_key(path: str, resnet_d: bool) -> tuple[str, str]:
  """'params/encoder/stage2_block1/shortcut/conv/kernel' ->
  ('encoder', 'layer2.0.downsample.0.weight'); part is 'encoder', 'head' or 'probe'."""
  collection, part, *modules, leaf = path.split('/')
  del collection
  name = _LEAF[leaf]
  if part == 'probe':
    return 'probe', name
  if part == 'head':
    return 'head', '.'.join(modules + [name])
  if part != 'encoder':
    raise ConversionError(f'{path}: no PyTorch counterpart for the module {part!r}.')
  first, rest = modules[0], modules[1:]
  if first in ('stem_conv', 'stem_bn'):
    out = ['conv1' if first == 'stem_conv' else 'bn1']
  elif re.fullmatch(r'stem_(conv|bn)\d', first):
    out = ['stem', first[len('stem_'):]]
  else:
    m = re.fullmatch(r'stage(\d+)_block(\d+)', first)
    if not m:
      raise ConversionError(f'{path}: no PyTorch counterpart for the module {first!r}.')
    out = [f'layer{m.group(1)}', str(int(m.group(2)) - 1)]
    if rest[:1] == ['shortcut']:
      index = {'conv': 0, 'bn': 1}[rest[1]] + (1 if resnet_d else 0)
      rest = ['downsample', str(index)]
    out += rest
  return 'encoder', '.'.join(out + [name])


def _to_torch_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1)))  # HWIO -> OIHW
  if value.ndim == 2:
    return np.ascontiguousarray(value.T)                            # [in, out] -> [out, in]
  return value


def _from_torch_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))
  if value.ndim == 2:
    return value.T
  return value


# -----------------------------------------------------------------------------
# Export.

def torchvision_name(arch: Mapping[str, Any]) -> tuple[Optional[str], str]:
  """(torchvision model name, '') or (None, why not)."""
  key = (tuple(arch['stage_sizes']), arch['block'])
  checks = (
      (arch['stem'] == 'imagenet', f"stem={arch['stem']!r} (torchvision has the ImageNet "
                                   '7x7/2 stem only)'),
      (arch['sk_ratio'] == 0, f"sk_ratio={arch['sk_ratio']} (selective kernels, deep stem "
                              'and ResNet-D shortcuts are not in torchvision)'),
      (arch['base_width'] * arch['width_multiplier'] == 64,
       f"width {arch['base_width']}x{arch['width_multiplier']} (torchvision's ResNets "
       'start at 64 channels)'),
      (key in TORCHVISION, f'stage sizes {list(key[0])} with {key[1]} blocks (not '
                           'resnet18/34/50/101/152)'),
      (arch['pool'] == 'avg', f"pool={arch['pool']!r} (torchvision averages)"),
      (arch['in_channels'] == 3, f"{arch['in_channels']} input channel(s)"),
  )
  for ok, why in checks:
    if not ok:
      return None, why
  return TORCHVISION[key], ''


def _arch(config: ml_collections.ConfigDict, encoder_params: Mapping[str, Any]
          ) -> dict[str, Any]:
  from contrastive_jax.models import encoders, resnet  # pylint: disable=g-import-not-at-top
  if config.model.get('name', 'resnet') != 'resnet':
    raise ConversionError(f"config.model.name={config.model.name!r}: only the 'resnet' "
                          'encoder has a PyTorch counterpart.')
  section = encoders.section(config.model)
  stage_sizes, block = resnet.resolve_architecture(section)
  stem_kernel = encoder_params.get('stem_conv', encoder_params.get('stem_conv1'))['kernel']
  return dict(stage_sizes=list(stage_sizes), block=block, base_width=int(section.base_width),
              width_multiplier=int(section.width_multiplier), stem=section.stem,
              stem_stride=int(section.stem_stride), sk_ratio=float(section.sk_ratio),
              pool=section.pool, stem_pool=section.get('stem_pool', 'same'),
              in_channels=int(np.shape(stem_kernel)[2]))


def export_torch(workdir: str, out: str, step: Optional[int] = None,
                 network: str = 'online') -> dict[str, str]:
  """Writes OUT (.pt) and OUT_model.py beside it; returns their paths."""
  torch = _torch()
  from contrastive_jax import export  # pylint: disable=g-import-not-at-top
  pre = export.load_pretrained(workdir, step, network=network)
  variables = common.host_variables(pre.variables)
  arch = _arch(pre.config, variables['params']['encoder'])
  resnet_d = arch['sk_ratio'] > 0
  parts: dict[str, dict[str, Any]] = {'encoder': {}, 'head': {}, 'probe': {}}
  for path, value in common.flatten(variables).items():
    part, key = torch_key(path, resnet_d)
    parts[part][key] = torch.from_numpy(_to_torch_layout(np.asarray(value, np.float32)))
  for part in ('encoder', 'head'):
    for key in [k for k in parts[part] if k.endswith('running_mean')]:
      parts[part][key[:-len('running_mean')] + 'num_batches_tracked'] = torch.tensor(0)
  # The last projection BN has no shift here; torch's BatchNorm1d has one: zero.
  head = pre.config.model
  layers = int(head.num_proj_layers)
  last = f'bn{layers}.bias'
  if f'bn{layers}.weight' in parts['head'] and last not in parts['head']:
    parts['head'][last] = torch.zeros_like(parts['head'][f'bn{layers}.weight'])
  dims = [int(np.shape(variables['params']['head'][f'dense{j + 1}']['kernel'])[0])
          for j in range(layers)]
  dims.append(int(np.shape(variables['params']['head'][f'dense{layers}']['kernel'])[1]))
  name, why = torchvision_name(arch)
  meta = dict(arch=arch, bn_eps=float(head.bn_epsilon), head_dims=dims, torchvision=name,
              why_not_torchvision=why,
              image_size=int(pre.config.data.get('image_size', 0) or 0),
              input='x: [N, C, H, W] float32 in [0, 1], no mean/std normalisation',
              source=dict(workdir=os.path.abspath(workdir), step=pre.step, network=network))
  payload = dict(format=FORMAT, meta=meta, encoder=_ordered(parts['encoder']),
                 head=_ordered(parts['head']))
  if parts['probe']:
    payload['probe'] = _ordered(parts['probe'])
  module_path = _module_path(out)
  with common.atomic_outputs(out, module_path) as (tmp_pt, tmp_py):
    torch.save(payload, tmp_pt)
    shutil.copyfile(MODULE_FILE, tmp_py)
  return dict(weights=out, module=module_path)


def _module_path(out: str) -> str:
  stem, _ = os.path.splitext(out)
  return stem + '_model.py'


def _ordered(d: Mapping[str, Any]) -> dict[str, Any]:
  import collections  # pylint: disable=g-import-not-at-top
  return collections.OrderedDict(sorted(d.items(), key=lambda kv: _natural(kv[0])))


def _natural(key: str) -> list[Any]:
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', key)]


# -----------------------------------------------------------------------------
# Import.

def _load_file(src: str) -> dict[str, Any]:
  torch = _torch()
  if not os.path.exists(src):
    raise FileNotFoundError(f'--src={src} not found.')
  try:
    obj = torch.load(src, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f'{src} could not be read as a PyTorch state_dict with '
                          f'torch.load(weights_only=True): {type(e).__name__}: {e}') from e
  if hasattr(obj, 'state_dict') and not isinstance(obj, Mapping):
    obj = obj.state_dict()
  if not isinstance(obj, Mapping):
    raise ConversionError(f'{src} holds a {type(obj).__name__}, not a state_dict.')
  return dict(obj)


def _numpy(v: Any) -> Any:
  return v.detach().cpu().numpy() if hasattr(v, 'detach') else v


def _find_state_dict(obj: Mapping[str, Any], src: str) -> dict[str, Any]:
  for key in _CONTAINERS:
    if isinstance(obj.get(key), Mapping):
      return dict(obj[key])
  tensors = {k: v for k, v in obj.items() if hasattr(v, 'shape')}
  if not tensors:
    raise ConversionError(f'{src}: no tensors found (top-level keys: {sorted(obj)[:8]}).')
  return dict(obj)


def _backbone_prefixes(sd: Mapping[str, Any]) -> dict[str, str]:
  """{prefix: layout} of every ResNet found: 'named' (torchvision) or 'sequential'."""
  found: dict[str, str] = {}
  for key, value in sd.items():
    if np.ndim(_numpy(value)) != 4:
      continue
    m = re.fullmatch(r'(.*?)(stem\.conv1|conv1)\.weight', key)
    if m and not re.search(r'layer\d+\.\d+\.$', m.group(1)) and not m.group(1).endswith('sk.'):
      if f'{m.group(1)}layer1.0.conv1.weight' in sd:
        found[m.group(1)] = 'named'
    m = re.fullmatch(r'(.*?)0\.weight', key)
    if m and f'{m.group(1)}4.0.conv1.weight' in sd:
      found[m.group(1)] = 'sequential'
  return found


def _rename(sd: Mapping[str, Any], prefix: str, layout: str) -> tuple[dict[str, Any], list[str]]:
  """(the backbone's entries with torchvision names, the keys left outside it)."""
  inside, outside = {}, []
  for key, value in sd.items():
    if not key.startswith(prefix):
      outside.append(key)
      continue
    name = key[len(prefix):]
    if layout == 'sequential':
      head, _, tail = name.partition('.')
      if head not in _SEQUENTIAL:
        outside.append(key)
        continue
      name = f'{_SEQUENTIAL[head]}.{tail}'
    inside[name] = _numpy(value)
  return inside, outside


def _sk_ratio(sd: Mapping[str, Any], fc1_suffix: str = '.sk.fc1.weight') -> float:
  """The SK ratio the fc1 widths imply (0.0625, SimCLR v2's, when it fits)."""
  pairs = []  # (filters F, mid) of every SK conv
  for key, value in sd.items():
    if key.endswith(fc1_suffix):
      mid, filters = np.shape(value)[:2]
      pairs.append((int(filters), int(mid)))
  return sk_ratio_from(pairs)


def sk_ratio_from(pairs: Sequence[tuple[int, int]]) -> float:
  """sk_ratio r with max(int(F * r), 32) == mid for every (F, mid); SimCLR v2's
  0.0625 when it fits, else the ratio of the widest one."""
  from contrastive_jax.models.resnet import SK_MIN_DIM  # pylint: disable=g-import-not-at-top
  fits = lambda r: all(max(int(f * r), SK_MIN_DIM) == mid for f, mid in pairs)
  if fits(0.0625):
    return 0.0625
  f, mid = max(pairs)
  r = mid / f
  if not fits(r):
    raise ConversionError(f'The selective-kernel widths {sorted(set(pairs))} (filters, mid) '
                          'fit no single sk_ratio.')
  return r


def infer_arch(sd: Mapping[str, Any]) -> dict[str, Any]:
  """config.model.resnet keys (+ in_channels) from torchvision-named entries."""
  from contrastive_jax.models import resnet  # pylint: disable=g-import-not-at-top
  deep = 'stem.conv1.weight' in sd
  first = sd['stem.conv1.weight' if deep else 'conv1.weight']
  k = int(np.shape(first)[-1])
  stem_out = sd['stem.conv3.weight'] if deep else first
  width = int(np.shape(stem_out)[0])
  stage_sizes = []
  while any(key.startswith(f'layer{len(stage_sizes) + 1}.') for key in sd):
    i = len(stage_sizes) + 1
    blocks = {int(m.group(1)) for key in sd
              for m in [re.match(rf'layer{i}\.(\d+)\.', key)] if m}
    stage_sizes.append(max(blocks) + 1)
  if not stage_sizes:
    raise ConversionError("No 'layer1.0.*' entries: not a torchvision-style ResNet.")
  block = 'bottleneck' if 'layer1.0.conv3.weight' in sd else 'basic'
  sk = any('.sk.' in key for key in sd)
  resnet_d = any(re.search(r'\.downsample\.2\.weight$', key) for key in sd)
  if resnet_d and not sk:
    key = next(key for key in sd if re.search(r'\.downsample\.2\.weight$', key))
    raise ConversionError(f'{key!r}: ResNet-D shortcuts without selective kernels have no '
                          'counterpart in this ResNet (it ties them to sk_ratio > 0).')
  if deep and not sk:
    raise ConversionError("'stem.conv1.weight': a deep stem without selective kernels has no "
                          'counterpart in this ResNet.')
  base_width, multiplier = (64, width // 64) if width % 64 == 0 else (width, 1)
  arch = dict(stage_sizes=tuple(stage_sizes), block=block, base_width=base_width,
              width_multiplier=multiplier, stem='imagenet' if (deep or k == 7) else 'cifar',
              sk_ratio=_sk_ratio(sd) if sk else 0.0, stem_pool='torch',
              in_channels=int(np.shape(first)[1]))
  if k not in (3, 7):
    raise ConversionError(f"'conv1.weight' has a {k}x{k} kernel: the stems here are 7x7 "
                          '(ImageNet) or 3x3 (CIFAR).')
  for depth, (sizes, kind) in resnet.DEPTHS.items():
    if tuple(sizes) == arch['stage_sizes'] and kind == block:
      arch.update(depth=depth, stage_sizes=(), block='')
      break
  else:
    arch.update(depth=0)
  return arch


def _from_export(obj: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict]:
  meta = obj['meta']
  a = dict(meta['arch'])
  arch = dict(depth=0, stage_sizes=tuple(a['stage_sizes']), block=a['block'],
              base_width=a['base_width'], width_multiplier=a['width_multiplier'],
              stem=a['stem'], stem_stride=a['stem_stride'], sk_ratio=a['sk_ratio'],
              pool=a['pool'], stem_pool=a['stem_pool'], in_channels=a['in_channels'])
  entries = {}
  for part in ('encoder', 'head', 'probe'):
    for key, value in (obj.get(part) or {}).items():
      entries[f'{part}:{key}'] = _numpy(value)
  return arch, entries, meta


def import_torch(src: str, workdir: str, base_config: Optional[ml_collections.ConfigDict] = None,
                 *, prefix: Optional[str] = None, input_norm: str = 'none') -> str:
  """Writes a new workdir from a PyTorch file (see the module docstring)."""
  from contrastive_jax import models  # pylint: disable=g-import-not-at-top
  if input_norm not in INPUT_NORMS:
    raise ValueError(f'input_norm={input_norm!r}; choose one of {tuple(INPUT_NORMS)}.')
  common.check_new_workdir(workdir)
  obj = _load_file(src)
  ignored: list[str] = []
  if obj.get('format') == FORMAT:
    arch, entries, meta = _from_export(obj)
    layout = 'contrastive_jax export'
    head_dims = list(meta['head_dims'])
    head_cfg = dict(num_proj_layers=len(head_dims) - 1, proj_dim=head_dims[-1],
                    proj_hidden_dim=0 if len(head_dims) < 3 or head_dims[1] == head_dims[0]
                    else head_dims[1])
    key_of = lambda part, key: f'{part}:{key}'
  else:
    sd = _find_state_dict(obj, src)
    found = _backbone_prefixes(sd)
    if prefix is not None:
      if prefix not in found:
        raise ConversionError(f'--prefix={prefix!r}: no ResNet under it; found {found or "none"}.')
      found = {prefix: found[prefix]}
    if not found:
      raise ConversionError(f'{src}: no torchvision-style ResNet found (no conv1.weight with '
                            'layer1.0.conv1.weight beside it, nor lightly\'s 0.weight / '
                            '4.0.conv1.weight).')
    if len(found) > 1:
      raise ConversionError(f'{src} holds several ResNets, under the prefixes {sorted(found)}; '
                            'pick one with --prefix.')
    (prefix, layout), = found.items()
    named, ignored = _rename(sd, prefix, layout)
    arch = infer_arch(named)
    entries = {}
    for key, value in named.items():
      part = 'probe' if key.startswith('fc.') else 'encoder'
      entries[f'{part}:{key[3:] if part == "probe" else key}'] = value
    head_cfg = {}
    key_of = lambda part, key: f'{part}:{key}'
    layout = f'{layout} state_dict' + (f' under {prefix!r}' if prefix else '')
  source = common.Source(entries, f'{src} ({layout})')
  channels = int(arch.pop('in_channels'))
  if base_config is not None and obj.get('format') != FORMAT:
    # What the weights cannot say: the CIFAR stem's stride, the pooling.
    for key in ('stem_stride', 'pool'):
      arch.setdefault(key, base_config.model.get('resnet', {}).get(key))
    arch = {k: v for k, v in arch.items() if v is not None}
  probe_classes = (int(np.shape(entries['probe:weight'])[0])
                   if 'probe:weight' in entries else 0)
  if not head_cfg and base_config is not None:
    head_cfg = {k: base_config.model[k] for k in models.HEAD_ARCH_KEYS}
  config = common.import_config(base_config, arch, head_cfg, channels, probe_classes > 0)
  if obj.get('format') == FORMAT and base_config is None and meta.get('image_size'):
    config.data.image_size = int(meta['image_size'])   # the exporting run's input side
  model = models.build_model(config.model, num_classes=probe_classes, conv_cls=nn.Conv)
  side = int(config.data.get('image_size', 0) or 0) or 32
  abstract = common.abstract_variables(model, (1, side, side, channels))
  resnet_d = float(config.model.resnet.sk_ratio) > 0
  values = common.Mapped()
  has_head = any(k.startswith('head:') for k in entries)
  for path in common.flatten(abstract):
    part, key = torch_key(path, resnet_d)
    if part == 'head' and not has_head:
      continue
    values.put(path, _from_torch_layout(source.take(key_of(part, key))), key)
  for name in source.names():
    if name.endswith('num_batches_tracked'):
      source.skip(name, 'BN update counter')
  if has_head:
    last = f'head:bn{config.model.num_proj_layers}.bias'
    if last in source:
      if np.any(source.take(last) != 0):
        raise ConversionError(f'{last[5:]!r} (the last projection BN shift) is not zero: the '
                              'last projection layer here has no shift.')
  source.check_consumed()
  fallback = None
  if not has_head:
    width = models.encoder_width(config.model, side, channels)
    fallback = common.randomize_head(config.model, width, config.seed)
  variables = common.fill_variables(abstract, values, source.what, fallback)
  if input_norm != 'none':
    fold_input_norm(variables, *INPUT_NORMS[input_norm])
  record = dict(source=os.path.abspath(src), format='torch', layout=layout,
                consumed=len(source.consumed), skipped=sorted(source.skipped),
                ignored_outside_backbone=sorted(ignored),
                initialised=['head'] if not has_head else [],
                input_norm=input_norm)
  return common.write_workdir(workdir, config, variables, record)


def fold_input_norm(variables: dict[str, Any], mean: Sequence[float],
                    std: Sequence[float]) -> None:
  """In place: the stem takes [0, 1] images where it took (x - mean) / std."""
  params, stats = variables['params']['encoder'], variables['batch_stats']['encoder']
  conv, bn = ('stem_conv1', 'stem_bn1') if 'stem_conv1' in params else ('stem_conv', 'stem_bn')
  kernel = np.asarray(params[conv]['kernel'], np.float64)           # [kh, kw, C, O]
  mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  if kernel.shape[2] != len(mean):
    raise ConversionError(f'input_norm has {len(mean)} channels; the stem takes '
                          f'{kernel.shape[2]}.')
  scaled = kernel / std[None, None, :, None]
  shift = np.einsum('hwco,c->o', scaled, mean)
  params[conv]['kernel'] = scaled.astype(np.float32)
  stats[bn]['mean'] = (np.asarray(stats[bn]['mean'], np.float64) + shift).astype(np.float32)
