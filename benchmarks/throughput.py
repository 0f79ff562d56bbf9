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
  naive     the same work written the obvious way with stock Flax and optax,
            one jax.jit on one device (benchmarks/naive_step.py). Its input is
            the project's own augmentation unless --naive-augment none, so by
            default the ratio compares everything but the augmentation.
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

This file holds the command line, builds the rows and assembles the record;
build_project_step is the one function that builds the project step through
contrastive_jax. benchmarks/timing.py times the rows in turn and counts FLOPs,
MFU and the kernel's work per step (page faults, system CPU); its docstring
gives the method.

Step time: median of --steps steps (each ended by block_until_ready) after
compilation and --warmup steps. The project, naive and torch steps and the
matmul take turns (project, naive, ..., matmul, project, ...) in one process,
so the ratios and MFU compare the same minutes of a shared machine. images/s
counts source images (each makes 2 views). --batch is per device: the global
batch is batch x devices.

On a one-device CPU the project step's convolutions are oneDNN's (--conv
auto; NOTES.md idea 43), else cpu_conv's. The project step alone gets the
binaries' XLA:CPU setting (Eigen convolutions), as compiler options of its own
compilation (xla_cpu.compiler_options(): the same optimised HLO as the
binaries' XLA_FLAGS, checked in tests/test_xla_cpu.py); the naive step
compiles with stock XLA. MFU counts the network's FLOPs, not the conv
implementation's (model_flops_on_cpu): compare --conv variants by images/s.
"""

from __future__ import annotations

import argparse
import ast
import functools
import math
import os
import statistics
import sys
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from contrastive_jax import config_defaults, methods, modalities, optim, parallel, train
from contrastive_jax.kernels import xla_cpu

# The sibling modules (timing, naive_step, trace_summary, torch_reference),
# also when this file runs by path (runpy, tests).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import naive_step  # pylint: disable=g-import-not-at-top,wrong-import-position
import timing  # pylint: disable=g-import-not-at-top,wrong-import-position
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
    cfg.resnet.update(dict(depth=0, stage_sizes=(1, 1), block='basic', base_width=8))
  else:
    cfg.resnet.depth = {'resnet18': 18, 'resnet50': 50}[model]
  cfg.resnet.stem = 'cifar' if image_size <= 64 else 'imagenet'
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


# ============================================================================
# contrastive_jax's training API: the one function that builds the project
# step. The other uses of contrastive_jax are config_defaults (model_config,
# pretrain_config), its conv classes (resolve_conv), parallel (the mesh,
# synthetic_batch), xla_cpu.compiler_options (run) and train.make_view_fn
# (time_augment); naive_step.py uses augment and models.resolve_architecture.

def build_project_step(config, mesh, image_shape: tuple[int, int, int], conv_cls: Any,
                       num_classes: int, global_batch: int, abstract_state: bool = False
                       ) -> tuple[Callable[..., Any], Any]:
  """(jitted pretraining step, its initial state) of contrastive_jax for `config`.

  The model is models.build_model(config.model) with `conv_cls` and a
  `num_classes`-way online probe; the optimiser optim.build_optimizer(
  config.optim) for global_batch images per step (a 1000-step schedule with
  10 warm-up steps: its rate does not change the step's cost); the state
  train.init_state on `mesh` (with abstract_state, only its shapes, for
  lowering); the step train.make_pretrain_step for image_shape[0] px views.
  step(state, batch) -> (state, metrics) donates its state.
  """
  model = build_model(config.model, num_classes=num_classes, conv_cls=conv_cls)
  tx, schedule = optim.build_optimizer(config.optim, batch_size=global_batch,
                                       total_steps=1000, warmup_steps=10)

  method = methods.build(config)
  modality = modalities.build(config, image_shape)

  def init():
    return train.init_state(model, tx, seed=config.seed, dummy_input=modality.dummy_input(),
                            mesh=mesh)
  state = jax.eval_shape(init) if abstract_state else init()
  step_fn = train.make_pretrain_step(model, tx, schedule, method, modality, mesh)
  return step_fn, state
# End of the contrastive_jax training API.
# ============================================================================


def synthetic_batch(global_batch: int, source_size: int, channels: int,
                    num_classes: int, mesh) -> dict[str, jax.Array]:
  """Random uint8 images, labels and indices, sharded over the mesh's 'data' axis."""
  rng = np.random.default_rng(0)
  local = dict(
      image=rng.integers(0, 256, (global_batch, source_size, source_size, channels),
                         dtype=np.uint8),
      label=rng.integers(0, max(num_classes, 1), (global_batch,), dtype=np.int32),
      index=np.arange(global_batch, dtype=np.int32))
  return parallel.global_batch(local, mesh)


def model_flops_on_cpu(config, args: argparse.Namespace, image_shape,
                       global_batch: int) -> tuple[float, str]:
  """Global FLOPs of the project step built with nn.Conv, from its unoptimised
  HLO lowered for one CPU device (nothing is compiled or run).

  The model FLOPs (MFU's numerator) are the network's, not an implementation's:
  with a conv other than nn.Conv the executable does different arithmetic (XLA
  counts a patches-matmul backward differently), and GPU cost analyses leave
  cuDNN convolutions out, even before optimisation. The record keeps the
  executable's own count as executed_flops.
  """
  mesh = parallel.make_mesh(jax.devices('cpu')[:1])
  batch = synthetic_batch(global_batch, args.source_size, args.channels,
                          args.probe_classes, mesh)
  step_fn, abstract = build_project_step(config, mesh, image_shape, nn.Conv,
                                         args.probe_classes, global_batch,
                                         abstract_state=True)
  return (timing.lowered_flops(step_fn, abstract, batch),
          'nn.Conv step lowered for CPU (unoptimised HLO)')


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
                 ) -> tuple[timing.Timing, Callable[[], Any], Any]:
  """Compiles and times the two-view augmentation of `batch` under aug_cfg;
  also returns the timed call and the compiled executable."""
  view_cfg = config.copy_and_resolve_references()
  view_cfg.augment = aug_cfg
  view_cfg.data.image_size = out_size
  modality = modalities.build(view_cfg, tuple(batch['image'].shape[1:]))
  compiled, compile_s, flops, src = timing.compile_timed(
      train.make_view_fn(modality, 2), jnp.zeros((), jnp.int32), batch,
      num_devices=num_devices)
  counter = [0]

  def call():
    counter[0] += 1
    return compiled(jnp.asarray(counter[0], jnp.int32), batch)
  times = timing.time_calls(call, args.steps, args.warmup)
  return (timing.Timing.of(name, times, compile_s=compile_s, flops=flops, flops_source=src),
          call, compiled)


def naive_call(config, args: argparse.Namespace, batch: dict[str, jax.Array], device
               ) -> tuple[Callable[[], Any], list[Any], float, float, str]:
  """(call, state holder, compile s, FLOPs, their source) of the naive step on one
  device with stock XLA options (benchmarks/naive_step.py)."""
  step_fn, state = naive_step.make_naive_step(
      config, _DTYPES[args.dtype], args.image_size, args.channels, args.naive_augment)
  batch = jax.device_put(jax.device_get(batch), device)
  state = jax.device_put(state, device)
  compiled, compile_s, flops, src = timing.compile_timed(step_fn, state, batch, num_devices=1)
  call, holder = timing.donating_call(compiled, state, batch)
  return call, holder, compile_s, flops, src


def torch_steps(args: argparse.Namespace, config, batch: dict[str, jax.Array],
                global_batch: int, env: dict[str, Any]) -> list[Any]:
  """The PyTorch + lightly steps of --torch (benchmarks/torch_reference.py): the
  same images, network and recipe, eager, host augmentation inside the step.
  Adds torch's versions to env."""
  if args.torch == 'none':
    return []
  import torch_reference  # pylint: disable=g-import-not-at-top  (optional torch)
  formats = (('channels_first', 'channels_last') if args.torch == 'both' else
             ('channels_last',) if args.torch == 'channels_last' else ('channels_first',))
  images = np.asarray(jax.device_get(batch['image']))
  steps = [torch_reference.make_step(
      images, model=args.model, image_size=args.image_size, temperature=config.simclr.temperature,
      lr=0.3 * global_batch / 256, jitter_strength=config.augment.jitter_strength,
      blur_prob=config.augment.blur_prob, min_scale=config.augment.crop_area_min,
      memory_format=fmt, seed=config.seed) for fmt in formats]
  env.update(torch_reference.versions())
  return steps


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Builds and times every row; returns the record that --out appends."""
  devices = jax.devices()[:args.devices] if args.devices else jax.devices()
  mesh = parallel.make_mesh(devices)
  num_devices = len(devices)
  global_batch = args.batch * num_devices
  config = pretrain_config(args, global_batch)
  out_size = args.image_size
  image_shape = (out_size, out_size, args.channels)
  env = timing.environment()
  backend = env['backend']

  # --- project step. Its XLA:CPU setting (Eigen convolutions, as the binaries
  # set in XLA_FLAGS) is given to this compilation only, so the naive step in
  # the same process compiles with stock XLA (xla_cpu.compiler_options).
  conv_cls, conv_label = resolve_conv(args.conv)
  project_options = xla_cpu.compiler_options(backend) if args.conv != 'xla' else {}
  step_fn, state = build_project_step(config, mesh, image_shape, conv_cls, args.probe_classes,
                                      global_batch)
  batch = synthetic_batch(global_batch, args.source_size, args.channels,
                          args.probe_classes, mesh)
  compiled, compile_s, flops, flops_src = timing.compile_timed(
      step_fn, state, batch, num_devices=num_devices, compiler_options=project_options)
  executed_flops = flops
  if conv_cls is not nn.Conv or backend != 'cpu':
    flops, flops_src = model_flops_on_cpu(config, args, image_shape, global_batch)
  project_call, holder = timing.donating_call(compiled, state, batch)
  del state
  calls = [project_call]
  if args.naive == 'yes':
    n_call, n_holder, n_compile_s, n_flops, n_src = naive_call(config, args, batch, devices[0])
    calls.append(n_call)
  torch = torch_steps(args, config, batch, global_batch, env)
  calls += [t.step for t in torch]

  # --- timing: the steps and a matmul burst (MFU's denominator) take turns.
  size = args.matmul_size or (2048 if backend == 'cpu' else 8192)
  times, usage, matmul = timing.time_with_matmul_rate(
      calls, args.steps, args.warmup, _DTYPES[args.dtype], size,
      burst_calls=5 if backend == 'cpu' else 20)
  loss = float(jax.device_get(project_call()[1]['loss']))
  project = timing.Timing.of('project', times[0], usage[0], compile_s=compile_s, flops=flops,
                             flops_source=flops_src, executed_flops=executed_flops)
  holder.clear()  # frees the states before the next compiles
  naive, naive_loss = None, math.nan
  if args.naive == 'yes':
    naive_loss = float(jax.device_get(n_call()[1]))
    if backend != 'cpu':  # same network; see model_flops_on_cpu for why
      n_flops, n_src = flops, 'the project step\'s model FLOPs (same network)'
    naive = timing.Timing.of('naive', times[1], usage[1], compile_s=n_compile_s,
                             flops=n_flops, flops_source=n_src)
    n_holder.clear()
  # The torch steps are the last calls; eager, so no compile time. MFU uses
  # the project's model FLOPs: the same network (lightly's head adds a bias
  # and a BatchNorm, a negligible share of the FLOPs); none for 'tiny', which
  # torch builds as a different, wider net.
  torch_rows = []
  for i, tstep in enumerate(torch, len(calls) - len(torch)):
    t = timing.Timing.of(tstep.name, times[i], usage[i],
                         flops=math.nan if args.model == 'tiny' else flops,
                         flops_source="the project step's model FLOPs (same network)")
    augment_s = statistics.median(timing.time_calls(tstep.augment, args.steps, warmup=1))
    torch_rows.append((t, dict(augment_s=augment_s, augment_share=augment_s / t.step_s,
                               loss_after=tstep.step()), timing.pair_ratios(times[0], times[i])))

  # --- augmentation alone (the project's view function, same sharded batch).
  aug, aug_call, aug_compiled = time_augment('augment', config.augment, config, batch,
                                             out_size, args, num_devices)
  profile = (timing.profile_calls(aug_call, aug_compiled, args.profile_augment,
                                  hlo_file='augment_hlo.txt')
             if args.profile_augment else None)
  ablation = []
  if args.augment_ablation:
    for name, overrides in AUGMENT_ABLATION:
      cfg = config.augment.copy_and_resolve_references()
      cfg.update(overrides)
      ablation.append(time_augment(name, cfg, config, batch, out_size, args, num_devices)[0])

  # --- the record: one JSON line with every number (--out).
  result = dict(
      kind='throughput', env=env, note=args.note,
      args={k: v for k, v in vars(args).items()},
      conv=conv_label, project_compiler_options=project_options,
      timing='interleaved' if naive is not None else 'project only',
      global_batch=global_batch, views_per_image=2, matmul=matmul,
      loss_after=dict(project=loss, naive=naive_loss))
  for t in (project, aug, naive, *ablation, *(row[0] for row in torch_rows)):
    if t is not None:
      result[t.name] = timing.row_record(t, global_batch, matmul['best_flops_per_s'])
  result['augment_share'] = aug.step_s / project.step_s
  if profile is not None:
    result['augment_profile'] = profile
  result['augment_ablation'] = [t.name for t in ablation]
  if naive is not None:
    result['ratio_project_over_naive'] = naive.step_s / project.step_s
    # Step i of each runs back to back: naive_i / project_i per pair.
    result['pair_ratios'] = timing.pair_ratios(times[0], times[1])
  result['torch'] = [t.name for t, _, _ in torch_rows]
  for t, extra, pairs in torch_rows:
    result[t.name].update(extra)
    result[f'ratio_project_over_{t.name}'] = t.step_s / project.step_s
    result[f'pair_ratios_{t.name}'] = pairs
  return result


_LABELS = {
    'augment': 'augment only (project views)',
    'torch_nchw': 'PyTorch + lightly (eager, NCHW)',
    'torch_channels_last': 'PyTorch + lightly (eager, channels_last)',
}


def format_table(r: dict[str, Any]) -> str:
  """The record as a markdown table and summary lines."""
  env, a = r['env'], r['args']
  lines = [
      f"# SimCLR step throughput: {a['model']} {a['image_size']} px (source "
      f"{a['source_size']} px, C={a['channels']}), {a['dtype']}, global batch "
      f"{r['global_batch']} ({a['batch']}/device x {env['num_devices'] if not a['devices'] else a['devices']}"
      f" device(s)), 2 views/image",
      timing.environment_line(env),
  ]
  if r.get('note'):
    lines.append(f"# note: {r['note']}")
  lines += ['', *timing.TABLE_HEADER]
  labels = dict(_LABELS, project=f"project (conv={r['conv']})",
                naive=f"naive (plain jit, 1 device, aug={a['naive_augment']})")
  for name in ('project', 'naive', *r.get('torch', ()), 'augment',
               *r.get('augment_ablation', ())):
    if r.get(name):
      lines.append(timing.table_row(labels.get(name, name), r[name]))
  lines += [timing.matmul_row(r['matmul']), '',
            f"augmentation share of the project step: {100 * r['augment_share']:.1f}%"]
  if r.get('augment_profile'):
    lines += ['', trace_summary.format_summary(r['augment_profile'],
                                             r['augment_profile']['calls']), '']
  if 'ratio_project_over_naive' in r:
    lines.append(f"ratio project/naive (images/s): {r['ratio_project_over_naive']:.2f} "
                 f"(medians of steps taken in turn; "
                 f"{timing.pairs_summary(r.get('pair_ratios') or ())})")
  for name in r.get('torch', ()):
    lines.append(f"ratio project / {labels[name]}, images/s: "
                 f"{r[f'ratio_project_over_{name}']:.2f} "
                 f"({timing.pairs_summary(r[f'pair_ratios_{name}'])}); "
                 f"its host augmentation {100 * r[name]['augment_share']:.1f}% of its step")
  work = timing.kernel_work_line([(name, r.get(name))
                                  for name in ('project', 'naive', *r.get('torch', ()))])
  if work:
    lines.append(work)
  lines.append(f"FLOPs from: project {r['project']['flops_source']}"
               + (f"; naive {r['naive']['flops_source']}" if r.get('naive') else ''))
  lines.append(f"loss after timing: project {r['loss_after']['project']:.4f}, "
               f"naive {r['loss_after']['naive']:.4f}"
               + ''.join(f", {name} {r[name]['loss_after']:.4f}" for name in r.get('torch', ())))
  if r.get('torch'):
    lines.append(f"PyTorch {env['torch']}, torchvision {env['torchvision']}, lightly "
                 f"{env['lightly']}, {env['torch_threads']} intra-op threads")
  return '\n'.join(lines)


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


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  result = run(args)
  print(format_table(result), flush=True)
  if args.out:
    timing.append_jsonl(args.out, result)
  return 0


if __name__ == '__main__':
  sys.exit(main())
