"""ResNet v1 (post-activation) encoders as used by SimCLR v1/v2, in Flax linen.

Follows google-research/simclr (tf2/resnet.py) in the details that change the
function computed:
  * every convolution has no bias and pads like TF's `Conv2dFixedPadding`:
    (k-1)//2 before, the rest after, whatever the stride, so a 7x7/2 stem conv
    on 224 px pads (3, 3) where a plain 'SAME' would pad (2, 3);
  * BatchNorm momentum 0.9, epsilon 1e-5, the last BN of each residual branch
    starts with gamma = 0 (each block starts as the identity on its shortcut);
  * selective kernels (SimCLR v2, sk_ratio > 0) replace the 3x3 conv of the
    bottleneck, and switch the stem and projection shortcuts to ResNet-D.
Where this differs from that code (on purpose):
  * a projection shortcut only where the shape changes; TF also gives the
    first basic block of stage 1 (64 -> 64, stride 1) one (ResNet-18/34
    only; +4,224 params on R18, bottleneck nets are unaffected);
  * conv kernels use He scaling (variance_scaling 2.0) as the project spec
    asks; TF's `VarianceScaling()` default is 1.0. BN follows every conv, so
    only the initial weight norm differs;
  * with sk_ratio > 0 basic blocks also get an SK first conv (TF leaves
    ResNet-18/34 convs plain and only switches their shortcuts).

BatchNorm is created without `axis_name`: under `jit` over a batch sharded on
the 'data' mesh axis the batch mean is already a global reduction, i.e. the
"global BN" SimCLR needs (per-device BN lets the contrastive task cheat).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from contrastive_jax.kernels.batchnorm import BatchNorm
from contrastive_jax.models import encoders

# depth -> (blocks per stage, block type).
DEPTHS: dict[int, tuple[tuple[int, ...], str]] = {
    18: ((2, 2, 2, 2), 'basic'),
    34: ((3, 4, 6, 3), 'basic'),
    50: ((3, 4, 6, 3), 'bottleneck'),
    101: ((3, 4, 23, 3), 'bottleneck'),
    152: ((3, 8, 36, 3), 'bottleneck'),
    200: ((3, 24, 36, 3), 'bottleneck'),
}

BLOCKS = ('basic', 'bottleneck')
STEMS = ('imagenet', 'cifar')
# How the last feature map becomes h: 'avg' = global average (ResNet, SimCLR);
# 'flatten' = the whole [H, W, C] map, so h keeps where things are (an
# extension for small, centred images; configs/fashion_mnist.py says why).
POOLS = ('avg', 'flatten')
# The ImageNet stem's 3x3/2 max-pool: 'same' pads like TF (0 before, 1 after on
# an even side; SimCLR's); 'torch' pads 1 on both sides like torchvision's
# MaxPool2d(3, 2, padding=1), so torchvision weights import exactly
# (contrastive_jax/interop). The two differ only on an even input side.
STEM_POOLS = ('same', 'torch')

# He init (variance scaling 2.0, fan-in, truncated normal). Every conv is
# followed by BN, so the scale only sets the initial weight norm, not the
# activations.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal')

# The SK mixing branch never uses fewer channels than this (TF: min_dim=32).
SK_MIN_DIM = 32

ModuleDef = Any


def fixed_padding(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """TF SimCLR's padding: independent of the input size and of the stride."""
  total = kernel_size - 1
  beg = total // 2
  return ((beg, total - beg), (beg, total - beg))


def _conv(conv: ModuleDef, features: int, kernel: int, stride: int,
          name: str) -> nn.Module:
  """A square conv with TF's fixed padding ('VALID' for 1x1) built by `conv`."""
  return conv(features=features, kernel_size=(kernel, kernel),
              strides=(stride, stride),
              padding=fixed_padding(kernel) if kernel > 1 else 'VALID', name=name)


def bottleneck_expansion(block: str) -> int:
  return 4 if block == 'bottleneck' else 1


def feature_width(stage_sizes: Sequence[int], block: str, base_width: int = 64,
                  width_multiplier: int = 1) -> int:
  """Width of h with pool='avg' (the globally pooled output)."""
  return (base_width * width_multiplier * 2 ** (len(stage_sizes) - 1)
          * bottleneck_expansion(block))


