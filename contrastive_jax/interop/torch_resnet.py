"""contrastive_jax's ResNet and projection head in PyTorch, standalone (torch only).

`python -m contrastive_jax.export --workdir=RUN --to=torch --out=encoder.pt`
writes this file beside its output as `encoder_model.py`, so the weights load
on a machine without this project:

  import encoder_model
  encoder, head, meta = encoder_model.load('encoder.pt')   # eval mode, float32
  h = encoder(x)          # x: [N, C, H, W] float32 in [0, 1] (no mean/std normalisation)
  outs = head(h)          # [h, out_1, ..., out_L]; z = outs[-1]

Module and parameter names follow torchvision's ResNet (conv1, bn1, layer1..,
layerK.j.conv1, .bn1, .., .downsample.0 / .1), so a network with the
ImageNet stem and a torchvision depth is torchvision's own
(`encoder_model.torchvision_encoder(meta)` builds that one). The rest is what
contrastive_jax adds, in the same style:
  * the CIFAR stem: conv1 3x3 (stride 1 or 2), no max-pool;
  * any stage sizes and widths (base_width x width_multiplier);
  * selective kernels (SimCLR v2): `layerK.j.sk.{conv, bn, fc1, fc1_bn, fc2}`
    instead of the 3x3 conv (conv2 / bn2 in bottlenecks, conv1 / bn1 in basic
    blocks), the deep stem `stem.{conv1, bn1, conv2, bn2, conv3, bn3}` and
    ResNet-D shortcuts `downsample.1` (conv) / `downsample.2` (BN) after an
    average pool `downsample.0`;
  * the stem max-pool pads like TF 'SAME' (stem_pool='same', SimCLR's) or
    like torchvision (stem_pool='torch');
  * pool='flatten': h is the last feature map flattened in [H, W, C] order.
BatchNorm epsilon is the run's (meta['bn_eps']).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

FORMAT = 'contrastive_jax.torch/1'


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  out = math.ceil(size / stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class MaxPoolSame(nn.Module):
  """3x3/2 max-pool padded like TF 'SAME' (-inf padding, extra pixel at the end)."""

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    top, bottom = _same_padding(x.shape[-2], 3, 2)
    left, right = _same_padding(x.shape[-1], 3, 2)
    x = F.pad(x, (left, right, top, bottom), value=float('-inf'))
    return F.max_pool2d(x, 3, 2)


class ResNetDPool(nn.Module):
  """ResNet-D shortcut pooling as TF SimCLR v2: stride > 1: zero-pad (0, 1) and
  2x2 average with that stride; stride 1: 2x2 average 'SAME' (padding not counted)."""

  def __init__(self, stride: int):
    super().__init__()
    self.stride = stride

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.pad(x, (0, 1, 0, 1))
    if self.stride > 1:
      return F.avg_pool2d(x, 2, self.stride)
    ones = F.pad(torch.ones_like(x[:, :1, :-1, :-1]), (0, 1, 0, 1))
    return F.avg_pool2d(x, 2, 1) / F.avg_pool2d(ones, 2, 1)


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
  # Odd kernels: (k-1)//2 on each side, the same as TF's fixed padding.
  return nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2, bias=False)


class SelectiveKernel(nn.Module):
  def __init__(self, cin: int, filters: int, stride: int, sk_ratio: float, eps: float):
    super().__init__()
    mid = max(int(filters * sk_ratio), 32)
    self.filters = filters
    self.conv = _conv(cin, 2 * filters, 3, stride)
    self.bn = nn.BatchNorm2d(2 * filters, eps=eps)
    self.fc1 = _conv(filters, mid, 1)
    self.fc1_bn = nn.BatchNorm2d(mid, eps=eps)
    self.fc2 = _conv(mid, 2 * filters, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.bn(self.conv(x)))
    streams = torch.stack(torch.split(x, self.filters, dim=1))        # [2, N, F, H, W]
    squeezed = streams.sum(0).mean((2, 3), keepdim=True)
    a = self.fc2(F.relu(self.fc1_bn(self.fc1(squeezed))))
    mix = torch.softmax(torch.stack(torch.split(a, self.filters, dim=1)), dim=0)
    return (streams * mix).sum(0)


def _downsample(cin: int, cout: int, stride: int, resnet_d: bool, eps: float) -> nn.Sequential:
  if resnet_d:
    return nn.Sequential(ResNetDPool(stride), _conv(cin, cout, 1),
                         nn.BatchNorm2d(cout, eps=eps))
  return nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout, eps=eps))


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin: int, filters: int, stride: int, sk_ratio: float, eps: float):
    super().__init__()
    self.use_sk = sk_ratio > 0
    if self.use_sk:
      self.sk = SelectiveKernel(cin, filters, stride, sk_ratio, eps)
    else:
      self.conv1 = _conv(cin, filters, 3, stride)
      self.bn1 = nn.BatchNorm2d(filters, eps=eps)
    self.conv2 = _conv(filters, filters, 3)
    self.bn2 = nn.BatchNorm2d(filters, eps=eps)
    self.downsample = (_downsample(cin, filters, stride, self.use_sk, eps)
                       if stride != 1 or cin != filters else None)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    shortcut = x if self.downsample is None else self.downsample(x)
    y = self.sk(x) if self.use_sk else F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + shortcut)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin: int, filters: int, stride: int, sk_ratio: float, eps: float):
    super().__init__()
    out = 4 * filters
    self.use_sk = sk_ratio > 0
    self.conv1 = _conv(cin, filters, 1)
    self.bn1 = nn.BatchNorm2d(filters, eps=eps)
    if self.use_sk:
      self.sk = SelectiveKernel(filters, filters, stride, sk_ratio, eps)
    else:
      self.conv2 = _conv(filters, filters, 3, stride)
      self.bn2 = nn.BatchNorm2d(filters, eps=eps)
    self.conv3 = _conv(filters, out, 1)
    self.bn3 = nn.BatchNorm2d(out, eps=eps)
    self.downsample = (_downsample(cin, out, stride, self.use_sk, eps)
                       if stride != 1 or cin != out else None)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    shortcut = x if self.downsample is None else self.downsample(x)
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.sk(y) if self.use_sk else F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + shortcut)


class ResNet(nn.Module):
  """`forward(x)` -> h [N, D]; x [N, C, H, W] float32 in [0, 1]."""

  def __init__(self, stage_sizes: Sequence[int], block: str = 'bottleneck',
               base_width: int = 64, width_multiplier: int = 1, stem: str = 'imagenet',
               stem_stride: int = 1, sk_ratio: float = 0.0, pool: str = 'avg',
               stem_pool: str = 'same', in_channels: int = 3, bn_eps: float = 1e-5):
    super().__init__()
    width = base_width * width_multiplier
    self.pool = pool
    self.deep_stem = stem == 'imagenet' and sk_ratio > 0
    if self.deep_stem:
      self.stem = nn.Module()
      for i, (cin, cout, s) in enumerate(((in_channels, width // 2, 2),
                                          (width // 2, width // 2, 1), (width // 2, width, 1))):
        self.stem.add_module(f'conv{i + 1}', _conv(cin, cout, 3, s))
        self.stem.add_module(f'bn{i + 1}', nn.BatchNorm2d(cout, eps=bn_eps))
    elif stem == 'imagenet':
      self.conv1 = _conv(in_channels, width, 7, 2)
      self.bn1 = nn.BatchNorm2d(width, eps=bn_eps)
    else:
      self.conv1 = _conv(in_channels, width, 3, stem_stride)
      self.bn1 = nn.BatchNorm2d(width, eps=bn_eps)
    if stem != 'imagenet':
      self.maxpool = nn.Identity()
    elif stem_pool == 'torch':
      self.maxpool = nn.MaxPool2d(3, 2, padding=1)
    else:
      self.maxpool = MaxPoolSame()
    block_cls = Bottleneck if block == 'bottleneck' else BasicBlock
    cin = width
    for i, n in enumerate(stage_sizes):
      blocks = []
      for j in range(n):
        stride = 2 if i > 0 and j == 0 else 1
        blocks.append(block_cls(cin, width * 2 ** i, stride, sk_ratio, bn_eps))
        cin = width * 2 ** i * block_cls.expansion
      self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
    self.num_stages = len(stage_sizes)
    self.out_channels = cin

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.deep_stem:
      s = self.stem
      x = F.relu(s.bn1(s.conv1(x)))
      x = F.relu(s.bn2(s.conv2(x)))
      x = F.relu(s.bn3(s.conv3(x)))
    else:
      x = F.relu(self.bn1(self.conv1(x)))
    x = self.maxpool(x)
    for i in range(self.num_stages):
      x = getattr(self, f'layer{i + 1}')(x)
    if self.pool == 'flatten':
      return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    return x.mean((2, 3))


class ProjectionHead(nn.Module):
  """dense{j} (Linear, no bias) + bn{j} (BatchNorm1d), ReLU on all but the last;
  `forward(h)` -> [h, out_1, ..., out_L]."""

  def __init__(self, dims: Sequence[int], bn_eps: float = 1e-5):
    super().__init__()
    self.num_layers = len(dims) - 1
    for j in range(self.num_layers):
      self.add_module(f'dense{j + 1}', nn.Linear(dims[j], dims[j + 1], bias=False))
      self.add_module(f'bn{j + 1}', nn.BatchNorm1d(dims[j + 1], eps=bn_eps))

  def forward(self, h: torch.Tensor) -> list[torch.Tensor]:
    outs = [h]
    x = h
    for j in range(self.num_layers):
      x = getattr(self, f'bn{j + 1}')(getattr(self, f'dense{j + 1}')(x))
      if j < self.num_layers - 1:
        x = F.relu(x)
      outs.append(x)
    return outs


def build(meta: dict[str, Any]) -> tuple[ResNet, ProjectionHead]:
  """The (untrained) encoder and head that an exported file's meta describes."""
  a = meta['arch']
  encoder = ResNet(stage_sizes=a['stage_sizes'], block=a['block'], base_width=a['base_width'],
                   width_multiplier=a['width_multiplier'], stem=a['stem'],
                   stem_stride=a['stem_stride'], sk_ratio=a['sk_ratio'], pool=a['pool'],
                   stem_pool=a['stem_pool'], in_channels=a['in_channels'],
                   bn_eps=meta['bn_eps'])
  return encoder, ProjectionHead(meta['head_dims'], bn_eps=meta['bn_eps'])


