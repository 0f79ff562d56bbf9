"""Whole-step SimCLR pretraining throughput on the current JAX backend.

  python benchmarks/throughput.py --model resnet18 --image-size 32 --batch 256 \
      --dtype float32 --steps 10 [--conv auto|xla|fast|onednn] [--torch both] \
      [--out results.jsonl]
  python benchmarks/throughput.py --quick        # seconds: CI's smoke check

Times, on synthetic uint8 images (no dataset, never TensorFlow):

  project   contrastive_jax.train.make_pretrain_step: on-device augmentation
            (2 SimCLR views per image) + ResNet forward/backward + projection
            head + NT-Xent under shard_map + online probe + LARS, one jit over
            the 'data' mesh (all devices of the backend unless --devices).
  naive     the same work written the obvious way in this file: a plain Flax
            linen ResNet (nn.Conv, 'SAME' padding), 2-layer head, NT-Xent on
            the full [2N, 2N] logits, optax.lars with no masks, one jax.jit on
            one device, no probe. Its input is the project's own augmentation
            (augment.pretrain_views) unless --naive-augment none, so by default
            the ratio compares everything but the augmentation.
  torch     with --torch: the same step in PyTorch + lightly, the framework
            the issue's target names (benchmarks/torch_reference.py; eager,
            torchvision ResNet, lightly's head, loss, LARS and SimCLRTransform
            on the host, so its augmentation is in its step too), in
            PyTorch's default layout and/or channels_last. Optional: needs
            `pip install torch torchvision lightly`.
  augment   the project's augmentation alone (train.make_view_fn), to give its
            share of the project step.
  matmul    a large jnp.dot in the compute dtype, a burst of calls per round
            of steps: the device's measured matmul rate (best call), the
            denominator of MFU (model FLOP utilisation).

Step time: median of --steps steps (each ended by block_until_ready) after
compilation and --warmup steps. The project and naive steps and the matmul
take turns (project, naive, matmul, project, ...) in one process, so the
ratio and MFU compare the same minutes of a shared machine. On a one-device
CPU the project step's convolutions are oneDNN's (--conv auto; NOTES.md idea
43), else cpu_conv's. The project step
alone gets the binaries' XLA:CPU setting (Eigen convolutions), as compiler
options of its own compilation (xla_cpu.compiler_options(): the same
optimised HLO as the binaries' XLA_FLAGS, checked in tests/test_xla_cpu.py);
the naive step compiles with stock XLA. images/s counts source images (each
makes 2 views). FLOPs come from XLA's cost analysis of the compiled step
(`compiled.cost_analysis()['flops']`, per device for a sharded program, so
multiplied by the device count); when the compiled module hides convolutions
in custom calls (cuDNN on GPU reports ~0) the unoptimised module's count
(`lowered.cost_analysis()`) is used and the table says so. With a conv other
than nn.Conv (--conv fast) the executable does different arithmetic for the
same network (XLA counts a patches-matmul backward differently), so the model
FLOPs, and hence MFU, come from the same step built with nn.Conv (lowered, not
compiled); the JSON keeps the executable's own count as executed_flops.
Compare --conv variants by images/s.

Each timed step also records the minor page faults and system CPU seconds
of the whole process during the step (getrusage; nothing else runs then).
On CPU they explain much of the run-to-run spread of the ratio: on a 2-core
VM the naive step took 3.3-3.8M faults (13-16 GB of fresh pages zeroed by
the kernel) and 8-13 s of system CPU per 28-32 s step, the project step
~620k and 1-2.5 s; what a fault costs varies with the VM and over hours, and
the naive step's time with it (benchmarks/NOTES.md, idea 42).

--batch is per device: the global batch is batch x devices.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from contrastive_jax import augment, config_defaults, optim, parallel, train
from contrastive_jax.kernels import xla_cpu

# benchmarks/trace_summary.py and provenance.py, also when this file runs by
# path (runpy, tests).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # pylint: disable=g-import-not-at-top,wrong-import-position
import trace_summary  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.models import build_model

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


# ----------------------------------------------------------------------------
# Configuration of the project step.

def model_config(model: str, image_size: int, dtype: str):
  """config.model for --model: depth 18/50 from DEPTHS; 'tiny' = the test net.

  Stem 'cifar' (3x3/1, no pool) for images <= 64 px, else 'imagenet'.
  """
  cfg = config_defaults.model_defaults()
  if model == 'tiny':
    cfg.update(dict(depth=0, stage_sizes=(1, 1), block='basic', base_width=8))
  else:
    cfg.depth = {'resnet18': 18, 'resnet50': 50}[model]
  cfg.stem = 'cifar' if image_size <= 64 else 'imagenet'
  cfg.dtype = dtype
  return cfg


def pretrain_config(args: argparse.Namespace, global_batch: int):
  config = config_defaults.pretrain_defaults()
  config.batch_size = global_batch
  config.model = model_config(args.model, args.image_size, args.dtype)
  if args.image_size <= 64:
    # CIFAR recipe: strength 0.5, no blur (configs/cifar10.py).
    config.augment.jitter_strength = 0.5
    config.augment.blur_prob = 0.0
  else:  # as the ImageNet recipes (configs/imagenet_simclr_v*.py)
    config.augment.blur_prob = 0.5
    if args.dtype == 'bfloat16':
      config.augment.matmul_precision = 'default'
  config.update_from_flattened_dict(parse_overrides(args.set))
  config_defaults.validate(config)
  return config


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
  """['augment.matmul_precision=default', 'optim.lr=0.3'] -> a flattened dict.

  Values are Python literals where they parse as one (0.3, 2, True), else
  strings; the config's own type checks apply when they are set.
  """
  out = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep or not key:
      raise ValueError(f'--set {item!r}: expected KEY=VALUE, e.g. '
                       '--set augment.matmul_precision=default')
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


# ----------------------------------------------------------------------------
# Conv class selection (the fast CPU conv is optional: another module's work).

def resolve_conv(choice: str) -> tuple[Any, str]:
  """(conv_cls, label) for --conv.

  xla: flax nn.Conv (XLA's convolution and its autodiff).
  fast: the CPU-fast conv of contrastive_jax.models.cpu_conv, on any backend.
  onednn: models/onednn_conv.py's Conv (oneDNN through JAX's FFI; CPU only).
  auto: cpu_conv.conv_cls_for_backend('auto') when that module exists (on
    the CPU backend oneDNN's conv with one device, else the fast conv), else
    nn.Conv.
  """
  if choice == 'xla':
    return nn.Conv, 'xla: nn.Conv'
  try:
    from contrastive_jax.kernels import backend, cpu_conv  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    if choice == 'fast':
      raise SystemExit(f'--conv fast: contrastive_jax.models.cpu_conv is not available '
                       f'({e}); use --conv xla or auto.') from e
    return nn.Conv, 'auto: nn.Conv (cpu_conv not available)'
  policy = getattr(backend, 'conv_cls_for_backend', None)
  cls = None
  if policy is not None:
    try:
      cls = policy(choice)  # conv_cls_for_backend(policy='auto'|'fast'|'xla')
    except (TypeError, ValueError):
      if choice == 'auto' or jax.default_backend() == 'cpu':
        cls = policy()
  if choice == 'fast' and (cls is None or cls is nn.Conv):
    cls = getattr(cpu_conv, 'CpuConv', None) or getattr(cpu_conv, 'Conv', None)
    if cls is None:
      raise SystemExit('--conv fast: found no CpuConv/Conv class in '
                       'contrastive_jax.models.cpu_conv.')
  if cls is None:
    return nn.Conv, 'auto: nn.Conv (cpu_conv has no conv_cls_for_backend)'
  return cls, f'{choice}: {_name(cls)}'


def _name(cls: Any) -> str:
  if cls is nn.Conv:
    return 'nn.Conv'
  if isinstance(cls, functools.partial):
    return _name(cls.func)
  module = getattr(cls, '__module__', '').rsplit('.', 1)[-1]
  return f"{module}.{getattr(cls, '__qualname__', repr(cls))}"


# ----------------------------------------------------------------------------
# The naive baseline: a plain single-jit SimCLR step.

class NaiveBlock(nn.Module):
  filters: int
  strides: int
  bottleneck: bool
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             dtype=self.dtype)
    s = (self.strides, self.strides)
    if self.bottleneck:
      out = 4 * self.filters
      y = nn.relu(norm()(conv(self.filters, (1, 1))(x)))
      y = nn.relu(norm()(conv(self.filters, (3, 3), s)(y)))
      y = norm(scale_init=nn.initializers.zeros)(conv(out, (1, 1))(y))
    else:
      out = self.filters
      y = nn.relu(norm()(conv(self.filters, (3, 3), s)(x)))
      y = norm(scale_init=nn.initializers.zeros)(conv(self.filters, (3, 3))(y))
    if x.shape != y.shape:
      x = norm()(conv(out, (1, 1), s)(x))
    return nn.relu(x + y)


class NaiveSimCLR(nn.Module):
  stage_sizes: Sequence[int]
  bottleneck: bool
  width: int
  cifar_stem: bool
  dtype: Any = jnp.float32
  proj_dim: int = 128

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             dtype=self.dtype)
    x = x.astype(self.dtype)
    if self.cifar_stem:
      x = nn.relu(norm()(nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype)(x)))
    else:
      x = nn.Conv(self.width, (7, 7), (2, 2), use_bias=False, dtype=self.dtype)(x)
      x = nn.max_pool(nn.relu(norm()(x)), (3, 3), (2, 2), padding='SAME')
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        x = NaiveBlock(self.width * 2 ** i, 2 if i > 0 and j == 0 else 1,
                       self.bottleneck, self.dtype)(x, train)
    h = jnp.mean(x, axis=(1, 2))
    z = nn.relu(norm()(nn.Dense(h.shape[-1], use_bias=False, dtype=self.dtype)(h)))
    z = norm()(nn.Dense(self.proj_dim, use_bias=False, dtype=self.dtype)(z))
    return z.astype(jnp.float32)


def naive_nt_xent(z1, z2, temperature: float):
  z = jnp.concatenate([z1, z2], 0)
  z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
  n = z1.shape[0]
  logits = z @ z.T / temperature - 1e9 * jnp.eye(2 * n)
  positives = jnp.concatenate([jnp.arange(n) + n, jnp.arange(n)])
  return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[jnp.arange(2 * n), positives])


def make_naive(config, args: argparse.Namespace, out_size: int, image_shape):
  """(jitted step, initial state) of the naive baseline."""
  from contrastive_jax.models import resolve_architecture  # pylint: disable=g-import-not-at-top
  stage_sizes, block = resolve_architecture(config.model)
  model = NaiveSimCLR(stage_sizes=stage_sizes, bottleneck=block == 'bottleneck',
                      width=config.model.base_width,
                      cifar_stem=config.model.stem == 'cifar',
                      dtype=_DTYPES[args.dtype], proj_dim=config.model.proj_dim)
  tx = optax.lars(0.3 * config.batch_size / 256, weight_decay=1e-6, momentum=0.9)
  variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0),
                                         jnp.zeros((2, out_size, out_size, image_shape[-1])),
                                         train=False))()
  state = (jnp.zeros((), jnp.int32), variables['params'], variables['batch_stats'],
           tx.init(variables['params']))

  def step(state, batch):
    step_, params, batch_stats, opt_state = state
    if args.naive_augment == 'project':
      views = augment.pretrain_views(config.seed, step_, batch['index'], batch['image'],
                                     config.augment, out_size)
      x = jnp.concatenate([views[0], views[1]], 0)
    else:
      x = augment.to_float(batch['image'])
      if x.shape[1] != out_size:
        x = jax.image.resize(x, (x.shape[0], out_size, out_size, x.shape[-1]), 'bilinear')
      x = jnp.concatenate([x, x[:, :, ::-1]], 0)  # 2 "views": identity and a flip

    def loss_fn(params):
      z, mutated = model.apply({'params': params, 'batch_stats': batch_stats}, x,
                               train=True, mutable=['batch_stats'])
      z1, z2 = jnp.split(z, 2)
      return naive_nt_xent(z1, z2, config.temperature), mutated['batch_stats']

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (step_ + 1, params, batch_stats, opt_state), loss

  return jax.jit(step, donate_argnums=0), state


# ----------------------------------------------------------------------------
# Measurement helpers.

@dataclasses.dataclass
class Timing:
  name: str
  compile_s: float = math.nan
  step_s: float = math.nan             # median
  step_min_s: float = math.nan
  step_max_s: float = math.nan
  flops: float = math.nan              # per call, global: model FLOPs (MFU numerator)
  flops_source: str = ''
  steps: int = 0
  executed_flops: float = math.nan     # this executable's own count (other conv: differs)
  # Process-wide, median per step (CPU: what the kernel did for the step).
  page_faults: float = math.nan        # minor page faults (first touch of fresh memory)
  system_s: float = math.nan           # system CPU seconds, summed over threads


def _cost_flops(obj: Any) -> float:
  try:
    cost = obj.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return math.nan
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', math.nan))


def compile_timed(jitted, *example_args, num_devices: int,
                  compiler_options: Optional[dict[str, str]] = None
                  ) -> tuple[Any, float, float, str]:
  """(compiled, compile seconds, global FLOPs per call, where the FLOPs came from)."""
  t0 = time.perf_counter()
  lowered = jitted.lower(*example_args)
  compiled = lowered.compile(compiler_options) if compiler_options else lowered.compile()
  compile_s = time.perf_counter() - t0
  # Compiled (optimised, SPMD-partitioned: per device) module's count.
  flops = _cost_flops(compiled) * num_devices
  source = 'compiled' + (f' x {num_devices} devices' if num_devices > 1 else '')
  unopt = _cost_flops(lowered)  # whole program before partitioning and fusion
  if not flops > 0 or (unopt > 0 and flops < 0.5 * unopt):
    # e.g. GPU: convolutions become cuDNN custom calls that count ~0 FLOPs.
    flops, source = unopt, 'lowered (unoptimised HLO)'
  return compiled, compile_s, flops, source


def model_flops_on_cpu(config, args: argparse.Namespace, tx, schedule, image_shape,
                       global_batch: int) -> tuple[float, str]:
  """Global FLOPs of the project step built with nn.Conv, from its unoptimised
  HLO lowered for one CPU device (nothing is compiled or run)."""
  mesh = parallel.make_mesh(jax.devices('cpu')[:1])
  batch = synthetic_batch(global_batch, args.source_size, args.channels, args.probe_classes,
                          mesh)
  model = build_model(config.model, num_classes=args.probe_classes, conv_cls=nn.Conv)
  abstract = jax.eval_shape(lambda: train.init_state(
      model, tx, seed=config.seed, image_shape=image_shape, mesh=mesh))
  step_fn = train.make_pretrain_step(model, tx, schedule, config, mesh, image_shape[0])
  return (_cost_flops(step_fn.lower(abstract, batch)),
          'nn.Conv step lowered for CPU (unoptimised HLO)')


def time_calls(fn: Callable[[], Any], steps: int, warmup: int) -> list[float]:
  return time_interleaved([fn], steps, warmup)[0]


def process_usage() -> tuple[float, float]:
  """(minor page faults, system CPU seconds) of this process so far; NaNs
  where the platform has no getrusage (Windows)."""
  try:
    import resource  # pylint: disable=g-import-not-at-top  (POSIX only)
  except ImportError:
    return math.nan, math.nan
  ru = resource.getrusage(resource.RUSAGE_SELF)
  return float(ru.ru_minflt), ru.ru_stime


def time_interleaved(fns: Sequence[Callable[[], Any]], steps: int, warmup: int,
                     usage: Optional[list[list[tuple[float, float]]]] = None
                     ) -> list[list[float]]:
  """Seconds per call of each fn, calling them in turn (f0, f1, f0, f1, ...).

  Taking turns makes the times of the functions paired: a shared machine's
  slow minute slows both, so their ratio holds when their absolute times
  drift (separate runs minutes apart differed by up to ~10% on a 2-core VM).
  With `usage` (one list per fn), each timed call also appends its
  (minor page faults, system CPU seconds) from process_usage().
  """
  for _ in range(warmup):
    for fn in fns:
      jax.block_until_ready(fn())
  times = [[] for _ in fns]
  for _ in range(steps):
    for i, (fn, ts) in enumerate(zip(fns, times)):
      u0 = process_usage() if usage is not None else None
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      ts.append(time.perf_counter() - t0)
      if u0 is not None:
        u1 = process_usage()
        usage[i].append((u1[0] - u0[0], u1[1] - u0[1]))
  return times


def usage_medians(samples: Sequence[tuple[float, float]]) -> dict[str, float]:
  """Timing fields page_faults and system_s: medians over the timed calls."""
  if not samples:
    return {}
  return dict(page_faults=statistics.median(s[0] for s in samples),
              system_s=statistics.median(s[1] for s in samples))


def matmul_burst(dtype: Any, size: int, calls: int
                 ) -> tuple[Callable[[], None], dict[str, list[float]], float]:
  """(burst, seconds per form, FLOPs per call) for a size^3 matmul in `dtype`.

  Each burst() makes `calls` back-to-back calls of each form and appends the
  form's fastest to its list. A single call straight after a long step ran at
  about half the rate of warm repeated calls (cold threads and caches), which
  would inflate MFU; the best of a burst is the device's rate at that moment.

  Below float32 two forms are timed: the dtype's own output (`jnp.dot`) and
  float32 output (`preferred_element_type`, what the project's CPU weight
  gradient asks for). The peak is the faster of the two (fastest_per_burst),
  whichever the backend prefers: XLA:CPU on a CPU with AVX512-BF16 ran bf16 x
  bf16 -> f32 at 1.9x the float32 rate but bf16 -> bf16 at about the float32
  rate (2026-12-03, benchmarks/NOTES.md idea 37), which made bfloat16 MFU read
  2x too high while only the first form was timed.
  """
  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(key_a, (size, size), jnp.float32).astype(dtype)
  b = jax.random.normal(key_b, (size, size), jnp.float32).astype(dtype)
  forms = {f'{jnp.dtype(dtype).name} out': jnp.dot}
  if jnp.dtype(dtype) != jnp.float32:
    forms['float32 out'] = functools.partial(jnp.dot, preferred_element_type=jnp.float32)
  compiled = {name: jax.jit(fn).lower(a, b).compile() for name, fn in forms.items()}
  seconds: dict[str, list[float]] = {name: [] for name in compiled}

  def burst() -> None:
    for name, dot in compiled.items():
      seconds[name].append(min(time_calls(lambda dot=dot: dot(a, b), calls, warmup=0)))
  return burst, seconds, 2.0 * size ** 3


def fastest_per_burst(seconds: dict[str, list[float]]) -> list[float]:
  """Per burst, the time of its fastest form: the device's matmul peak then."""
  return [min(ts) for ts in zip(*seconds.values())]


def synthetic_batch(global_batch: int, source_size: int, channels: int,
                    num_classes: int, mesh) -> dict[str, jax.Array]:
  rng = np.random.default_rng(0)
  local = dict(
      image=rng.integers(0, 256, (global_batch, source_size, source_size, channels),
                         dtype=np.uint8),
      label=rng.integers(0, max(num_classes, 1), (global_batch,), dtype=np.int32),
      index=np.arange(global_batch, dtype=np.int32))
  return parallel.global_batch(local, mesh)


def environment() -> dict[str, Any]:
  dev = jax.devices()[0]
  return dict(
      date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
      backend=jax.default_backend(), device_kind=dev.device_kind,
      num_devices=jax.device_count(), host=platform.node(), cpu_count=os.cpu_count(),
      loadavg=os.getloadavg()[0] if hasattr(os, 'getloadavg') else math.nan,
      python=platform.python_version(), jax=jax.__version__,
      jaxlib=_jaxlib_version(),
      flax=flax.__version__, optax=optax.__version__, numpy=np.__version__,
      commit=provenance.git_commit())


def _jaxlib_version() -> str:
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
    return jaxlib.__version__
  except Exception:  # pylint: disable=broad-except
    return 'unknown'


# ----------------------------------------------------------------------------
# Main.

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', choices=('resnet18', 'resnet50', 'tiny'), default='resnet18')
  p.add_argument('--image-size', type=int, default=32, help='network input side (px)')
  p.add_argument('--source-size', type=int, default=0,
                 help='side of the synthetic uint8 source images; 0 = image size for '
                      '<= 64 px, else 8/7 x (256 for 224: a crop from a 256 px image)')
  p.add_argument('--channels', type=int, default=3, choices=(1, 3))
  p.add_argument('--batch', type=int, default=256,
                 help='source images per device (global = batch x devices); 2 views each')
  p.add_argument('--devices', type=int, default=0, help='use the first N devices; 0 = all')
  p.add_argument('--dtype', choices=tuple(_DTYPES), default='float32', help='compute dtype')
  p.add_argument('--steps', type=int, default=10, help='timed steps (median; >= 10)')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps after compiling')
  p.add_argument('--conv', choices=('auto', 'xla', 'fast', 'onednn'), default='auto',
                 help="project step's convolution: auto = oneDNN on a one-device CPU "
                      '(models/onednn_conv.py) when available, else fast; fast = '
                      'models/cpu_conv.py; xla = nn.Conv')
  p.add_argument('--probe-classes', type=int, default=10,
                 help='online linear probe classes in the project step (0 = no probe)')
  p.add_argument('--naive', choices=('yes', 'no'), default='yes',
                 help='also time the naive single-jit baseline')
  p.add_argument('--naive-augment', choices=('project', 'none'), default='project',
                 help="naive baseline input: the project's augmentation, or none "
                      '(the image and its flip)')
  p.add_argument('--torch', choices=('none', 'nchw', 'channels_last', 'both'),
                 default='none',
                 help='also time the step in PyTorch + lightly (benchmarks/'
                      'torch_reference.py), in the default NCHW layout, '
                      'channels_last, or both')
  p.add_argument('--augment-ablation', action='store_true',
                 help='also time the augmentation with ops added one at a time '
                      '(crop+flip, its resize at default precision, + jitter, ...)')
  p.add_argument('--matmul-size', type=int, default=0,
                 help='side of the matmul that measures the peak rate; 0 = 2048 on CPU, '
                      '8192 on accelerators')
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='pretraining config override (repeatable), e.g. '
                      '--set augment.matmul_precision=default')
  p.add_argument('--profile-augment', default='', metavar='DIR',
                 help='trace 5 calls of the augmentation alone into DIR (JAX '
                      'profiler, perfetto JSON), save its optimised HLO there and '
                      'print device time per kernel (benchmarks/trace_summary.py)')
  p.add_argument('--note', default='', help='free text stored with the result '
                                            "(e.g. 'noisy: 2 shared cores')")
  p.add_argument('--out', default='', help='append one JSON line with every number here')
  p.add_argument('--quick', action='store_true',
                 help='CI smoke run: tiny net, 16 px, batch 4, 2 steps, 256 matmul')
  args = p.parse_args(argv)
  if args.quick:
    args.model, args.image_size, args.batch = 'tiny', 16, 4
    args.steps, args.warmup = 2, 1
    args.matmul_size = args.matmul_size or 256
  elif args.steps < 10:
    p.error('--steps must be >= 10 (the median of at least 10 steps); --quick for less')
  if not args.source_size:
    args.source_size = (args.image_size if args.image_size <= 64
                        else int(round(args.image_size * 8 / 7)))
  return args