class SelectiveKernel(nn.Module):
  """SK conv (Li et al. 2019) as in SimCLR v2: two 3x3 streams, softly mixed.

  One 3x3 conv makes 2F channels (the two streams), BN-ReLU, then a squeeze
  (global average of the streams' sum) -> 1x1 to max(F*sk_ratio, 32) -> BN-ReLU
  -> 1x1 to 2F gives per-channel logits for a softmax over the two streams.
  """
  filters: int
  strides: int
  sk_ratio: float
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    f = self.filters
    x = _conv(self.conv, 2 * f, 3, self.strides, 'conv')(x)
    x = nn.relu(self.norm(name='bn')(x, use_running_average=not train))
    streams = jnp.stack(jnp.split(x, 2, axis=-1))                # [2,N,H,W,F]
    squeezed = jnp.mean(streams.sum(axis=0), axis=(1, 2), keepdims=True)
    mid = max(int(f * self.sk_ratio), SK_MIN_DIM)
    a = _conv(self.conv, mid, 1, 1, 'fc1')(squeezed)
    a = nn.relu(self.norm(name='fc1_bn')(a, use_running_average=not train))
    a = _conv(self.conv, 2 * f, 1, 1, 'fc2')(a)
    # Softmax in float32: in bf16 the two logits' difference loses precision.
    mix = jax.nn.softmax(jnp.stack(jnp.split(a, 2, axis=-1)).astype(jnp.float32),
                         axis=0).astype(streams.dtype)           # [2,N,1,1,F]
    return jnp.sum(streams * mix, axis=0)


class Shortcut(nn.Module):
  """Projection shortcut: 1x1 conv (stride) + BN, or ResNet-D when SK is on.

  ResNet-D (as in TF SimCLR v2): stride > 1 -> zero-pad (0, 1) then 2x2 avg-pool
  with that stride; stride 1 -> 2x2 avg-pool stride 1 'SAME' (padding not
  counted); then a stride-1 1x1 conv and BN.
  """
  features: int
  strides: int
  resnet_d: bool
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    s = self.strides
    if self.resnet_d:
      if s > 1:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        x = nn.avg_pool(x, (2, 2), (s, s), padding='VALID')
      else:
        x = nn.avg_pool(x, (2, 2), (1, 1), padding=((0, 1), (0, 1)),
                        count_include_pad=False)
      s = 1
    x = _conv(self.conv, self.features, 1, s, 'conv')(x)
    return self.norm(name='bn')(x, use_running_average=not train)


def _needs_projection(x: jax.Array, out_features: int, strides: int) -> bool:
  return strides != 1 or x.shape[-1] != out_features