def torchvision_encoder(meta: dict[str, Any]) -> nn.Module:
  """torchvision.models.<meta['torchvision']>() with fc = Identity, the run's BN
  epsilon and, for stem_pool='same', the TF 'SAME' max-pool: the exported
  'encoder' state_dict loads into it with strict=True and it computes the same h."""
  import torchvision  # pylint: disable=g-import-not-at-top
  name = meta.get('torchvision')
  if not name:
    raise ValueError(f"This network has no torchvision equivalent ({meta.get('why_not_torchvision')}); "
                     'use build(meta).')
  net = getattr(torchvision.models, name)(weights=None)
  net.fc = nn.Identity()
  if meta['arch']['stem_pool'] == 'same':
    net.maxpool = MaxPoolSame()
  for m in net.modules():
    if isinstance(m, nn.BatchNorm2d):
      m.eps = meta['bn_eps']
  return net


def load(path: str, map_location: str = 'cpu') -> tuple[ResNet, ProjectionHead, dict[str, Any]]:
  """(encoder, head, meta) of an exported file, weights loaded, in eval mode.
  The online probe of the run, when it had one, is in torch.load(path)['probe']
  (an nn.Linear state_dict on h)."""
  ckpt = torch.load(path, map_location=map_location, weights_only=False)
  if ckpt.get('format') != FORMAT:
    raise ValueError(f'{path} is not a contrastive_jax torch export ({FORMAT}).')
  encoder, head = build(ckpt['meta'])
  encoder.load_state_dict(ckpt['encoder'], strict=True)
  head.load_state_dict(ckpt['head'], strict=True)
  return encoder.eval(), head.eval(), ckpt['meta']