# Cumulative augmentation variants (--augment-ablation): each op's cost is the
# difference to the row above, measured where the whole-augmentation share is
# in question (the GPU). Probabilities set to 0 compile the op out; the others
# are the ImageNet recipe's (jitter 0.8, grayscale 0.2, blur 0.5), whatever the
# benchmarked config uses. The crop's resampling precision is the config's
# except where a row names it; '+ blur' is gpu.sh's whole augmentation.
_NO_OPS = dict(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
_ALL_OPS = dict(jitter_prob=0.8, grayscale_prob=0.2, blur_prob=0.5, solarize_prob=0.0)
AUGMENT_ABLATION: tuple[tuple[str, dict[str, Any]], ...] = (
    ('aug: crop+flip, matmul_precision=highest', _NO_OPS | dict(matmul_precision='highest')),
    ('aug: crop+flip, matmul_precision=default', _NO_OPS | dict(matmul_precision='default')),
    ('aug: crop+flip (config) + jitter', _NO_OPS | dict(jitter_prob=0.8)),
    ('aug: + jitter + grayscale', _NO_OPS | dict(jitter_prob=0.8, grayscale_prob=0.2)),
    ('aug: + jitter + grayscale + blur', _ALL_OPS),
    ('aug: all, matmul_precision=highest', _ALL_OPS | dict(matmul_precision='highest')),
)


def time_augment(name: str, aug_cfg: Any, config: Any, batch: dict[str, jax.Array],
                 out_size: int, args: argparse.Namespace, num_devices: int
                 ) -> tuple['Timing', Callable[[], Any], Any]:
  """Compiles and times the two-view augmentation of `batch` under aug_cfg;
  also returns the timed call and the compiled executable."""
  view_cfg = config.copy_and_resolve_references()
  view_cfg.augment = aug_cfg
  compiled, compile_s, flops, src = compile_timed(
      train.make_view_fn(view_cfg, out_size), jnp.zeros((), jnp.int32), batch,
      num_devices=num_devices)
  counter = [0]

  def call():
    counter[0] += 1
    return compiled(jnp.asarray(counter[0], jnp.int32), batch)
  times = time_calls(call, args.steps, args.warmup)
  return Timing(name, compile_s, statistics.median(times), min(times), max(times), flops,
                src, len(times)), call, compiled


def profile_calls(call: Callable[[], Any], compiled: Any, trace_dir: str,
                  calls: int = 5) -> dict[str, Any]:
  """Traces `calls` calls (already compiled and warm) into trace_dir, with the
  executable's optimised HLO beside it (fusion names -> ops), and returns
  trace_summary.summarise of the trace."""
  os.makedirs(trace_dir, exist_ok=True)
  with open(os.path.join(trace_dir, 'augment_hlo.txt'), 'w', encoding='utf-8') as f:
    f.write(compiled.as_text())
  jax.block_until_ready(call())
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(calls):
      jax.block_until_ready(call())
  summary = trace_summary.summarise(trace_summary.latest_trace(trace_dir))
  summary['calls'] = calls
  return summary


def run(args: argparse.Namespace) -> dict[str, Any]:
  devices = jax.devices()[:args.devices] if args.devices else jax.devices()
  mesh = parallel.make_mesh(devices)
  num_devices = len(devices)
  global_batch = args.batch * num_devices
  config = pretrain_config(args, global_batch)
  out_size = args.image_size
  image_shape = (out_size, out_size, args.channels)
  env = environment()
  backend = env['backend']

  # --- project step. Its XLA:CPU setting (Eigen convolutions, as the binaries
  # set in XLA_FLAGS) is given to this compilation only, so the naive step in
  # the same process compiles with stock XLA (xla_cpu.compiler_options).
  conv_cls, conv_label = resolve_conv(args.conv)
  project_options = xla_cpu.compiler_options(backend) if args.conv != 'xla' else {}
  model = build_model(config.model, num_classes=args.probe_classes, conv_cls=conv_cls)
  total_steps = 1000
  tx, schedule = optim.build_optimizer(config.optim, batch_size=global_batch,
                                       total_steps=total_steps, warmup_steps=10)
  state = train.init_state(model, tx, seed=config.seed, image_shape=image_shape, mesh=mesh)
  batch = synthetic_batch(global_batch, args.source_size, args.channels,
                          args.probe_classes, mesh)
  step_fn = train.make_pretrain_step(model, tx, schedule, config, mesh, out_size)
  compiled, compile_s, flops, flops_src = compile_timed(step_fn, state, batch,
                                                        num_devices=num_devices,
                                                        compiler_options=project_options)
  executed_flops = flops
  if conv_cls is not nn.Conv or backend != 'cpu':
    # Model FLOPs are those of the network, not of an implementation: a conv
    # whose backward is a patches matmul is counted differently by XLA, and
    # GPU cost analyses leave cuDNN convolutions out (even before
    # optimisation: 1.3 of ~49 GFLOP per ResNet-50 image on jax 0.11). Take
    # them from the same step built with nn.Conv, lowered (not compiled) for
    # one CPU device.
    flops, flops_src = model_flops_on_cpu(config, args, tx, schedule, image_shape,
                                          global_batch)
  holder = [state]
  del state

  def project_call():
    holder[0], metrics = compiled(holder[0], batch)
    return holder[0], metrics

  # --- naive baseline (one device, no sharding; stock XLA options).
  calls = [project_call]
  if args.naive == 'yes':
    naive_step, naive_state = make_naive(config, args, out_size, image_shape)
    dev0 = devices[0]
    naive_batch = jax.device_put(jax.device_get(batch), dev0)
    naive_state = jax.device_put(naive_state, dev0)
    n_compiled, n_compile_s, n_flops, n_src = compile_timed(
        naive_step, naive_state, naive_batch, num_devices=1)
    n_holder = [naive_state]
    del naive_state

    def naive_call():
      n_holder[0], loss_ = n_compiled(n_holder[0], naive_batch)
      return n_holder[0], loss_
    calls.append(naive_call)

  # --- PyTorch + lightly (optional): the same images, network and recipe,
  # eager, host augmentation inside its step.
  torch_steps = []
  if args.torch != 'none':
    import torch_reference  # pylint: disable=g-import-not-at-top  (optional torch)
    formats = (('channels_first', 'channels_last') if args.torch == 'both' else
               ('channels_last',) if args.torch == 'channels_last' else ('channels_first',))
    images = np.asarray(jax.device_get(batch['image']))
    for fmt in formats:
      torch_steps.append(torch_reference.make_step(
          images, model=args.model, image_size=out_size, temperature=config.temperature,
          lr=0.3 * global_batch / 256, jitter_strength=config.augment.jitter_strength,
          blur_prob=config.augment.blur_prob, min_scale=config.augment.crop_area_min,
          memory_format=fmt, seed=config.seed))
      calls.append(torch_steps[-1].step)
    env.update(torch_reference.versions())

  # --- matmul rate in the compute dtype (MFU's denominator): a burst of
  # matmuls per round of steps, the rate of the same minutes as the steps.
  size = args.matmul_size or (2048 if backend == 'cpu' else 8192)
  burst, mm_form_times, matmul_flops = matmul_burst(
      _DTYPES[args.dtype], size, calls=5 if backend == 'cpu' else 20)

  # --- timing: the steps and the matmul bursts take turns (time_interleaved),
  # so the ratio and MFU are measured on the same minutes of the machine.
  usage: list[list[tuple[float, float]]] = [[] for _ in range(len(calls) + 1)]
  times = time_interleaved(calls + [burst], args.steps, args.warmup, usage=usage)
  times.pop()  # the bursts' own wall times; mm_form_times has each burst's best call
  # Warm-up rounds dropped.
  mm_form_times = {name: ts[-args.steps:] for name, ts in mm_form_times.items()}
  mm_times = fastest_per_burst(mm_form_times)
  mm_best, mm_median = matmul_flops / min(mm_times), matmul_flops / statistics.median(mm_times)
  loss = float(jax.device_get(project_call()[1]['loss']))
  project = Timing('project', compile_s, statistics.median(times[0]), min(times[0]),
                   max(times[0]), flops, flops_src, len(times[0]), executed_flops,
                   **usage_medians(usage[0]))
  holder.clear()  # frees the states before the next compiles
  naive = None
  naive_loss = math.nan
  pair_ratios: list[float] = []
  if args.naive == 'yes':
    naive_loss = float(jax.device_get(naive_call()[1]))
    if backend != 'cpu':  # same network; see model_flops_on_cpu for why
      n_flops, n_src = flops, 'the project step\'s model FLOPs (same network)'
    naive = Timing('naive', n_compile_s, statistics.median(times[1]), min(times[1]),
                   max(times[1]), n_flops, n_src, len(times[1]),
                   **usage_medians(usage[1]))
    pair_ratios = [n / p for p, n in zip(times[0], times[1])]
    n_holder.clear()
  # The torch steps are the last calls; eager, so no compile time. MFU uses
  # the project's model FLOPs: the same network (lightly's head differs by a
  # bias and a BatchNorm, ~0.01% of the FLOPs); none for 'tiny', which torch
  # builds as a different, wider net.
  torch_rows = []
  first_torch = len(calls) - len(torch_steps)
  torch_flops = math.nan if args.model == 'tiny' else flops
  for i, tstep in enumerate(torch_steps, first_torch):
    timing = Timing(tstep.name, math.nan, statistics.median(times[i]), min(times[i]),
                    max(times[i]), torch_flops,
                    "the project step's model FLOPs (same network)", len(times[i]),
                    **usage_medians(usage[i]))
    augment_s = statistics.median(time_calls(tstep.augment, args.steps, warmup=1))
    torch_rows.append(dict(timing=timing, augment_s=augment_s, loss=tstep.step(),
                           pair_ratios=[t / p for p, t in zip(times[0], times[i])]))

  # --- augmentation alone (the project's view function, same sharded batch).
  aug, aug_call, aug_compiled = time_augment('augment', config.augment, config, batch,
                                             out_size, args, num_devices)
  profile = (profile_calls(aug_call, aug_compiled, args.profile_augment)
             if args.profile_augment else None)
  ablation = []
  if args.augment_ablation:
    for name, overrides in AUGMENT_ABLATION:
      cfg = config.augment.copy_and_resolve_references()
      cfg.update(overrides)
      ablation.append(time_augment(name, cfg, config, batch, out_size, args, num_devices)[0])

  result = dict(
      kind='throughput', env=env, note=args.note,
      args={k: v for k, v in vars(args).items()},
      conv=conv_label, project_compiler_options=project_options,
      timing='interleaved' if naive is not None else 'project only',
      global_batch=global_batch, views_per_image=2,
      matmul=dict(dtype=args.dtype, size=size, best_flops_per_s=mm_best,
                  median_flops_per_s=mm_median, bursts=len(mm_times),
                  best_flops_per_s_by_form={name: matmul_flops / min(ts)
                                            for name, ts in mm_form_times.items()}),
      loss_after=dict(project=loss, naive=naive_loss))
  for t in (project, aug, naive, *ablation, *(row['timing'] for row in torch_rows)):
    if t is None:
      continue
    result[t.name] = dataclasses.asdict(t) | dict(
        images_per_s=global_batch / t.step_s,
        flops_per_image=t.flops / global_batch,
        flops_per_s=t.flops / t.step_s,
        mfu=t.flops / t.step_s / mm_best)
  result['augment_share'] = aug.step_s / project.step_s
  if profile is not None:
    result['augment_profile'] = profile
  result['augment_ablation'] = [t.name for t in ablation]
  if naive is not None:
    result['ratio_project_over_naive'] = naive.step_s / project.step_s
    # Step i of each ran back to back: naive_i / project_i per pair.
    result['pair_ratios'] = pair_ratios
  result['torch'] = [row['timing'].name for row in torch_rows]
  for row in torch_rows:
    name = row['timing'].name
    result[name].update(augment_s=row['augment_s'],
                        augment_share=row['augment_s'] / row['timing'].step_s,
                        loss_after=row['loss'])
    result[f'ratio_project_over_{name}'] = row['timing'].step_s / project.step_s
    result[f'pair_ratios_{name}'] = row['pair_ratios']
  return result


def format_table(r: dict[str, Any]) -> str:
  env, a = r['env'], r['args']
  lines = [
      f"# SimCLR step throughput: {a['model']} {a['image_size']} px (source "
      f"{a['source_size']} px, C={a['channels']}), {a['dtype']}, global batch "
      f"{r['global_batch']} ({a['batch']}/device x {env['num_devices'] if not a['devices'] else a['devices']}"
      f" device(s)), 2 views/image",
      f"# {env['date']} | {env['backend']} {env['device_kind']} | {env['cpu_count']} CPUs, "
      f"load {env['loadavg']:.1f} | jax {env['jax']} jaxlib {env['jaxlib']} flax "
      f"{env['flax']} optax {env['optax']} | commit {env['commit']}",
  ]
  if r.get('note'):
    lines.append(f"# note: {r['note']}")
  lines += [
      '',
      '| row | step ms (median) | min-max ms | images/s | model GFLOP/image | model GFLOP/s | MFU | '
      'compile s |',
      '|---|---|---|---|---|---|---|---|',
  ]
  labels = {
      'project': f"project (conv={r['conv']})",
      'naive': f"naive (plain jit, 1 device, aug={a['naive_augment']})",
      'augment': 'augment only (project views)',
      'torch_nchw': 'PyTorch + lightly (eager, NCHW)',
      'torch_channels_last': 'PyTorch + lightly (eager, channels_last)',
  }
  for name in ('project', 'naive', *r.get('torch', ()), 'augment',
               *r.get('augment_ablation', ())):
    t = r.get(name)
    if not t:
      continue
    lines.append(
        f"| {labels.get(name, name)} | {1e3 * t['step_s']:.1f} | {1e3 * t['step_min_s']:.1f}-"
        f"{1e3 * t['step_max_s']:.1f} | {t['images_per_s']:.1f} | "
        f"{t['flops_per_image'] / 1e9:.3f} | {t['flops_per_s'] / 1e9:.1f} | "
        f"{100 * t['mfu']:.1f}% | "
        + (f"{t['compile_s']:.1f} |" if math.isfinite(t['compile_s']) else '- (eager) |'))
  m = r['matmul']
  forms = m.get('best_flops_per_s_by_form') or {}
  form = (f", {max(forms, key=forms.get)} (best of "
          + ', '.join(f'{k} {v / 1e9:.1f}' for k, v in forms.items()) + ')'
          if len(forms) > 1 else '')
  lines.append(
      f"| matmul {m['dtype']} {m['size']}^2{form} (best / median of {m.get('bursts', '?')} bursts) "
      f"| - | - | - | - | "
      f"{m['best_flops_per_s'] / 1e9:.1f} / {m['median_flops_per_s'] / 1e9:.1f} | 100% | - |")
  lines.append('')
  lines.append(f"augmentation share of the project step: {100 * r['augment_share']:.1f}%")
  if r.get('augment_profile'):
    lines += ['', trace_summary.format_summary(r['augment_profile'],
                                             r['augment_profile']['calls']), '']
  if 'ratio_project_over_naive' in r:
    pairs = r.get('pair_ratios') or [math.nan]
    lines.append(f"ratio project/naive (images/s): {r['ratio_project_over_naive']:.2f} "
                 f"(medians of steps taken in turn; per pair median "
                 f"{statistics.median(pairs):.2f}, min-max {min(pairs):.2f}-{max(pairs):.2f})")
  for name in r.get('torch', ()):
    pairs = r[f'pair_ratios_{name}'] or [math.nan]
    lines.append(f"ratio project / {labels[name]}, images/s: "
                 f"{r[f'ratio_project_over_{name}']:.2f} (per pair median "
                 f"{statistics.median(pairs):.2f}, min-max {min(pairs):.2f}-{max(pairs):.2f}); "
                 f"its host augmentation {100 * r[name]['augment_share']:.1f}% of its step")
  faults = [(name, r[name]) for name in ('project', 'naive', *r.get('torch', ()))
            if r.get(name) and math.isfinite(r[name].get('page_faults', math.nan))]
  if faults:
    lines.append('kernel work per step (whole process, median): ' + '; '.join(
        f"{name} {t['page_faults']:,.0f} minor page faults, {t['system_s']:.2f} s system CPU"
        for name, t in faults))
  lines.append(f"FLOPs from: project {r['project']['flops_source']}"
               + (f"; naive {r['naive']['flops_source']}" if r.get('naive') else ''))
  lines.append(f"loss after timing: project {r['loss_after']['project']:.4f}, "
               f"naive {r['loss_after']['naive']:.4f}"
               + ''.join(f", {name} {r[name]['loss_after']:.4f}" for name in r.get('torch', ())))
  if r.get('torch'):
    env = r['env']
    lines.append(f"PyTorch {env['torch']}, torchvision {env['torchvision']}, lightly "
                 f"{env['lightly']}, {env['torch_threads']} intra-op threads")
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  result = run(args)
  print(format_table(result), flush=True)
  if args.out:
    with open(args.out, 'a', encoding='utf-8') as f:
      f.write(json.dumps(result, default=float) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