class BasicBlock(nn.Module):
  """Two 3x3 convs. With sk_ratio > 0 the first conv is an SK conv (an
  extension: TF SimCLR only uses SK in bottlenecks) and the shortcut ResNet-D."""
  filters: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  sk_ratio: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out_features = self.filters
    shortcut = x
    if _needs_projection(x, out_features, self.strides):
      shortcut = Shortcut(out_features, self.strides, self.sk_ratio > 0,
                          self.conv, self.norm, name='shortcut')(x, train)
    if self.sk_ratio > 0:
      y = SelectiveKernel(self.filters, self.strides, self.sk_ratio, self.conv,
                          self.norm, name='sk')(x, train)
    else:
      y = _conv(self.conv, self.filters, 3, self.strides, 'conv1')(x)
      y = nn.relu(self.norm(name='bn1')(y, use_running_average=not train))
    y = _conv(self.conv, self.filters, 3, 1, 'conv2')(y)
    # gamma = 0: the residual branch starts at zero (block = identity).
    y = self.norm(name='bn2', scale_init=nn.initializers.zeros)(
        y, use_running_average=not train)
    return nn.relu(y + shortcut)


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 (stride; SK when sk_ratio > 0) -> 1x1 x4, stride on the 3x3."""
  filters: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  sk_ratio: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out_features = 4 * self.filters
    shortcut = x
    if _needs_projection(x, out_features, self.strides):
      shortcut = Shortcut(out_features, self.strides, self.sk_ratio > 0,
                          self.conv, self.norm, name='shortcut')(x, train)
    y = _conv(self.conv, self.filters, 1, 1, 'conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y, use_running_average=not train))
    if self.sk_ratio > 0:
      y = SelectiveKernel(self.filters, self.strides, self.sk_ratio, self.conv,
                          self.norm, name='sk')(y, train)
    else:
      y = _conv(self.conv, self.filters, 3, self.strides, 'conv2')(y)
      y = nn.relu(self.norm(name='bn2')(y, use_running_average=not train))
    y = _conv(self.conv, out_features, 1, 1, 'conv3')(y)
    y = self.norm(name='bn3', scale_init=nn.initializers.zeros)(
        y, use_running_average=not train)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """ResNet v1 encoder; `__call__(x, train)` -> h [N, D] (float32).

  D = feature_width(...) with pool='avg'; with pool='flatten' D = H*W*C of
  the last feature map, which depends on the input size.

  Stage i has `base_width * 2**i * width_multiplier` filters (x4 out for
  bottlenecks); stage 0 has stride 1, the others stride 2. `dtype` is the
  compute dtype of convs and BN (params and BN statistics stay float32).
  `conv_cls` builds every convolution, called as nn.Conv is (features,
  kernel_size, strides, padding=explicit pairs or 'VALID', use_bias,
  dtype, param_dtype, kernel_init, name), so a faster convolution can be
  swapped in without touching the architecture.
  """
  stage_sizes: Sequence[int]
  block: str = 'bottleneck'
  base_width: int = 64
  width_multiplier: int = 1
  stem: str = 'imagenet'
  # CIFAR stem only: 2 halves every feature map (4x fewer FLOPs), a CPU-budget
  # deviation from the recipe's 3x3/1 stem used by configs/fashion_mnist.py.
  stem_stride: int = 1
  sk_ratio: float = 0.0
  pool: str = 'avg'
  stem_pool: str = 'same'
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  conv_cls: Callable[..., nn.Module] = nn.Conv

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.block not in BLOCKS:
      raise ValueError(f'ResNet block={self.block!r}; choose one of {BLOCKS}.')
    if self.stem not in STEMS:
      raise ValueError(f'ResNet stem={self.stem!r}; choose one of {STEMS}.')
    if self.pool not in POOLS:
      raise ValueError(f'ResNet pool={self.pool!r}; choose one of {POOLS}.')
    if self.stem_pool not in STEM_POOLS:
      raise ValueError(f'ResNet stem_pool={self.stem_pool!r}; choose one of {STEM_POOLS}.')
    conv = functools.partial(self.conv_cls, use_bias=False, dtype=self.dtype,
                             param_dtype=jnp.float32, kernel_init=conv_kernel_init)
    norm = functools.partial(BatchNorm, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon, dtype=self.dtype,
                             param_dtype=jnp.float32)
    bn_relu = lambda name, y: nn.relu(norm(name=name)(y, use_running_average=not train))
    width = self.base_width * self.width_multiplier
    x = x.astype(self.dtype)

    if self.stem == 'cifar':
      x = _conv(conv, width, 3, self.stem_stride, 'stem_conv')(x)
      x = bn_relu('stem_bn', x)
    else:
      if self.sk_ratio > 0:
        # ResNet-D deep stem: three 3x3 convs (w/2, w/2, w) replace the 7x7.
        x = _conv(conv, width // 2, 3, 2, 'stem_conv1')(x)
        x = bn_relu('stem_bn1', x)
        x = _conv(conv, width // 2, 3, 1, 'stem_conv2')(x)
        x = bn_relu('stem_bn2', x)
        x = _conv(conv, width, 3, 1, 'stem_conv3')(x)
        x = bn_relu('stem_bn3', x)
      else:
        x = _conv(conv, width, 7, 2, 'stem_conv')(x)
        x = bn_relu('stem_bn', x)
      # TF 'SAME' max-pool (pads at the end for even sizes), padding is -inf;
      # stem_pool='torch': torchvision's 1 on each side.
      x = nn.max_pool(x, (3, 3), (2, 2),
                      padding='SAME' if self.stem_pool == 'same' else ((1, 1), (1, 1)))

    block_cls = BottleneckBlock if self.block == 'bottleneck' else BasicBlock
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = block_cls(
            filters=width * 2 ** i,
            strides=2 if (i > 0 and j == 0) else 1,
            conv=conv, norm=norm, sk_ratio=self.sk_ratio,
            name=f'stage{i + 1}_block{j + 1}')(x, train)
    # Pool in float32 so a bf16 network still gives an accurate h.
    x = x.astype(jnp.float32)
    if self.pool == 'flatten':
      return x.reshape(x.shape[0], -1)
    return jnp.mean(x, axis=(1, 2))


def resnet_from_depth(depth: int, **kwargs: Any) -> ResNet:
  if depth not in DEPTHS:
    raise ValueError(f'ResNet depth={depth}; choose one of {sorted(DEPTHS)}.')
  stage_sizes, block = DEPTHS[depth]
  return ResNet(stage_sizes=stage_sizes, block=block, **kwargs)


# ---------------------------------------------------------------------------
# The 'resnet' encoder plug-in: config.model.name = 'resnet', keys in config.model.resnet.

def resnet_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      depth=50,                    # 18, 34, 50, 101, 152, 200 | 0 = use stage_sizes
      stage_sizes=(),              # e.g. (1, 1, 1) for a tiny test net; overrides depth
      block='',                    # 'basic' | 'bottleneck' | '' = from depth
      base_width=64,               # channels of the first stage before width_multiplier
      width_multiplier=1,
      stem='imagenet',             # 'imagenet' (7x7/2 + pool) | 'cifar' (3x3/1)
      stem_stride=1,               # cifar stem: 2 = 3x3/2 (4x cheaper; CPU budgets)
      sk_ratio=0.0,                # SimCLR v2 selective kernels, e.g. 0.0625
      pool='avg',                  # h from the last map: 'avg' (global, SimCLR) |
                                   # 'flatten' (keeps position; small centred images)
      stem_pool='same',            # imagenet stem max-pool padding: 'same' (TF) |
                                   # 'torch' (torchvision's; set by interop imports)
  ))


ARCH_KEYS = ('depth', 'stage_sizes', 'block', 'base_width', 'width_multiplier', 'stem',
             'stem_stride', 'sk_ratio', 'pool', 'stem_pool')


def resolve_architecture(cfg: ml_collections.ConfigDict) -> tuple[tuple[int, ...], str]:
  """(stage_sizes, block) from depth / stage_sizes / block of config.model.resnet."""
  depth, block = cfg.depth, cfg.block
  stage_sizes = tuple(int(n) for n in cfg.stage_sizes)
  if depth and depth not in DEPTHS:
    raise ValueError(f'config.model.resnet.depth={depth} is not valid; choose one of '
                     f'{[0] + sorted(DEPTHS)}.')
  if not stage_sizes:
    if not depth:
      raise ValueError('config.model.resnet.depth=0 needs config.model.resnet.stage_sizes, '
                       'e.g. --config.model.resnet.stage_sizes="(1, 1)".')
    stage_sizes = DEPTHS[depth][0]
  if not block:
    if not depth:
      raise ValueError("config.model.resnet.depth=0 needs config.model.resnet.block "
                       "('basic' | 'bottleneck').")
    block = DEPTHS[depth][1]
  if block not in BLOCKS:
    raise ValueError(f"config.model.resnet.block={block!r}; choose 'basic' or 'bottleneck'.")
  return stage_sizes, block


def _validate(cfg: ml_collections.ConfigDict) -> None:
  resolve_architecture(cfg)
  for key, valid in (('stem', STEMS), ('pool', POOLS), ('stem_stride', (1, 2)),
                     ('stem_pool', STEM_POOLS)):
    value = cfg.get(key, 'same') if key == 'stem_pool' else cfg[key]
    if value not in valid:
      raise ValueError(f'config.model.resnet.{key}={value!r} is not valid; choose one of '
                       f'{valid}.')


def _build(model_cfg: ml_collections.ConfigDict, conv_cls: Any) -> ResNet:
  cfg = encoders.section(model_cfg)
  stage_sizes, block = resolve_architecture(cfg)
  return ResNet(
      stage_sizes=stage_sizes, block=block, base_width=cfg.base_width,
      width_multiplier=cfg.width_multiplier, stem=cfg.stem, stem_stride=cfg.stem_stride,
      sk_ratio=cfg.sk_ratio, pool=cfg.pool, stem_pool=cfg.get('stem_pool', 'same'),
      dtype=encoders.compute_dtype(model_cfg),
      bn_momentum=model_cfg.bn_momentum, bn_epsilon=model_cfg.bn_epsilon,
      conv_cls=conv_cls)


_STAGE = re.compile(r'stage(\d+)_')


def _freeze_level(name: str) -> int | None:
  """0 for the stem's modules, k for stage k's blocks."""
  if name.startswith('stem'):
    return 0
  match = _STAGE.match(name)
  return int(match.group(1)) if match else None


def _width(model_cfg: ml_collections.ConfigDict) -> int | None:
  cfg = encoders.section(model_cfg)
  if cfg.pool != 'avg':
    return None  # 'flatten': the last map's H x W x C, known from the input only
  stage_sizes, block = resolve_architecture(cfg)
  return feature_width(stage_sizes, block, cfg.base_width, cfg.width_multiplier)


encoders.ENCODERS.register(encoders.EncoderSpec(
    name='resnet', defaults=resnet_defaults, build=_build, freeze_level=_freeze_level,
    freeze_all=4, arch_keys=ARCH_KEYS, validate=_validate, width=_width))
